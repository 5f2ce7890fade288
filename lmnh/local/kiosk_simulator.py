"""Kiosk simulator: button presses that look like the live `lmnh` topic, for demos, tests and load.

Functional core: `generate` turns a `SimConfig` into message values, deterministic for a seed.
The shares of ratings, requests and each kind of junk, the rating values and the sites'
popularity are those measured on a real capture of the topic (5,018 messages, 2026-02-24/25).
Imperative shell: `produce`/`send` write the values to Kafka and `main` is the command line:

    python -m lmnh.local.kiosk_simulator --stdout --count 5
    python -m lmnh.local.kiosk_simulator --count 20000    # broker and topic from the environment
    python -m lmnh.local.kiosk_simulator --count 600 --rate 10 --junk none

The simulated clock only runs while the museum is open: each press falls at a random moment of
its own `interval`-long slot, and a slot that would pass closing time moves on to the next
opening. By default the run is a replay of the latest opening time, ending at the real `now`,
so no timestamp is in the future. Junk presses are stamped up to two minutes before the clock
(in the capture they arrive late); out-of-hours presses fall in the night before the clock's day.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, TextIO, TypeVar

from confluent_kafka import KafkaException, Producer
from dotenv import load_dotenv

from validation import Rules

_HOURS = Rules(sites=frozenset())
MUSEUM_TZ = _HOURS.museum_tz
OPENS = _HOURS.opens
CLOSES = _HOURS.closes
OPEN_DAY = datetime.combine(date.min, CLOSES) - datetime.combine(date.min, OPENS)


class Kind(StrEnum):
    """What a simulated press is meant to be: a valid press or one kind of junk."""

    RATING = "rating"
    ASSISTANCE = "assistance"
    EMERGENCY = "emergency"
    MISSING_KEY = "missing_key"  # no `at`, `site` or `val`
    BAD_SITE = "bad_site"  # site "6".."12", "ERR", "INF", "None"
    BAD_VAL = "bad_val"  # val -3, -2, 5..9, "ERR", "INF", null
    BAD_TYPE = "bad_type"  # val -1 with type 2, 3, 4, -1, "ERR", "INF", null or absent
    OUT_OF_HOURS = "out_of_hours"  # pressed in the night


VALID = (Kind.RATING, Kind.ASSISTANCE, Kind.EMERGENCY)
JUNK = frozenset(Kind) - frozenset(VALID)

# Counts in the capture, by what `validation.validate` made of each message.
CAPTURE_COUNTS: Mapping[Kind, int] = {
    Kind.RATING: 4003,
    Kind.ASSISTANCE: 133,
    Kind.EMERGENCY: 9,
    Kind.MISSING_KEY: 152,
    Kind.BAD_SITE: 200,
    Kind.BAD_VAL: 231,
    Kind.BAD_TYPE: 217,
    Kind.OUT_OF_HOURS: 73,
}
RATING_COUNTS = (661, 942, 1057, 742, 601)  # val 0 (Terrible) .. 4 (Amazing)
SITE_COUNTS: Mapping[int, int] = {0: 477, 1: 643, 2: 616, 3: 702, 4: 892, 5: 815}  # valid presses
MISSING_KEY_COUNTS: Mapping[str, int] = {"at": 23, "site": 65, "val": 64}
BAD_SITES = ("6", "7", "8", "9", "10", "11", "12", "ERR", "INF", "None")
BAD_VALS: tuple[Any, ...] = (-3, -2, 5, 6, 7, 8, 9, "ERR", "INF", None)
_ABSENT = object()  # a request press with no `type` at all
BAD_TYPES: tuple[Any, ...] = (2, 3, 4, -1, "ERR", "INF", None, _ABSENT)
JUNK_DELAY = timedelta(minutes=2)
T = TypeVar("T")

DEFAULT_SITES = (0, 1, 2, 3, 4, 5)
DEFAULT_INTERVAL = timedelta(seconds=3.5)  # the capture's presses are 1 to 6 s apart
METADATA_TIMEOUT = 10.0
FLUSH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated run: `count` presses from `start` (timezone-aware), one per `interval`."""

    start: datetime
    count: int
    seed: int | None = None
    interval: timedelta = DEFAULT_INTERVAL
    sites: tuple[int, ...] = DEFAULT_SITES
    junk: frozenset[Kind] = JUNK

    def __post_init__(self) -> None:
        if self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if self.count < 0 or self.interval <= timedelta(0) or not self.sites:
            raise ValueError("count must be >= 0, interval > 0 and sites not empty")
        if not self.junk <= JUNK:
            raise ValueError(f"junk kinds are {sorted(JUNK)}")


