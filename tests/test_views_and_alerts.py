"""The views Tableau and the dashboard read, the read-only role, and emergency alerts via SNS."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg2
import pytest
from conftest import Broker, Database, unique, wait_until
from test_pipeline import all_committed

import db
from lmnh.local.embedded import MotoS3
from lmnh.services.alerts import emergency_alert
from lmnh.settings import DatabaseEnvironment, read_settings
from s3_metadata import Exhibition

EXHIBITION = Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1),
                        "Whales.")


def press(site: int, value: int, at: str, offset: int, kind: str = "rating") -> db.Interaction:
    return db.Interaction(site, value, datetime.fromisoformat(at), f"test-{kind}", 0, offset)


@pytest.fixture
def stored(database: Database) -> Database:
    server = database.server
    conn = db.connect(db.DatabaseSettings(server.host, server.port, database.name, server.user,
                                          server.password, sslmode="disable"))
    db.upsert_exhibitions(conn, [EXHIBITION, Exhibition(
        4, "EXH_04", "Our Polluted World", "3", "Ecology", date(2021, 5, 12), "Pollution.")])
    ratings = [
        press(3, 4, "2026-07-15T09:10:00+01:00", 1),
        press(3, 2, "2026-07-15T09:50:00+01:00", 2),
        press(3, 0, "2026-07-15T17:59:00+01:00", 3),
        press(4, 3, "2026-07-15T23:30:00+00:00", 4),  # 00:30 on the 16th in London
        press(3, 4, "2026-01-15T12:00:00+00:00", 5),
    ]
    requests = [
        press(3, 0, "2026-07-15T09:20:00+01:00", 1, "request"),
        press(3, 1, "2026-07-15T09:40:00+01:00", 2, "request"),
        press(4, 1, "2026-07-16T10:00:00+01:00", 3, "request"),
    ]
    rejects = [db.Rejected("invalid_val", datetime(2026, 7, 15, 10, tzinfo=UTC), "t", 0, n)
               for n in range(3)] + [db.Rejected("unknown_site", datetime(2026, 7, 15, 23, 30,
                                                                           tzinfo=UTC), "t", 0, 9)]
    result = db.write_interactions(conn, ratings, requests, rejects)
    assert (result.ratings_inserted, result.requests_inserted) == (5, 3)
    assert [e.exhibition_id for e in result.new_emergencies] == [3, 4]
    again = db.write_interactions(conn, ratings, requests, rejects)
    assert (again.ratings_inserted, again.requests_inserted, again.new_emergencies) == (0, 0, ())
    conn.close()
    return database


@pytest.fixture
def writer_conn(database: Database) -> Iterator[db.Connection]:
    server = database.server
    conn = db.connect(db.DatabaseSettings(server.host, server.port, database.name, server.user,
                                          server.password, sslmode="disable"))
    db.upsert_exhibitions(conn, [EXHIBITION])
    yield conn
    conn.close()


def test_a_partly_replayed_batch_stores_and_counts_only_its_new_rows(
        database: Database, writer_conn: db.Connection) -> None:
    """The COPY fails on the stored rows' key; the staging path writes the rest."""
    first = [press(3, 4, "2026-07-15T09:10:00+01:00", n) for n in range(3)]
    requests = [press(3, 1, "2026-07-15T09:40:00+01:00", 1, "request")]
    db.write_interactions(writer_conn, first, requests,
                          [db.Rejected("invalid_val", datetime(2026, 7, 15, 10, tzinfo=UTC),
                                       "t", 0, 0)])
    overlapping = [*first[1:], press(3, 2, "2026-07-15T09:20:00+01:00", 3)]
    more_requests = [*requests, press(3, 1, "2026-07-15T09:45:00+01:00", 2, "request")]
    rejects = [db.Rejected("invalid_val", datetime(2026, 7, 15, 10, tzinfo=UTC), "t", 0, n)
               for n in range(2)]
    result = db.write_interactions(writer_conn, overlapping, more_requests, rejects)
    assert (result.ratings_inserted, result.requests_inserted) == (1, 1)
    assert [e.source_offset for e in result.new_emergencies] == [2]
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 4
    assert database.scalar("SELECT count(*) FROM rejected_message") == 2
    assert database.query("SELECT local_hour, rating_value, ratings FROM rating_hourly"
                          " ORDER BY 1, 2") == [(9, 2, 1), (9, 4, 3)]
    assert database.query("SELECT requests FROM request_hourly") == [(2,)]


