"""Latency at a daytime rate: from a message's produce to its row's commit in PostgreSQL.

The start of each message is its Kafka timestamp (CreateTime, stamped by the producer when the
simulator hands it over, in milliseconds); the end is the commit time of the transaction that
wrote its row, pg_xact_commit_timestamp(xmin) (track_commit_timestamp is on). Both are this
machine's wall clock. Only presses have rows, so rejects are not timed.

Alongside, a bare consumer with the pipeline's own consumer settings (Settings.kafka()) notes
when each message reaches it: the broker's own share of the latency. It matters on the mock cluster,
which answers a fetch that finds no data only after the fetch's whole wait (fetch.wait.max.ms,
the pipeline's KAFKA_FETCH_WAIT_MAX_MS) even if messages arrive meanwhile; a real broker answers
when they arrive.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

from bench.backlog import Backlog, check_exact
from bench.pipeline_process import PipelineProcess
from bench.services import BenchError, Stage
from lmnh.local.kiosk_simulator import produce
from lmnh.settings import PipelineSettings as Settings

START_TIMEOUT_S = 120
CATCH_UP_TIMEOUT_S = 60
# A value no press can be: rejected, so no row; its commit shows the pipeline has its partitions.
PROBE = b"latency-probe"
COMMIT_TIMES = """
    SELECT source_partition, source_offset,
           extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8
    FROM rating_interaction
    UNION ALL
    SELECT source_partition, source_offset,
           extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8
    FROM request_interaction"""

Arrivals = dict[tuple[int, int], tuple[float, float]]  # (partition, offset): (created, received)


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        return cls(cuts[49] * 1000, cuts[98] * 1000, max(seconds) * 1000)


@dataclass(frozen=True)
class LatencyResult:
    rows: int
    pipeline: Percentiles  # produce -> row committed
    broker: Percentiles  # produce -> received by a bare consumer


def run_latency(stage: Stage, rate: float, seconds: float, mix: str = "sim") -> LatencyResult:
    """Start the pipeline, wait until it consumes, then send presses at `rate` for `seconds`."""
    presses = Backlog.of_mix(mix, round(rate * seconds))
    producer = stage.producer()
    offsets = stage.offsets()
    env = stage.pipeline_env
    settings = Settings(**{name: env[name] for name in Settings.model_fields if name in env})
    watcher = Consumer(settings.kafka() | {"group.id": f"{stage.group}-bare"})
    watcher.assign([TopicPartition(stage.topic, p, OFFSET_BEGINNING)
                    for p in range(stage.partitions)])
    pipeline = PipelineProcess.start(stage.pipeline_env, stage.workdir)
    try:
        produce(producer, stage.topic, [PROBE])
        pipeline.wait_for(lambda: any(offsets.committed()), START_TIMEOUT_S, "the probe's commit")
        watch(watcher, 1)
        with ThreadPoolExecutor(1) as executor:
            sending = executor.submit(produce, producer, stage.topic, presses.values, rate)
            arrivals = watch(watcher, len(presses.values))
            delivery = sending.result()
        if delivery.failed:
            raise BenchError(f"{delivery.failed} messages not delivered: {delivery.error}")
        ends = offsets.ends()
        pipeline.wait_for(lambda: offsets.committed() == ends, CATCH_UP_TIMEOUT_S,
                          "every offset committed")
        pipeline.stop()
    finally:
        pipeline.kill()
        offsets.close()
        watcher.close()
    check_exact(stage, Backlog.judge([PROBE, *presses.values]))
    committed = {(partition, offset): at for partition, offset, at in stage.query(COMMIT_TIMES)}
    return LatencyResult(
        rows=len(committed),
        pipeline=Percentiles.of([at - arrivals[key][0] for key, at in committed.items()]),
        broker=Percentiles.of([received - created for key, (created, received)
                               in arrivals.items() if key in committed]),
    )


def watch(consumer: Consumer, count: int) -> Arrivals:
    """The next `count` messages' CreateTime and the time each reached `consumer`, in seconds."""
    arrivals: Arrivals = {}
    last_arrival = time.monotonic()
    while len(arrivals) < count:
        message = consumer.poll(0.1)
        if message is None:
            if time.monotonic() - last_arrival > CATCH_UP_TIMEOUT_S:
                raise BenchError(f"a bare consumer got {len(arrivals)} of {count} messages")
            continue
        last_arrival, received = time.monotonic(), time.time()
        kind, created = message.timestamp()
        if message.error() is not None or kind != TIMESTAMP_CREATE_TIME:
            raise BenchError(f"no CreateTime on {message.partition()}/{message.offset()}")
        arrivals[(message.partition(), message.offset())] = (created / 1000, received)
    return arrivals
