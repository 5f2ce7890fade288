"""A topic's incarnations (lmnh.core.topics, db.topic_sources): the decision alone, then in the
database, with two processes deciding at once, as the writer role, and with the database away."""

from __future__ import annotations

import dataclasses
import logging
import threading
from types import SimpleNamespace

import psycopg2
import pytest
from conftest import Database
from hypothesis import given
from hypothesis import strategies as st
from test_db_security import WRITER_PASSWORD

import db
import pipeline
from lmnh.core import topics
from lmnh.local.embedded import free_port


def test_a_topic_ending_below_a_mark_was_recreated_and_the_detail_says_where() -> None:
    assert topics.recreated({0: 100, 1: 100}, {0: 100, 1: 250}) is None  # grown: not recreated
    assert topics.recreated({}, {0: 0, 1: 7}) is None  # nothing judged yet
    assert topics.recreated({0: 5018}, {}) is None  # the end unknown: nothing to say
    assert topics.recreated({0: 5018, 3: 9}, {0: 12, 3: 9}) == \
        "partition 0 ends at 12, 5018 were judged from it"
    assert topics.recreated({0: 50, 1: 50, 2: 50}, {2: 3, 1: 4, 0: 60}) == \
        "partition 1 ends at 4, 50 were judged from it; 1 more partition likewise"
    assert topics.recreated({0: 9, 1: 9, 2: 9}, {0: 0, 1: 0, 2: 0}).endswith(
        "; 2 more partitions likewise")


@given(st.dictionaries(st.integers(0, 8), st.integers(0, 10**12)),
       st.dictionaries(st.integers(0, 8), st.integers(0, 10**12)))
def test_recreated_exactly_when_some_partition_ends_below_its_mark(
        marks: dict[int, int], ends: dict[int, int]) -> None:
    shrunk = any(end < marks.get(p, 0) for p, end in ends.items())
    assert (topics.recreated(marks, ends) is not None) == shrunk


def test_source_names_and_back() -> None:
    assert topics.source_name("lmnh", 1) == "lmnh"
    assert topics.source_name("lmnh", 2) == "lmnh~2"
    with pytest.raises(ValueError):
        topics.source_name("lmnh", 0)
    for source in ("lmnh", "lmnh~2", "lmnh.v2-x_y~13"):
        assert topics.topic_of(source) == source.split("~")[0]
    assert topics.topic_of("s3://bucket/key") == "s3://bucket/key"  # the backfill's, unaffected
    assert topics.by_topic({("lmnh~3", 0): 17, ("lmnh~3", 2): 4, ("other", 1): 9}) == \
        {("lmnh", 0): 17, ("lmnh", 2): 4, ("other", 1): 9}
    line = topics.recreated_line("lmnh", "partition 0 ends at 12, 5018 were judged from it",
                                 "lmnh~2")
    assert line == ("topic lmnh was recreated (partition 0 ends at 12, 5018 were judged from"
                    " it): its messages are stored as source lmnh~2 from now on")
    assert "\n" not in line


def settings_of(database: Database, user: str | None = None,
                password: str | None = None) -> db.DatabaseSettings:
    server = database.server
    return db.DatabaseSettings(server.host, server.port, database.name, user or server.user,
                               server.password if password is None else password,
                               sslmode="disable")


def mark(database: Database, source: str, partition: int, next_offset: int) -> None:
    database.execute("INSERT INTO source_progress VALUES (%s, %s, %s)",
                     (source, partition, next_offset))


