"""The baseline: the consumer as it is usually written, one INSERT and one COMMIT per message.

Offsets are auto-committed by the client in the background; each message is validated with the
same rules as the pipeline, a reject is appended to a log, a press is inserted and committed.
It is timed from its first message to its `limit`-th, so its start-up (the exhibitions written,
the consumer-group join) is left out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg2
from confluent_kafka import Consumer

import db
from bench.services import BenchError, Stage
from s3_metadata import Exhibition
from validation import Rating, Rejection, Rules, validate

IDLE_TIMEOUT_S = 60
INSERT_RATING = """
    INSERT INTO rating_interaction
        (exhibition_id, rating_value, event_at, source, source_partition, source_offset)
    VALUES (%s, %s, %s, %s, %s, %s)"""
INSERT_REQUEST = """
    INSERT INTO request_interaction
        (exhibition_id, request_value, event_at, source, source_partition, source_offset)
    VALUES (%s, %s, %s, %s, %s, %s)"""


def museum_rules(exhibitions: dict[int, Exhibition]) -> Rules:
    """The rules the pipeline judges by, for these exhibitions (the baseline's and the peer's)."""
    return Rules(sites=frozenset(exhibitions),
                 starts={number: e.start_date for number, e in exhibitions.items()})


def connect_with_exhibitions(stage: Stage, exhibitions: dict[int, Exhibition]
                             ) -> psycopg2.extensions.connection:
    """A connection to the stage's database, which now holds the exhibitions."""
    conn = psycopg2.connect(stage.database_url)
    db.upsert_exhibitions(conn, exhibitions.values())
    return conn


def reject_line(logged_at: str, rejection: Rejection, source: tuple[str, int, int],
                value: bytes | None) -> str:
    """The reject log's line as a usual consumer writes it: the reason is its second field,
    which is what the exactness check counts."""
    return (f"{logged_at}\t{rejection.reason}\t{'/'.join(map(str, source))}\t"
            f"{rejection.detail!r}\t{value!r}\n")


def run_baseline(stage: Stage, limit: int, exhibitions: dict[int, Exhibition]) -> float:
    """Consume `limit` messages of the stage's topic as a group of its own; return messages/s."""
    rules = museum_rules(exhibitions)
    consumer = Consumer({"bootstrap.servers": stage.bootstrap, "group.id": f"{stage.group}-usual",
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    consumer.subscribe([stage.topic])
    conn = connect_with_exhibitions(stage, exhibitions)
    try:
        with conn.cursor() as cur, stage.reject_log.open("a", encoding="utf-8") as rejects:
            consumed, started = 0, 0.0
            idle_since = time.monotonic()
            while consumed < limit:
                message = consumer.poll(1.0)
                if message is None or message.error() is not None:
                    if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                        raise BenchError(f"the baseline got {consumed} of {limit} messages")
                    continue
                if consumed == 0:
                    started = time.monotonic()
                verdict = validate(message.value(), rules, datetime.now(UTC))
                source = (message.topic(), message.partition(), message.offset())
                if isinstance(verdict, Rejection):
                    rejects.write(reject_line(datetime.now(UTC).isoformat(), verdict, source,
                                              message.value()))
                else:
                    insert = INSERT_RATING if isinstance(verdict, Rating) else INSERT_REQUEST
                    cur.execute(insert, (verdict.site, verdict.value, verdict.at, *source))
                    conn.commit()
                consumed += 1
                idle_since = time.monotonic()
            return limit / (time.monotonic() - started)
    finally:
        consumer.close()
        conn.close()