@dataclass(frozen=True, slots=True)
class Press:
    """One simulated message value and what it was made to be."""

    kind: Kind
    value: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a `produce` ended: messages acknowledged, messages lost, and the first error."""

    sent: int
    failed: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Mix:
    sites: tuple[str, ...]
    site_weights: tuple[float, ...]
    bad_sites: tuple[str, ...]


def _open_offset(moment: datetime) -> timedelta:
    """Opening time elapsed from year 1 up to `moment`: the hours when closed do not count."""
    local = moment.astimezone(MUSEUM_TZ)
    since_opening = local.replace(tzinfo=None) - datetime.combine(local.date(), OPENS)
    return OPEN_DAY * local.date().toordinal() + min(max(since_opening, timedelta(0)), OPEN_DAY)


def _open_moment(offset: timedelta) -> datetime:
    """The inverse of `_open_offset`: always within opening hours (no DST change falls in them)."""
    day, since_opening = divmod(offset, OPEN_DAY)
    return datetime.combine(date.fromordinal(day), OPENS, MUSEUM_TZ) + since_opening


def latest_start(now: datetime, count: int, interval: timedelta = DEFAULT_INTERVAL) -> datetime:
    """The start from which `count` presses, one per `interval`, end by `now` (or last closing)."""
    return _open_moment(_open_offset(now) - interval * count)


def finishes_by(config: SimConfig, now: datetime) -> bool:
    """True when no press of the run is stamped later than `now`."""
    return _open_offset(config.start) + config.interval * config.count <= _open_offset(now)


def _night_before(moment: datetime, rng: random.Random) -> datetime:
    """A moment well inside the night that ends at the opening of `moment`'s day."""
    day = moment.astimezone(MUSEUM_TZ).date()
    dusk = datetime.combine(day - timedelta(days=1), CLOSES, MUSEUM_TZ).astimezone(UTC)
    dawn = datetime.combine(day, OPENS, MUSEUM_TZ).astimezone(UTC)
    return dusk + (dawn - dusk) * rng.uniform(0.01, 0.99)


def _valid(kind: Kind, at: datetime, rng: random.Random, mix: _Mix) -> dict[str, Any]:
    press: dict[str, Any] = {
        "at": at.astimezone(MUSEUM_TZ).isoformat(timespec="microseconds"),
        "site": rng.choices(mix.sites, mix.site_weights)[0],
    }
    if kind is Kind.RATING:
        return press | {"val": rng.choices(range(len(RATING_COUNTS)), RATING_COUNTS)[0]}
    return press | {"val": -1, "type": 0 if kind is Kind.ASSISTANCE else 1}


def _message(kind: Kind, slot: timedelta, rng: random.Random, mix: _Mix) -> dict[str, Any]:
    """The press for `kind` in the clock's `slot`: junk is a valid press with one fault."""
    if kind in VALID:
        return _valid(kind, _open_moment(slot), rng, mix)
    base = rng.choices(VALID, [CAPTURE_COUNTS[valid] for valid in VALID])[0]
    if kind is Kind.OUT_OF_HOURS:
        return _valid(base, _night_before(_open_moment(slot), rng), rng, mix)
    press = _valid(base, _open_moment(slot - JUNK_DELAY * rng.random()), rng, mix)
    match kind:
        case Kind.MISSING_KEY:
            keys, weights = zip(*MISSING_KEY_COUNTS.items(), strict=True)
            del press[rng.choices(keys, weights)[0]]
        case Kind.BAD_SITE:
            press["site"] = rng.choice(mix.bad_sites)
        case Kind.BAD_VAL:
            press["val"] = rng.choice(BAD_VALS)
        case Kind.BAD_TYPE:
            press["val"] = -1
            press.pop("type", None)
            bad_type = rng.choice(BAD_TYPES)
            if bad_type is not _ABSENT:
                press["type"] = bad_type
    return press


