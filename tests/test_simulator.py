"""The kiosk simulator against the real capture, the validation rules and a real (mock) Kafka."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from lmnh.local.kiosk_simulator import (
    VALID,
    Kind,
    Press,
    SimConfig,
    finishes_by,
    generate,
    kafka_config,
    latest_start,
    main,
    send,
)
from validation import Rating, Reason, Rejection, Request, Rules, Verdict, validate

CAPTURE = (
    Path(__file__).resolve().parents[1].parent
    / "shared" / "data" / "stream" / "lmnh_stream_2026-02-24.txt"
)
RULES = Rules(sites=frozenset(range(6)))
LONDON = ZoneInfo("Europe/London")
CATEGORIES = ("rating", "assistance", "emergency", *(reason.value for reason in Reason))
EXPECTED = {
    Kind.RATING: "rating",
    Kind.ASSISTANCE: "assistance",
    Kind.EMERGENCY: "emergency",
    Kind.MISSING_KEY: Reason.MISSING_KEY.value,
    Kind.BAD_SITE: Reason.UNKNOWN_SITE.value,
    Kind.BAD_VAL: Reason.INVALID_VAL.value,
    Kind.BAD_TYPE: Reason.INVALID_TYPE.value,
    Kind.OUT_OF_HOURS: Reason.OUTSIDE_HOURS.value,
}


def category(verdict: Verdict) -> str:
    match verdict:
        case Rating():
            return "rating"
        case Request(value=0):
            return "assistance"
        case Request():
            return "emergency"
        case Rejection(reason=reason):
            return reason.value
    raise AssertionError(verdict)


def shares(values: Iterable[bytes], now: datetime) -> dict[str, float]:
    counts = Counter(category(validate(value, RULES, now)) for value in values)
    total = sum(counts.values())
    return {name: counts[name] / total for name in CATEGORIES}


def recent(count: int, now: datetime, **options: object) -> list[Press]:
    return list(generate(SimConfig(start=latest_start(now, count), count=count, **options)))


def test_shares_match_the_real_capture() -> None:
    if not CAPTURE.is_file():
        pytest.skip(f"the real capture {CAPTURE} is absent (../shared is not beside the project)")
    now = datetime.now(UTC)
    real = shares(CAPTURE.read_bytes().splitlines(), now)
    simulated = shares((press.value for press in recent(20_000, now, seed=2026)), now)
    report = {name: f"{real[name]:.4f} vs {simulated[name]:.4f}" for name in CATEGORIES}
    assert all(abs(real[name] - simulated[name]) < 0.02 for name in CATEGORIES), report


def test_each_press_is_judged_as_the_kind_it_was_made_to_be() -> None:
    now = datetime.now(UTC)
    presses = recent(5_000, now, seed=7)
    assert {press.kind for press in presses} == set(Kind)
    for press in presses:
        assert category(validate(press.value, RULES, now)) == EXPECTED[press.kind], press


def test_same_seed_same_output_and_another_seed_differs() -> None:
    start = datetime(2026, 2, 24, 9, 0, tzinfo=LONDON)
    run = [press.value for press in generate(SimConfig(start=start, count=2_000, seed=1))]
    assert run == [press.value for press in generate(SimConfig(start=start, count=2_000, seed=1))]
    assert run != [press.value for press in generate(SimConfig(start=start, count=2_000, seed=2))]


@pytest.mark.parametrize(
    ("start", "offsets"),
    [
        (datetime(2026, 1, 15, 8, 45, tzinfo=LONDON), {"+00:00"}),
        (datetime(2026, 7, 1, 8, 45, tzinfo=LONDON), {"+01:00"}),
        # Saturday 28 March 2026: the run goes on into Sunday, when BST begins at 01:00 UTC.
        (datetime(2026, 3, 28, 16, 0, tzinfo=LONDON), {"+00:00", "+01:00"}),
    ],
)
def test_at_carries_the_uk_offset_of_its_instant(start: datetime, offsets: set[str]) -> None:
    messages = [json.loads(press.value) for press in generate(SimConfig(start, 3_000, seed=3))]
    stamps = [message["at"] for message in messages if "at" in message]
    assert {stamp[-6:] for stamp in stamps} == offsets
    for stamp in stamps:
        at = datetime.fromisoformat(stamp)
        assert at.utcoffset() == at.astimezone(LONDON).utcoffset(), stamp


def test_without_junk_every_press_is_accepted_and_in_the_past() -> None:
    now = datetime.now(UTC)
    presses = recent(5_000, now, seed=11, junk=frozenset())
    assert {press.kind for press in presses} == set(VALID)
    for press in presses:
        assert isinstance(validate(press.value, RULES, now), Rating | Request), press
        assert datetime.fromisoformat(json.loads(press.value)["at"]) <= now


def test_only_the_chosen_junk_is_mixed_in() -> None:
    presses = recent(3_000, datetime.now(UTC), seed=5, junk=frozenset({Kind.BAD_SITE}))
    assert {press.kind for press in presses} == {*VALID, Kind.BAD_SITE}


def test_the_default_start_keeps_the_whole_run_out_of_the_future() -> None:
    now = datetime(2026, 6, 10, 19, 30, tzinfo=LONDON)  # after closing: the run ends at 18:15
    config = SimConfig(start=latest_start(now, 20_000), count=20_000)
    assert finishes_by(config, now)
    assert not finishes_by(SimConfig(start=config.start, count=20_001), now)
    stamps = [json.loads(press.value).get("at") for press in generate(config)]
    assert max(datetime.fromisoformat(stamp) for stamp in stamps if stamp) <= now


def test_kafka_config_from_the_environment() -> None:
    assert kafka_config({"BOOTSTRAP_SERVERS": "kafka:9092"}) == {
        "bootstrap.servers": "kafka:9092",
        "security.protocol": "PLAINTEXT",
    }
    production = {
        "BOOTSTRAP_SERVERS": "broker.example:9092",
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "PLAIN",
        "USERNAME": "kiosk",
        "PASSWORD": "secret",
    }
    assert kafka_config(production, "localhost:9092") == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "kiosk",
        "sasl.password": "secret",
    }
    with pytest.raises(ValueError, match="USERNAME and PASSWORD"):
        kafka_config({**production, "PASSWORD": ""})
    with pytest.raises(ValueError, match="BOOTSTRAP_SERVERS"):
        kafka_config({})


def test_cli_prints_one_message_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stdout", "--count", "50", "--seed", "4", "--junk", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 50
    now = datetime.now(UTC)
    assert all(isinstance(validate(line.encode(), RULES, now), Rating | Request) for line in lines)


def test_cli_refuses_a_future_start_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    with pytest.raises(SystemExit):
        main(["--stdout", "--count", "5", "--start", future])
    assert "future" in capsys.readouterr().err
    assert main(["--stdout", "--count", "5", "--start", future, "--allow-future"]) == 0


@pytest.fixture(scope="module")
def mock_bootstrap() -> Iterator[str]:
    """librdkafka's mock cluster, alive as long as the Producer that hosts it."""
    host = Producer({"test.mock.num.brokers": 1})
    brokers = host.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    host.flush(1)


