"""The dashboard: its queries and trends against SQL on known rows, its sign-in and per-role parts,
its shared read, and the page in a real headless browser served by gunicorn."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from conftest import ROOT, Database, wait_until

import db
from lmnh.apps import dashboard
from lmnh.apps import dashboard_auth as auth
from lmnh.local.embedded import free_port
from lmnh.settings import DashboardSettings
from s3_metadata import Exhibition

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "test-artifacts" / "dashboard.png"
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is absent: the browser test needs Debian's chromium package "
           "(.ci/run installs it)")
EXHIBITIONS = [
    Exhibition(1, "EXH_01", "Adaptation", "Vault", "Entomology", date(2019, 5, 1), "Insects."),
    Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1), "Whales."),
    Exhibition(4, "EXH_04", "Our Polluted World", "3", "Ecology", date(2021, 5, 12), "Pollution."),
]
NAMES = [f"{e.public_id} {e.name}" for e in EXHIBITIONS]
# (site, value, days before the data's day, "HH:MM"): rows that day, on the two earlier same
# weekdays (the "usual" line), the day before, and weeks back (for the weekly trends).
RATINGS = [
    (3, 4, 0, "09:05"), (3, 3, 0, "10:10"), (3, 3, 0, "11:20"), (3, 1, 0, "14:00"),
    (4, 2, 0, "09:30"), (4, 0, 0, "12:00"),
    (3, 0, 7, "10:00"), (1, 4, 7, "11:00"), (1, 3, 1, "16:00"), (4, 4, 14, "09:00"),
    (3, 2, 30, "13:00"), (3, 4, 16, "10:00"), (3, 4, 16, "11:00"), (3, 0, 17, "12:00"),
    (1, 1, 20, "10:30"), (1, 2, 22, "15:00"), (4, 3, 9, "10:00"), (4, 1, 10, "11:00"),
]
ASSISTANCE, EMERGENCY = 0, 1
REQUESTS = [
    (4, EMERGENCY, 0, "15:40"),  # the latest emergency, written first on purpose
    (3, ASSISTANCE, 0, "09:30"), (4, ASSISTANCE, 0, "10:15"),
    (4, ASSISTANCE, 0, "10:45"), (3, EMERGENCY, 0, "11:05"),
    (1, EMERGENCY, 1, "12:00"),
    (3, ASSISTANCE, 7, "10:05"), (4, ASSISTANCE, 7, "10:50"), (3, EMERGENCY, 7, "11:30"),
    (1, ASSISTANCE, 14, "10:20"), (1, ASSISTANCE, 14, "09:10"), (4, EMERGENCY, 12, "14:00"),
]
# The alert outbox of today's two emergencies, by offset in REQUESTS: the latest still pending,
# the earlier sent by SNS three seconds after the press; the older emergencies have no outbox row.
ALERTS = {0: None, 4: "11:05:03"}
REJECTS = [("invalid_val", 0, "10:00")] * 3 + [("unknown_site", 0, "11:00")] * 2 + [
    ("missing_key", 1, "10:00")] * 4
PASSWORD = "correct horse battery staple"
USERS = {"guard": "security", "curator": "exhibitions", "boss": "admin"}
SECRET_KEY = "test-only-session-key-0123456789abcdef"


def local(day: date, hhmm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), dashboard.museum_zone())


def settings(database: Database) -> db.DatabaseSettings:
    server = database.server
    return db.DatabaseSettings(server.host, server.port, database.name, server.user,
                               server.password, sslmode="disable",
                               statement_timeout_ms=dashboard.STATEMENT_TIMEOUT_MS)


@pytest.fixture
def stored(database: Database) -> tuple[Database, date]:
    """The rows above, dated from the museum's today when the test runs (not at import)."""
    day = dashboard.museum_today()
    conn = db.connect(settings(database))
    db.upsert_exhibitions(conn, EXHIBITIONS)
    db.write_interactions(
        conn,
        [db.Interaction(site, value, local(day - timedelta(days=ago), at), "test", 0, n)
         for n, (site, value, ago, at) in enumerate(RATINGS)],
        [db.Interaction(site, value, local(day - timedelta(days=ago), at), "test", 0, n)
         for n, (site, value, ago, at) in enumerate(REQUESTS)],
        [db.Rejected(reason, local(day - timedelta(days=ago), at), "test", 0, n)
         for n, (reason, ago, at) in enumerate(REJECTS)])
    conn.close()
    record_alerts(database, day)
    return database, day


def record_alerts(database: Database, day: date) -> None:
    """ALERTS as the pipeline records them: a pending outbox row per emergency, then sent_at set
    once SNS has accepted the message."""
    for offset, sent in ALERTS.items():
        site, value, ago, at = REQUESTS[offset]
        assert value == EMERGENCY and ago == 0
        database.execute("""
            INSERT INTO emergency_alert (source, source_partition, source_offset, pressed_at,
                                         subject, message)
            VALUES ('test', 0, %s, %s, %s, 'Emergency press.')""",
                         (offset, local(day, at), f"Emergency at EXH_{site:02}"))
        if sent is not None:
            database.execute("""
                UPDATE emergency_alert SET sent_at = %s
                WHERE (source, source_partition, source_offset) = ('test', 0, %s)""",
                             (local(day, sent), offset))


# What the panels must show, by SQL on the tables (not the views the dashboard reads).
LOCAL_DATE = "(event_at AT TIME ZONE 'Europe/London')::date"


