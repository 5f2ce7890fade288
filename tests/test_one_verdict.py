"""One verdict per message: whatever happens between a first verdict and a replay (a crash, an
offset reset, a new exhibition, another instance writing the same partition), a message has
rows in at most one of rating_interaction, request_interaction and rejected_message."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from conftest import Broker, Database, unique, wait_until
from test_faults import NEW_EXHIBITION
from test_pipeline import all_committed

import db
from lmnh.local.embedded import MotoS3
from s3_metadata import Exhibition

AT = datetime(2026, 7, 15, 11, 0, tzinfo=UTC)
WHALES = Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1),
                    "Whales.")


def where(database: Database, source: str, offset: int) -> list[str]:
    """The tables holding the message at `offset` of partition 0 of `source`."""
    return [table for table in ("rating_interaction", "request_interaction", "rejected_message")
            if database.scalar(f"SELECT count(*) FROM {table} WHERE source = %s"
                               " AND source_partition = 0 AND source_offset = %s",
                               (source, offset))]


def test_a_rejected_message_replayed_after_its_exhibition_appears_stays_rejected(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        moto_s3: MotoS3, bucket: str) -> None:
    """Reject (site 6 unknown), crash before the offset commit, EXH_06 added, replay."""
    env = pipeline_env
    topic = env["TOPIC"]
    broker.create_topic(topic, 1)
    press = json.dumps({"at": "2026-07-15T12:00:00+01:00", "site": "6", "val": 4}).encode()
    broker.produce(topic, [press])
    first = run_pipeline(env, "first")
    wait_until(lambda: where(database, topic, 0) == ["rejected_message"], 60, "the reject")
    first.stop(signal.SIGKILL)

    moto_s3.client().put_object(Bucket=bucket, Key="lmnh_exhibition_mammoth.json",
                                Body=json.dumps(NEW_EXHIBITION))
    # A group without committed offsets reads from 0: what a crash before the commit replays.
    replay_env = env | {"GROUP": unique("replay")}
    broker.produce(topic, [press])  # the same press again, as a new message: now accepted
    replay = run_pipeline(replay_env, "replay")
    wait_until(lambda: all_committed(broker, replay_env), 60, "the replay")
    assert replay.stop() == 0
    assert "loaded 7 exhibitions" in replay.text()
    assert where(database, topic, 0) == ["rejected_message"]  # the first verdict stands
    assert where(database, topic, 1) == ["rating_interaction"]
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 1
    assert database.scalar("SELECT next_offset FROM source_progress WHERE source = %s",
                           (topic,)) == 2


@pytest.fixture
def conn(database: Database) -> Iterator[db.Connection]:
    server = database.server
    connection = db.connect(db.DatabaseSettings(server.host, server.port, database.name,
                                                server.user, server.password, sslmode="disable"))
    db.upsert_exhibitions(connection, [WHALES])
    yield connection
    connection.close()


def rating(offset: int, source: str = "lmnh") -> db.Interaction:
    return db.Interaction(3, 4, AT, source, 0, offset)


def reject(offset: int, source: str = "lmnh") -> db.Rejected:
    return db.Rejected("unknown_site", AT, source, 0, offset)


def test_a_stored_reject_is_not_overwritten_by_a_later_acceptance(
        database: Database, conn: db.Connection) -> None:
    db.write_interactions(conn, [rating(0)], [], [reject(1)])
    result = db.write_interactions(conn, [rating(1), rating(2)], [], [reject(0)])
    assert (result.ratings_inserted, result.already_judged) == (1, 2)
    assert where(database, "lmnh", 0) == ["rating_interaction"]
    assert where(database, "lmnh", 1) == ["rejected_message"]
    assert where(database, "lmnh", 2) == ["rating_interaction"]
    assert database.scalar("SELECT sum(ratings) FROM rating_hourly") == 2  # rollups agree


def test_a_message_the_consumer_skipped_is_still_written_after_a_rewind(
        database: Database, conn: db.Connection) -> None:
    """Offsets 5-9 were read first (AUTO_OFFSET=latest, say); a rewind then reads 0-9."""
    db.write_interactions(conn, [rating(n) for n in range(5, 10)], [])
    result = db.write_interactions(conn, [rating(n) for n in range(10)], [])
    assert (result.ratings_inserted, result.already_judged) == (5, 5)
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 10
    assert database.scalar("SELECT next_offset FROM source_progress") == 10


def test_a_backfill_file_loaded_twice_stores_each_line_once(
        database: Database, conn: db.Connection) -> None:
    """Backfill: source = the S3 key, partition 0, offset = the line (blank lines skipped)."""
    source = "s3://bucket/lmnh_hist_data_0.csv"
    lines = [n for n in range(2, 40) if n % 7]
    for _ in range(2):
        for start in range(0, len(lines), 10):
            chunk = lines[start:start + 10]
            db.write_interactions(conn, [rating(n, source) for n in chunk if n % 3],
                                  [], [reject(n, source) for n in chunk if not n % 3])
    assert database.scalar("SELECT count(*) FROM rating_interaction") == sum(
        1 for n in lines if n % 3)
    assert database.scalar("SELECT count(*) FROM rejected_message") == sum(
        1 for n in lines if not n % 3)


def test_two_instances_writing_one_partition_at_once_store_one_verdict_each(
        database: Database, conn: db.Connection) -> None:
    """During a rebalance two instances may write the same messages, judged differently; the
    progress row's lock makes one batch wait for the other, which then stands."""
    server = database.server
    other = db.connect(db.DatabaseSettings(server.host, server.port, database.name, server.user,
                                           server.password, sslmode="disable"))
    offsets = range(500)
    start = threading.Barrier(2)
    results: dict[str, db.WriteResult] = {}

    def write(name: str, connection: db.Connection, as_ratings: bool) -> None:
        start.wait()
        results[name] = db.write_interactions(
            connection, [rating(n) for n in offsets] if as_ratings else [], [],
            [] if as_ratings else [reject(n) for n in offsets])

    threads = [threading.Thread(target=write, args=("accepting", conn, True)),
               threading.Thread(target=write, args=("rejecting", other, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    other.close()
    ratings = database.scalar("SELECT count(*) FROM rating_interaction")
    rejects = database.scalar("SELECT count(*) FROM rejected_message")
    assert sorted((ratings, rejects)) == [0, 500]  # one batch stands whole
    assert sorted(r.already_judged for r in results.values()) == [0, 500]
