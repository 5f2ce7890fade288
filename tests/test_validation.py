"""The validation rules, each with its boundaries, and the real capture line by line."""

from __future__ import annotations

import contextlib
import json
import operator
import re
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmnh.settings import MuseumEnvironment
from validation import (
    _KIOSK_FORM,
    REQUIRED_KEYS,
    Rating,
    Reason,
    Rejection,
    Request,
    Rules,
    localize,
    parse_json_object,
    validate,
    validate_object,
)

RULES = Rules(sites=frozenset(range(6)))
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


def message(**fields: object) -> bytes:
    base: dict[str, object] = {"at": "2026-02-24T12:00:00+00:00", "site": "3", "val": 2}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not _ABSENT}).encode()


_ABSENT = object()


def general_path(raw: bytes | None, rules: Rules = RULES,
                 now: datetime = NOW) -> Rating | Request | Rejection:
    """The general JSON parser and the rules, without the kiosk-form fast path."""
    obj = parse_json_object(raw)
    return obj if isinstance(obj, Rejection) else validate_object(obj, rules, now)


def reason(raw: bytes | None, rules: Rules = RULES, now: datetime = NOW) -> Reason | None:
    """The verdict's reason (None when accepted), the same by the fast and the general path.

    message() writes the kiosks' form, so validate() takes the fast path; each rule's
    boundaries are thereby checked on both paths.
    """
    verdict = validate(raw, rules, now)
    assert verdict == general_path(raw, rules, now)
    return verdict.reason if isinstance(verdict, Rejection) else None


# ------------------------------------------------------------------ accepted shapes


def test_a_rating_is_accepted_with_its_parsed_timestamp() -> None:
    verdict = validate(message(at="2024-10-21T09:21:24.254719+01:00", site="5", val=4), RULES, NOW)
    assert verdict == Rating(5, 4, datetime(2024, 10, 21, 8, 21, 24, 254719, tzinfo=UTC))


@pytest.mark.parametrize(("kind", "expected"), [(0, 0), (1, 1)])
def test_a_request_is_accepted(kind: int, expected: int) -> None:
    verdict = validate(message(val=-1, type=kind, site="0"), RULES, NOW)
    assert verdict == Request(0, expected, datetime(2026, 2, 24, 12, tzinfo=UTC))


def test_a_rating_may_carry_a_null_type() -> None:
    assert isinstance(validate(message(type=None), RULES, NOW), Rating)


# ------------------------------------------------------------------ rule 1: JSON object


@pytest.mark.parametrize("raw", [
    None, b"", b"   ", b"not json", b'{"at": ', b"[1, 2, 3]", b'"a string"', b"42", b"null",
    b"\xff\xfe{}", '{"at": "é"}'.encode("latin-1"), "{}".encode("utf-16"),
    b'{"at": "x", "site": "1", "val": NaN}', b'{"val": Infinity}',
    b'{"at": "2026-02-24T12:00:00+00:00", "site": "3", "val": 2, "val": 3}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"val": ' + b"9" * 5000 + b"}",
])
def test_anything_but_a_utf8_json_object_is_invalid_json(raw: bytes | None) -> None:
    assert reason(raw) is Reason.INVALID_JSON


def test_a_one_megabyte_payload_is_judged_not_raised() -> None:
    big = message(pad="x" * 1_000_000)
    assert len(big) > 1_000_000
    assert reason(big) is Reason.UNEXPECTED_KEY
    assert reason(b"x" * 1_000_000) is Reason.INVALID_JSON


# ------------------------------------------------------------------ rule 2: keys


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_required_key_is_named_when_missing(key: str) -> None:
    verdict = validate(message(**{key: _ABSENT}), RULES, NOW)
    assert isinstance(verdict, Rejection)
    assert verdict.reason is Reason.MISSING_KEY
    assert key in verdict.detail


def test_a_key_outside_the_four_is_unexpected() -> None:
    assert reason(message(kiosk="A")) is Reason.UNEXPECTED_KEY


# ------------------------------------------------------------------ rule 3: at


