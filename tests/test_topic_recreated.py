"""A recreated topic (issue 21, fault 8): its offsets restart at 0 while the progress marks stay
high. Every new press must be stored once and every new emergency alerted, the old rows left as
they were, and one log line must say what happened."""

from __future__ import annotations

import signal
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from conftest import Broker, Database, wait_until
from test_alert_outbox import Security, emergency, security  # noqa: F401 - a fixture
from test_pipeline import (
    all_committed,
    assert_rollups_match,
    expected_rows,
    row_count,
    simulated_presses,
    table_rows,
)

from lmnh.local.embedded import MockKafka


def stored(database: Database, source: str) -> tuple[set, set, set]:
    ratings, requests = table_rows(database, source)
    rejects = set(database.query("SELECT source_partition, source_offset FROM rejected_message"
                                 " WHERE source = %s", (source,)))
    return ratings, requests, rejects


def emergencies(expected: tuple[set, set, set]) -> int:
    return sum(1 for row in expected[1] if row[3] == 1)


def test_a_recreated_topic_stores_and_alerts_every_new_press_and_says_so_once(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        security: Security, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    env = pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn}
    topic = env["TOPIC"]
    first_lines = [emergency(n % 6, n) for n in range(3)] + [
        press.value for press in simulated_presses(400, seed=5)]
    broker.produce(topic, first_lines)
    first_expected = expected_rows(first_lines, broker.partitions(topic))
    first = run_pipeline(env, "first")
    wait_until(lambda: all_committed(broker, env), 60, "the first topic stored and committed")
    assert first.stop() == 0
    assert stored(database, topic) == first_expected
    wait_until(lambda: len(security.receive()) >= emergencies(first_expected), 30,
               "the first topic's alerts")
    old_rows = row_count(database)

    # The topic deleted and created again: a new cluster, same name, offsets from 0, fewer
    # messages than were judged from the old one.
    recreated = Broker((cluster := MockKafka()).bootstrap, cluster)
    second_lines = [emergency(n % 6, 30 + n) for n in range(5)] + [
        press.value for press in simulated_presses(60, seed=6)]
    recreated.produce(topic, second_lines)
    second_expected = expected_rows(second_lines, recreated.partitions(topic))
    second_env = env | {"BOOTSTRAP_SERVERS": recreated.bootstrap,
                        "REJECT_LOG": str(tmp_path / "second.log")}
    second = run_pipeline(second_env, "second")
    wait_until(lambda: all_committed(recreated, second_env), 60, "the new topic committed")
    wait_until(lambda: row_count(database) >= old_rows + len(second_expected[0])
               + len(second_expected[1]), 30, "the new topic's rows")
    wanted = emergencies(first_expected) + emergencies(second_expected)
    wait_until(lambda: len(security.receive()) >= wanted, 30, "the new topic's alerts")
    assert second.stop() == 0

    assert stored(database, topic) == first_expected  # the old rows, untouched
    assert stored(database, f"{topic}~2") == second_expected  # every new press, once
    assert row_count(database) == old_rows + len(second_expected[0]) + len(second_expected[1])
    assert_rollups_match(database)
    assert len(security.receive(2)) == wanted  # each new emergency alerted, nothing twice
    lines = [line for line in second.text().splitlines() if "was recreated" in line]
    assert len(lines) == 1, second.text()
    assert f"topic {topic} was recreated" in lines[0] and f"source {topic}~2" in lines[0]
    assert " WARNING " in lines[0]
    assert "Traceback" not in first.text() + second.text()
    logged = {line.split("\t")[2] for line in Path(second_env["REJECT_LOG"]).read_text(
        encoding="utf-8").splitlines()}
    assert logged == {f"{topic}~2/{p}/{o}" for p, o in second_expected[2]}

    # A restart on the recreated topic is not another recreation.
    third = run_pipeline(second_env, "third")
    wait_until(lambda: "assigned partitions" in third.text(), 30, "the third run's assignment")
    wait_until(lambda: "stats:" in third.text(), 30, "a stats line")
    assert third.stop(signal.SIGTERM) == 0
    assert "was recreated" not in third.text()
    assert row_count(database) == old_rows + len(second_expected[0]) + len(second_expected[1])


def test_a_recreated_topic_is_read_from_its_start_whatever_old_committed_offsets_say(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        tmp_path: Path) -> None:
    """The broker kept the group's offsets of the old topic, beyond the new one's end: with
    AUTO_OFFSET=latest those would skip every new press."""
    env = pipeline_env | {"AUTO_OFFSET": "latest"}
    topic = env["TOPIC"]
    broker.create_topic(topic, 2)
    first_lines = [press.value for press in simulated_presses(200, seed=8)]
    broker.produce(topic, first_lines)
    first_expected = expected_rows(first_lines, 2)
    first = run_pipeline(env | {"AUTO_OFFSET": "earliest"}, "first")
    wait_until(lambda: all_committed(broker, env), 60, "the first topic stored and committed")
    assert first.stop() == 0
    assert stored(database, topic) == first_expected

    recreated = Broker((cluster := MockKafka()).bootstrap, cluster)
    recreated.create_topic(topic, 2)
    second_lines = [press.value for press in simulated_presses(30, seed=9)]
    recreated.produce(topic, second_lines)
    stale = Consumer({"bootstrap.servers": recreated.bootstrap, "group.id": env["GROUP"]})
    try:
        stale.commit(offsets=[TopicPartition(topic, p, 100) for p in range(2)],
                     asynchronous=False)
    finally:
        stale.close()
    assert recreated.committed(topic, env["GROUP"]) == {0: 100, 1: 100}
    second_expected = expected_rows(second_lines, 2)
    second_env = env | {"BOOTSTRAP_SERVERS": recreated.bootstrap,
                        "REJECT_LOG": str(tmp_path / "second.log")}
    second = run_pipeline(second_env, "second")
    wait_until(lambda: stored(database, f"{topic}~2") == second_expected, 60,
               "every new press stored")
    wait_until(lambda: recreated.committed(topic, env["GROUP"]) == {0: 15, 1: 15}, 30,
               "the new offsets committed")
    assert second.stop() == 0
    assert stored(database, topic) == first_expected
    assert sum(1 for line in second.text().splitlines() if "was recreated" in line) == 1
