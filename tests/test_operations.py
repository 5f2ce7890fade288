"""Operating it: the daemon's metrics and health endpoints, scraped while it runs against real
services; quiet logs through a broker outage; a prompt stop whatever is down."""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from conftest import Broker, Database, PgServer, PipelineRun, make_database, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_pipeline import (
    all_committed,
    assert_tables_hold,
    intended_rows,
    reject_lines,
    row_count,
    simulated_presses,
)

from lmnh.local.embedded import MockKafka, free_port

VALID = b'{"at": "2026-02-24T12:00:00+00:00", "site": "3", "val": 4}'


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of GET path; 0 while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by name and sorted labels."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def with_metrics(env: dict[str, str]) -> tuple[dict[str, str], int]:
    port = free_port()
    return env | {"METRICS_PORT": str(port)}, port


def test_metrics_during_and_after_a_run_equal_the_tables_and_the_reject_log(
        broker: Broker, database: Database, pipeline_env: dict[str, str],
        run_pipeline) -> None:
    env, port = with_metrics(pipeline_env | {"BATCH_SIZE": "100"})
    presses = simulated_presses()
    sent = [press.value for press in presses]
    expected = intended_rows(presses, broker.partitions(env["TOPIC"]))
    broker.produce(env["TOPIC"], sent)
    run: PipelineRun = run_pipeline(env)
    during = []
    while row_count(database) < len(expected[0]) + len(expected[1]):
        assert run.process is not None and run.process.poll() is None, run.text()[-2000:]
        if get(port, "/healthz")[0] == 200:
            during.append(scrape(port))
        time.sleep(0.05)
    wait_until(lambda: all_committed(broker, env), 30, "offsets committed")
    partitions = broker.partitions(env["TOPIC"])
    wait_until(lambda: all(value(scrape(port), "lmnh_consumer_lag", topic=env["TOPIC"],
                                 partition=str(p)) == 0 for p in range(partitions))
               and value(scrape(port), "lmnh_offset_commits_total") > 0, 30, "lag 0 reported")
    after = scrape(port)
    assert get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200
    assert get(port, "/nothing")[0] == 404
    assert run.stop() == 0
    assert_tables_hold(database, env, expected)

    # Scraped during the run: counters only grew, and never past the final figures.
    consumed = [value(s, "lmnh_messages_consumed_total") for s in during]
    assert consumed and consumed == sorted(consumed) and consumed[-1] <= len(sent)
    # After: each counter equals what the tables and the reject log hold.
    assert value(after, "lmnh_messages_consumed_total") == len(sent)
    ratings = database.scalar("SELECT count(*) FROM rating_interaction")
    emergencies = database.scalar("SELECT count(*) FROM request_interaction"
                                  " WHERE request_value = 1")
    assistance = database.scalar("SELECT count(*) FROM request_interaction"
                                 " WHERE request_value = 0")
    assert value(after, "lmnh_messages_accepted_total", kind="rating") == ratings \
        == len(expected[0])
    assert value(after, "lmnh_messages_accepted_total", kind="emergency") == emergencies
    assert value(after, "lmnh_messages_accepted_total", kind="assistance") == assistance
    assert value(after, "lmnh_rows_written_total", table="rating_interaction") == ratings
    assert value(after, "lmnh_rows_written_total", table="request_interaction") \
        == emergencies + assistance
    logged = Counter(line.split("\t")[1] for line in reject_lines(env))
    assert sum(logged.values()) == len(expected[2])
    for reason, count in logged.items():
        assert value(after, "lmnh_messages_rejected_total", reason=reason) == count
    stored = dict(database.query("SELECT reason, count(*) FROM rejected_message GROUP BY 1"))
    assert stored == dict(logged)
    batches = value(after, "lmnh_batch_write_seconds_count")
    assert batches >= len(sent) / 100 / 2
    assert value(after, "lmnh_batch_write_seconds_sum") > 0
    assert value(after, "lmnh_offset_commit_failures_total") == 0
    assert value(after, "lmnh_database_up") == 1 and value(after, "lmnh_kafka_up") == 1
    assert value(after, "lmnh_exhibitions_loaded") == 6
    assert time.time() - value(after, "lmnh_metadata_refresh_timestamp_seconds") < 300
    assert time.time() - value(after, "lmnh_last_batch_written_timestamp_seconds") < 300


def test_readyz_waits_for_partitions(database: Database, pipeline_env: dict[str, str],
                                     run_pipeline) -> None:
    """Started while its broker is away, the daemon is alive but not ready; ready once the
    broker is back and the group has given it partitions."""
    mock = MockKafka()
    mock.create_topic(pipeline_env["TOPIC"], 2)
    mock.take_down()
    env, port = with_metrics(pipeline_env | {"BOOTSTRAP_SERVERS": mock.bootstrap})
    run = run_pipeline(env)
    wait_until(lambda: get(port, "/healthz")[0] == 200, 60, "the endpoint")
    time.sleep(2)
    assert get(port, "/readyz") == (503, "no partitions assigned\n")
    assert get(port, "/healthz")[0] == 200
    mock.bring_up()
    wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "ready after assignment")
    assert "2 partitions assigned" in get(port, "/readyz")[1]
    assert run.stop() == 0