def test_the_autumn_clock_change_counts_two_utc_hours_into_one_local_hour(
        database: Database, writer_conn: db.Connection) -> None:
    """01:30 BST and 01:30 GMT on 25 October 2026 are both local hour 1, in one statement."""
    ratings = [press(3, 4, "2026-10-25T00:30:00+00:00", 1),
               press(3, 4, "2026-10-25T01:30:00+00:00", 2)]
    db.write_interactions(writer_conn, ratings, [])
    assert database.query("SELECT local_date, local_hour, ratings FROM rating_hourly") == [
        (date(2026, 10, 25), 1, 2)]


def test_a_row_for_an_unknown_exhibition_fails_its_whole_batch(
        database: Database, writer_conn: db.Connection) -> None:
    """No per-row foreign key: the rollup's foreign key checks every new row's exhibition."""
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        db.write_interactions(writer_conn, [press(3, 4, "2026-07-15T09:10:00+01:00", 1),
                                            press(9, 4, "2026-07-15T09:10:00+01:00", 2)], [])
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 0


def test_the_flat_rating_view_has_local_and_utc_times(stored: Database) -> None:
    rows = stored.query(
        "SELECT exhibition_id, exhibition_name, floor, department, rating_value,"
        " rating_description, local_date, local_hour, event_at_local"
        " FROM v_rating ORDER BY event_at_utc")
    assert rows[1] == ("EXH_03", "Cetacean Sensations", "1", "Zoology", 4, "Amazing",
                       date(2026, 7, 15), 9, datetime(2026, 7, 15, 9, 10))
    assert rows[-1][0] == "EXH_04" and rows[-1][6] == date(2026, 7, 16) and rows[-1][7] == 0
    assert rows[0][6:8] == (date(2026, 1, 15), 12)  # GMT: local is UTC


def test_the_flat_request_view_says_which_is_an_emergency(stored: Database) -> None:
    rows = stored.query("SELECT exhibition_id, floor, request_description, is_emergency,"
                        " local_hour FROM v_request ORDER BY event_at_utc")
    assert rows == [("EXH_03", "1", "Assistance", False, 9), ("EXH_03", "1", "Emergency", True, 9),
                    ("EXH_04", "3", "Emergency", True, 10)]


def test_daily_and_hourly_views_count_what_the_tables_hold(stored: Database) -> None:
    daily = stored.query(
        "SELECT ratings, mean_rating, share_terrible, share_neutral, share_amazing, assistance,"
        " emergency FROM v_exhibition_daily"
        " WHERE exhibition_id = 'EXH_03' AND local_date = '2026-07-15'")
    assert daily == [(3, Decimal("2.000"), Decimal("0.3333"), Decimal("0.3333"),
                      Decimal("0.3333"), 1, 1)]
    pollution = stored.query("SELECT local_date, ratings, emergency FROM v_exhibition_daily"
                             " WHERE exhibition_id = 'EXH_04' ORDER BY local_date")
    assert pollution == [(date(2026, 7, 16), 1, 1)]
    hourly = stored.query(
        "SELECT local_hour, ratings, assistance, emergency FROM v_exhibition_hourly"
        " WHERE exhibition_id = 'EXH_03' AND local_date = '2026-07-15' ORDER BY local_hour")
    assert hourly == [(9, 2, 1, 1), (17, 1, 0, 0)]
    rejects = stored.query("SELECT local_date, reason, rejected FROM v_rejects_daily ORDER BY 1")
    assert rejects == [(date(2026, 7, 15), "invalid_val", 3),
                       (date(2026, 7, 16), "unknown_site", 1)]


def test_the_reader_role_reads_views_and_writes_nothing(stored: Database) -> None:
    password = "reader-" + unique("pw")
    stored.execute(f"ALTER ROLE lmnh_reader PASSWORD '{password}'")
    reader = psycopg2.connect(host=stored.server.host, port=stored.server.port,
                              dbname=stored.name, user="lmnh_reader", password=password)
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM v_rating")
        assert cur.fetchone() == (5,)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM rating_interaction")
    reader.close()


def test_the_writer_role_writes_a_batch_but_cannot_delete(stored: Database) -> None:
    password = "writer-" + unique("pw")
    stored.execute(f"ALTER ROLE lmnh_writer PASSWORD '{password}'")
    settings = db.DatabaseSettings(stored.server.host, stored.server.port, stored.name,
                                   "lmnh_writer", password, sslmode="disable")
    writer = db.connect(settings)
    db.upsert_exhibitions(writer, [EXHIBITION])
    result = db.write_interactions(writer, [press(3, 1, "2026-07-15T10:00:00+01:00", 77)], [])
    assert result.ratings_inserted == 1
    assert stored.scalar("SELECT ratings FROM rating_hourly WHERE local_date = '2026-07-15'"
                         " AND local_hour = 10 AND rating_value = 1") == 1  # via the trigger
    for statement in ("DELETE FROM rating_interaction",
                      "UPDATE rating_hourly SET ratings = 0"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), writer.cursor() as cur:
            cur.execute(statement)
        writer.rollback()
    writer.close()


