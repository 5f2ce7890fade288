"""The validation rules, each with its boundaries, and the real capture line by line."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation import (
    _KIOSK_FORM,
    REQUIRED_KEYS,
    Rating,
    Reason,
    Rejection,
    Request,
    Rules,
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


def reason(raw: bytes | None, rules: Rules = RULES, now: datetime = NOW) -> Reason | None:
    verdict = validate(raw, rules, now)
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


def test_sites_compare_as_numbers() -> None:
    rules = Rules(sites=frozenset({3, 10}))
    assert validate(message(site="10"), rules, NOW) == Rating(
        10, 2, datetime(2026, 2, 24, 12, tzinfo=UTC))
    assert validate(message(site="03"), rules, NOW) == Rating(
        3, 2, datetime(2026, 2, 24, 12, tzinfo=UTC))
    assert reason(message(site="1"), rules) is Reason.UNKNOWN_SITE


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
message_objects = st.fixed_dictionaries(
    {},
    optional={
        "at": st.one_of(aware_times.map(datetime.isoformat), json_values),
        "site": st.one_of(st.integers(-2, 12).map(str), json_values),
        "val": st.one_of(st.integers(-3, 9), json_values),
        "type": st.one_of(st.integers(-1, 4), json_values),
        "extra": json_values,
    },
)


@settings(max_examples=3000, deadline=None)
@given(message_objects, st.sampled_from([NOW, datetime(2020, 1, 1, tzinfo=UTC)]))
def test_every_accepted_message_satisfies_every_rule(obj: dict, now: datetime) -> None:
    verdict = validate(json.dumps(obj).encode(), RULES, now)
    if isinstance(verdict, Rejection):
        assert isinstance(verdict.reason, Reason)
        return
    assert set(obj) <= {"at", "site", "val", "type"}
    assert {"at", "site", "val"} <= set(obj)
    at = datetime.fromisoformat(obj["at"])
    assert at.utcoffset() is not None and verdict.at == at
    assert time(8, 45) <= at.astimezone(LONDON).time() <= time(18, 15)
    assert at - now <= timedelta(minutes=5)
    assert isinstance(obj["site"], str) and obj["site"].isascii() and obj["site"].isdigit()
    assert int(obj["site"]) == verdict.site and verdict.site in RULES.sites
    assert type(obj["val"]) is int
    if isinstance(verdict, Request):
        assert obj["val"] == -1 and type(obj["type"]) is int and obj["type"] in (0, 1)
        assert verdict.value == obj["type"]
    else:
        assert 0 <= obj["val"] <= 4 and obj.get("type") is None
        assert verdict.value == obj["val"]


# ------------------------------------------------------------------ the real capture


def general_path(raw: bytes) -> Rating | Request | Rejection:
    """The general JSON parser and the rules, without the kiosk-form fast path."""
    obj = parse_json_object(raw)
    return obj if isinstance(obj, Rejection) else validate_object(obj, RULES, NOW)


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
