"""Faults injected for real: S3 or the broker away, poison, rotated or unwritable logs, secrets,
scale-out."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import time
from datetime import UTC, datetime, timedelta, timezone
from datetime import time as time_of_day
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import KafkaError, Producer
from conftest import Broker, Database, PgServer, make_database, unique, wait_until
from sasl_listener import SaslListener
from test_pipeline import (
    all_committed,
    assert_tables_hold,
    intended_rows,
    row_count,
    simulated_presses,
)

import db
import pipeline
from lmnh.local.embedded import MockKafka, MotoS3, free_port
from lmnh.services.metrics import Health
from lmnh.settings import PipelineSettings, read_settings
from s3_metadata import load_exhibitions, s3_client

VALID = b'{"at": "2026-02-24T12:00:00+00:00", "site": "3", "val": 4}'
NEW_EXHIBITION = {
    "EXHIBITION_NAME": "Mammoths", "EXHIBITION_ID": "EXH_06", "FLOOR": "2",
    "DEPARTMENT": "Paleontology", "START_DATE": "01/12/25", "DESCRIPTION": "Ice age giants.",
}


def at_site(site: str, val: int = 3) -> bytes:
    return json.dumps({"at": "2026-02-24T12:00:00+00:00", "site": site, "val": val}).encode()


def log_lines(env: dict[str, str]) -> list[str]:
    path = Path(env["REJECT_LOG"])
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


# ------------------------------------------------------------------ S3 at start-up


def test_s3_unreachable_at_start_up_is_a_clear_bounded_failure(pipeline_env, run_pipeline) -> None:
    env = pipeline_env | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    run = run_pipeline(env)
    assert run.wait(timeout=120) == 1  # bounded: raises TimeoutExpired after 120 s
    output = run.text()
    assert "cannot load exhibitions from s3://" in output
    assert "Traceback" not in output


def test_an_empty_bucket_at_start_up_is_a_clear_failure(pipeline_env, run_pipeline,
                                                        moto_s3: MotoS3) -> None:
    empty = unique("empty").replace("_", "-")
    moto_s3.client().create_bucket(
        Bucket=empty, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    run = run_pipeline(pipeline_env | {"S3_BUCKET": empty})
    assert run.wait(timeout=60) == 1
    output = run.text()
    assert "no valid lmnh_exhibition_*.json" in output and "Traceback" not in output


# ------------------------------------------------------------------ metadata refresh


def test_a_new_exhibition_is_picked_up_and_a_failed_refresh_keeps_the_last_set(
        broker: Broker, database: Database, pipeline_env, run_pipeline, moto_s3: MotoS3,
        bucket: str) -> None:
    env = pipeline_env | {"METADATA_REFRESH_S": "1"}
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [at_site("6")] * 4)
    wait_until(lambda: len(log_lines(env)) == 4, 30, "site 6 rejected before it exists")
    assert all("\tunknown_site\t" in line for line in log_lines(env))

    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="lmnh_exhibition_mammoth.json",
                  Body=json.dumps(NEW_EXHIBITION))
    wait_until(lambda: "added EXH_06" in run.text(), 30, "the refresh")
    broker.produce(env["TOPIC"], [at_site("6", 4)] * 4)
    count_site_6 = "SELECT count(*) FROM rating_interaction WHERE exhibition_id = 6"
    wait_until(lambda: database.scalar(count_site_6) == 4, 30, "site 6 accepted")
    assert database.scalar("SELECT exhibition_name FROM exhibition WHERE exhibition_id = 6") \
        == "Mammoths"

    for item in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    wait_until(lambda: "exhibition refresh failed, keeping the 7 loaded" in run.text(), 30,
               "a failed refresh")
    broker.produce(env["TOPIC"], [at_site("6", 2)] * 4)
    wait_until(lambda: database.scalar(count_site_6) == 8, 30, "site 6 still accepted")
    assert run.stop() == 0
    assert "Traceback" not in run.text()


# ------------------------------------------------------------------ poison through Kafka


def test_poison_messages_are_rejected_logged_and_survived(
        broker: Broker, database: Database, pipeline_env, run_pipeline) -> None:
    env = pipeline_env
    topic = env["TOPIC"]
    broker.partitions(topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 3_000_000})
    poison: list[tuple[bytes | None, dict]] = [
        (b"\xff\xfe\x00garbage", {}),
        (b'{"at": "' + b"x" * 1_048_576 + b'"}', {}),
        (None, {}),
        (b"[" * 200_000 + b"]" * 200_000, {}),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}),
        (b'{"at": "2026-02-24T12:00:00+00:00", "site": "1\'); DROP TABLE rating_interaction;--",'
         b' "val": 2}', {"key": b"'; DELETE FROM exhibition; --",
                         "headers": [("kiosk", b"7"), ("x-sql", b"DROP TABLE request")]}),
        (b'{"at": "2026-02-24T12:00:00+00:00", "site": "2", "val": "0; TRUNCATE rating"}', {}),
    ]
    for value, extra in poison:
        producer.produce(topic, value, partition=0, **extra)
    producer.produce(topic, VALID, partition=0)
    assert producer.flush(30) == 0
    run = run_pipeline(env)
    wait_until(lambda: row_count(database) == 1, 60, "the valid message after the poison")
    wait_until(lambda: len(log_lines(env)) == len(poison), 30, "every poison logged")
    assert run.process is not None and run.process.poll() is None
    assert run.stop() == 0
    reasons = [line.split("\t")[1] for line in log_lines(env)]
    assert reasons == ["invalid_json", "missing_key", "invalid_json", "invalid_json",
                       "invalid_json", "unknown_site", "invalid_val"]
    assert all(len(line) < 3_000_000 for line in log_lines(env))


def test_sql_looking_text_that_reaches_the_database_is_stored_as_text(
        broker: Broker, database: Database, pipeline_env, run_pipeline, moto_s3: MotoS3,
        bucket: str) -> None:
    """A kiosk message carries no text the tables keep (site, val and at are read as numbers
    and a time), so the text that reaches SQL is the exhibition files': an exhibition whose
    every field looks like SQL is accepted by the loader, and a press for it is stored."""
    hostile = {
        "EXHIBITION_NAME": "Robert'); DROP TABLE rating_interaction;--",
        "EXHIBITION_ID": "EXH_07", "FLOOR": "1'; DELETE FROM exhibition; --",
        "DEPARTMENT": "x\"); TRUNCATE rating CASCADE; --",
        "START_DATE": "01/12/25", "DESCRIPTION": "$$; DROP SCHEMA public CASCADE; $$ \\",
    }
    moto_s3.client().put_object(Bucket=bucket, Key="lmnh_exhibition_hostile.json",
                                Body=json.dumps(hostile))
    run = run_pipeline(pipeline_env)
    broker.produce(pipeline_env["TOPIC"], [at_site("7", 4), VALID])
    wait_until(lambda: row_count(database) == 2, 60, "both presses stored")
    assert run.stop() == 0
    assert database.query(
        "SELECT e.exhibition_name, f.floor_name, d.department_name, e.exhibition_description"
        " FROM exhibition e JOIN floor f USING (floor_id) JOIN department d USING (department_id)"
        " WHERE e.public_id = 'EXH_07'") == [
        (hostile["EXHIBITION_NAME"], hostile["FLOOR"], hostile["DEPARTMENT"],
         hostile["DESCRIPTION"])]
    assert database.scalar("SELECT count(*) FROM exhibition") == 7
    assert database.scalar("SELECT count(*) FROM rating") == 5
    assert database.scalar("SELECT count(*) FROM rating_interaction WHERE exhibition_id = 7") == 1


# ------------------------------------------------------------------ the reject log


def test_a_rotated_reject_log_loses_no_line(broker: Broker, pipeline_env, run_pipeline) -> None:
    env = pipeline_env
    log_path = Path(env["REJECT_LOG"])
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [at_site("ERR")] * 300)
    wait_until(lambda: len(log_lines(env)) == 300, 30, "the first rejects")
    log_path.rename(log_path.with_suffix(".log.1"))  # what logrotate does
    broker.produce(env["TOPIC"], [at_site("INF")] * 200)
    wait_until(lambda: len(log_lines(env)) == 200, 30, "rejects in the new file")
    assert run.stop() == 0
    rotated = log_path.with_suffix(".log.1").read_text().splitlines()
    assert len(rotated) == 300 and all("ERR" in line for line in rotated)
    assert all("INF" in line for line in log_lines(env))


def test_an_unwritable_reject_log_stops_consuming_without_committing(
        broker: Broker, pipeline_env, run_pipeline) -> None:
    env = pipeline_env
    log_path = Path(env["REJECT_LOG"])
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [at_site("ERR")] * 8)
    wait_until(lambda: all_committed(broker, env), 30, "the first rejects committed")
    committed_before = broker.committed(env["TOPIC"], env["GROUP"])
    log_path.rename(log_path.with_suffix(".log.1"))
    log_path.mkdir()  # the path can no longer be opened as a file, even by root
    broker.produce(env["TOPIC"], [at_site("ERR")] * 8)
    assert run.wait(timeout=30) == 1
    output = run.text()
    assert "cannot write the reject log" in output and "Traceback" not in output
    assert broker.committed(env["TOPIC"], env["GROUP"]) == committed_before


# ------------------------------------------------------------------ secrets


def test_secrets_appear_in_no_log_reject_line_or_error(
        broker: Broker, private_pg_server: PgServer, pipeline_env, run_pipeline) -> None:
    """Each secret is really used (the database asks for its password, a Kafka listener takes
    the SASL login) and still appears in no log, reject line or error."""
    db_secret, kafka_secret = "Zebra-Secret-9431", "Walrus-Secret-2718"
    database = make_database(private_pg_server)
    require_password(private_pg_server, database, "lmnh_secret_writer", db_secret)
    env = pipeline_env | database.env() | {
        "DATABASE_USERNAME": "lmnh_secret_writer", "DATABASE_PASSWORD": db_secret,
        "PASSWORD": kafka_secret, "USERNAME": "kiosk", "DATABASE_CONNECT_TIMEOUT_S": "2"}
    presses = simulated_presses(400, seed=3)
    broker.produce(env["TOPIC"], [press.value for press in presses])
    run = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "the messages")
    assert run.stop() == 0
    assert row_count(database) > 0 and log_lines(env), "the password was needed and worked"

    wrong_password = run_pipeline(env | {"DATABASE_PASSWORD": db_secret + "-wrong"}, "db-wrong")
    wait_until(lambda: "password authentication failed" in wrong_password.text(), 60,
               "the database refusing the wrong password")
    wrong_password.stop()

    listener = SaslListener()
    sasl = run_pipeline(env | {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN",
                               "BOOTSTRAP_SERVERS": listener.bootstrap}, "sasl")
    wait_until(lambda: "SASL authentication error" in sasl.text(), 60, "the SASL login refused")
    sasl.stop()
    listener.close()
    assert listener.mechanisms[0] == "PLAIN"
    assert listener.tokens[0] == b"\0kiosk\0" + kafka_secret.encode()  # librdkafka sent it

    check = run_pipeline(env | {"DATABASE_PASSWORD": "also-wrong-" + db_secret}, "check",
                         "--check")
    assert check.wait(timeout=90) == 1
    assert "FAIL  database:" in check.text()
    texts = [run.text(), wrong_password.text(), sasl.text(), check.text(),
             Path(env["REJECT_LOG"]).read_text()]
    for text in texts:
        assert db_secret not in text and kafka_secret not in text


def require_password(server: PgServer, database: Database, role: str, password: str) -> None:
    """`role` may log in to `database` with `password` only (the embedded server otherwise
    trusts local connections, and a trusted client never sends its password)."""
    assert server.embedded is not None
    hba = server.embedded.cluster_dir / "pg_hba.conf"
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    database.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD %s", (password,))
    database.execute("SELECT pg_reload_conf()")


# ------------------------------------------------------------------ --check


def test_check_mode_reports_each_service(broker: Broker, pipeline_env, run_pipeline) -> None:
    broker.partitions(pipeline_env["TOPIC"])
    good = run_pipeline(pipeline_env, "check-ok", "--check")
    assert good.wait(timeout=90) == 0, good.text()
    assert "ok    s3: 6 exhibitions" in good.text()
    assert "ok    database:" in good.text() and "ok    kafka: topic" in good.text()
    bad = run_pipeline(pipeline_env | {"DATABASE_PORT": str(free_port()),
                                       "DATABASE_CONNECT_TIMEOUT_S": "2",
                                       "S3_BUCKET": "no-such-bucket"}, "check-bad", "--check")
    assert bad.wait(timeout=90) == 1
    assert "FAIL  database:" in bad.text() and "FAIL  s3:" in bad.text()
    assert "ok    kafka" in bad.text()
    assert "Traceback" not in bad.text()


# ------------------------------------------------------------------ scale-out


@pytest.mark.slow
def test_two_instances_share_a_6_partition_topic_and_survive_a_kill_9(
        broker: Broker, database: Database, pipeline_env, run_pipeline) -> None:
    env = pipeline_env | {"BATCH_SIZE": "25"}
    broker.create_topic(env["TOPIC"], 6)
    presses = simulated_presses()
    expected = intended_rows(presses, 6)
    total = len(expected[0]) + len(expected[1])
    broker.produce(env["TOPIC"], [press.value for press in presses])
    first = run_pipeline(env, "first")
    second = run_pipeline(env, "second")
    three = re.compile(r"assigned partitions (\S+\[\d\], ){2}\S+\[\d\]$", re.M)
    # the group split the 6 partitions between them, three each
    wait_until(lambda: all(three.search(run.text()) for run in (first, second)), 120,
               "both instances assigned three partitions", interval=0.2)
    wait_until(lambda: row_count(database) >= 0.3 * total, 60, "both consuming")
    first.stop(signal.SIGKILL)
    assert row_count(database) < total, "killed too late"
    wait_until(lambda: all_committed(broker, env), 90, "the survivor to finish")
    assert second.stop() == 0
    assert_tables_hold(database, env, expected)
    assert re.search(r"assigned partitions (\S+\[\d\], ){5}\S+\[\d\]$", second.text(), re.M)


# ------------------------------------------------------------------ broker outage


@pytest.mark.slow
def test_a_30_second_broker_outage_is_logged_and_survived_with_exact_tables(
        database: Database, pipeline_env, run_pipeline) -> None:
    """The broker closes its listener and every connection for 30 s mid-stream, then listens
    again on the same address with its data, as a restarted broker does. Kiosks keep pressing:
    their presses wait in the producer until the broker is back."""
    mock = MockKafka()  # a broker of this test's own: the outage must not reach other tests
    broker = Broker(mock.bootstrap, mock)
    env = pipeline_env | {"BOOTSTRAP_SERVERS": mock.bootstrap, "BATCH_SIZE": "25"}
    topic, partitions = env["TOPIC"], 4
    mock.create_topic(topic, partitions)
    presses = simulated_presses()
    values = [press.value for press in presses]
    split = 2508  # a multiple of the partition count keeps the round-robin of Broker.produce
    broker.produce(topic, values[:split])
    run = run_pipeline(env)
    wait_until(lambda: row_count(database) >= 100, 60, "the pipeline consuming")

    mock.take_down()
    kiosks = mock.producer()
    failures: list[str] = []
    for index, value in enumerate(values[split:], start=split):
        kiosks.produce(topic, value, partition=index % partitions,
                       on_delivery=lambda error, _: failures.append(str(error)) if error else None)
    down_until = time.monotonic() + 30
    while time.monotonic() < down_until:
        assert run.process is not None and run.process.poll() is None, run.text()[-2000:]
        time.sleep(1)
    outage_log = run.text()
    mock.bring_up()

    assert kiosks.flush(60) == 0 and not failures, failures[:3]
    wait_until(lambda: all_committed(broker, env), 90, "every offset committed after the outage")
    assert run.stop() == 0
    assert_tables_hold(database, env, intended_rows(presses, partitions))
    assert "kafka unreachable" in outage_log
    assert "kafka reachable again" in run.text()[len(outage_log):]
    assert "Traceback" not in run.text()


def test_sigterm_during_a_database_outage_exits_promptly(
        broker: Broker, private_pg_server: PgServer, pipeline_env, run_pipeline) -> None:
    database = make_database(private_pg_server)
    env = pipeline_env | database.env()
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [VALID])
    wait_until(lambda: row_count(database) == 1, 60, "the first row")
    assert private_pg_server.embedded is not None
    private_pg_server.embedded.stop("immediate")
    broker.produce(env["TOPIC"], [VALID])
    wait_until(lambda: "database unavailable" in run.text(), 30, "the outage noticed")
    started = time.monotonic()
    assert run.stop(timeout=30) == 0
    assert time.monotonic() - started < 15
    assert "stopping before the database came back" in run.text()
    assert "Traceback" not in run.text()


def test_a_fatal_kafka_error_exits_non_zero_with_the_reason(
        pipeline_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The mock cluster cannot raise a fatal consumer error, so librdkafka's error callback is
    called as librdkafka would call it, on a real pipeline with real connections."""
    for name, value in pipeline_env.items():
        monkeypatch.setenv(name, value)
    settings = read_settings(PipelineSettings)
    exhibitions = load_exhibitions(s3_client(), settings.S3_BUCKET)
    daemon = pipeline.Daemon(settings, exhibitions, pipeline.StopFlag(),
                             Health(settings.HEALTH_STALL_S))
    daemon.kafka._on_error(KafkaError(KafkaError._FATAL, "injected fencing", fatal=True))
    with caplog.at_level(logging.INFO):
        assert daemon.run() == 1
    assert "kafka fatal error: injected fencing; stopping without committing" in caplog.text
    assert "stopped cleanly" in caplog.text