def test_readyz_turns_not_ready_while_the_database_is_stopped(
        broker: Broker, private_pg_server: PgServer, pipeline_env: dict[str, str],
        run_pipeline) -> None:
    database = make_database(private_pg_server)
    env, port = with_metrics(pipeline_env | database.env())
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [VALID])
    wait_until(lambda: row_count(database) == 1, 60, "the first row")
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "ready")
    assert private_pg_server.embedded is not None
    private_pg_server.embedded.stop("immediate")
    broker.produce(env["TOPIC"], [VALID])
    wait_until(lambda: get(port, "/readyz") == (503, "database unreachable\n"), 30, "not ready")
    assert value(scrape(port), "lmnh_database_up") == 0
    assert get(port, "/healthz")[0] == 200  # alive: retrying is what it should be doing
    private_pg_server.embedded.start()
    wait_until(lambda: get(port, "/readyz")[0] == 200, 90, "ready again")
    wait_until(lambda: row_count(database) == 2, 30, "the second row")
    assert run.stop() == 0
    output = run.text()
    assert len(re.findall("database unavailable", output)) == 1, output
    assert "database connection re-established after" in output


def test_the_metrics_endpoint_listens_on_localhost_only_by_default(
        database: Database, broker: Broker, pipeline_env: dict[str, str], run_pipeline) -> None:
    env, port = with_metrics(pipeline_env)
    run = run_pipeline(env)
    wait_until(lambda: get(port, "/healthz")[0] == 200, 60, "the endpoint")
    assert f"metrics and health on http://127.0.0.1:{port}/metrics" in run.text()
    assert run.stop() == 0


# ------------------------------------------------------------------ stopping and outages


def kafka_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if " kafka: " in line or re.search(r"kafka|broker|offset commit", line, re.I)]


def test_sigterm_with_the_broker_gone_mid_commit_exits_within_10_s(
        database: Database, pipeline_env: dict[str, str], run_pipeline) -> None:
    """Batches of 10 are being written and their offsets committed when the broker vanishes;
    SIGTERM then ends the process within 10 s, and a restart stores every message once."""
    mock = MockKafka()
    broker = Broker(mock.bootstrap, mock)
    env = pipeline_env | {"BOOTSTRAP_SERVERS": mock.bootstrap, "BATCH_SIZE": "10",
                          "KAFKA_SESSION_TIMEOUT_MS": "45000"}
    mock.create_topic(env["TOPIC"], 4)
    presses = simulated_presses()
    expected = intended_rows(presses, 4)
    broker.produce(env["TOPIC"], [press.value for press in presses])
    run = run_pipeline(env)
    wait_until(lambda: row_count(database) >= 300, 60, "batches being committed", 0.005)
    mock.take_down()
    run.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert run.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    assert row_count(database) < len(expected[0]) + len(expected[1]), "stopped too late to tell"
    assert "stopped cleanly" in run.text() and "Traceback" not in run.text()

    mock.bring_up()
    final = run_pipeline(env, "after")
    wait_until(lambda: all_committed(broker, env), 90, "every offset committed")
    assert final.stop() == 0
    assert_tables_hold(database, env, expected)


@pytest.mark.slow
def test_a_60_second_broker_outage_logs_at_most_5_lines_about_kafka(
        database: Database, pipeline_env: dict[str, str], run_pipeline) -> None:
    traffic = [press.value for press in simulated_presses(4000)]
    mock = MockKafka()
    broker = Broker(mock.bootstrap, mock)
    env = pipeline_env | {"BOOTSTRAP_SERVERS": mock.bootstrap, "BATCH_SIZE": "25",
                          "STATS_INTERVAL_S": "5"}
    mock.create_topic(env["TOPIC"], 4)
    broker.produce(env["TOPIC"], traffic[:2000])
    run = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "the first messages")
    before = run.text()
    mock.take_down()
    time.sleep(60)
    mock.bring_up()
    broker.produce(env["TOPIC"], traffic[2000:])
    wait_until(lambda: all_committed(broker, env), 90, "every offset committed after")
    wait_until(lambda: "kafka reachable again" in run.text(), 30, "the outage's end")
    assert run.stop() == 0
    outage = kafka_lines(run.text()[len(before):])
    assert 2 <= len(outage) <= 5, outage
    assert "kafka unreachable" in outage[0]
    assert any("kafka still unreachable after 6" in line for line in outage)  # 60 s, 61 s ...
    assert "Traceback" not in run.text()


def test_check_against_an_unreachable_broker_prints_one_line_for_it(
        pipeline_env: dict[str, str], run_pipeline) -> None:
    env = pipeline_env | {"BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    check = run_pipeline(env, "check", "--check")
    assert check.wait(timeout=90) == 1
    lines = check.text().splitlines()
    assert [line for line in lines if "kafka" in line.lower()] == \
        [next(line for line in lines if line.startswith("FAIL  kafka:"))], lines
    # One line per service (and the TLS warning): nothing from librdkafka's reconnect attempts.
    assert all(line.startswith(("ok    ", "FAIL  ", "WARN  ")) for line in lines), lines
    assert len(lines) <= 4, lines
