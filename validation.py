"""The museum's rules for a kiosk message: pure, total, and the single source of truth.

`validate` turns the raw bytes of one Kafka message value into a verdict: an accepted
`Rating` or `Request`, or a `Rejection` with a stable reason code. It reads no clock
(the caller hands it `now`), touches no file or network, and never raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
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
    # A memo of the time rules by minute of `at` (see _minute): it only saves work, as each
    # entry is what these rules say of that minute whatever the clock.
    _minutes: dict[bytes, _Minute | None] = field(
        init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fast_sites", MappingProxyType({
            str(site).encode(): (site, self.starts.get(site, date.min)) for site in self.sites}))
        object.__setattr__(self, "_minutes", {})

    def __reduce__(self) -> tuple[type[Rules], tuple[Any, ...]]:
        """Pickled as what it is made from (the judging process receives it with each batch);
        the fast path's table is derived again."""
        return (Rules, (self.sites, self.museum_tz, self.opens, self.closes, self.max_future,
                        dict(self.starts)))


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
# `at` as the kiosks write it (datetime.isoformat): 2026-02-24T17:18:10.967747+00:00, without
# the microseconds when they are 0. Any other spelling of a time takes the general path.
_KIOSK_AT = rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:[0-5]\d(?:\.\d{6})?[+-]\d\d:\d\d)"'
_KIOSK_FORM = re.compile(rb'\{"at": ' + _KIOSK_AT + rb', "site": ' + _JSON_TEXT
                         + rb', "val": ' + _JSON_INT + rb'(?:, "type": ' + _JSON_INT + rb")?\}")
# The last instant of a minute, from its first.
_MINUTE_END = timedelta(seconds=59, microseconds=999_999)


# The verdict of a kiosk-form message's (val, type) spellings when they are valid.
_FAST_KINDS: dict[tuple[bytes, bytes | None], tuple[type[Rating] | type[Request], int]] = {
    **{(str(value).encode(), None): (Rating, value) for value in range(len(RATING_LABELS))},
    **{(b"-1", str(kind).encode()): (Request, kind) for kind in range(len(REQUEST_LABELS))},
}


def validate(raw: bytes | None, rules: Rules, now: datetime) -> Verdict:
    """Judge one message value. `now` is the processing clock, timezone-aware."""
    return validate_all((raw,), rules, now)[0]


def validate_all(values: Iterable[bytes | None], rules: Rules, now: datetime) -> list[Verdict]:
    """`validate` for each value, in order: the same verdicts, made faster for a batch.

    A press in the kiosks' form is judged in one pass: the time rules are decided once per
    minute of `at` (`_minute`), then its site's spelling and its (val, type) spellings are
    looked up in tables built once. A message that fails any rule there is judged again by the
    general path, which names the first rule broken.
    """
    verdicts: list[Verdict] = []
    # Bound once: this loop runs for every message the pipeline reads.
    fullmatch, append, parse_time = _KIOSK_FORM.fullmatch, verdicts.append, datetime.fromisoformat
    fast_site, fast_kind, minutes = rules._fast_sites.get, _FAST_KINDS.get, rules._minutes
    horizon = now + rules.max_future  # the last instant not in the future
    for raw in values:
        kiosk_form = fullmatch(raw) if raw is not None else None
        if kiosk_form is None:
            obj = parse_json_object(raw)
            append(obj if isinstance(obj, Rejection) else validate_object(obj, rules, now))
            continue
        at_text, site_text, val_text, kind_text = kiosk_form.groups()
        key = at_text[:16] + at_text[-6:]  # 2026-02-24T17:18+00:00
        minute = minutes.get(key, _UNSEEN)
        if minute is _UNSEEN:
            if len(minutes) >= MINUTES_MEMO_SIZE:
                minutes.clear()
            minute = minutes[key] = _minute(key, rules)
        if minute is None or minute.last > horizon:  # judged one by one
            append(judge_fields(at_text.decode("ascii"), site_text.decode("ascii"),
                                int(val_text), None if kind_text is None else int(kind_text),
                                rules, now))
            continue
        at = parse_time(at_text.decode("ascii"))
        site = fast_site(site_text)
        kind = fast_kind((val_text, kind_text))
        if site is not None and kind is not None and minute.local_date >= site[1]:
            append(tuple.__new__(kind[0], (site[0], kind[1], at)))
        else:
            append(judge_press(at, minute.local_date, site_text.decode("ascii"), int(val_text),
                               None if kind_text is None else int(kind_text), rules))
    return verdicts


# How many minutes Rules._minutes remembers before it starts again: three days of opening
# hours (570 minutes a day), about 400 KB. Presses come in time order, so a minute is worked
# out once either way; 20,000 (a month, 4 MB) made the judging process grow by 1.6 MB from a
# fifth of the benchmark's simulated backlog to all of it.
MINUTES_MEMO_SIZE = 2_000


class _Minute(NamedTuple):
    """A minute of `at` in which every instant passes the opening hours: its museum-local
    date, and its last instant (the future bound is checked against it)."""

    local_date: date
    last: datetime


_UNSEEN = _Minute(date.min, datetime.min)  # not in the memo yet


def _minute(key: bytes, rules: Rules) -> _Minute | None:
    """What the time rules say of a minute of `at` as written (its date, hour and minute,
    then its UTC offset: 2026-02-24T17:18+00:00): a _Minute if every instant in it is a valid
    time within opening hours, else None.

    That is so when the minute is one minute of museum time too (the zone's offset is whole
    minutes and the same at its first and last instant), its first instant is not before
    opening and its last not after closing. A minute that straddles a bound, or that does not
    pass, leaves its presses to judge_fields.
    """
    try:
        text = key.decode("ascii")
        first = datetime.fromisoformat(f"{text[:16]}:00{text[16:]}")
        last = first + _MINUTE_END
        local_first = first.astimezone(rules.museum_tz)
        local_last = last.astimezone(rules.museum_tz)
    except (ValueError, OverflowError):
        return None
    if (local_first.second == 0 and local_first.microsecond == 0
            and local_first.utcoffset() == local_last.utcoffset()
            and rules.opens <= local_first.time() and local_last.time() <= rules.closes):
        return _Minute(local_first.date(), last)
    return None


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
    return judge_press(at, local.date(), site_value, val, kind, rules)


def judge_press(at: datetime, local_date: date, site_value: Any, val: Any, kind: Any,
                rules: Rules) -> Verdict:
    """The rules after the time's: site, start date, value and type. `at` has passed the time
    rules, and `local_date` is its museum-local date."""
    site = parse_site(site_value, rules.sites)
    if isinstance(site, Rejection):
        return site
    start = rules.starts.get(site)
    if start is not None and local_date < start:
        return Rejection(Reason.BEFORE_EXHIBITION_START,
                         f"pressed on {local_date:%Y-%m-%d}, before site {site} opened on {start}")

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
