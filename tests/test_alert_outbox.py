"""Emergency alerts at least once, through `python pipeline.py`, moto's SNS and a subscribed SQS
queue: SNS away then a kill -9, PostgreSQL away, a replay with the offsets reset; and what an
alert says whatever the metadata holds."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import UTC, date, datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import botocore.config
import pytest
from conftest import Broker, Database, PgServer, make_database, unique, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import all_committed

import db
from lmnh.local.embedded import MotoS3, free_port
from lmnh.services import alerts
from lmnh.services.alerts import AlertSender, emergency_alert
from s3_metadata import Exhibition
from validation import Rating, Request, Rules, validate

DAY = "2026-07-15"


def emergency(site: int, minute: int) -> bytes:
    """An emergency press at 12:mm London time."""
    at = datetime.fromisoformat(f"{DAY}T12:{minute:02d}:00").replace(
        tzinfo=ZoneInfo("Europe/London"))
    return json.dumps({"at": at.isoformat(), "site": str(site), "val": -1, "type": 1}).encode()


def rating(site: int, minute: int) -> bytes:
    at = datetime.fromisoformat(f"{DAY}T11:{minute:02d}:00").replace(
        tzinfo=ZoneInfo("Europe/London"))
    return json.dumps({"at": at.isoformat(), "site": str(site), "val": minute % 5}).encode()


class Security:
    """An SNS topic with the Head of Security's SQS queue subscribed, on moto's server."""

    def __init__(self, endpoint: str) -> None:
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                region_name="eu-west-2")
        self.sns = session.client("sns", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.topic_arn = self.sns.create_topic(Name=unique("emergencies"))["TopicArn"]
        self.queue_url = self.sqs.create_queue(QueueName=unique("security"))["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)
        self.received: list[dict[str, Any]] = []

    def receive(self, wait_s: int = 1) -> list[dict[str, Any]]:
        """Everything delivered so far (kept across calls)."""
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=wait_s)
        for message in got.get("Messages", []):
            self.received.append(json.loads(message["Body"]))
            self.sqs.delete_message(QueueUrl=self.queue_url,
                                    ReceiptHandle=message["ReceiptHandle"])
        return self.received

    def times(self) -> list[str]:
        """The museum-local HH:MM:SS each received alert names."""
        return sorted(body["Message"].split(" at ")[-1][:8] for body in self.receive(0))


@pytest.fixture
def security(moto_s3: MotoS3) -> Security:
    return Security(moto_s3.endpoint)


def alert_rows(database: Database) -> list[tuple]:
    return database.query("SELECT source_partition, source_offset, sent_at IS NOT NULL"
                          " FROM emergency_alert ORDER BY pressed_at")


def test_sns_away_then_kill_9_then_back_every_emergency_arrives(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        security: Security) -> None:
    away = pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn,
                           "AWS_ENDPOINT_URL_SNS": f"http://127.0.0.1:{free_port()}"}
    presses = [emergency(n % 6, n) for n in range(12)] + [rating(3, n) for n in range(8)]
    broker.produce(away["TOPIC"], presses)
    first = run_pipeline(away, "sns-away")
    wait_until(lambda: all_committed(broker, away), 60, "every press stored and committed")
    pending = "SELECT count(*) FROM v_request WHERE alert_pending"
    assert database.scalar(pending) == 12
    wait_until(lambda: "alerts: sent=0 pending=12 failed=" in first.text(), 30,
               "the stats line counting the pending alerts")
    assert "alert not sent yet" in first.text()
    first.stop(signal.SIGKILL)

    back = run_pipeline(pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn}, "sns-back")
    wait_until(lambda: len(security.receive()) >= 12, 60, "the 12 alerts after the restart")
    assert security.times() == [f"12:{n:02d}:00" for n in range(12)]  # each one
    wait_until(lambda: database.scalar(pending) == 0, 30, "the alerts recorded as sent")
    assert database.scalar("SELECT count(*) FROM v_request WHERE alert_sent_at IS NOT NULL") == 12
    assert back.stop() == 0
    assert "Traceback" not in first.text() + back.text()


def test_an_emergency_is_alerted_within_5_s_while_postgres_is_down(
        broker: Broker, private_pg_server: PgServer, pipeline_env: dict[str, str],
        run_pipeline, security: Security) -> None:
    database = make_database(private_pg_server)
    env = pipeline_env | database.env() | {"ALERT_SNS_TOPIC_ARN": security.topic_arn,
                                           "WRITE_BUFFER_MESSAGES": "60", "BATCH_SIZE": "20"}
    run = run_pipeline(env)
    before = [rating(n % 6, n) for n in range(8)]
    broker.produce(env["TOPIC"], before)
    wait_until(lambda: all_committed(broker, env), 60, "the first presses stored")
    assert private_pg_server.embedded is not None
    private_pg_server.embedded.stop("immediate")

    pressed = time.monotonic()
    during = [emergency(4, 30)]
    broker.produce(env["TOPIC"], during)
    wait_until(lambda: len(security.receive()) >= 1, 5, "the alert, database down")
    assert time.monotonic() - pressed < 5
    assert security.times() == ["12:30:00"]
    assert "EXH_04" in security.received[0]["Subject"]

    # More presses than the buffer holds (issue 21, fault 4): consuming goes on, for the
    # alerts, and what the buffer cannot hold is read again later; nothing is lost.
    more = [rating(n % 7, n % 60) for n in range(200)] + [emergency(2, 45)]
    pressed = time.monotonic()
    broker.produce(env["TOPIC"], more)
    wait_until(lambda: len(security.receive()) >= 2, 5, "the alert past the full buffer")
    assert time.monotonic() - pressed < 5
    assert "judged for their alerts only" in run.text()
    assert run.process is not None and run.process.poll() is None
    private_pg_server.embedded.start()
    wait_until(lambda: all_committed(broker, env), 90, "every offset committed after the outage")
    assert "reading again what was judged for alerts only" in run.text()
    wait_until(lambda: database.scalar("SELECT count(*) FROM v_request WHERE alert_pending")
               == 0, 30, "both alerts recorded as sent")
    assert run.stop() == 0

    rules = Rules(sites=frozenset(range(6)))
    now = datetime.now(UTC)
    want_ratings, want_requests, want_rejects = 0, [], 0
    for value in before + during + more:
        verdict = validate(value, rules, now)
        if isinstance(verdict, Rating):
            want_ratings += 1
        elif isinstance(verdict, Request):
            want_requests.append(verdict.site)
        else:
            want_rejects += 1
    assert database.scalar("SELECT count(*) FROM rating_interaction") == want_ratings
    assert database.scalar("SELECT count(*) FROM rejected_message") == want_rejects
    assert sorted(r[0] for r in database.query("SELECT exhibition_id FROM request_interaction")) \
        == sorted(want_requests) == [2, 4]
    assert database.scalar("SELECT count(*) FROM v_request WHERE exhibition_id = 'EXH_04'"
                           " AND alert_sent_at IS NOT NULL") == 1
    output = run.text()
    assert "database unavailable" in output and "database connection re-established" in output
    assert "Traceback" not in output


def test_a_replay_with_the_offsets_reset_sends_no_second_alert(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        security: Security) -> None:
    env = pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn}
    presses = [emergency(n % 6, n) for n in range(6)] + [rating(1, n) for n in range(10)]
    broker.produce(env["TOPIC"], presses)
    first = run_pipeline(env, "first")
    wait_until(lambda: len(security.receive()) >= 6, 60, "the first alerts")
    wait_until(lambda: all(sent for _, _, sent in alert_rows(database))
               and len(alert_rows(database)) == 6, 30, "the alerts recorded as sent")
    first.stop(signal.SIGKILL)  # no clean stop: what is recorded is what a crash leaves
    recorded = alert_rows(database)

    # A group with no committed offsets reads the topic from offset 0 again: a full reset.
    replay_env = env | {"GROUP": unique("reset")}
    replay = run_pipeline(replay_env, "replay")
    wait_until(lambda: all_committed(broker, replay_env), 60, "the replay")
    time.sleep(2)  # time enough for an alert the replay would wrongly send
    assert replay.stop() == 0
    assert len(security.receive(2)) == 6
    assert "alert sent" not in replay.text()
    assert alert_rows(database) == recorded
    assert database.scalar("SELECT count(*) FROM request_interaction") == 6


# ------------------------------------------------------------------ what an alert says


WHALES = Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1),
                    "Whales.")


def test_an_alert_names_the_exhibition_its_floor_and_the_museum_time_and_date() -> None:
    press = db.Interaction(3, 1, datetime(2026, 1, 5, 9, 7, 3, tzinfo=UTC), "lmnh", 2, 41)
    alert = emergency_alert(press, WHALES, ZoneInfo("Europe/London"))
    for words in (alert.subject, alert.message):
        assert "EXH_03" in words and "Cetacean Sensations" in words and "floor 1" in words
    assert alert.subject.endswith(", 09:07:03 05/01/2026")
    assert "floor 1" in alert.message and "09:07:03 on 05/01/2026" in alert.message
    assert alert.key == ("lmnh", 2, 41)


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=400), floor=st.text(min_size=1, max_size=50))
def test_the_subject_is_one_short_line_whatever_the_metadata_holds(name: str, floor: str) -> None:
    exhibition = Exhibition(7, "EXH_07", name, floor, "Zoology", date(2020, 1, 1), "x")
    press = db.Interaction(7, 1, datetime(2026, 7, 15, 13, 0, tzinfo=UTC), "lmnh", 0, 1)
    alert = emergency_alert(press, exhibition, ZoneInfo("Europe/London"))
    assert 0 < len(alert.subject) < 100
    assert alert.subject.isprintable() and alert.subject == alert.subject.strip()
    assert alert.subject.isascii()  # SNS refuses any other subject for good
    assert alert.subject.startswith("EMERGENCY at EXH_07")
    assert alert.subject.endswith(", 14:00:00 15/07/2026")  # the time survives any name
    assert "14:00:00 on 15/07/2026" in alert.message


def test_a_name_beyond_ascii_keeps_its_letters_in_the_subject_and_whole_in_the_message(
        ) -> None:
    """Real SNS refuses a subject that is not ASCII, for good (moto does not check)."""
    cafe = Exhibition(7, "EXH_07", "Café Ünïcode — 東京 Whales", "Ground", "Zoology",
                      date(2020, 1, 1), "x")
    press = db.Interaction(7, 1, datetime(2026, 7, 15, 13, 0, tzinfo=UTC), "lmnh", 0, 1)
    alert = emergency_alert(press, cafe, ZoneInfo("Europe/London"))
    assert alert.subject == "EMERGENCY at EXH_07 Cafe Unicode ? ?? Whales, floor Ground," \
        " 14:00:00 15/07/2026"
    assert "Café Ünïcode — 東京 Whales" in alert.message


def test_sns_accepts_the_subject_of_a_hostile_exhibition_name(security: Security) -> None:
    nasty = Exhibition(9, "EXH_09", "Whales\r\nand\tDolphins\u2028" + "x" * 300 + "\x00\x7f",
                       "Ground\nfloor", "Zoology", date(2020, 1, 1), "x")
    press = db.Interaction(9, 1, datetime(2026, 7, 15, 13, 0, tzinfo=UTC), "lmnh", 0, 1)
    alert = emergency_alert(press, nasty, ZoneInfo("Europe/London"))
    security.sns.publish(TopicArn=security.topic_arn, Subject=alert.subject,
                         Message=alert.message)
    wait_until(lambda: len(security.receive()) == 1, 30, "the alert")
    assert security.received[0]["Subject"].startswith("EMERGENCY at EXH_09 Whales and Dolphins")


def test_an_alert_pending_over_a_minute_is_an_error_once_a_minute_and_counted(
        security: Security, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The sender against an endpoint that refuses, with the minute shortened to a second."""
    monkeypatch.setattr(alerts, "PENDING_ERROR_S", 1.0)
    monkeypatch.setattr(alerts, "BACKOFF_S", (0.2, 0.4))
    client = boto3.client("sns", endpoint_url=f"http://127.0.0.1:{free_port()}",
                          region_name="eu-west-2", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    sender = AlertSender(security.topic_arn, client)
    press = db.Interaction(3, 1, datetime(2026, 7, 15, 13, 0, tzinfo=UTC), "lmnh", 0, 1)
    alert = emergency_alert(press, WHALES, ZoneInfo("Europe/London"))
    with caplog.at_level(logging.WARNING, logger="alerts"):
        sender.submit([alert, alert])  # handed over twice, queued once
        wait_until(lambda: "alert pending for" in caplog.text, 30, "the error line")
        assert sender.pending == 1 and sender.sent == 0 and sender.failed_attempts >= 2
        assert sender.failed == 0  # no connection: retried, never given up
        sender.client = security.sns  # SNS is back
        wait_until(lambda: sender.sent == 1, 30, "the alert sent")
        sender.close(0)
    assert sender.pending == 0
    assert [(o.alert.key, o.failure) for o in sender.take_sent()] == [(("lmnh", 0, 1), None)]
    errors = [r.created for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(b - a >= 0.9 for a, b in pairwise(errors))
    assert len(security.receive()) == 1


def test_the_metrics_count_alerts_sent_pending_and_failed_as_sns_saw_them(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        security: Security) -> None:
    from test_operations import scrape, value, with_metrics

    presses = [emergency(n % 6, n) for n in range(4)] + [rating(2, n) for n in range(5)]
    away, port = with_metrics(pipeline_env | {
        "ALERT_SNS_TOPIC_ARN": security.topic_arn,
        "AWS_ENDPOINT_URL_SNS": f"http://127.0.0.1:{free_port()}"})  # nothing listens there
    broker.produce(away["TOPIC"], presses)
    first = run_pipeline(away, "sns-away")
    wait_until(lambda: all_committed(broker, away), 60, "every press stored")
    wait_until(lambda: value(scrape(port), "lmnh_alerts_attempts_failed_total") >= 4, 60,
               "failed attempts counted")
    stuck = scrape(port)
    assert value(stuck, "lmnh_alerts_failed_total") == 0  # none given up: SNS is only away
    assert value(stuck, "lmnh_alerts_pending") == 4
    assert value(stuck, "lmnh_alerts_sent_total") == 0
    assert first.stop(signal.SIGTERM) == 0

    back, port = with_metrics(pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn})
    second = run_pipeline(back, "sns-back")
    wait_until(lambda: len(security.receive()) >= 4, 60, "the four alerts")
    wait_until(lambda: value(scrape(port), "lmnh_alerts_pending") == 0, 30, "none pending")
    sent = scrape(port)
    assert value(sent, "lmnh_alerts_sent_total") == len(security.received) == 4
    assert value(sent, "lmnh_alerts_failed_total") == 0
    assert second.stop(signal.SIGTERM) == 0


# ------------------------------------------------------------------ an alert SNS refuses for good


def refused_for_good(press_minute: int, source: str = "lmnh") -> alerts.Alert:
    """An alert SNS refuses whatever the retries: a 150-character subject (moto, as SNS,
    answers InvalidParameter: "Subject must be less than 100 characters")."""
    at = datetime.fromisoformat(f"{DAY}T11:{press_minute:02d}:00+00:00")
    return alerts.Alert(source, 0, press_minute, at, "EMERGENCY " + "x" * 140,
                        f"Emergency button pressed at site 3 at 11:{press_minute:02d}.")


def pending_refused_alert(database: Database) -> alerts.Alert:
    """An emergency stored with its alert pending in the outbox, as an earlier process left
    it, whose alert SNS refuses for good: the daemon sends it from the outbox at start-up."""
    bad = refused_for_good(0, source="earlier")
    conn = db.connect(db.DatabaseSettings(database.server.host, database.server.port,
                                          database.name, database.server.user,
                                          database.server.password, sslmode="disable"))
    db.upsert_exhibitions(conn, [Exhibition(  # the bucket's EXH_03
        3, "EXH_03", "Deep Blue", "1", "Zoology", date(2019, 11, 7), "Life in the deep ocean.")])
    db.write_interactions(conn, [], [db.Interaction(3, 1, bad.pressed_at, *bad.key)],
                          alerts=[db.OutboxAlert(*bad)])
    conn.close()
    return bad


def test_an_alert_sns_refuses_for_good_is_given_up_and_the_next_goes_out(
        security: Security, caplog: pytest.LogCaptureFixture) -> None:
    sender = AlertSender(security.topic_arn, security.sns)
    bad = refused_for_good(0)
    later = [emergency_alert(db.Interaction(3, 1, datetime(2026, 7, 15, 12, n, tzinfo=UTC),
                                            "lmnh", 1, n), WHALES, ZoneInfo("Europe/London"))
             for n in range(3)]
    with caplog.at_level(logging.INFO, logger="alerts"):
        submitted = time.monotonic()
        sender.submit([bad, *later])
        wait_until(lambda: len(security.receive()) >= 3, 5, "the later alerts, within 5 s")
        assert time.monotonic() - submitted < 5
        wait_until(lambda: sender.pending == 0, 5, "nothing left pending")
        sender.close(0)
    assert (sender.sent, sender.failed, sender.failed_attempts) == (3, 1, 0)
    outcomes = sender.take_sent()
    assert [o.alert.key for o in outcomes] == [bad.key] + [a.key for a in later]  # press order
    assert outcomes[0].failure is not None and "InvalidParameter" in outcomes[0].failure
    assert all(o.failure is None for o in outcomes[1:])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and bad.subject in errors[0] and "100 characters" in errors[0]
    assert sorted(body["Subject"] for body in security.receive(0)) == sorted(
        a.subject for a in later)
    assert not sender.has_unrecorded()
    sender.submit([bad])  # handed over again (an outbox rescan): not tried again
    assert sender.pending == 0


class FlakySns:
    """A real HTTP endpoint in front of moto's SNS that answers 500 InternalError to any
    publish whose body holds `refuse` (while set), and passes everything else on."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import urllib.request

        flaky = self
        self.refuse: bytes | None = None
        self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if flaky.refuse is not None and flaky.refuse in body:
                    flaky.refused += 1
                    error = (b"<ErrorResponse><Error><Type>Receiver</Type><Code>InternalError"
                             b"</Code><Message>try again</Message></Error></ErrorResponse>")
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                forwarded = urllib.request.Request(
                    upstream + self.path, body, method="POST",
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                with urllib.request.urlopen(forwarded) as answer:
                    reply = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        if name.lower() not in ("transfer-encoding", "connection", "server",
                                                "date"):
                            self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_alert_sns_keeps_failing_is_retried_without_holding_up_the_next_ones(
        security: Security, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """SNS fails one alert again and again (500 InternalError: worth retrying): the later ones
    go out meanwhile, each on its first attempt; the failing one is retried, not given up, and
    goes once SNS takes it."""
    monkeypatch.setattr(alerts, "BACKOFF_S", (0.2, 0.4))
    flaky = FlakySns(moto_s3.endpoint)
    try:
        client = boto3.client("sns", endpoint_url=flaky.endpoint, region_name="eu-west-2",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=botocore.config.Config(retries={"max_attempts": 1}))
        sender = AlertSender(security.topic_arn, client)
        first = refused_for_good(0)._replace(subject="EMERGENCY at EXH_03 FLAKY, 11:00:00")
        flaky.refuse = b"FLAKY"
        later = [first._replace(source_offset=n, subject=f"EMERGENCY at EXH_04 no {n}",
                                pressed_at=first.pressed_at.replace(minute=n))
                 for n in range(1, 4)]
        sender.submit([first])
        wait_until(lambda: flaky.refused >= 1, 5, "the first attempt refused")
        started = time.monotonic()
        sender.submit(later)
        wait_until(lambda: len(security.receive()) >= 3, 5, "the later alerts")
        assert time.monotonic() - started < 5
        wait_until(lambda: sender.failed_attempts >= 3, 10, "the failing alert retried")
        assert sender.pending == 1 and sender.failed == 0
        flaky.refuse = None
        wait_until(lambda: sender.pending == 0, 10, "the failing alert sent at last")
        sender.close(0)
    finally:
        flaky.close()
    assert (sender.sent, sender.failed) == (4, 0)
    assert [o.alert.key for o in sender.take_sent()] == [a.key for a in later] + [first.key]
    assert len(security.receive(1)) == 4


def test_the_daemon_gives_up_an_alert_sns_refuses_for_good_and_sends_the_next_ones(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        security: Security) -> None:
    """An alert the outbox holds pending (an earlier press) that SNS refuses for good: the
    daemon tries it on start-up, logs it, counts it, records it as failed; emergencies pressed
    later arrive within 5 s; a restart does not try it again."""
    from test_operations import scrape, value, with_metrics

    bad = pending_refused_alert(database)
    assert database.scalar("SELECT count(*) FROM v_request WHERE alert_pending") == 1

    env, port = with_metrics(pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn})
    broker.produce(env["TOPIC"], [rating(3, n) for n in range(4)])  # one in each partition
    run = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "the pipeline reading its partitions")
    assert "alert not sent" in run.text().lower()  # the refused alert was tried at start-up
    pressed = time.monotonic()
    broker.produce(env["TOPIC"], [emergency(n, 10 + n) for n in range(3)])
    wait_until(lambda: len(security.receive()) >= 3, 5, "the later emergencies, within 5 s")
    assert time.monotonic() - pressed < 5
    assert security.times() == ["12:10:00", "12:11:00", "12:12:00"]
    wait_until(lambda: database.scalar("SELECT count(*) FROM emergency_alert"
                                       " WHERE sent_at IS NOT NULL") == 3, 30, "3 recorded sent")
    failed = "SELECT failed_at IS NOT NULL, failure FROM emergency_alert WHERE source = 'earlier'"
    wait_until(lambda: database.query(failed)[0][0], 30, "the refused one recorded as failed")
    assert "InvalidParameter" in database.query(failed)[0][1]
    assert database.query(
        "SELECT alert_pending, alert_sent_at, alert_failed_at IS NOT NULL, alert_failure"
        " FROM v_request WHERE alert_failed_at IS NOT NULL") == [
            (False, None, True, database.query(failed)[0][1])]
    assert database.scalar("SELECT count(*) FROM v_request WHERE alert_pending") == 0
    samples = scrape(port)
    assert value(samples, "lmnh_alerts_failed_total") == 1
    assert value(samples, "lmnh_alerts_sent_total") == 3
    assert value(samples, "lmnh_alerts_pending") == 0
    assert run.stop() == 0
    given_up = [line for line in run.text().splitlines() if "alert NOT sent" in line]
    assert len(given_up) == 1 and bad.subject in given_up[0] and "ERROR" in given_up[0]

    again = run_pipeline(env, "again")  # the failed alert is not pending: not tried again
    broker.produce(env["TOPIC"], [rating(3, n) for n in range(4, 8)])
    wait_until(lambda: all_committed(broker, env), 60, "the restart reading on")
    assert again.stop() == 0
    assert "alert NOT sent" not in again.text() and "alert sent" not in again.text()
    assert "alerts: sent=0 pending=0 failed=0" in again.text()
    assert "Traceback" not in run.text() + again.text()


def test_the_alert_sender_imports_without_psycopg2() -> None:
    """alerts.py is usable where no database driver is installed (it needs rows.py's
    Interaction, not db.py's)."""
    import subprocess
    import sys

    code = "import lmnh.services.alerts, sys; assert 'psycopg2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