def test_a_new_incarnation_is_recorded_once_and_then_kept(database: Database) -> None:
    settings = settings_of(database)
    first = db.topic_sources(settings, {"lmnh": {0: 0, 1: 0}})
    assert first == {"lmnh": db.TopicSource("lmnh", "lmnh", 1, None)}
    mark(database, "lmnh", 0, 5018)
    mark(database, "lmnh", 1, 40)
    assert db.topic_sources(settings, {"lmnh": {0: 5018, 1: 41}})["lmnh"].incarnation == 1

    again = db.topic_sources(settings, {"lmnh": {0: 12, 1: 41}})["lmnh"]
    assert again == db.TopicSource("lmnh", "lmnh~2", 2,
                                   "partition 0 ends at 12, 5018 were judged from it")
    assert database.query("SELECT topic, source, incarnation, changed_at IS NOT NULL"
                           " FROM topic_source") == [("lmnh", "lmnh~2", 2, True)]
    # The new incarnation's own marks count from now on; the old source's are left as they were.
    assert db.topic_sources(settings, {"lmnh": {0: 12, 1: 41}})["lmnh"] == \
        db.TopicSource("lmnh", "lmnh~2", 2, None)
    mark(database, "lmnh~2", 0, 12)
    assert db.topic_sources(settings, {"lmnh": {0: 3}})["lmnh"].source == "lmnh~3"
    assert database.query("SELECT source, next_offset FROM source_progress ORDER BY 1, 2") == \
        [("lmnh", 40), ("lmnh", 5018), ("lmnh~2", 12)]


def test_two_processes_assigned_at_once_start_one_incarnation(database: Database) -> None:
    settings = settings_of(database)
    db.topic_sources(settings, {"lmnh": {0: 0}})
    mark(database, "lmnh", 0, 900)
    holder = psycopg2.connect(database.url)  # both wait on the topic's row, then go together
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM topic_source WHERE topic = 'lmnh' FOR UPDATE")
    results: list[db.TopicSource] = []

    def decide() -> None:
        results.append(db.topic_sources(settings, {"lmnh": {0: 5}}, timeout_s=20)["lmnh"])

    threads = [threading.Thread(target=decide) for _ in range(2)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.5)
    holder.rollback()
    holder.close()
    for thread in threads:
        thread.join(30)
    assert sorted(r.source for r in results) == ["lmnh~2", "lmnh~2"]
    assert sum(r.recreated is not None for r in results) == 1  # one of them says so
    assert database.scalar("SELECT incarnation FROM topic_source") == 2


def test_the_writer_role_may_decide(database: Database) -> None:
    database.execute(f"ALTER ROLE lmnh_writer LOGIN PASSWORD '{WRITER_PASSWORD}'")
    settings = settings_of(database, "lmnh_writer", WRITER_PASSWORD)
    mark(database, "lmnh", 0, 10)
    assert db.topic_sources(settings, {"lmnh": {0: 1}})["lmnh"].source == "lmnh~2"


def pipeline_settings(database: Database, port: int | None = None) -> SimpleNamespace:
    """What topic_sources asks of the settings: the database's."""
    settings = settings_of(database)
    return SimpleNamespace(database=lambda: dataclasses.replace(
        settings, port=port or settings.port, connect_timeout_s=2))


def test_the_daemon_keeps_the_last_known_source_while_the_database_is_away(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    ends = {"lmnh": {0: 3, 1: 4}}  # as the consumer stage reads them at assignment
    mark(database, "lmnh", 0, 70)
    with caplog.at_level(logging.INFO, "pipeline"):
        sources, recreated = pipeline.topic_sources(pipeline_settings(database), ends, {})
    assert sources == {"lmnh": "lmnh~2"} and recreated == {"lmnh"}
    assert [r.getMessage() for r in caplog.records] == [
        "topic lmnh was recreated (partition 0 ends at 3, 70 were judged from it): its messages"
        " are stored as source lmnh~2 from now on"]
    assert caplog.records[0].levelno == logging.WARNING

    caplog.clear()
    away = pipeline_settings(database, free_port())
    with caplog.at_level(logging.INFO, "pipeline"):
        assert pipeline.topic_sources(away, ends, sources) == (sources, set())
        assert pipeline.topic_sources(away, ends, {}) == ({}, set())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("cannot check whether topic lmnh was recreated (")
    assert lines[0].endswith("its messages are stored as source lmnh~2, the last known")
    assert lines[1].endswith("its messages are stored as source lmnh, the last known")
    assert "\n" not in lines[0]