def sql_emergencies(database: Database, day: date) -> list[tuple[str, str, str, str]]:
    """(time, exhibition, floor, alert): the alert's museum-local send time, "pending" for an
    outbox row SNS has not accepted yet, a dash for an emergency without one."""
    return database.query(f"""
        SELECT to_char(event_at AT TIME ZONE 'Europe/London', 'HH24:MI:SS'),
               public_id || ' ' || exhibition_name, floor_name,
               CASE WHEN a.sent_at IS NOT NULL
                        THEN to_char(a.sent_at AT TIME ZONE 'Europe/London', 'HH24:MI:SS')
                    WHEN a.source IS NOT NULL THEN 'pending'
                    ELSE '\u2014' END
        FROM request_interaction i JOIN exhibition USING (exhibition_id)
        JOIN floor USING (floor_id)
        LEFT JOIN emergency_alert a ON (a.source, a.source_partition, a.source_offset)
                                     = (i.source, i.source_partition, i.source_offset)
        WHERE request_value = 1 AND {LOCAL_DATE} = %s
        ORDER BY event_at DESC""", (day,))


def shown_alerts(data_day: date, shown_day: date) -> list[str]:
    """The alert column the banner must show, newest first, from ALERTS (not from SQL)."""
    return ["pending", "11:05:03"] if shown_day == data_day else []


def sql_mean_ratings(database: Database, first_day: date, last_day: date,
                     names: list[str] = NAMES) -> dict[str, tuple[float, int]]:
    """Mean rating and number of ratings per exhibition, from `first_day` to `last_day`."""
    rows = database.query(f"""
        SELECT public_id || ' ' || exhibition_name, avg(rating_value), count(*)::int
        FROM rating_interaction JOIN exhibition USING (exhibition_id)
        WHERE {LOCAL_DATE} BETWEEN %s AND %s AND public_id || ' ' || exhibition_name = ANY(%s)
        GROUP BY 1""", (first_day, last_day, names))
    return {exhibition: (float(mean), count) for exhibition, mean, count in rows}


def sql_weekly_means(database: Database, first_day: date, last_day: date,
                     names: list[str]) -> dict[str, dict[str, float]]:
    """Per exhibition, per ISO week (its Monday): the mean of every rating in the range."""
    weekly: dict[str, dict[str, float]] = {}
    for exhibition, week, mean in database.query(f"""
            SELECT public_id || ' ' || exhibition_name, date_trunc('week', {LOCAL_DATE})::date,
                   avg(rating_value)
            FROM rating_interaction JOIN exhibition USING (exhibition_id)
            WHERE {LOCAL_DATE} BETWEEN %s AND %s
              AND public_id || ' ' || exhibition_name = ANY(%s)
            GROUP BY 1, 2""", (first_day, last_day, names)):
        weekly.setdefault(exhibition, {})[week.isoformat()] = float(mean)
    return weekly


def sql_weekly_requests(database: Database, first_day: date, last_day: date,
                        names: list[str], value: int) -> dict[str, int]:
    return {week.isoformat(): count for week, count in database.query(f"""
        SELECT date_trunc('week', {LOCAL_DATE})::date, count(*)::int
        FROM request_interaction JOIN exhibition USING (exhibition_id)
        WHERE request_value = %s AND {LOCAL_DATE} BETWEEN %s AND %s
          AND public_id || ' ' || exhibition_name = ANY(%s)
        GROUP BY 1""", (value, first_day, last_day, names))}


def sql_requests_by_hour(database: Database, value: int, day: date) -> dict[int, int]:
    return dict(database.query(f"""
        SELECT extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, count(*)
        FROM request_interaction WHERE request_value = %s AND {LOCAL_DATE} = %s
        GROUP BY 1""", (value, day)))


def sql_usual_by_hour(database: Database, value: int, day: date) -> dict[int, float]:
    """Requests per hour over the earlier same weekdays that have presses, per such day."""
    earlier = [day - timedelta(weeks=n) for n in range(1, dashboard.USUAL_WEEKS + 1)]
    days = database.scalar(f"""
        SELECT count(DISTINCT d) FROM (
            SELECT {LOCAL_DATE} AS d FROM request_interaction UNION ALL
            SELECT {LOCAL_DATE} FROM rating_interaction) AS presses
        WHERE d = ANY(%s)""", (earlier,))
    return {hour: count / days for hour, count in database.query(f"""
        SELECT extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, count(*)
        FROM request_interaction WHERE request_value = %s AND {LOCAL_DATE} = ANY(%s)
        GROUP BY 1""", (value, earlier))}


def sql_rejects(database: Database, day: date) -> dict[str, int]:
    return dict(database.query(
        "SELECT reason, count(*)::int FROM rejected_message"
        " WHERE (rejected_at AT TIME ZONE 'Europe/London')::date = %s GROUP BY 1", (day,)))


# ---------------------------------------------------------------- the queries and the core


