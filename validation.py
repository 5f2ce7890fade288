"""The museum's rules for a kiosk message: pure, total, and the single source of truth.

`validate` turns the raw bytes of one Kafka message value into a verdict: an accepted
`Rating` or `Request`, or a `Rejection` with a stable reason code. It reads no clock
(the caller hands it `now`), touches no file or network, and never raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

RATING_LABELS = ("Terrible", "Bad", "Neutral", "Good", "Amazing")
REQUEST_LABELS = ("Assistance", "Emergency")
REQUEST_VAL = -1
ALLOWED_KEYS = frozenset({"at", "site", "val", "type"})
REQUIRED_KEYS = ("at", "site", "val")
MUSEUM_TZ = ZoneInfo("Europe/London")
# A site number longer than this cannot be an exhibition; the bound also keeps int() cheap.
MAX_SITE_DIGITS = 6


class Reason(StrEnum):
    """Why a message was rejected: stable codes for the reject log and the dashboards."""

    INVALID_JSON = "invalid_json"
    MISSING_KEY = "missing_key"
    UNEXPECTED_KEY = "unexpected_key"
    INVALID_AT = "invalid_at"
    OUTSIDE_HOURS = "outside_hours"
    FUTURE_AT = "future_at"
    UNKNOWN_SITE = "unknown_site"
    INVALID_VAL = "invalid_val"
    INVALID_TYPE = "invalid_type"
    BEFORE_EXHIBITION_START = "before_exhibition_start"
    # The historical CSV exports (backfill.py): local times without an offset, and lines that
    # are not a CSV row of the expected shape.
    NONEXISTENT_LOCAL_TIME = "nonexistent_local_time"
    AMBIGUOUS_LOCAL_TIME = "ambiguous_local_time"
    INVALID_CSV = "invalid_csv"


@dataclass(frozen=True, slots=True)
class Rules:
    """What a message is judged against: the known exhibitions and the museum's hours.

    `starts` holds each exhibition's START_DATE (a museum-local date); a press dated before
    its site's start is rejected. A site without a start date has no such bound.
    """

    sites: frozenset[int]
    museum_tz: tzinfo = MUSEUM_TZ
    opens: time = time(8, 45)
    closes: time = time(18, 15)
    max_future: timedelta = timedelta(minutes=5)
    starts: Mapping[int, date] = field(default_factory=dict, hash=False)
    # Derived once for the kiosk-form fast path: a known site's canonical spelling -> (number,
    # first valid local date).
    _fast_sites: Mapping[bytes, tuple[int, date]] = field(
        init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fast_sites", MappingProxyType({
            str(site).encode(): (site, self.starts.get(site, date.min)) for site in self.sites}))


class _Press(NamedTuple):
    """An accepted press. A tuple because one is built for most messages (a frozen dataclass
    costs about four times as much to build); equal only to a press of the same kind."""

    site: int
    value: int
    at: datetime

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


class Rating(_Press):
    """A valid rating press: `site` N is exhibition EXH_0N, `value` 0 (Terrible)..4 (Amazing)."""

    __slots__ = ()


class Request(_Press):
    """A valid request press: `value` 0 is assistance, 1 is emergency."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


Verdict = Rating | Request | Rejection


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("duplicate key")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _brief(value: Any) -> str:
    """A short, safe description of a JSON value for a rejection's detail."""
    if isinstance(value, (str, int, float)) or value is None:
        return repr(value)[:24]
    return type(value).__name__


def _is_json_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int and is excluded on purpose


# Built once: json.loads with hooks would build a new decoder for every message.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def parse_json_object(raw: bytes | None) -> dict[str, Any] | Rejection:
    """Strict UTF-8 JSON object: no NaN/Infinity, no duplicate keys, no other encodings."""
    if raw is None:
        return Rejection(Reason.INVALID_JSON, "empty message value")
    try:
        obj = _STRICT_JSON.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Rejection(Reason.INVALID_JSON, "not UTF-8")
    except RecursionError:
        return Rejection(Reason.INVALID_JSON, "nested too deeply")
    except ValueError as error:  # JSONDecodeError, duplicate keys, NaN, huge integers
        return Rejection(Reason.INVALID_JSON, str(error)[:80])
    if not isinstance(obj, dict):
        return Rejection(Reason.INVALID_JSON, f"not an object but {type(obj).__name__}")
    return obj


