"""The dashboard: its queries against SQL on known rows, and the page in a real headless browser."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import date, datetime, time, timedelta
from pathlib import Path

import psycopg2
import pytest
from conftest import ROOT, Database, wait_until

import dashboard
import db
from embedded import free_port
from s3_metadata import Exhibition

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "test-artifacts" / "dashboard.png"
TODAY = dashboard.museum_today()
EXHIBITIONS = [
    Exhibition(1, "EXH_01", "Adaptation", "Vault", "Entomology", date(2019, 5, 1), "Insects."),
    Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1), "Whales."),
    Exhibition(4, "EXH_04", "Our Polluted World", "3", "Ecology", date(2021, 5, 12), "Pollution."),
]
# (site, value, museum-local day, "HH:MM"): rows today, on the two earlier same weekdays (the
# "usual" line), yesterday and a month ago (neither is today; the month is in "all time" only).
RATINGS = [
    (3, 4, TODAY, "09:05"), (3, 3, TODAY, "10:10"), (3, 3, TODAY, "11:20"), (3, 1, TODAY, "14:00"),
    (4, 2, TODAY, "09:30"), (4, 0, TODAY, "12:00"),
    (3, 0, TODAY - timedelta(days=7), "10:00"), (1, 4, TODAY - timedelta(days=7), "11:00"),
    (1, 3, TODAY - timedelta(days=1), "16:00"), (4, 4, TODAY - timedelta(days=14), "09:00"),
    (3, 2, TODAY - timedelta(days=30), "13:00"),
]
ASSISTANCE, EMERGENCY = 0, 1
REQUESTS = [
    (4, EMERGENCY, TODAY, "15:40"),  # the latest emergency, written first on purpose
    (3, ASSISTANCE, TODAY, "09:30"), (4, ASSISTANCE, TODAY, "10:15"),
    (4, ASSISTANCE, TODAY, "10:45"), (3, EMERGENCY, TODAY, "11:05"),
    (1, EMERGENCY, TODAY - timedelta(days=1), "12:00"),
    (3, ASSISTANCE, TODAY - timedelta(days=7), "10:05"),
    (4, ASSISTANCE, TODAY - timedelta(days=7), "10:50"),
    (3, EMERGENCY, TODAY - timedelta(days=7), "11:30"),
    (1, ASSISTANCE, TODAY - timedelta(days=14), "10:20"),
    (1, ASSISTANCE, TODAY - timedelta(days=14), "09:10"),
]
REJECTS = [("invalid_val", TODAY, "10:00")] * 3 + [("unknown_site", TODAY, "11:00")] * 2 + [
    ("missing_key", TODAY - timedelta(days=1), "10:00")] * 4


def local(day: date, hhmm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), dashboard.MUSEUM_TZ)


def settings(database: Database) -> db.DatabaseSettings:
    server = database.server
    return db.DatabaseSettings(server.host, server.port, database.name, server.user,
                               server.password, sslmode="disable",
                               statement_timeout_ms=dashboard.STATEMENT_TIMEOUT_MS)


@pytest.fixture
def stored(database: Database) -> Database:
    conn = db.connect(settings(database))
    db.upsert_exhibitions(conn, EXHIBITIONS)
    db.write_interactions(
        conn,
        [db.Interaction(site, value, local(day, at), "test", 0, n)
         for n, (site, value, day, at) in enumerate(RATINGS)],
        [db.Interaction(site, value, local(day, at), "test", 0, n)
         for n, (site, value, day, at) in enumerate(REQUESTS)],
        [db.Rejected(reason, local(day, at), "test", 0, n)
         for n, (reason, day, at) in enumerate(REJECTS)])
    conn.close()
    return database


# What the panels must show, by SQL on the tables (not the views the dashboard reads).
LOCAL_DATE = "(event_at AT TIME ZONE 'Europe/London')::date"


def sql_emergencies(database: Database) -> list[tuple[str, str, str]]:
    return database.query(f"""
        SELECT to_char(event_at AT TIME ZONE 'Europe/London', 'HH24:MI:SS'),
               public_id || ' ' || exhibition_name, floor_name
        FROM request_interaction JOIN exhibition USING (exhibition_id) JOIN floor USING (floor_id)
        WHERE request_value = 1 AND {LOCAL_DATE} = %s
        ORDER BY event_at DESC""", (TODAY,))


def sql_mean_ratings(database: Database, first_day: date) -> dict[str, tuple[float, int]]:
    """Mean rating and number of ratings per exhibition, from `first_day` to today."""
    rows = database.query(f"""
        SELECT public_id || ' ' || exhibition_name, avg(rating_value), count(*)::int
        FROM rating_interaction JOIN exhibition USING (exhibition_id)
        WHERE {LOCAL_DATE} BETWEEN %s AND %s GROUP BY 1""", (first_day, TODAY))
    return {exhibition: (float(mean), count) for exhibition, mean, count in rows}


def sql_requests_today_by_hour(database: Database, value: int) -> dict[int, int]:
    return dict(database.query(f"""
        SELECT extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, count(*)
        FROM request_interaction WHERE request_value = %s AND {LOCAL_DATE} = %s
        GROUP BY 1""", (value, TODAY)))


def sql_usual_by_hour(database: Database, value: int) -> dict[int, float]:
    """Requests per hour over the two earlier same weekdays that have rows, per day."""
    earlier = [TODAY - timedelta(days=7), TODAY - timedelta(days=14)]
    return {hour: count / 2 for hour, count in database.query(f"""
        SELECT extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, count(*)
        FROM request_interaction WHERE request_value = %s AND {LOCAL_DATE} = ANY(%s)
        GROUP BY 1""", (value, earlier))}


def sql_rejects_today(database: Database) -> dict[str, int]:
    return dict(database.query(
        "SELECT reason, count(*)::int FROM rejected_message"
        " WHERE (rejected_at AT TIME ZONE 'Europe/London')::date = %s GROUP BY 1", (TODAY,)))


def test_the_queries_return_what_sql_on_the_tables_says(stored: Database) -> None:
    conn = dashboard.connect(settings(stored))
    try:
        emergencies = dashboard.read_emergencies(conn, TODAY)
        ratings = dashboard.read_ratings(conn, TODAY)
        requests = dashboard.read_requests_by_hour(conn, TODAY)
        floors = dashboard.read_requests_by_floor(conn, TODAY)
        rejects = dashboard.read_rejects(conn, TODAY)
    finally:
        conn.close()

    assert [(f"{e.at:%H:%M:%S}", e.exhibition, e.floor) for e in emergencies] == \
        sql_emergencies(stored)
    assert emergencies[0].exhibition == "EXH_04 Our Polluted World" and len(emergencies) == 2

    for period, first_day in zip(dashboard.PERIODS, (TODAY, TODAY - timedelta(days=6), date.min),
                                 strict=True):
        expected = sql_mean_ratings(stored, first_day)
        rated = {r.exhibition: r.periods[period] for r in ratings if period in r.periods}
        assert rated.keys() == expected.keys(), period
        for exhibition, shown in rated.items():
            mean, count = expected[exhibition]
            assert shown.ratings == count, (period, exhibition)
            # The daily view rounds a day's mean to 3 decimals.
            assert shown.mean == pytest.approx(mean, abs=1e-3), (period, exhibition)
    whales = next(r for r in ratings if r.exhibition == "EXH_03 Cetacean Sensations")
    assert whales.floor == "1" and whales.periods["Today"].shares == (0, 0.25, 0, 0.5, 0.25)

    hours = requests.hours
    for today, usual, value in ((requests.assistance, requests.usual_assistance, ASSISTANCE),
                                (requests.emergency, requests.usual_emergency, EMERGENCY)):
        by_hour = sql_requests_today_by_hour(stored, value)
        assert today == [by_hour.get(hour, 0) for hour in hours]
        expected_usual = sql_usual_by_hour(stored, value)
        assert usual == [expected_usual.get(hour, 0) for hour in hours]
    assert requests.usual_days == 2 and hours == list(range(8, 19))

    assert floors == [dashboard.FloorRequests("1", 1, 1), dashboard.FloorRequests("3", 2, 1)]
    assert dict(rejects) == sql_rejects_today(stored) == {"invalid_val": 3, "unknown_site": 2}
    assert rejects[0] == ("invalid_val", 3)  # most frequent first


def test_with_no_earlier_weekday_there_is_no_usual_line() -> None:
    rows = [(TODAY, 10, 2, 1), (TODAY - timedelta(days=7), 23, 0, 0)]
    assert dashboard.compare_with_usual(rows[:1], TODAY).usual_days == 0
    with_one = dashboard.compare_with_usual(rows, TODAY)
    assert with_one.usual_days == 1 and with_one.hours[-1] == 23  # hours outside 8..18 kept
    assert with_one.assistance[with_one.hours.index(10)] == 2


def test_the_dashboard_session_is_read_only_with_a_short_timeout(stored: Database) -> None:
    conn = dashboard.connect(settings(stored))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("5s",)
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("DELETE FROM rejected_message")
    finally:
        conn.close()
    assert stored.scalar("SELECT count(*) FROM rejected_message") == len(REJECTS)


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: the browser test needs"
                    " Debian's chromium package (.ci/run installs it)")
def test_the_page_shows_what_the_database_holds(stored: Database, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")} | stored.env()
    log_path = tmp_path / "dashboard.out"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, str(ROOT / "dashboard.py"), "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: responds(url) or server.poll() is not None, 30, "the dashboard")
        assert server.poll() is None, log_path.read_text()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#rejects tbody tr", timeout=20_000)
            page.wait_for_function("document.querySelector('#requests-by-hour .js-plotly-plot')"
                                   "?.data?.length > 0", timeout=20_000)

            def rows(selector: str) -> list[list[str]]:
                return [[cell.strip() for cell in row.locator("td").all_inner_texts()]
                        for row in page.locator(f"{selector} tbody tr").all()]

            assert rows("#emergencies") == [list(row) for row in sql_emergencies(stored)]
            assert rows("#emergencies")[0][1:] == ["EXH_04 Our Polluted World", "3"]
            assert "2 emergencies today" in page.inner_text("#emergencies-panel")

            today = {name: f"{mean:.2f} ({count})"
                     for name, (mean, count) in sql_mean_ratings(stored, TODAY).items()}
            shown = {row[0]: row[2] for row in rows("#ratings")}
            assert shown == {f"{e.public_id} {e.name}": today.get(f"{e.public_id} {e.name}",
                                                                  dashboard.NONE)
                             for e in EXHIBITIONS}

            assert {reason: int(count) for reason, count in rows("#rejects")} == \
                sql_rejects_today(stored)

            traces = {trace["name"]: trace for trace in page.evaluate(
                "document.querySelector('#requests-by-hour .js-plotly-plot').data")}
            weekday = f"{TODAY:%A}"
            for name, value in (("Assistance", ASSISTANCE), ("Emergency", EMERGENCY)):
                today_trace = traces[f"{name} today"]
                by_hour = sql_requests_today_by_hour(stored, value)
                assert today_trace["y"] == [by_hour.get(h, 0) for h in today_trace["x"]]
                usual_trace = traces[f"{name}, usual {weekday}"]
                usual = sql_usual_by_hour(stored, value)
                assert usual_trace["y"] == [usual.get(h, 0) for h in usual_trace["x"]]

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