def test_the_queries_return_what_sql_on_the_tables_says(stored: tuple[Database, date]) -> None:
    database, today = stored
    conn = dashboard.connect(settings(database))
    try:
        emergencies = dashboard.read_emergencies(conn, today)
        ratings = dashboard.read_ratings(conn, today)
        requests = dashboard.read_requests_by_hour(conn, today)
        floors = dashboard.read_requests_by_floor(conn, today)
        rejects = dashboard.read_rejects(conn, today)
    finally:
        conn.close()

    assert [(f"{e.at:%H:%M:%S}", e.exhibition, e.floor, e.alert()) for e in emergencies] == \
        sql_emergencies(database, today)
    assert emergencies[0].exhibition == "EXH_04 Our Polluted World" and len(emergencies) == 2
    latest, earlier = emergencies
    assert (latest.alert_sent_at, latest.alert_pending) == (None, True)
    assert earlier.alert_sent_at == datetime.combine(today, time(11, 5, 3))  # museum-local
    assert not earlier.alert_pending

    for period, first_day in zip(dashboard.PERIODS,
                                 (today, today - timedelta(days=6), date.min), strict=True):
        expected = sql_mean_ratings(database, first_day, today)
        rated = {r.exhibition: r.periods[period] for r in ratings if period in r.periods}
        assert rated.keys() == expected.keys(), period
        for exhibition, shown in rated.items():
            mean, count = expected[exhibition]
            assert shown.ratings == count, (period, exhibition)
            assert shown.mean == pytest.approx(mean, rel=1e-12), (period, exhibition)
    whales = next(r for r in ratings if r.exhibition == "EXH_03 Cetacean Sensations")
    assert whales.floor == "1" and whales.periods["Today"].shares == (0, 0.25, 0, 0.5, 0.25)

    hours = requests.hours
    for shown_today, usual, value in (
            (requests.assistance, requests.usual_assistance, ASSISTANCE),
            (requests.emergency, requests.usual_emergency, EMERGENCY)):
        by_hour = sql_requests_by_hour(database, value, today)
        assert shown_today == [by_hour.get(hour, 0) for hour in hours]
        expected_usual = sql_usual_by_hour(database, value, today)
        assert usual == [expected_usual.get(hour, 0) for hour in hours]
    assert requests.usual_days == 2 and hours == list(range(8, 19))

    assert floors == [dashboard.FloorRequests("1", 1, 1), dashboard.FloorRequests("3", 2, 1)]
    assert dict(rejects) == sql_rejects(database, today) == {"invalid_val": 3, "unknown_site": 2}
    assert rejects[0] == ("invalid_val", 3)  # most frequent first


def test_weekly_trends_and_the_range_table_agree_with_sql(stored: tuple[Database, date]) -> None:
    database, today = stored
    conn = dashboard.connect(settings(database))
    try:
        days = dashboard.read_days(conn)
    finally:
        conn.close()
    for first, last, names in ((today - timedelta(days=35), today, NAMES),
                               (today - timedelta(days=20), today - timedelta(days=1), NAMES[1:]),
                               (today - timedelta(days=9), today - timedelta(days=9), NAMES[2:])):
        choice = dashboard.Choice(first, last, frozenset(names))
        trend = dashboard.weekly(days, choice)
        expected = sql_weekly_means(database, first, last, names)
        assert trend.means.keys() == expected.keys(), (first, last)
        for exhibition, means in trend.means.items():
            shown = {w.isoformat(): m for w, m in zip(trend.weeks, means, strict=True)
                     if m is not None}
            assert shown.keys() == expected[exhibition].keys()
            for week, mean in shown.items():
                assert mean == pytest.approx(expected[exhibition][week], rel=1e-12)
        for value, counts in ((ASSISTANCE, trend.assistance), (EMERGENCY, trend.emergency)):
            sql = sql_weekly_requests(database, first, last, names, value)
            assert {w.isoformat(): n for w, n in zip(trend.weeks, counts, strict=True) if n} == sql
        assert trend.weeks[0] == dashboard.monday(first) and trend.weeks[-1] <= last
        summary = sql_mean_ratings(database, first, last, names)
        for exhibition, count, mean in dashboard.range_ratings(days, choice):
            assert (count, mean is None) == (summary.get(exhibition, (0, 0))[1],
                                            exhibition not in summary)
            if mean is not None:
                assert mean == pytest.approx(summary[exhibition][0], rel=1e-12)


def day_row(exhibition: str, day: date, ratings: list[int]) -> dashboard.Day:
    return dashboard.Day(exhibition, "1", day, len(ratings), sum(ratings), 0, 0)


def test_a_weekly_mean_is_a_ratio_of_sums_not_a_mean_of_daily_means() -> None:
    monday = date(2026, 3, 2)
    days = [day_row("A", monday, [4]), day_row("A", monday + timedelta(days=1), [0, 0, 0]),
            day_row("A", monday + timedelta(days=7), [2]), day_row("B", monday, [1])]
    trend = dashboard.weekly(days, dashboard.Choice(monday, monday + timedelta(days=13),
                                                    frozenset({"A"})))
    assert trend.weeks == [monday, monday + timedelta(days=7)]
    assert trend.means == {"A": [1.0, 2.0]}  # (4 + 0 + 0 + 0) / 4, not (4 + 0) / 2
    only_tuesday = dashboard.Choice(monday + timedelta(days=1), monday + timedelta(days=1),
                                    frozenset({"A", "B"}))
    assert dashboard.range_ratings(days, only_tuesday) == [("A", 3, 0.0), ("B", 0, None)]


def test_filters_with_dates_reversed_or_unreadable_fall_back_sensibly() -> None:
    today = date(2026, 3, 11)
    swapped = dashboard.parse_choice("2026-03-10", "2026-02-01", ["A"], today)
    assert (swapped.first, swapped.last) == (date(2026, 2, 1), date(2026, 3, 10))
    default = dashboard.parse_choice("not a date", None, None, today)
    assert default == dashboard.Choice(dashboard.default_first_day(today), today, frozenset())
    assert default.first.weekday() == 0 and (today - default.first).days < 7 * 8


