"""One museum clock: the zone and hours of the settings are the ones the database counts in.

Asia/Kolkata is +05:30, so a UTC hour straddles two local hours: the rollup trigger must still
put every press in the local hour the views and validation give it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from conftest import ROOT, Broker, Database
from test_pipeline import reset

import db
from lmnh.settings import PipelineSettings
from validation import Rating, Rejection, validate

KOLKATA = "Asia/Kolkata"
CLOCK = db.MuseumClock(KOLKATA, datetime.strptime("09:30", "%H:%M").time(),
                       datetime.strptime("17:00", "%H:%M").time())


def settings(**values: str) -> PipelineSettings:
    base = {"DATABASE_NAME": "d", "DATABASE_USERNAME": "u", "DATABASE_IP": "127.0.0.1",
            "BOOTSTRAP_SERVERS": "127.0.0.1:1", "SECURITY_PROTOCOL": "PLAINTEXT", "GROUP": "g",
            "TOPIC": "t", "S3_BUCKET": "bucket"}
    return PipelineSettings(**(base | values))


def press(at: datetime, site: int = 1, val: int = 3) -> bytes:
    return json.dumps({"at": at.isoformat(), "site": str(site), "val": val}).encode()


def fill(database: Database, stamps: list[datetime]) -> None:
    database.execute("INSERT INTO department (department_name) VALUES ('Geology')")
    database.execute("INSERT INTO floor (floor_name) VALUES ('1')")
    database.execute("INSERT INTO exhibition VALUES (1, 'EXH_01', 'Rocks', 'd', '2020-01-01',"
                     " 1, 1)")
    conn = psycopg2.connect(database.url)
    rows = [db.Interaction(1, 3, at, "t", 0, n) for n, at in enumerate(stamps)]
    reasons = ("outside_hours", "invalid_val", "unknown_site")
    db.write_interactions(conn, rows, [], [db.Rejected(reasons[n % 3], at, "t", 1, n)
                                            for n, at in enumerate(stamps)])
    conn.close()


def local_hours(stamps: list[datetime], zone: str) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for at in stamps:
        local = at.astimezone(ZoneInfo(zone))
        key = (local.date(), local.hour)
        counts[key] = counts.get(key, 0) + 1
    return counts


# Every quarter hour of a museum day in Kolkata, in UTC: 04:00 to 11:30 UTC is 09:30 to 17:00.
STAMPS = [datetime(2026, 3, 2, 4, 0, tzinfo=UTC) + timedelta(minutes=7 * n) for n in range(65)]
STAMPS.append(datetime(2026, 3, 2, 11, 30, tzinfo=UTC))  # closing time, 17:00:00 local


def test_a_non_london_zone_gives_consistent_validation_rollups_and_views(
        database: Database) -> None:
    assert reset(database.env() | {"MUSEUM_TIMEZONE": KOLKATA, "OPENING_TIME": "09:30",
                                   "CLOSING_TIME": "17:00"}, "--yes").returncode == 0
    conn = psycopg2.connect(database.url)
    assert db.read_museum_clock(conn) == CLOCK
    configured = settings(MUSEUM_TIMEZONE=KOLKATA, OPENING_TIME="09:30", CLOSING_TIME="17:00")
    assert configured.clock() == CLOCK
    db.check_clock(conn, configured.clock())  # the same clock: no complaint
    with pytest.raises(db.SchemaMismatch, match=r"lmnh-migrate"):
        db.check_clock(conn, settings().clock())  # London settings, Kolkata database
    conn.close()

    rules = configured.rules({1: date(2020, 1, 1)})
    now = datetime(2026, 3, 3, tzinfo=UTC)
    verdicts = [validate(press(at), rules, now) for at in STAMPS]
    assert all(isinstance(v, Rating) for v in verdicts)  # 09:30 to 17:00 Kolkata, inclusive
    for outside in (STAMPS[0] - timedelta(seconds=1), datetime(2026, 3, 2, 11, 31, tzinfo=UTC)):
        assert isinstance(validate(press(outside), rules, now), Rejection)

    fill(database, STAMPS)
    from_rollup = {(d, h): n for d, h, n in database.query(
        "SELECT local_date, local_hour, ratings FROM rating_hourly")}
    assert from_rollup == local_hours(STAMPS, KOLKATA)
    assert min(h for _, h in from_rollup) == 9 and max(h for _, h in from_rollup) == 17
    from_view = {(d, h): n for d, h, n in database.query(
        "SELECT local_date, local_hour, ratings FROM v_exhibition_hourly")}
    assert from_view == from_rollup
    per_row = database.query("SELECT event_at_utc, event_at_local, local_hour FROM v_rating")
    for utc, local, hour in per_row:
        assert local == utc.astimezone(ZoneInfo(KOLKATA)).replace(tzinfo=None)
        assert hour == local.hour
    rejects = database.query("SELECT local_date, rejected FROM v_rejects_daily")
    assert sum(n for _, n in rejects) == len(STAMPS)
    assert {d for d, _ in rejects} == {STAMPS[0].date()}


def test_migrate_writes_a_changed_clock_and_recounts_the_rollups(database: Database) -> None:
    fill(database, STAMPS)
    assert len(database.query("SELECT 1 FROM rating_hourly")) == len(local_hours(STAMPS,
                                                                             "Europe/London"))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")} | database.env()
    env["DATABASE_ADMIN_USERNAME"] = env["DATABASE_USERNAME"]  # the server's superuser
    result = subprocess.run(
        [sys.executable, "-m", "lmnh.apps.migrate"], cwd=ROOT, capture_output=True, text=True,
        env=env | {"MUSEUM_TIMEZONE": KOLKATA, "OPENING_TIME": "09:30", "CLOSING_TIME": "17:00"},
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert "museum clock Asia/Kolkata 09:30:00-17:00:00" in result.stdout
    from_rollup = {(d, h): n for d, h, n in database.query(
        "SELECT local_date, local_hour, ratings FROM rating_hourly")}
    assert from_rollup == local_hours(STAMPS, KOLKATA)
    assert database.scalar("SELECT museum_zone()") == KOLKATA
    # The index by local day follows the zone: a day's read through the view can use it.
    conn = psycopg2.connect(database.url)
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN SELECT * FROM v_rejects_daily WHERE local_date = '2026-03-02'")
        plan = " ".join(row[0] for row in cur.fetchall())
        cur.execute("SELECT count(*) FROM v_rejects_daily WHERE local_date = '2026-03-02'")
        assert cur.fetchone()[0] == 3  # a reason per row of the day, all of it
    conn.close()
    assert "rejected_message_local_date_idx" in plan


def test_check_reports_a_clock_that_differs_from_the_database(
        broker: Broker, pipeline_env: dict[str, str], run_pipeline) -> None:
    broker.partitions(pipeline_env["TOPIC"])  # the topic exists
    same = run_pipeline(pipeline_env, "check-same", "--check")
    assert same.wait(timeout=90) == 0, same.text()
    assert "museum clock Europe/London 08:45:00-18:15:00" in same.text()
    other = run_pipeline(pipeline_env | {"MUSEUM_TIMEZONE": KOLKATA}, "check-other", "--check")
    assert other.wait(timeout=90) == 1
    failed = [line for line in other.text().splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL  database: the settings' museum clock")
    assert "Asia/Kolkata" in failed[0] and "lmnh-migrate" in failed[0]
    refused = run_pipeline(pipeline_env | {"MUSEUM_TIMEZONE": KOLKATA}, "refused")
    assert refused.wait(timeout=90) == 3
    assert "refusing to start: the settings' museum clock" in refused.text()