def consume_all(bootstrap: str, topic: str, expected: int) -> dict[int, list[bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-simulator",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    received: dict[int, list[bytes]] = {p: [] for p in partitions}
    deadline = time.monotonic() + 15
    try:
        while sum(map(len, received.values())) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1_000, timeout=0.5):
                assert message.error() is None, message.error()
                assert message.key() is None
                received[message.partition()].append(message.value())
        for message in consumer.consume(num_messages=1_000, timeout=0.5):  # nothing more
            received[message.partition()].append(message.value())
    finally:
        consumer.close()
    return received


def test_produce_to_kafka_round_robin(mock_bootstrap: str) -> None:
    config = SimConfig(start=latest_start(datetime.now(UTC), 2_000), count=2_000, seed=9)
    delivery = send({"bootstrap.servers": mock_bootstrap}, "kiosk-test", config)
    assert (delivery.sent, delivery.failed) == (2_000, 0)
    received = consume_all(mock_bootstrap, "kiosk-test", 2_000)
    assert [len(values) for values in received.values()] == [500, 500, 500, 500]
    everything = Counter(value for values in received.values() for value in values)
    assert everything == Counter(press.value for press in generate(config))


def test_cli_produces_to_kafka(
    mock_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SECURITY_PROTOCOL", "PLAINTEXT")  # whatever a local .env says
    argv = ["--count", "400", "--bootstrap-servers", mock_bootstrap, "--topic", "kiosk-cli"]
    assert main(argv) == 0
    assert "400 delivered, 0 failed" in capsys.readouterr().err
    assert sum(map(len, consume_all(mock_bootstrap, "kiosk-cli", 400).values())) == 400



def test_the_record_says_where_each_press_went_and_what_it_was_made_to_be(
    mock_bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECURITY_PROTOCOL", "PLAINTEXT")
    record = tmp_path / "sent.jsonl"
    start = "2026-02-24T09:00:00+00:00"
    argv = ["--count", "300", "--seed", "5", "--start", start, "--bootstrap-servers",
            mock_bootstrap, "--topic", "kiosk-record", "--record", str(record)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    received = consume_all(mock_bootstrap, "kiosk-record", 300)
    assert sorted((r["partition"], r["offset"]) for r in lines) == sorted(
        (partition, offset) for partition, values in received.items()
        for offset in range(len(values)))
    for r in lines:
        assert received[r["partition"]][r["offset"]] == r["value"].encode()
    config = SimConfig(start=datetime.fromisoformat(start), count=300, seed=5)
    made = {press.value.decode(): press.kind.value for press in generate(config)}
    assert Counter(r["kind"] for r in lines) == Counter(made.values())
    assert all(made[r["value"]] == r["kind"] for r in lines)