def test_with_no_earlier_weekday_there_is_no_usual_line() -> None:
    today = date(2026, 3, 11)
    rows = [(today, 10, 2, 1), (today - timedelta(days=7), 23, 0, 0)]
    assert dashboard.compare_with_usual(rows[:1], today).usual_days == 0
    with_one = dashboard.compare_with_usual(rows, today)
    assert with_one.usual_days == 1 and with_one.hours[-1] == 23  # hours outside 8..18 kept
    assert with_one.assistance[with_one.hours.index(10)] == 2


def text_of(component: Any) -> str:
    """The visible text of a Dash component tree."""
    if isinstance(component, str | int | float):
        return str(component)
    children = getattr(component, "children", None)
    if children is None:
        return ""
    if not isinstance(children, list | tuple):
        children = [children]
    return " ".join(text_of(child) for child in children)


def test_no_emergency_today_is_a_calm_green_line() -> None:
    panel = dashboard.emergencies_panel([])
    assert text_of(panel) == "No emergencies today"
    assert panel.style == dashboard.CALM and panel.style["color"] == "#1b5e20"


def test_the_banner_lists_the_latest_ten_of_more_emergencies_in_red() -> None:
    start = datetime(2026, 3, 11, 9, 0, tzinfo=dashboard.museum_zone())
    # newest first, as read_emergencies returns them
    emergencies = [dashboard.Emergency(start - timedelta(minutes=n), f"EXH_{n:02} X", "1",
                                       None, True) for n in range(12)]
    panel = dashboard.emergencies_panel(emergencies)
    assert panel.style == dashboard.ALARM and panel.style["background"] == "#b71c1c"
    assert text_of(panel.children[0]) == "12 emergencies today (the latest 10 shown), newest first"
    rows = panel.children[1].children[1].children
    assert [text_of(row.children[0]) for row in rows] == \
        [f"{e.at:%H:%M:%S}" for e in emergencies[:10]]
    one = dashboard.emergencies_panel(emergencies[:1])
    assert text_of(one.children[0]) == "1 emergency today, newest first"


def test_the_banner_says_when_each_alert_went_out_or_that_it_is_pending() -> None:
    pressed = datetime(2026, 3, 11, 9, 59, 58)  # museum-local, as read_emergencies gives it
    sent = dashboard.Emergency(pressed, "EXH_03 X", "1", pressed + timedelta(seconds=4), False)
    pending = dashboard.Emergency(pressed, "EXH_04 Y", "3", None, True)
    unrecorded = dashboard.Emergency(pressed, "EXH_01 Z", "Vault", None, False)
    panel = dashboard.emergencies_panel([sent, pending, unrecorded])
    header, body = panel.children[1].children
    assert [text_of(cell) for cell in header.children.children][-1] == "Alert sent"
    assert [text_of(row.children[-1]) for row in body.children] == \
        ["10:00:02", "pending", "\u2014"]


def ratings(mean_week: float, mean_ever: float) -> dashboard.ExhibitionRatings:
    def period(mean: float) -> dashboard.PeriodRatings:
        return dashboard.PeriodRatings(10, mean, (0.2,) * 5)

    return dashboard.ExhibitionRatings("EXH_01 A", "1", {"Last 7 days": period(mean_week),
                                                         "All time": period(mean_ever)})


@pytest.mark.parametrize(("week", "ever", "shown", "style"), [
    (2.50, 2.80, "-0.30", dashboard.RED),  # slipping: red
    (2.60, 2.80, "-0.20", dashboard.RED),  # exactly the threshold
    (2.70, 2.80, "-0.10", {}),
    (3.00, 2.80, "+0.20", dashboard.GREEN),
    (2.80, 2.80, "+0.00", {}),
])
def test_a_slipping_exhibition_is_red_and_a_rising_one_green(week: float, ever: float,
                                                              shown: str, style: dict) -> None:
    span = dashboard.trend(ratings(week, ever))
    assert (span.children, span.style) == (shown, style)


def test_the_dashboard_session_is_read_only_with_a_short_timeout(
        stored: tuple[Database, date]) -> None:
    database, _ = stored
    conn = dashboard.connect(settings(database))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("5s",)
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("DELETE FROM rejected_message")
    finally:
        conn.close()
    assert database.scalar("SELECT count(*) FROM rejected_message") == len(REJECTS)


# ---------------------------------------------------------------- one read for every viewer


