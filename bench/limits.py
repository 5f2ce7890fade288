"""What the machine itself allows, measured in the same run as the pipeline.

(a) COPY alone: the backlog's accepted rows, encoded beforehand by rows.py's own encoders (as
    the pipeline would send them), loaded by binary COPY into tables keyed like ours (LIKE ...
    INCLUDING ALL: the same primary key and indexes, no trigger), one transaction per batch of
    as many messages as the pipeline's largest transaction holds (BATCH_SIZE times
    WRITE_JOIN_BATCHES: bench/run.py). Only the COPY and the COMMIT are timed.
(b) A bare consume loop: the stage's topic read from the beginning by one consumer with
    settings chosen for a backlog (large fetches and queues; nothing but counting per message).
Both are in messages a second, like the drain, so the drain's share of the lower is its ratio.

Beside them, what bounds the drain from the database's side: the pipeline's own write alone
(`write_limit`), every batch judged beforehand by judging.judge, then db.write_interactions
with everything the pipeline writes (ratings, requests, rejected messages, the rollup trigger,
the progress marks), one batch after another as the pipeline's writer thread does.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg2
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

import db
from bench.backlog import Backlog
from bench.services import SITES, STARTS, BenchError, Stage
from lmnh.core import judging
from lmnh.core.rows import interaction_rows
from lmnh.settings import PipelineSettings
from s3_metadata import Exhibition
from validation import Rating, Rejection, Rules

REJECT_LOG_MAX_VALUE_BYTES = PipelineSettings.model_fields["REJECT_LOG_MAX_VALUE_BYTES"].default

IDLE_TIMEOUT_S = 60
# librdkafka settings for reading a backlog as fast as it can be read.
BARE_CONSUMER = {
    "enable.auto.commit": False,
    "enable.partition.eof": False,
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760,
    "queued.min.messages": 1_000_000,
    "queued.max.messages.kbytes": 1_048_576,
    "fetch.wait.max.ms": 10,
}
LIMIT_TABLES = (("copy_limit_rating", "rating_interaction"),
                ("copy_limit_request", "request_interaction"))


def encoded_batches(backlog: Backlog, stage: Stage, batch_size: int) -> list[list[bytes]]:
    """Per batch of `batch_size` messages: the COPY payload of its ratings, then its requests."""
    batches = []
    for first in range(0, len(backlog.values), batch_size):
        ratings, requests = [], []
        for index in range(first, min(first + batch_size, len(backlog.values))):
            verdict = backlog.verdicts[index]
            if isinstance(verdict, Rejection):
                continue
            # Message i is at offset i // P of partition i % P, as Backlog.load produces it.
            row = db.Interaction.of(verdict, stage.topic, index % stage.partitions,
                                    index // stage.partitions)
            (ratings if type(verdict) is Rating else requests).append(row)
        batches.append([interaction_rows(rows).payload() if rows else b""
                        for rows in (ratings, requests)])
    return batches


def copy_limit(stage: Stage, backlog: Backlog, batch_size: int) -> float:
    """Messages a second that binary COPY alone loads; checks every row arrived."""
    batches = encoded_batches(backlog, stage, batch_size)
    conn = psycopg2.connect(stage.database_url)
    try:
        with conn, conn.cursor() as cur:
            for name, like in LIMIT_TABLES:
                cur.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING ALL)")
        statements = [f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
                      for (name, _), columns in zip(
                          LIMIT_TABLES, (db.RATINGS.columns, db.REQUESTS.columns), strict=True)]
        cur = conn.cursor()
        started = time.perf_counter()
        for payloads in batches:
            for statement, payload in zip(statements, payloads, strict=True):
                if payload:
                    cur.copy_expert(statement, io.BytesIO(payload), size=len(payload))
            conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute("SELECT (SELECT count(*) FROM copy_limit_rating)"
                    " + (SELECT count(*) FROM copy_limit_request)")
        stored = cur.fetchone()[0]
    finally:
        conn.close()
    if stored != backlog.expected.rows:
        raise BenchError(f"the COPY limit stored {stored} rows, not {backlog.expected.rows}")
    return len(backlog.values) / elapsed


def consume_limit(stage: Stage, count: int) -> float:
    """Messages a second a bare consume loop reads, after its first batch to its `count`-th."""
    consumer = Consumer({"bootstrap.servers": stage.bootstrap, "group.id": f"{stage.group}-bare"}
                        | BARE_CONSUMER)
    consumer.assign([TopicPartition(stage.topic, p, OFFSET_BEGINNING)
                     for p in range(stage.partitions)])
    try:
        received, first, started, idle_since = 0, 0, 0.0, time.monotonic()
        while received < count:
            messages = consumer.consume(10_000, 0.5)
            if not messages:
                if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                    raise BenchError(f"a bare consumer got {received} of {count} messages")
                continue
            if not received:  # the first batch starts the clock and is not in the rate
                started, first = time.perf_counter(), len(messages)
            received += len(messages)
            idle_since = time.monotonic()
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if received != count or first == count:
        raise BenchError(f"a bare consumer got {received} of {count} messages, {first} at once")
    return (received - first) / elapsed


def write_limit(stage: Stage, backlog: Backlog, batch_size: int,
                exhibitions: Iterable[Exhibition]) -> float:
    """Messages a second the pipeline's write path alone stores; checks the tables are exact."""
    rules = Rules(sites=frozenset(SITES), starts=STARTS)
    now = datetime.now(UTC)
    batches = []
    for first in range(0, len(backlog.values), batch_size):
        indexes = range(first, min(first + batch_size, len(backlog.values)))
        # Message i is at offset i // P of partition i % P, as Backlog.load produces it.
        batches.append(judging.judge(judging.Job(
            [backlog.values[i] for i in indexes], [stage.topic] * len(indexes),
            [i % stage.partitions for i in indexes], [i // stage.partitions for i in indexes],
            rules, now, REJECT_LOG_MAX_VALUE_BYTES)))
    conn = psycopg2.connect(stage.database_url)
    try:
        db.upsert_exhibitions(conn, exhibitions)
        started = time.perf_counter()
        for batch in batches:
            db.write_interactions(conn, batch.ratings, batch.requests, batch.rejects,
                                  spans=batch.spans)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    (stored,) = stage.query("SELECT (SELECT count(*) FROM rating_interaction)"
                            " + (SELECT count(*) FROM request_interaction)")[0]
    if stored != backlog.expected.rows:
        raise BenchError(f"the write alone stored {stored} rows, not {backlog.expected.rows}")
    return len(backlog.values) / elapsed