# ------------------------------------------------------------------ README behaviours


def test_the_reject_log_shows_any_bytes_on_one_line(broker: Broker, pipeline_env,
                                                    run_pipeline) -> None:
    """Non-UTF-8 as a Python bytes literal, a tombstone as null, UTF-8 as a JSON string, and
    one message one line even when its bytes hold \\n or \\r."""
    env = pipeline_env
    text_with_breaks = '{"at": "2026-02-24T12:00:00+00:00",\n"site": "3",\r\n"val": 9}'
    values: list[bytes | None] = [b"\xff\xfe\n\r\x00junk", None, text_with_breaks.encode()]
    topic = env["TOPIC"]
    broker.partitions(topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for value in values:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0
    run = run_pipeline(env)
    log_path = Path(env["REJECT_LOG"])
    wait_until(lambda: log_path.exists() and log_path.read_bytes().count(b"\n") >= 3, 60,
               "the three rejects logged")
    assert run.stop() == 0
    raw = log_path.read_bytes()
    lines = raw.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 3, raw  # three lines, whatever the bytes
    fields = [line.split("\t") for line in lines[:-1]]
    assert [f[1] for f in fields] == ["invalid_json", "invalid_json", "invalid_val"]
    assert repr(values[0]) in fields[0]  # b'\xff\xfe\n\r\x00junk', escaped
    assert "null" in fields[1]
    assert json.dumps(text_with_breaks, ensure_ascii=False) in fields[2]
    assert all("\r" not in line for line in lines)


def test_an_sns_failure_never_holds_up_the_data(broker: Broker, database: Database,
                                                pipeline_env, run_pipeline) -> None:
    """SNS accepts the connection and never answers (boto3 waits, retries): meanwhile every
    press is stored; when SNS refuses outright the alert is not given up (it stays pending and
    is retried: issue 12's at-least-once), and the data still flows."""
    hung_sns = socket.create_server(("127.0.0.1", 0))
    env = pipeline_env | {
        "ALERT_SNS_TOPIC_ARN": "arn:aws:sns:eu-west-2:123456789012:lmnh-emergencies",
        "AWS_ENDPOINT_URL_SNS": f"http://127.0.0.1:{hung_sns.getsockname()[1]}"}
    emergency = json.dumps({"at": "2026-02-24T12:00:00+00:00", "site": "2", "val": -1,
                            "type": 1}).encode()
    run = run_pipeline(env)
    try:
        broker.produce(env["TOPIC"], [emergency])
        wait_until(lambda: database.scalar("SELECT count(*) FROM request_interaction") == 1, 60,
                   "the emergency stored")
        broker.produce(env["TOPIC"], [VALID] * 20)
        wait_until(lambda: row_count(database) == 21, 30, "later presses stored")
        assert "alert sent" not in run.text() and "alert NOT sent" not in run.text()
    finally:
        hung_sns.close()  # from now on SNS refuses: the retries end
    wait_until(lambda: "alert not sent yet" in run.text(), 120, "the failed attempt logged")
    wait_until(lambda: "alerts: sent=0 pending=1 failed=" in run.text(), 30,
               "the alert counted as pending")
    assert run.process is not None and run.process.poll() is None
    broker.produce(env["TOPIC"], [VALID])
    wait_until(lambda: row_count(database) == 22, 30, "presses stored after the failure")
    assert run.stop(timeout=60) == 0
    assert "Traceback" not in run.text()


def test_a_refresh_with_s3_unreachable_keeps_the_last_set(
        broker: Broker, database: Database, pipeline_env, run_pipeline, bucket: str) -> None:
    own_s3 = MotoS3()  # a listener of this test's own (on moto's shared data), to stop mid-run
    env = pipeline_env | own_s3.env(bucket) | {"METADATA_REFRESH_S": "1"}
    run = run_pipeline(env)
    wait_until(lambda: "loaded 6 exhibitions" in run.text(), 60, "start-up")
    own_s3.stop()
    wait_until(lambda: "exhibition refresh failed, keeping the 6 loaded" in run.text(), 120,
               "a refresh failing")
    broker.produce(env["TOPIC"], [at_site("5", 1), at_site("6", 1)])
    count_site_5 = "SELECT count(*) FROM rating_interaction WHERE exhibition_id = 5"
    wait_until(lambda: database.scalar(count_site_5) == 1 and log_lines(env), 60,
               "both presses judged")
    assert [line.split("\t")[1] for line in log_lines(env)] == ["unknown_site"]
    assert run.stop() == 0
    assert "Traceback" not in run.text()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_the_sasl_settings_reach_librdkafka(pipeline_env, run_pipeline, mechanism: str) -> None:
    listener = SaslListener()
    env = pipeline_env | {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": mechanism,
                          "USERNAME": "kiosk-7", "PASSWORD": "Walrus-Secret-2718",
                          "BOOTSTRAP_SERVERS": listener.bootstrap}
    run = run_pipeline(env)
    try:
        wait_until(lambda: bool(listener.mechanisms), 60, "the SASL handshake")
        if mechanism == "PLAIN":
            wait_until(lambda: bool(listener.tokens), 30, "the SASL login")
            assert listener.tokens[0] == b"\0kiosk-7\0Walrus-Secret-2718"
    finally:
        run.stop()
        listener.close()
    assert listener.mechanisms[0] == mechanism


def test_closing_time_and_max_future_seconds_reach_the_rules(
        broker: Broker, database: Database, pipeline_env, run_pipeline) -> None:
    """In a zone where it is about noon now, opening 08:00, closing 16:00, an hour ahead
    allowed: the pipeline judges by these settings, not the defaults."""
    now = datetime.now(UTC)
    hours_ahead = (12 - now.hour + 12) % 24 - 12  # UTC offset putting `now` near 12:00
    zone = f"Etc/GMT{-hours_ahead:+d}" if hours_ahead else "Etc/GMT"  # POSIX signs: inverted
    local = timezone(timedelta(hours=hours_ahead))
    env = pipeline_env | {"MUSEUM_TIMEZONE": zone, "OPENING_TIME": "08:00",
                          "CLOSING_TIME": "16:00:00", "MAX_FUTURE_SECONDS": "3600"}

    def press(at: datetime) -> bytes:
        return json.dumps({"at": at.isoformat(), "site": "1", "val": 2}).encode()

    day = datetime(2026, 2, 24, tzinfo=local)
    cases = [
        (press(day.replace(hour=15, minute=59, second=59)), None),  # default closing: also in
        (press(day.replace(hour=16, minute=0, second=1)), "outside_hours"),  # default: in
        (press(day.replace(hour=8, minute=10)), None),  # default opening 08:45: out
        (press(now + timedelta(minutes=20)), None),  # default 5 minutes: future_at
        (press(now + timedelta(minutes=100)), "future_at"),
    ]
    # The database counts in the museum's clock too: the settings go there first, as an
    # operator's `lmnh-migrate` would write them (the pipeline refuses a mismatch).
    conn = psycopg2.connect(database.url)
    try:
        db.migrate(conn, db.MuseumClock(zone, time_of_day(8, 0), time_of_day(16, 0)))
    finally:
        conn.close()
    broker.produce(env["TOPIC"], [value for value, _ in cases])
    run = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "every press judged")
    assert run.stop() == 0
    assert row_count(database) == sum(reason is None for _, reason in cases)
    assert sorted(line.split("\t")[1] for line in log_lines(env)) == sorted(
        reason for _, reason in cases if reason is not None)