def test_every_viewer_shares_one_database_read_per_interval(
        stored: tuple[Database, date], caplog: pytest.LogCaptureFixture) -> None:
    database, today = stored
    reads: list[dashboard.Snapshot] = []
    good = settings(database)
    target = [good]

    def counted() -> dashboard.Snapshot:
        snapshot = dashboard.read_snapshot(target[0])
        reads.append(snapshot)
        return snapshot

    cache = dashboard.SnapshotCache(counted, interval_s=3600)
    seen: list[dashboard.Reading] = []
    threads = [threading.Thread(target=lambda: seen.extend(cache.get() for _ in range(5)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(reads) == 1 and len(seen) == 40
    assert all(r.snapshot is reads[0] and r.failing_since is None for r in seen)
    assert reads[0].today == today and len(reads[0].emergencies) == 2

    # The database goes away: the last good snapshot stays, stale since a time; one log line.
    failing = dashboard.SnapshotCache(counted, interval_s=0)
    assert failing.get().snapshot is not None
    target[0] = db.DatabaseSettings(good.host, good.port, "no_such_database", good.user,
                                    good.password, sslmode="disable")
    with caplog.at_level(logging.INFO, logger="dashboard"):
        stale = [failing.get() for _ in range(3)]
        assert all(r.snapshot is reads[-1] for r in stale)
        assert stale[0].failing_since is not None
        assert {r.failing_since for r in stale} == {stale[0].failing_since}
        text, style = dashboard.status_line(stale[-1], 15)
        assert style == dashboard.RED
        assert text.startswith(f"Data stale since {reads[-1].read_at:%H:%M:%S} museum time")
        assert "no_such_database" not in text and good.host not in text
        target[0] = good
        assert failing.get().failing_since is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "no_such_database" in errors[0].getMessage()
    assert any("readable again" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- sign-in, without a browser


def test_add_user_hashes_the_password_and_sign_in_checks_it(tmp_path: Path) -> None:
    users = tmp_path / "users"
    result = subprocess.run(
        [sys.executable, "-m", "lmnh.apps.dashboard", "add-user", "guard", "--roles", "security",
         "--password-file", str(users), "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr + users.read_text()
    assert users.stat().st_mode & 0o777 == 0o640
    auth.add_user(users, "curator", frozenset({"exhibitions", "admin"}), "another password")
    entries = auth.read_password_file(users)
    assert entries["guard"].roles == {"security"} and entries["guard"].hash.startswith("$argon2id$")
    assert auth.check_password(entries, "guard", PASSWORD) == entries["guard"]
    assert auth.check_password(entries, "guard", PASSWORD + "x") is None
    assert auth.check_password(entries, "nobody", PASSWORD) is None
    assert entries["curator"].roles == {"exhibitions", "admin"}
    bad_role = subprocess.run(
        [sys.executable, "-m", "lmnh.apps.dashboard", "add-user", "x", "--roles", "root",
         "--password-file", str(users), "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad_role.returncode == 2 and "unknown role 'root'" in bad_role.stderr
    assert set(auth.read_password_file(users)) == {"guard", "curator"}


def test_identity_provider_groups_map_to_roles() -> None:
    groups = {"security": "0b1c-guards", "exhibitions": "curators", "admin": "it"}
    assert auth.roles_from_claims({"groups": ["curators", "other"]}, "groups", groups) == \
        {"exhibitions"}
    assert auth.roles_from_claims({"roles": "it"}, "roles", groups) == {"admin"}
    assert auth.roles_from_claims({"sub": "x"}, "groups", groups) == frozenset()
    viewer = auth.Viewer("k", "n", frozenset({"security"}))
    assert viewer.sees("requests") and not viewer.sees("ratings") and not viewer.sees("quality")
    assert all(auth.ANONYMOUS.sees(section) for section in auth.SECTION_ROLES)


def dashboard_env(database: Database, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return keep | database.env() | {"DASHBOARD_REFRESH_S": "2"} | extra


def test_without_a_key_or_a_way_to_sign_in_it_refuses_to_start(
        database: Database, tmp_path: Path) -> None:
    for extra, problem in (({}, "DASHBOARD_SECRET_KEY is required"),
                           ({"DASHBOARD_SECRET_KEY": SECRET_KEY}, "set DASHBOARD_PASSWORD_FILE"),
                           ({"DASHBOARD_SECRET_KEY": "short"}, "at least 32 characters")):
        result = subprocess.run([sys.executable, "-m", "lmnh.apps.dashboard",
                                 "--port", str(free_port())], env=dashboard_env(database, **extra),
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and problem in result.stderr, result.stderr
        assert "short" not in result.stderr  # the key is never printed


# ---------------------------------------------------------------- served for real


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_the_dashboard_unit_is_hardened() -> None:
    unit = ROOT / "deploy" / "lmnh-dashboard.service"
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=120)
    score = float(result.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 2.0, result.stdout
    text = unit.read_text()
    assert "--bind 127.0.0.1:" in text and "--workers 1" in text
    assert "lmnh.apps.dashboard:wsgi()" in text


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # an answer, even a refusal: the server is up
    except OSError:
        return False


@contextmanager
def served(command: list[str], env: dict[str, str], cwd: Path, url: str) -> Iterator[Path]:
    """The server running until the block ends; yields its log file."""
    log_path = cwd / "dashboard.out"
    with log_path.open("wb") as out:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: responds(url) or server.poll() is not None, 60, "the dashboard")
        assert server.poll() is None, log_path.read_text()
        yield log_path
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def gunicorn(env: dict[str, str], cwd: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
               "--threads", "4", "--pythonpath", str(ROOT), "lmnh.apps.dashboard:wsgi()"]
    with served(command, env, cwd, url) as log_path:
        yield url, log_path


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users"
    for name, role in USERS.items():
        auth.add_user(path, name, frozenset({role}), PASSWORD)  # type: ignore[arg-type]
    return path


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def anonymous_status(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers.get("Location", "")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Location", "")


def callback_body(outputs: list[tuple[str, str]]) -> dict[str, Any]:
    """The request Dash's renderer sends for a callback fired by the refresh tick."""
    return {"output": "..." .join(f"{i}.{p}" for i, p in outputs).join(("..", ".."))
            if len(outputs) > 1
            else f"{outputs[0][0]}.{outputs[0][1]}",
            "outputs": [{"id": i, "property": p} for i, p in outputs] if len(outputs) > 1
            else {"id": outputs[0][0], "property": outputs[0][1]},
            "inputs": [{"id": "tick", "property": "n_intervals", "value": 1}],
            "changedPropIds": ["tick.n_intervals"], "state": []}


RATINGS_CALLBACK = callback_body([("ratings-panel", "children"),
                                  ("ratings-distribution", "figure")])
REQUESTS_CALLBACK = callback_body([("emergencies-panel", "children"),
                                   ("requests-summary", "children"),
                                   ("requests-by-hour", "figure"), ("floors-panel", "children")])
REJECTS_CALLBACK = callback_body([("rejects-panel", "children")])


def shown_day(page: Any) -> date:
    """The museum day the page says it shows ("Monday 23 November 2026, updated ...")."""
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes(', updated ')",
        timeout=60_000)
    return datetime.strptime(page.inner_text("#status").split(",")[0], "%A %d %B %Y").date()


def rows(page: Any, selector: str) -> list[list[str]]:
    return [[cell.strip() for cell in row.locator("td").all_inner_texts()]
            for row in page.locator(f"{selector} tbody tr").all()]


def traces(page: Any, graph: str) -> dict[str, dict[str, Any]]:
    return {trace["name"]: trace for trace in page.evaluate(
        f"document.querySelector('#{graph} .js-plotly-plot')?.data ?? []")}


def post_from_page(page: Any, path: str, body: dict[str, Any]) -> int:
    """A request from inside the page, with its session cookie: what a curious viewer can send."""
    return page.evaluate("""async ([path, body]) => (await fetch(path, {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)})).status""",
                         [path, body])


def sign_in(browser: Any, url: str, name: str, password: str = PASSWORD) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    assert page.url == url + "login"  # the page itself redirects to the sign-in form
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-button")
    return page


@needs_chromium
@pytest.mark.slow
def test_each_role_sees_its_part_through_gunicorn(stored: tuple[Database, date], users_file: Path,
                                                  tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, data_day = stored
    env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                        DASHBOARD_PASSWORD_FILE=str(users_file))
    with gunicorn(env, tmp_path) as (url, log_path), sync_playwright() as playwright:
        # Without a session nothing answers but the sign-in page.
        assert anonymous_status(url) == (302, "/login")
        assert anonymous_status(url + "login")[0] == 200
        for path in ("_dash-layout", "_dash-dependencies", "_dash-component-suites/x.js"):
            assert anonymous_status(url + path)[0] == 401, path
        assert anonymous_status(url + "_dash-update-component", "POST",
                                json.dumps(REQUESTS_CALLBACK).encode())[0] == 401

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        wrong = sign_in(browser, url, "guard", "not the password")
        assert "Unknown user or wrong password" in wrong.inner_text("#login-error")
        assert wrong.locator("#status").count() == 0

        guard = sign_in(browser, url, "guard")
        day = shown_day(guard)
        guard.wait_for_selector("#emergencies-panel h2")
        assert rows(guard, "#emergencies") == [list(r) for r in sql_emergencies(database, day)]
        assert [row[3] for row in rows(guard, "#emergencies")] == shown_alerts(data_day, day)
        guard.wait_for_function("() => document.querySelector('#weekly-requests .js-plotly-plot')"
                                "?.data?.length > 0", timeout=60_000)
        for hidden in ("#ratings-panel", "#weekly-ratings", "#rejects-panel", "#ratings"):
            assert guard.locator(hidden).count() == 0, hidden
        assert post_from_page(guard, "/_dash-update-component", RATINGS_CALLBACK) == 403
        assert post_from_page(guard, "/_dash-update-component", REJECTS_CALLBACK) == 403
        assert post_from_page(guard, "/_dash-update-component", REQUESTS_CALLBACK) == 200

        curator = sign_in(browser, url, "curator")
        day = shown_day(curator)
        curator.wait_for_selector("#ratings tbody tr")
        curator.wait_for_selector("#range-ratings tbody tr")
        for hidden in ("#emergencies-panel", "#requests-by-hour", "#weekly-requests",
                       "#rejects-panel"):
            assert curator.locator(hidden).count() == 0, hidden
        assert "emergenc" not in curator.inner_text("body").lower()
        assert post_from_page(curator, "/_dash-update-component", REQUESTS_CALLBACK) == 403

        boss = sign_in(browser, url, "boss")
        check_the_whole_page(boss, database, data_day)
        check_the_filters_and_trends(boss, database)
        boss.click("#logout")
        assert boss.url == url + "login"
        assert post_from_page(boss, "/_dash-update-component", REQUESTS_CALLBACK) == 401
        browser.close()
    log = log_path.read_text()
    assert "signed in: boss (admin)" in log and "failed sign-in for user 'guard'" in log
    assert PASSWORD not in log and SECRET_KEY not in log


def check_the_whole_page(page: Any, database: Database, data_day: date) -> None:
    """An admin's page: every panel, each against SQL for the day the page shows."""
    day = shown_day(page)
    for panel in ("#rejects-panel", "#ratings-panel", "#emergencies-panel"):
        page.wait_for_function(f"() => document.querySelector('{panel}')?.innerText.length > 0",
                               timeout=60_000)
    page.wait_for_function("() => document.querySelector('#requests-by-hour .js-plotly-plot')"
                           "?.data?.length > 0", timeout=60_000)
    assert rows(page, "#emergencies") == [list(row) for row in sql_emergencies(database, day)]
    emergencies_then = sum(1 for _, value, ago, _ in REQUESTS
                           if value == EMERGENCY and data_day - timedelta(days=ago) == day)
    assert (f"{emergencies_then} emergencies today" if emergencies_then else
            "No emergencies today") in page.inner_text("#emergencies-panel")

    means = {name: f"{mean:.2f} ({count})"
             for name, (mean, count) in sql_mean_ratings(database, day, day).items()}
    assert {row[0]: row[2] for row in rows(page, "#ratings")} == \
        {name: means.get(name, dashboard.NONE) for name in NAMES}
    assert {reason: int(count) for reason, count in rows(page, "#rejects")} == \
        sql_rejects(database, day)

    shown = traces(page, "requests-by-hour")
    for name, value in (("Assistance", ASSISTANCE), ("Emergency", EMERGENCY)):
        by_hour = sql_requests_by_hour(database, value, day)
        assert shown[f"{name} today"]["y"] == \
            [by_hour.get(h, 0) for h in shown[f"{name} today"]["x"]]
        usual = sql_usual_by_hour(database, value, day)
        usual_trace = shown[f"{name}, usual {day:%A}"]
        assert usual_trace["y"] == pytest.approx([usual.get(h, 0) for h in usual_trace["x"]])


def check_the_filters_and_trends(page: Any, database: Database) -> None:
    """Choose days and exhibitions in the browser; the trends must be SQL's for that choice."""
    day = shown_day(page)
    first, last = day - timedelta(days=20), day - timedelta(days=1)
    names = NAMES[:2]
    page.fill("#first-day", first.isoformat())
    page.fill("#last-day", last.isoformat())
    page.get_by_label(NAMES[2]).uncheck()
    expected = sql_weekly_means(database, first, last, names)
    page.wait_for_function(
        """([names, first, last]) => {
            const data = document.querySelector('#weekly-ratings .js-plotly-plot')?.data ?? [];
            return JSON.stringify(data.map(t => t.name).sort()) === JSON.stringify(names)
                && data.length > 0 && data[0].x[0] === first && data[0].x.at(-1) === last;}""",
        arg=[sorted(expected), dashboard.monday(first).isoformat(),
             dashboard.monday(last).isoformat()], timeout=60_000)
    for name, trace in traces(page, "weekly-ratings").items():
        shown = {week: mean for week, mean in zip(trace["x"], trace["y"], strict=True)
                 if mean is not None}
        assert shown.keys() == expected[name].keys(), name
        for week, mean in shown.items():
            assert mean == pytest.approx(expected[name][week], rel=1e-12), (name, week)
    summary = sql_mean_ratings(database, first, last, names)
    page.wait_for_function(f"() => document.querySelectorAll('#range-ratings tbody tr').length"
                           f" === {len(names)}", timeout=60_000)
    for name, count, mean in rows(page, "#range-ratings"):
        expected_mean, expected_count = summary.get(name, (None, 0))
        assert int(count) == expected_count, name
        if expected_mean is None:
            assert mean == dashboard.NONE
        else:
            assert mean == f"{expected_mean:.2f}", name
    expected_requests = {name: sql_weekly_requests(database, first, last, names, value)
                         for name, value in (("Assistance", ASSISTANCE),
                                             ("Emergency", EMERGENCY))}

    def requests_shown() -> dict[str, dict[str, int]]:
        return {name: {w: n for w, n in zip(trace["x"], trace["y"], strict=True) if n}
                for name, trace in traces(page, "weekly-requests").items()}

    # Each filter change fires the callback again: wait for the last one's answer.
    wait_until(lambda: requests_shown() == expected_requests, 30,
               f"weekly requests {expected_requests}", interval=0.5)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)


def set_connections(database: Database, allowed: bool) -> None:
    conn = psycopg2.connect(database.server.url(database.server.admin_database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS {allowed}')
    finally:
        conn.close()


@needs_chromium
@pytest.mark.slow
def test_with_the_database_away_the_page_says_stale_since_and_nothing_else(
        stored: tuple[Database, date], tmp_path: Path) -> None:
    """Also: `lmnh-dashboard --allow-anonymous` serves everything, on 127.0.0.1 only."""
    from playwright.sync_api import sync_playwright

    database, _ = stored
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "lmnh.apps.dashboard", "--port", str(port),
               "--allow-anonymous"]
    with served(command, dashboard_env(database), tmp_path, url) as log_path, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(url)
        day = shown_day(page)
        page.wait_for_selector("#rejects tbody tr", timeout=60_000)
        emergencies = [list(r) for r in sql_emergencies(database, day)]
        set_connections(database, False)
        try:
            page.wait_for_function(
                "() => document.querySelector('#status').innerText.startsWith('Data stale since')",
                timeout=60_000)
            status = page.locator("#status")
            assert status.evaluate("e => getComputedStyle(e).color") == "rgb(198, 40, 40)"
            body = page.inner_text("body")
            for secret in (database.name, database.server.host, str(database.server.port),
                           database.server.user, "FATAL", "connection", "accepting"):
                assert secret not in body, secret
            # The panels keep what they last showed.
            assert rows(page, "#emergencies") == emergencies
            wait_until(lambda: "cannot read the database" in log_path.read_text(), 30,
                       "the server's log line")
        finally:
            set_connections(database, True)
        page.wait_for_function(
            "() => document.querySelector('#status').innerText.includes(', updated ')",
            timeout=60_000)
        browser.close()
    log = log_path.read_text()
    assert log.count("cannot read the database") == 1, log  # one line per fault, not per refresh
    assert database.name in log and "readable again" in log


# ---------------------------------------------------------------- OIDC, against a local provider

CLIENT_ID, CLIENT_SECRET = "lmnh-dashboard", "client-secret-for-the-test-only"
GUARDS_GROUP = "5d1a0c3e-guards"  # Entra ID puts group object ids in the claim


class LocalProvider:
    """A minimal OpenID provider (authorization code flow, RS256 ID tokens): it signs in
    `self.claims` without asking, and checks the client's secret, code and redirect address.

    Each sign-in also gets a refresh token, used once: a refresh (grant_type=refresh_token)
    answers a new one and an ID token with the claims `self.directory` holds for that subject
    now (a test edits them, as an administrator edits the groups); a subject in `self.revoked`
    gets invalid_grant."""

    def __init__(self, dashboard_url: str) -> None:
        from flask import Flask, jsonify, redirect, request
        from joserfc import jwt
        from joserfc.jwk import RSAKey
        from werkzeug.serving import make_server

        self.claims: dict[str, Any] = {}
        self.tokens_issued = 0
        self.directory: dict[str, dict[str, Any]] = {}  # by subject: the claims as they are now
        self.revoked: set[str] = set()
        self.refreshes: list[str] = []  # the subject of each refresh answered
        refresh_tokens: dict[str, str] = {}  # token -> subject
        key = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
        codes: dict[str, str] = {}
        app = Flask("provider")
        self.port = free_port()
        issuer = f"http://127.0.0.1:{self.port}"
        callback = dashboard_url + "auth/callback"
        self.discovery_url = issuer + "/.well-known/openid-configuration"

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(issuer=issuer, authorization_endpoint=issuer + "/authorize",
                           token_endpoint=issuer + "/token", jwks_uri=issuer + "/jwks",
                           response_types_supported=["code"], subject_types_supported=["public"],
                           id_token_signing_alg_values_supported=["RS256"])

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(keys=[key.as_dict(private=False)])

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args
            if (args.get("client_id"), args.get("redirect_uri"),
                    args.get("response_type")) != (CLIENT_ID, callback, "code"):
                return "bad authorization request", 400
            code = os.urandom(16).hex()
            codes[code] = args["nonce"]
            return redirect(f"{callback}?code={code}&state={args['state']}")

        @app.post("/token")
        def token() -> Any:
            client = request.authorization
            if client is None or (client.username, client.password) != (CLIENT_ID,
                                                                        CLIENT_SECRET):
                return jsonify(error="invalid_client"), 401
            now = int(datetime.now().timestamp())
            if request.form.get("grant_type") == "refresh_token":
                subject = refresh_tokens.pop(request.form.get("refresh_token", ""), None)
                if subject is None or subject in self.revoked:
                    return jsonify(error="invalid_grant"), 400
                claims = {"iss": issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300} | \
                    self.directory[subject]
                self.refreshes.append(subject)
            else:
                nonce = codes.pop(request.form.get("code", ""), None)
                if nonce is None or request.form.get("redirect_uri") != callback:
                    return jsonify(error="invalid_grant"), 400
                claims = {"iss": issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                          "nonce": nonce} | self.claims
                subject = claims.get("sub", "")
                self.directory.setdefault(subject, dict(self.claims))
                self.tokens_issued += 1
            refresh_token = os.urandom(16).hex()
            refresh_tokens[refresh_token] = subject
            id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, key)
            return jsonify(access_token=os.urandom(8).hex(), token_type="Bearer",
                           expires_in=300, id_token=id_token, refresh_token=refresh_token)

        self._server = make_server("127.0.0.1", self.port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalProvider:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()


@needs_chromium
@pytest.mark.slow
def test_oidc_sign_in_maps_the_providers_groups_to_roles(stored: tuple[Database, date],
                                                        tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    database, _ = stored
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with LocalProvider(url) as provider:
        env = dashboard_env(database, DASHBOARD_SECRET_KEY=SECRET_KEY,
                            DASHBOARD_OIDC_DISCOVERY_URL=provider.discovery_url,
                            DASHBOARD_OIDC_CLIENT_ID=CLIENT_ID,
                            DASHBOARD_OIDC_CLIENT_SECRET=CLIENT_SECRET,
                            DASHBOARD_GROUP_SECURITY=GUARDS_GROUP)
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                   "--workers", "1", "--threads", "4", "--pythonpath", str(ROOT),
                   "lmnh.apps.dashboard:wsgi()"]
        with served(command, env, tmp_path, url) as log_path, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_FLAGS)

            def sign_in_with_provider(claims: dict[str, Any]) -> Any:
                provider.claims = claims
                page = browser.new_context().new_page()
                page.goto(url)
                assert page.url == url + "login" and page.locator("#username").count() == 0
                page.click("#login-oidc")
                return page

            guard = sign_in_with_provider({"sub": "u-1", "preferred_username": "g.guard",
                                           "groups": ["other-group", GUARDS_GROUP]})
            day = shown_day(guard)
            guard.wait_for_selector("#emergencies-panel h2", timeout=60_000)
            assert rows(guard, "#emergencies") == [list(r) for r in sql_emergencies(database, day)]
            assert guard.inner_text("#viewer").strip() == "g.guard"
            for hidden in ("#ratings-panel", "#weekly-ratings", "#rejects-panel"):
                assert guard.locator(hidden).count() == 0, hidden
            assert post_from_page(guard, "/_dash-update-component", RATINGS_CALLBACK) == 403

            outsider = sign_in_with_provider({"sub": "u-2", "preferred_username": "visitor",
                                              "groups": ["other-group"]})
            outsider.wait_for_selector("#login-error")
            assert "none of the dashboard's groups" in outsider.inner_text("#login-error")
            assert post_from_page(outsider, "/_dash-update-component", REQUESTS_CALLBACK) == 401
            browser.close()
        assert provider.tokens_issued == 2
    log = log_path.read_text()
    assert "signed in: g.guard (security)" in log and "'visitor' is in no dashboard group" in log
    assert CLIENT_SECRET not in log and SECRET_KEY not in log


def test_env_example_lists_every_dashboard_setting() -> None:
    named = {line.lstrip("# ").split("=", 1)[0]
             for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert set(DashboardSettings.model_fields) <= named