def generate(config: SimConfig) -> Iterator[Press]:
    """The run's presses in order, deterministic for `config.seed`."""
    rng = random.Random(config.seed)
    kinds = [kind for kind in Kind if kind in VALID or kind in config.junk]
    weights = [CAPTURE_COUNTS[kind] for kind in kinds]
    typical = sum(SITE_COUNTS.values()) / len(SITE_COUNTS)
    mix = _Mix(
        sites=tuple(str(site) for site in config.sites),
        site_weights=tuple(SITE_COUNTS.get(site, typical) for site in config.sites),
        bad_sites=tuple(s for s in BAD_SITES if not (s.isdigit() and int(s) in config.sites)),
    )
    origin = _open_offset(config.start)
    for i in range(config.count):
        kind = rng.choices(kinds, weights)[0]
        slot = origin + config.interval * (i + rng.random())
        yield Press(kind, json.dumps(_message(kind, slot, rng, mix)).encode())


def _paced(items: Iterable[T], rate: float | None, wait: Callable[[float], object]) -> Iterator[T]:
    """`items` at `rate` per second (all at once when None), calling `wait` to pass the time."""
    began = time.monotonic()
    for i, item in enumerate(items):
        while rate is not None and (delay := began + i / rate - time.monotonic()) > 0:
            wait(delay)
        yield item


def kafka_config(env: Mapping[str, str], bootstrap: str | None = None) -> dict[str, str]:
    """Producer settings from the pipeline's environment variables; `bootstrap` overrides."""
    servers = bootstrap or env.get("BOOTSTRAP_SERVERS")
    if not servers:
        raise ValueError("no broker: set BOOTSTRAP_SERVERS or pass --bootstrap-servers")
    protocol = env.get("SECURITY_PROTOCOL") or "PLAINTEXT"
    config = {"bootstrap.servers": servers, "security.protocol": protocol}
    if protocol.upper().startswith("SASL"):
        if not (env.get("USERNAME") and env.get("PASSWORD")):
            raise ValueError(f"{protocol} needs USERNAME and PASSWORD")
        config |= {
            "sasl.mechanism": env.get("SASL_MECHANISM") or "PLAIN",
            "sasl.username": env["USERNAME"],
            "sasl.password": env["PASSWORD"],
        }
    return config


def produce(
    producer: Producer,
    topic: str,
    messages: Iterable[bytes | Press],
    rate: float | None = None,
    record: TextIO | None = None,
) -> Delivery:
    """Send `messages` (null keys) round-robin over the topic's partitions and wait for them.

    Explicit partitions because the sticky partitioner piles a fast producer's messages into
    one partition. With `record`, each acknowledged message is written to it as one JSON line
    (partition, offset, the kind it was made to be when it is a `Press`, value): the
    simulator's own account of what it sent, for tests to compare with what was stored.
    Raises KafkaException when the topic's metadata cannot be had.
    """
    metadata = producer.list_topics(topic, timeout=METADATA_TIMEOUT).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    partitions = len(metadata.partitions)
    outcome: Counter[str] = Counter()
    errors: list[str] = []

    def on_delivery(kind: Kind | None, error: Any, message: Any) -> None:
        outcome["failed" if error else "sent"] += 1
        if error:
            errors.append(str(error))
        elif record is not None:
            record.write(json.dumps({
                "partition": message.partition(), "offset": message.offset(),
                "kind": None if kind is None else kind.value,
                "value": message.value().decode("utf-8", "backslashreplace"),
            }) + "\n")

    for i, item in enumerate(_paced(messages, rate, producer.poll)):
        value, kind = (item.value, item.kind) if isinstance(item, Press) else (item, None)
        while True:
            try:
                producer.produce(topic, value, partition=i % partitions,
                                 on_delivery=functools.partial(on_delivery, kind))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
    unflushed = producer.flush(FLUSH_TIMEOUT)
    if unflushed and not errors:
        errors.append(f"{unflushed} messages not delivered within {FLUSH_TIMEOUT:g} s")
    if record is not None:
        record.flush()
    return Delivery(outcome["sent"], outcome["failed"] + unflushed, errors[0] if errors else None)


