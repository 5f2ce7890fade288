"""Emergency alerts at least once, through `python pipeline.py`, moto's SNS and a subscribed SQS
queue: SNS away then a kill -9, PostgreSQL away, a replay with the offsets reset; and what an
alert says whatever the metadata holds."""

from __future__ import annotations

import json
import logging
import signal
import time
from datetime import UTC, date, datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import boto3
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
    assert alert.subject.startswith("EMERGENCY at EXH_07")
    assert alert.subject.endswith(", 14:00:00 15/07/2026")  # the time survives any name
    assert "14:00:00 on 15/07/2026" in alert.message


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
        assert sender.pending == 1 and sender.sent == 0 and sender.failed >= 2
        sender.client = security.sns  # SNS is back
        wait_until(lambda: sender.sent == 1, 30, "the alert sent")
        sender.close(0)
    assert sender.pending == 0
    assert [a.key for a, _ in sender.take_sent()] == [("lmnh", 0, 1)]
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
    wait_until(lambda: value(scrape(port), "lmnh_alerts_failed_total") >= 4, 60,
               "failed attempts counted")
    stuck = scrape(port)
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
