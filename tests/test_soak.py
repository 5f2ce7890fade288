"""Soak: kiosk traffic at 500 messages/s for SOAK_SECONDS (300 in CI): flat RSS, exact tables.

Run it for hours with e.g. `SOAK_SECONDS=14400 python3 dev.py test tests/test_soak.py`.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Broker, Database, wait_until
from test_pipeline import all_committed, assert_tables_hold, recorded_rows

from lmnh.local import kiosk_simulator

RATE = 500
WARM_UP_S = 60
# How long the kiosks' producer gathers messages into one message set. The mock cluster finds
# the set a fetch starts in by walking the partition's sets from the first (librdkafka's
# rd_kafka_mock_msgset_find), so with the tests' usual 5 ms, one or two messages a set, each
# fetch grew slower as the partitions filled: after two minutes the pipeline was served about
# 175 messages/s of the 500 sent, and the 300 s soak took 515-530 s.
SOAK_LINGER_MS = 100


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_soak_memory_is_flat_and_tables_exact(broker: Broker, database: Database,
                                              pipeline_env: dict[str, str], run_pipeline,
                                              tmp_path: Path) -> None:
    seconds = int(os.environ.get("SOAK_SECONDS", "300"))
    count = RATE * seconds
    now = datetime.now(UTC)
    interval = timedelta(seconds=1 / RATE)
    config = kiosk_simulator.SimConfig(start=kiosk_simulator.latest_start(now, count, interval),
                                       count=count, seed=500, interval=interval)

    env = pipeline_env | {"STATS_INTERVAL_S": "30"}
    broker.partitions(env["TOPIC"])
    run = run_pipeline(env)
    assert run.process is not None
    producer = broker.producer(linger_ms=SOAK_LINGER_MS)
    record = tmp_path / "sent.jsonl"
    delivery: list[kiosk_simulator.Delivery] = []

    def send() -> None:
        with record.open("w", encoding="utf-8") as out:
            delivery.append(kiosk_simulator.produce(
                producer, env["TOPIC"], kiosk_simulator.generate(config), rate=RATE, record=out))

    sender = threading.Thread(target=send)
    started = time.monotonic()
    sender.start()
    samples: list[tuple[float, int]] = []
    while sender.is_alive():
        samples.append((time.monotonic() - started, rss_kib(run.process.pid)))
        time.sleep(5)
    sender.join()
    assert delivery[0].failed == 0 and delivery[0].sent == count
    # A loaded machine may leave the pipeline behind; what counts is that it ends exact.
    wait_until(lambda: all_committed(broker, env), max(120, seconds), "every offset committed")
    samples.append((time.monotonic() - started, rss_kib(run.process.pid)))
    assert run.stop() == 0

    after_warm_up = [rss for at, rss in samples if at >= min(WARM_UP_S, seconds / 5)]
    baseline, peak = after_warm_up[0], max(after_warm_up)
    print(f"RSS after warm-up {baseline} KiB, peak {peak} KiB over {seconds} s")
    assert peak < baseline * 1.10, f"RSS grew from {baseline} to {peak} KiB"

    # The simulator's own record of what it delivered, not validation.py, says what is stored.
    expected = recorded_rows(record)
    assert sum(len(part) for part in expected) == count
    assert_tables_hold(database, env, expected)
    with open(env["REJECT_LOG"], encoding="utf-8") as log:
        assert sum(1 for _ in log) == len(expected[2])  # no crash, so no line twice