def send(
    kafka: Mapping[str, str],
    topic: str,
    config: SimConfig,
    rate: float | None = None,
    record: TextIO | None = None,
) -> Delivery:
    """Produce the run described by `config` to `topic` with producer settings `kafka`."""
    producer = Producer(dict(kafka))
    return produce(producer, topic, generate(config), rate, record)


def _start(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=MUSEUM_TZ)


def _junk(text: str) -> frozenset[Kind]:
    if text in ("all", "none"):
        return JUNK if text == "all" else frozenset()
    names = {name.strip() for name in text.split(",")}
    if not names <= {kind.value for kind in JUNK}:
        raise argparse.ArgumentTypeError(f"choose all, none or from {','.join(sorted(JUNK))}")
    return frozenset(Kind(name) for name in names)


def _sites(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(site) for site in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None


def _positive(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Simulate LMNH kiosk presses: print them or produce them to Kafka. The broker "
        "comes from BOOTSTRAP_SERVERS, SECURITY_PROTOCOL, SASL_MECHANISM, USERNAME, PASSWORD "
        "and TOPIC (environment or .env), unless overridden.",
    )
    parser.add_argument("--count", type=int, default=1000, help="presses to make (default 1000)")
    parser.add_argument("--rate", type=_positive, help="messages per second (default: flat out)")
    parser.add_argument(
        "--start", type=_start,
        help="simulated time of the first press, ISO 8601, museum time if no offset, moved to "
        "the next opening if the museum is closed (default: a replay of the latest opening "
        "hours, ending now)",
    )
    parser.add_argument(
        "--interval", type=_positive, default=DEFAULT_INTERVAL.total_seconds(),
        help="simulated seconds per press (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    parser.add_argument(
        "--sites", type=_sites, default=DEFAULT_SITES, help="kiosk sites (default 0,1,2,3,4,5)"
    )
    parser.add_argument(
        "--junk", type=_junk, default=JUNK,
        help=f"junk to mix in, as in the real stream: all (default), none, or some of "
        f"{','.join(sorted(JUNK))}",
    )
    parser.add_argument(
        "--allow-future", action="store_true", help="allow a --start whose presses pass now"
    )
    parser.add_argument("--stdout", action="store_true", help="print the messages, one a line")
    parser.add_argument("--bootstrap-servers", help="override BOOTSTRAP_SERVERS")
    parser.add_argument("--topic", help="override TOPIC")
    parser.add_argument(
        "--record", type=argparse.FileType("a", encoding="utf-8"),
        help="append each delivered press to this file as a JSON line: partition, offset, "
        "the kind it was made to be, value",
    )
    return parser


def _print(presses: Iterable[Press], rate: float | None) -> None:
    try:
        for press in _paced(presses, rate, time.sleep):
            sys.stdout.write(press.value.decode() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    now = datetime.now(UTC)
    interval = timedelta(seconds=args.interval)
    config = SimConfig(
        start=args.start or latest_start(now, args.count, interval),
        count=args.count,
        seed=args.seed,
        interval=interval,
        sites=args.sites,
        junk=args.junk,
    )
    if not (args.allow_future or finishes_by(config, now)):
        parser.error("this run would stamp presses in the future: start earlier or --allow-future")
    if args.stdout:
        _print(generate(config), args.rate)
        return 0

    load_dotenv()
    topic = args.topic or os.environ.get("TOPIC")
    if not topic:
        parser.error("no topic: set TOPIC or pass --topic")
    try:
        kafka = kafka_config(os.environ, args.bootstrap_servers)
    except ValueError as error:
        parser.error(str(error))
    try:
        delivery = send(kafka, topic, config, args.rate, args.record)
    except KafkaException as error:
        print(f"kafka: {error}", file=sys.stderr)
        return 1
    print(
        f"{delivery.sent} delivered, {delivery.failed} failed to topic {topic!r} "
        f"at {kafka['bootstrap.servers']}" + (f": {delivery.error}" if delivery.error else ""),
        file=sys.stderr,
    )
    return 1 if delivery.failed else 0


if __name__ == "__main__":
    sys.exit(main())