@pytest.mark.parametrize("at", [
    "2026-02-24T12:00:00", "2026-02-24 12:00:00", "yesterday", "", "2026-02-30T12:00:00+00:00",
    "2026-02-24T25:00:00+00:00", 1771934400, None, ["2026-02-24T12:00:00+00:00"], True,
    "2026-02-24T12:00:00+99:00",
])
def test_at_must_be_iso_8601_with_an_offset(at: object) -> None:
    assert reason(message(at=at)) is Reason.INVALID_AT


@pytest.mark.parametrize("at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_an_instant_the_museum_zone_cannot_hold_is_invalid_at(at: str) -> None:
    verdict = validate(message(at=at), RULES, NOW)
    assert verdict == general_path(message(at=at))
    assert verdict == Rejection(Reason.INVALID_AT, "at is out of range")


def test_z_and_other_offsets_are_converted() -> None:
    assert isinstance(validate(message(at="2026-02-24T12:00:00Z"), RULES, NOW), Rating)
    assert isinstance(validate(message(at="2026-02-24T07:00:00-05:00"), RULES, NOW), Rating)


# ------------------------------------------------------------------ rule 4: opening hours


@pytest.mark.parametrize("day", ["2026-01-15", "2026-07-15"], ids=["GMT", "BST"])
@pytest.mark.parametrize(("local_time", "inside"), [
    ("08:44:59.999999", False),
    ("08:45:00", True),
    ("12:00:00", True),
    ("18:15:00", True),
    ("18:15:00.000001", False),
    ("00:00:00", False),
    ("23:59:59", False),
])
def test_opening_hours_bounds_in_museum_time(day: str, local_time: str, inside: bool) -> None:
    local = datetime.fromisoformat(f"{day}T{local_time}").replace(tzinfo=LONDON)
    expected_offset = "+00:00" if day.startswith("2026-01") else "+01:00"
    assert local.isoformat().endswith(expected_offset)
    got = reason(message(at=local.isoformat()))
    assert got is (None if inside else Reason.OUTSIDE_HOURS)


def test_the_offset_of_the_message_is_honoured() -> None:
    assert reason(message(at="2026-07-15T09:00:00+01:00")) is None
    assert reason(message(at="2026-07-15T08:30:00+01:00")) is Reason.OUTSIDE_HOURS
    # 08:30 UTC in summer is 09:30 in London: inside, though the UTC clock says 08:30.
    assert reason(message(at="2026-07-15T08:30:00+00:00")) is None
    # 18:00 UTC in summer is 19:00 in London: outside.
    assert reason(message(at="2026-07-15T18:00:00+00:00")) is Reason.OUTSIDE_HOURS


@pytest.mark.parametrize(("at", "expected"), [
    ("2026-03-29T08:44:59+01:00", Reason.OUTSIDE_HOURS),  # spring forward day, BST
    ("2026-03-29T08:45:00+01:00", None),
    ("2026-03-29T07:45:00+00:00", None),  # the same instant written in UTC
    ("2026-03-29T17:15:00+00:00", None),  # 18:15 BST
    ("2026-03-29T17:15:01+00:00", Reason.OUTSIDE_HOURS),
    ("2026-10-25T08:45:00+00:00", None),  # autumn back day, GMT again
    ("2026-10-25T08:44:59+00:00", Reason.OUTSIDE_HOURS),
    ("2026-10-25T01:30:00+01:00", Reason.OUTSIDE_HOURS),  # the repeated hour, first pass
])
def test_the_days_the_clocks_change(at: str, expected: Reason | None) -> None:
    assert reason(message(at=at)) is expected


def test_zone_and_hours_are_configuration() -> None:
    tokyo = Rules(sites=frozenset({3}), museum_tz=ZoneInfo("Asia/Tokyo"),
                  opens=time(10), closes=time(11))
    assert reason(message(at="2026-02-24T10:30:00+09:00"), tokyo) is None
    assert reason(message(at="2026-02-24T10:30:00+00:00"), tokyo) is Reason.OUTSIDE_HOURS


# ------------------------------------------------------------------ rule 5: the future


def test_a_press_more_than_five_minutes_ahead_is_future() -> None:
    now = datetime(2026, 7, 15, 10, 0, tzinfo=UTC)
    assert reason(message(at="2026-07-15T11:05:00+01:00"), now=now) is None  # exactly 5 min
    assert reason(message(at="2026-07-15T11:05:00.000001+01:00"), now=now) is Reason.FUTURE_AT
    strict = Rules(sites=RULES.sites, max_future=timedelta(0))
    assert reason(message(at="2026-07-15T11:00:01+01:00"), strict, now) is Reason.FUTURE_AT


# ------------------------------------------------------------------ rule 6: site


@pytest.mark.parametrize("site", [
    "6", "12", "ERR", "INF", "None", "", " 1", "1 ", "-1", "+1", "1.0", "\u0663", "\uff13", 3, 3.0,
    None, True, ["3"], "9" * 5000,
])
def test_site_must_be_digits_naming_a_loaded_exhibition(site: object) -> None:
    assert reason(message(site=site)) is Reason.UNKNOWN_SITE


def test_a_site_number_has_at_most_six_digits() -> None:
    assert reason(message(site="000003")) is None
    assert reason(message(site="0000003")) is Reason.UNKNOWN_SITE


def test_sites_compare_as_numbers() -> None:
    rules = Rules(sites=frozenset({3, 10}))
    assert validate(message(site="10"), rules, NOW) == Rating(
        10, 2, datetime(2026, 2, 24, 12, tzinfo=UTC))
    assert validate(message(site="03"), rules, NOW) == Rating(
        3, 2, datetime(2026, 2, 24, 12, tzinfo=UTC))
    assert reason(message(site="1"), rules) is Reason.UNKNOWN_SITE


# ------------------------------------------------------------------ the exhibition's start date

STARTS = Rules(sites=frozenset({2, 3, 7}), starts={3: date(2026, 2, 24), 2: date(2019, 7, 1)})


@pytest.mark.parametrize(("at", "expected"), [
    ("2026-02-23T18:15:00+00:00", Reason.BEFORE_EXHIBITION_START),  # the day before, at closing
    ("2026-02-24T08:45:00+00:00", None),  # the start date itself, at opening
    ("1970-01-01T12:00:00+00:00", Reason.BEFORE_EXHIBITION_START),  # a kiosk reset to 1970
    ("1970-01-01T03:00:00+00:00", Reason.OUTSIDE_HOURS),  # the hours are judged first
])
def test_a_press_before_its_exhibitions_start_date_is_rejected(
        at: str, expected: Reason | None) -> None:
    assert reason(message(at=at, site="3"), STARTS) is expected


def test_the_start_date_is_the_museums_local_date() -> None:
    tokyo = Rules(sites=frozenset({3}), starts={3: date(2026, 7, 1)}, museum_tz=ZoneInfo(
        "Asia/Tokyo"), opens=time(0), closes=time(23, 59, 59))
    # 20:00 UTC on 30 June is 05:00 on 1 July in Tokyo: the start date, museum time.
    assert reason(message(at="2026-06-30T20:00:00+00:00"), tokyo) is None
    assert reason(message(at="2026-06-30T14:00:00+00:00"), tokyo) is (
        Reason.BEFORE_EXHIBITION_START)


def test_the_start_date_rule_names_the_site_and_both_dates() -> None:
    verdict = validate(message(at="2026-02-23T12:00:00+00:00", val=-1, type=1), STARTS, NOW)
    assert verdict == Rejection(Reason.BEFORE_EXHIBITION_START,
                                "pressed on 2026-02-23, before site 3 opened on 2026-02-24")


def test_a_site_without_a_start_date_has_no_bound_and_other_sites_keep_theirs() -> None:
    assert reason(message(at="1970-01-01T12:00:00+00:00", site="7"), STARTS) is None
    assert reason(message(at="2019-06-30T12:00:00+00:00", site="2"), STARTS) is (
        Reason.BEFORE_EXHIBITION_START)
    assert reason(message(at="2019-07-01T12:00:00+00:00", site="2"), STARTS) is None


def test_settings_give_the_rules_every_start_date() -> None:
    museum = MuseumEnvironment(CLOSING_TIME="17:00", MAX_FUTURE_SECONDS=0)
    rules = museum.rules({3: date(2026, 2, 24), 5: date(2019, 1, 1)})
    assert rules.sites == {3, 5} and rules.starts == {3: date(2026, 2, 24), 5: date(2019, 1, 1)}
    assert rules.closes == time(17) and rules.max_future == timedelta(0)
    assert reason(message(at="2026-02-23T12:00:00+00:00"), rules) is (
        Reason.BEFORE_EXHIBITION_START)
    assert reason(message(at="2026-02-24T17:00:00+00:00"), rules) is None
    assert reason(message(at="2026-02-24T17:00:00.000001+00:00"), rules) is Reason.OUTSIDE_HOURS
    now = datetime(2026, 2, 24, 12, tzinfo=UTC)  # MAX_FUTURE_SECONDS=0: up to now, not after
    assert reason(message(at="2026-02-24T12:00:00+00:00"), rules, now) is None
    assert reason(message(at="2026-02-24T12:00:00.000001+00:00"), rules, now) is Reason.FUTURE_AT
    assert museum.rules({}).opens == time(8, 45) and not museum.rules({}).sites


# ------------------------------------------------------------------ rule 7: val


@pytest.mark.parametrize("val", [
    5, 9, -2, -3, 10**30, -(10**30), True, False, 3.0, 2.5, "3", "ERR", "INF", None, [3], {},
])
def test_val_must_be_an_integer_in_range(val: object) -> None:
    assert reason(message(val=val)) is Reason.INVALID_VAL


@pytest.mark.parametrize("val", [0, 1, 2, 3, 4])
def test_every_rating_value_is_accepted(val: int) -> None:
    assert validate(message(val=val), RULES, NOW) == Rating(
        3, val, datetime(2026, 2, 24, 12, tzinfo=UTC))


# ------------------------------------------------------------------ rule 8: type


@pytest.mark.parametrize("kind", [2, 3, 4, -1, "ERR", "INF", None, _ABSENT, True, False, 0.0,
                                  1.0, "0", 10**30])
def test_a_request_needs_type_zero_or_one(kind: object) -> None:
    assert reason(message(val=-1, type=kind)) is Reason.INVALID_TYPE


@pytest.mark.parametrize("kind", [0, 1, 2, "ERR"])
def test_a_rating_must_not_carry_a_type(kind: object) -> None:
    assert reason(message(val=3, type=kind)) is Reason.INVALID_TYPE


# ------------------------------------------------------------------ details and verdict types


@pytest.mark.parametrize(("raw", "detail"), [
    (b'{"at": "x", "at": "y"}', "duplicate key"),
    (b'{"val": NaN}', "NaN is not JSON"),
    (message(kiosk="A", zone="B"), "unexpected 'kiosk'"),
    (message(**{"k" * 60: 1}), f"unexpected {'k' * 40!r}"),
    (message(val="ERR"), "val 'ERR' is not an integer in -1..4"),
    (message(val=None), "val None is not an integer in -1..4"),
    (message(val=[3]), "val list is not an integer in -1..4"),
    (message(val=2.5), "val 2.5 is not an integer in -1..4"),
    (message(val="x" * 40), f"val {repr('x' * 40)[:24]} is not an integer in -1..4"),
    (message(val=-1, type="1"), "type '1' is not 0 or 1"),
    (message(site="ERR"), "site 'ERR' is not a site number"),
    (message(site="9"), "site '9' has no exhibition"),
    (message(at="2026-02-24T07:00:00+00:00"), "pressed at 07:00:00 museum time"),
    (None, "empty message value"),
    (b'{"at": "\xff"}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[1]", "not an object but list"),
    (b'{"at": ', "Expecting value: line 1 column 8 (char 7)"),
    (b'{"val": ' + b"9" * 5000 + b"}",
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 di"),
    (message(at=1771934400), "at is int, not a string"),
    (message(at="yesterday"), "at is not ISO-8601"),
    (message(at="2026-02-24T12:00:00"), "at has no UTC offset"),
    (message(at="2026-11-22T12:05:00.000001+00:00"), "at is in the future"),
    (message(val=3, type=0), "a rating carries a type"),
])
def test_a_rejection_says_what_was_wrong(raw: bytes, detail: str) -> None:
    verdict = validate(raw, RULES, NOW)
    assert isinstance(verdict, Rejection) and verdict.detail == detail


def test_a_press_equals_only_a_press_of_the_same_kind_and_fields() -> None:
    at = datetime(2026, 2, 24, 12, tzinfo=UTC)
    # Both operators, each way: __eq__ and __ne__ are the press's own.
    assert (operator.eq(Rating(3, 1, at), Rating(3, 1, at)),
            operator.ne(Rating(3, 1, at), Rating(3, 1, at))) == (True, False)
    assert (operator.eq(Rating(3, 1, at), Request(3, 1, at)),
            operator.ne(Rating(3, 1, at), Request(3, 1, at))) == (False, True)
    assert Rating(3, 1, at) != Rating(3, 2, at) and Rating(3, 1, at) != (3, 1, at)
    assert hash(Request(3, 1, at)) == hash(Request(3, 1, at))


def test_a_repeated_wall_time_is_ambiguous_whichever_pass_it_names() -> None:
    """localize decides on the wall time alone, not on a fold the caller may have set."""
    for fold in (0, 1):
        verdict = localize(datetime(2026, 10, 25, 1, 30, fold=fold), LONDON)
        assert isinstance(verdict, Rejection) and verdict.reason is Reason.AMBIGUOUS_LOCAL_TIME
    assert localize(datetime(2026, 10, 25, 2, 30, fold=1), LONDON) == datetime(
        2026, 10, 25, 2, 30, tzinfo=UTC)


# ------------------------------------------------------------------ properties


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_validation_never_raises_on_any_bytes(raw: bytes) -> None:
    assert isinstance(validate(raw, RULES, NOW), Rating | Request | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
aware_times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31),
    timezones=st.sampled_from([UTC, LONDON, ZoneInfo("America/New_York")]),
)

# ------------------------------------------------------------------ one fault at a time
# The kiosks' own messages (json.dumps defaults, so the fast path reads them), mostly valid, with
# at most one field perturbed, judged against an independent statement of the rules below.

PROPERTY_RULES = Rules(sites=frozenset(range(6)), starts={
    site: date(2019, 7, 1) for site in range(5)} | {5: date(2024, 6, 1)})
PROPERTY_NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MIN_SHARE = 0.30  # of accepted messages, and of messages in the kiosk form


def broken_rules(raw: bytes, now: datetime) -> set[Reason]:
    """Every rule `raw` breaks, worked out independently of validation.py's code."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        obj = json.loads(raw, parse_constant=refuse, object_pairs_hook=lambda pairs: (
            dict(pairs) if len({k for k, _ in pairs}) == len(pairs) else None))
    except (ValueError, RecursionError):
        return {Reason.INVALID_JSON}
    if not isinstance(obj, dict):
        return {Reason.INVALID_JSON}
    broken = set()
    if not {"at", "site", "val"} <= obj.keys():
        broken.add(Reason.MISSING_KEY)
    if not obj.keys() <= {"at", "site", "val", "type"}:
        broken.add(Reason.UNEXPECTED_KEY)
    at = None
    with contextlib.suppress(ValueError):
        at = datetime.fromisoformat(obj["at"]) if type(obj.get("at")) is str else None
    if at is None or at.tzinfo is None:
        broken.add(Reason.INVALID_AT)
        at = None
    else:
        local = at.astimezone(LONDON)
        if not time(8, 45) <= local.time() <= time(18, 15):
            broken.add(Reason.OUTSIDE_HOURS)
        if at > now + timedelta(seconds=300):
            broken.add(Reason.FUTURE_AT)
    site = obj.get("site")
    if not (type(site) is str and re.fullmatch("[0-9]{1,6}", site)
            and int(site) in PROPERTY_RULES.sites):
        broken.add(Reason.UNKNOWN_SITE)
    elif at is not None and at.astimezone(LONDON).date() < PROPERTY_RULES.starts[int(site)]:
        broken.add(Reason.BEFORE_EXHIBITION_START)
    val, kind = obj.get("val"), obj.get("type")
    if type(val) is not int or val not in range(-1, 5):
        broken.add(Reason.INVALID_VAL)
    elif (val == -1 and (type(kind) is not int or kind not in (0, 1))) or (
            val != -1 and kind is not None):
        broken.add(Reason.INVALID_TYPE)
    return broken


@st.composite
def in_hours_times(draw: st.DrawFn) -> str:
    """A museum-open instant from 2024 to PROPERTY_NOW, written with +00:00 or +01:00."""
    day = draw(st.dates(date(2024, 1, 1), date(2026, 11, 21)))
    seconds = draw(st.integers(0, (18 * 3600 + 15 * 60) - (8 * 3600 + 45 * 60)))
    micro = draw(st.sampled_from([0, draw(st.integers(0, 999_999))]))
    local = datetime.combine(day, time(8, 45), LONDON) + timedelta(seconds=seconds,
                                                                    microseconds=micro)
    offset = draw(st.sampled_from([timedelta(0), timedelta(hours=1)]))
    return local.astimezone(timezone(offset)).isoformat()


FIELD_FAULTS: dict[str, st.SearchStrategy] = {
    "at": st.one_of(
        st.sampled_from(["2026-02-24T08:44:59.999999+00:00", "2026-02-24T18:15:00.000001+00:00",
                         "2026-07-15T07:44:59+00:00", "2026-07-15T17:15:01+00:00",
                         "1970-01-01T12:00:00+00:00", "2024-05-31T12:00:00+01:00",
                         "2026-11-22T12:05:00.000001+00:00", "2026-02-24T12:00:00", "noon",
                         "", "2026-02-30T12:00:00+00:00", "2026-02-24T12:00:00Z"]),
        aware_times.map(datetime.isoformat), st.integers(), st.none()),
    "site": st.one_of(st.sampled_from(["6", "10", "03", "", "-1", "+1", " 1", "1.0", "\u0663",
                                       "ERR", "9" * 7]),
                      st.integers(-1, 7), st.integers(0, 12).map(str), st.none()),
    "val": st.one_of(st.integers(-3, 7), st.sampled_from([True, False, 3.0, "3", None, [1]])),
    "type": st.one_of(st.integers(-1, 3), st.sampled_from([True, "0", 1.0, None])),
}


@st.composite
def kiosk_messages(draw: st.DrawFn) -> bytes:
    """Mostly valid presses in the kiosks' form; about a third carry one fault."""
    obj: dict[str, object] = {"at": draw(in_hours_times()),
                              "site": str(draw(st.integers(0, 5)))}
    if draw(st.integers(0, 5)) == 0:
        obj |= {"val": -1, "type": draw(st.integers(0, 1))}
    else:
        obj["val"] = draw(st.integers(0, 4))
    fault = draw(st.sampled_from([None] * 8 + ["at", "site", "val", "type", "drop", "extra",
                                               "form"]))
    if fault in FIELD_FAULTS:
        obj[fault] = draw(FIELD_FAULTS[fault])
        if fault == "val" and draw(st.booleans()):
            obj.pop("type", None)
    elif fault == "drop":
        del obj[draw(st.sampled_from(sorted(obj)))]
    elif fault == "extra":
        obj[draw(st.sampled_from(["kiosk", "Type", "at ", "extra"]))] = draw(json_values)
    raw = json.dumps(obj).encode()
    if fault == "form":  # the same message in another spelling: the general path reads it
        raw = draw(st.sampled_from([raw.replace(b", ", b","), b" " + raw,
                                    json.dumps(dict(reversed(obj.items()))).encode()]))
    return raw


def test_kiosk_messages_judged_rule_by_rule_and_by_both_paths() -> None:
    """Accepted iff no rule is broken; a reject names a broken rule; fast path == general path."""
    seen: Counter[str] = Counter()

    @settings(max_examples=4000, deadline=None, database=None)
    @given(kiosk_messages(), st.sampled_from([PROPERTY_NOW, datetime(2026, 7, 15, 9, tzinfo=UTC)]))
    def check(raw: bytes, now: datetime) -> None:
        verdict = validate(raw, PROPERTY_RULES, now)
        broken = broken_rules(raw, now)
        fast = _KIOSK_FORM.fullmatch(raw) is not None
        seen.update(["all"] + ["fast"] * fast)
        obj = parse_json_object(raw)
        general = obj if isinstance(obj, Rejection) else validate_object(obj, PROPERTY_RULES, now)
        assert verdict == general
        if isinstance(verdict, Rejection):
            assert verdict.reason in broken, (verdict, broken)
            return
        seen["accepted"] += 1
        assert broken == set(), broken
        assert isinstance(obj, dict)
        assert verdict.at == datetime.fromisoformat(obj["at"])
        assert verdict.site == int(obj["site"])
        if isinstance(verdict, Request):
            assert (obj["val"], verdict.value) == (-1, obj["type"])
        else:
            assert type(verdict) is Rating and verdict.value == obj["val"]

    check()
    shares = {name: seen[name] / seen["all"] for name in ("accepted", "fast")}
    print(f"kiosk messages: {seen['all']} judged, accepted {shares['accepted']:.0%}, "
          f"kiosk form (fast path) {shares['fast']:.0%}")
    assert shares["accepted"] >= MIN_SHARE and shares["fast"] >= MIN_SHARE, shares


# ------------------------------------------------------------------ the real capture


kiosk_values = st.one_of(
    aware_times.map(datetime.isoformat), st.integers(-2, 12).map(str),
    st.integers(), st.integers(-3, 9), st.text(max_size=12), json_values,
)


@settings(max_examples=3000, deadline=None)
@given(kiosk_values, kiosk_values, kiosk_values, st.one_of(st.just(_ABSENT), kiosk_values),
       st.booleans())
def test_the_kiosk_form_fast_path_agrees_with_the_general_parser(
        at: object, site: object, val: object, kind: object, ascii_only: bool) -> None:
    """Messages in the kiosks' own form (json.dumps defaults), or one flag away from it."""
    obj = {"at": at, "site": site, "val": val} | ({} if kind is _ABSENT else {"type": kind})
    raw = json.dumps(obj, ensure_ascii=ascii_only).encode()
    for variant in (raw, raw.replace(b", ", b","), b" " + raw, raw.replace(b"}", b", }")):
        assert validate(variant, RULES, NOW) == general_path(variant)


def test_real_kiosk_messages_take_the_fast_path(capture_lines: list[bytes]) -> None:
    in_kiosk_form = [line for line in capture_lines if _KIOSK_FORM.fullmatch(line)]
    assert len(in_kiosk_form) > 0.9 * len(capture_lines)
    assert all(validate(line, RULES, NOW) == general_path(line) for line in capture_lines)


def test_the_real_capture_line_by_line(capture_lines: list[bytes]) -> None:
    assert len(capture_lines) == 5018
    verdicts = [validate(line, RULES, NOW) for line in capture_lines]
    ratings = [v for v in verdicts if isinstance(v, Rating)]
    requests = Counter(v.value for v in verdicts if isinstance(v, Request))
    rejects = Counter(v.reason for v in verdicts if isinstance(v, Rejection))
    assert len(ratings) == 4003
    assert requests == {0: 133, 1: 9}
    assert sum(rejects.values()) == 873
    assert Counter(r.site for r in ratings) == {0: 466, 1: 627, 2: 582, 3: 672, 4: 853, 5: 803}
    assert rejects == {
        Reason.INVALID_VAL: 231, Reason.INVALID_TYPE: 217, Reason.UNKNOWN_SITE: 200,
        Reason.MISSING_KEY: 152, Reason.OUTSIDE_HOURS: 73,
    }