def parse_at(at: Any) -> datetime | Rejection:
    """An ISO-8601 timestamp that carries its UTC offset."""
    if not isinstance(at, str):
        return Rejection(Reason.INVALID_AT, f"at is {type(at).__name__}, not a string")
    try:
        parsed = datetime.fromisoformat(at)
    except ValueError:
        return Rejection(Reason.INVALID_AT, "at is not ISO-8601")
    if parsed.utcoffset() is None:
        return Rejection(Reason.INVALID_AT, "at has no UTC offset")
    return parsed


def check_time(at: datetime, rules: Rules, now: datetime) -> datetime | Rejection:
    """Opening hours in museum local time (bounds inclusive), then the future bound.

    Returns the press's museum-local time, which the start-date rule reads.
    """
    try:
        local = at.astimezone(rules.museum_tz)
    except OverflowError:  # year 1 or 9999 shifted out of range
        return Rejection(Reason.INVALID_AT, "at is out of range")
    if not rules.opens <= local.time() <= rules.closes:
        return Rejection(Reason.OUTSIDE_HOURS, f"pressed at {local:%H:%M:%S} museum time")
    if at - now > rules.max_future:
        return Rejection(Reason.FUTURE_AT, "at is in the future")
    return local


def parse_site(site: Any, sites: frozenset[int]) -> int | Rejection:
    if not (isinstance(site, str) and 0 < len(site) <= MAX_SITE_DIGITS
            and site.isascii() and site.isdigit()):
        return Rejection(Reason.UNKNOWN_SITE, f"site {_brief(site)} is not a site number")
    number = int(site)
    if number not in sites:
        return Rejection(Reason.UNKNOWN_SITE, f"site {site!r} has no exhibition")
    return number


# The kiosks write their messages the way Python's json.dumps does by default, e.g.
# {"at": "2026-02-24T17:18:10.967747+00:00", "site": "4", "val": -1, "type": 0}. A message in
# exactly that form (keys in that order, strings of printable ASCII with no escapes, integers as
# JSON writes them, short enough for int()) is read with one regular expression instead of the
# general JSON parser: the values are the ones json.loads would give, and the same rules judge
# them. Anything else takes the general path. A property test checks the two paths agree.
_JSON_TEXT = rb'"([ !#-\[\]-~]*)"'
_JSON_INT = rb"(-?(?:0|[1-9][0-9]{0,17}))"
_KIOSK_FORM = re.compile(rb'\{"at": ' + _JSON_TEXT + rb', "site": ' + _JSON_TEXT
                         + rb', "val": ' + _JSON_INT + rb'(?:, "type": ' + _JSON_INT + rb")?\}")


# The verdict of a kiosk-form message's (val, type) spellings when they are valid.
_FAST_KINDS: dict[tuple[bytes, bytes | None], tuple[type[Rating] | type[Request], int]] = {
    **{(str(value).encode(), None): (Rating, value) for value in range(len(RATING_LABELS))},
    **{(b"-1", str(kind).encode()): (Request, kind) for kind in range(len(REQUEST_LABELS))},
}