def test_an_alert_names_the_exhibition_floor_and_museum_time() -> None:
    from zoneinfo import ZoneInfo

    alert = emergency_alert(press(3, 1, "2026-07-15T13:32:05+00:00", 1), EXHIBITION,
                            ZoneInfo("Europe/London"))
    assert alert.subject == "EMERGENCY at EXH_03 Cetacean Sensations, floor 1, 14:32:05 15/07/2026"
    assert "floor 1" in alert.message and "14:32:05 on 15/07/2026" in alert.message


def test_one_sns_alert_per_emergency_press_even_after_a_replay(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        moto_s3: MotoS3) -> None:
    import boto3

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="eu-west-2")
    sns = session.client("sns", endpoint_url=moto_s3.endpoint)
    sqs = session.client("sqs", endpoint_url=moto_s3.endpoint)
    topic_arn = sns.create_topic(Name=unique("emergencies"))["TopicArn"]
    queue_url = sqs.create_queue(QueueName=unique("security"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    env = pipeline_env | {"ALERT_SNS_TOPIC_ARN": topic_arn}
    messages = [
        b'{"at": "2026-07-15T14:32:05+01:00", "site": "3", "val": -1, "type": 1}',
        b'{"at": "2026-07-15T15:00:00+01:00", "site": "3", "val": -1, "type": 0}',
        b'{"at": "2026-07-15T16:00:00+01:00", "site": "4", "val": 3}',
        b'{"at": "2026-07-15T16:10:00+01:00", "site": "1", "val": -1, "type": 1}',
    ]
    broker.produce(env["TOPIC"], messages)
    first = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "the presses")
    assert first.stop(signal.SIGTERM) == 0
    replay = run_pipeline(env | {"GROUP": unique("replay")})  # reads the topic again from 0
    wait_until(lambda: all_committed(broker, env | {"GROUP": replay.env["GROUP"]}), 60,
               "the replay")
    assert replay.stop(signal.SIGTERM) == 0

    bodies = []
    for _ in range(5):
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        bodies += [json.loads(m["Body"]) for m in got.get("Messages", [])]
    assert sorted(b["Subject"] for b in bodies) == [
        "EMERGENCY at EXH_01 Six Legs, One Planet, floor Vault, 16:10:00 15/07/2026",
        "EMERGENCY at EXH_03 Deep Blue, floor 1, 14:32:05 15/07/2026"]
    whales = next(b for b in bodies if "EXH_03" in b["Subject"])
    assert "floor 1" in whales["Message"] and "14:32:05 on 15/07/2026" in whales["Message"]
    assert first.text().count("alert sent") == 2 and "alert sent" not in replay.text()
    assert database.scalar("SELECT count(*) FROM request_interaction") == 3


def test_tls_is_required_off_this_host_and_the_timeouts_reach_the_server(
        database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    def settings(**env: str) -> db.DatabaseSettings:
        defaults = {k: v for k, v in database.env().items() if k != "DATABASE_SSLMODE"}
        monkeypatch.delenv("DATABASE_SSLMODE", raising=False)
        for name, value in (defaults | env).items():
            monkeypatch.setenv(name, value)
        return read_settings(DatabaseEnvironment).database()

    rds = "lmnh.c1a2b3.eu-west-2.rds.amazonaws.com"
    assert settings(DATABASE_IP=rds).effective_sslmode == "require"
    assert settings(DATABASE_IP=rds, DATABASE_SSLMODE="verify-full").effective_sslmode == (
        "verify-full")
    assert settings().effective_sslmode == "prefer"  # 127.0.0.1
    try:  # "require" means TLS or no connection at all
        with_tls = db.open_connection(settings(DATABASE_SSLMODE="require"), "test")
    except psycopg2.OperationalError as error:  # the embedded server has no TLS
        assert "SSL" in str(error)
    else:
        assert with_tls.info.ssl_in_use
        with_tls.close()

    conn = db.open_connection(settings(DATABASE_SSLMODE="disable",
                                       DATABASE_SSLROOTCERT="/etc/ssl/rds-global-bundle.pem",
                                       DATABASE_CONNECT_TIMEOUT_S="7",
                                       DATABASE_STATEMENT_TIMEOUT_MS="1234"), "test")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("1234ms",)
        dsn = conn.get_dsn_parameters()
        assert (dsn["connect_timeout"], dsn["sslrootcert"]) == (
            "7", "/etc/ssl/rds-global-bundle.pem")
    finally:
        conn.close()