def validate(raw: bytes | None, rules: Rules, now: datetime) -> Verdict:
    """Judge one message value. `now` is the processing clock, timezone-aware."""
    kiosk_form = _KIOSK_FORM.fullmatch(raw) if raw is not None else None
    if kiosk_form is None:
        obj = parse_json_object(raw)
        if isinstance(obj, Rejection):
            return obj
        return validate_object(obj, rules, now)
    at_text, site_text, val_text, kind_text = kiosk_form.groups()
    # The common case, a valid press, in one pass with no detour; anything that does not pass
    # every rule here is judged again below by judge_fields, which names the first rule broken.
    site = rules._fast_sites.get(site_text)
    kind = _FAST_KINDS.get((val_text, kind_text))
    if site is not None and kind is not None:
        try:
            at = datetime.fromisoformat(at_text.decode("ascii"))
            local = at.astimezone(rules.museum_tz)
        except (ValueError, OverflowError):
            pass
        else:
            if (at.tzinfo is not None and rules.opens <= local.time() <= rules.closes
                    and at - now <= rules.max_future and local.date() >= site[1]):
                return tuple.__new__(kind[0], (site[0], kind[1], at))
    return judge_fields(at_text.decode("ascii"), site_text.decode("ascii"), int(val_text),
                        None if kind_text is None else int(kind_text), rules, now)


def validate_object(obj: dict[str, Any], rules: Rules, now: datetime) -> Verdict:
    """Judge an already-decoded message (the rules from step 2 on)."""
    for key in REQUIRED_KEYS:
        if key not in obj:
            return Rejection(Reason.MISSING_KEY, f"missing {key}")
    extra = obj.keys() - ALLOWED_KEYS
    if extra:
        return Rejection(Reason.UNEXPECTED_KEY, f"unexpected {sorted(extra)[0][:40]!r}")
    return judge_fields(obj["at"], obj["site"], obj["val"], obj.get("type"), rules, now)


def judge_fields(at_value: Any, site_value: Any, val: Any, kind: Any, rules: Rules,
                 now: datetime) -> Verdict:
    """The rules on a message's values (`kind` is None when it has no "type")."""
    at = parse_at(at_value)
    if isinstance(at, Rejection):
        return at
    local = check_time(at, rules, now)
    if isinstance(local, Rejection):
        return local

    site = parse_site(site_value, rules.sites)
    if isinstance(site, Rejection):
        return site
    start = rules.starts.get(site)
    if start is not None and local.date() < start:
        return Rejection(Reason.BEFORE_EXHIBITION_START,
                         f"pressed on {local:%Y-%m-%d}, before site {site} opened on {start}")

    if not _is_json_int(val) or not REQUEST_VAL <= val < len(RATING_LABELS):
        return Rejection(Reason.INVALID_VAL, f"val {_brief(val)} is not an integer in -1..4")

    if val == REQUEST_VAL:
        if not _is_json_int(kind) or not 0 <= kind < len(REQUEST_LABELS):
            return Rejection(Reason.INVALID_TYPE, f"type {_brief(kind)} is not 0 or 1")
        return Request(site, kind, at)
    if kind is not None:
        return Rejection(Reason.INVALID_TYPE, "a rating carries a type")
    return Rating(site, val, at)


def localize(naive: datetime, tz: tzinfo) -> datetime | Rejection:
    """Place a wall-clock time without an offset (museum time) on the timeline.

    Around a clock change a wall-clock time may not name one instant, and guessing would
    silently move a press by an hour, so both cases are rejected: a time the spring change
    skips does not survive a round trip through UTC; a time the autumn change repeats has
    different offsets with fold=0 (the first pass) and fold=1 (the second).
    """
    first = naive.replace(tzinfo=tz, fold=0)
    try:
        round_trip = first.astimezone(UTC).astimezone(tz)
    except OverflowError:  # year 1 or 9999 shifted out of range
        return Rejection(Reason.INVALID_AT, "at is out of range")
    if round_trip.replace(tzinfo=None) != naive:
        return Rejection(Reason.NONEXISTENT_LOCAL_TIME,
                         f"{naive:%Y-%m-%d %H:%M:%S} is skipped by a clock change")
    if first.utcoffset() != naive.replace(tzinfo=tz, fold=1).utcoffset():
        return Rejection(Reason.AMBIGUOUS_LOCAL_TIME,
                         f"{naive:%Y-%m-%d %H:%M:%S} happens twice at a clock change")
    return first
