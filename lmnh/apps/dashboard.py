"""The LMNH live dashboard: emergencies, ratings, requests, trends and rejects, behind a login.

Served by gunicorn (`gunicorn 'lmnh.apps.dashboard:wsgi()'`, deploy/lmnh-dashboard.service)
behind a TLS reverse proxy; `lmnh-dashboard` runs it on 127.0.0.1 only, for a desk or the demo
(`--allow-anonymous` skips the sign-in there). `lmnh-dashboard add-user NAME --roles ...
--password-file FILE` adds a user to the password file. Configured by the DATABASE_* and
DASHBOARD_* settings (the environment, then `.env`). It reads only the views of schema.sql, in
read-only transactions with a short statement timeout.

Functional core: the `read_*` functions run one query each and return plain data, which the tests
check against SQL, and `weekly`/`range_ratings` turn daily figures into what the filters ask.
Imperative shell: one `SnapshotCache` per process reads the database at most once per refresh
interval for every viewer; the Dash layout shows each viewer the parts of their roles, and every
callback checks the role of its panel. "Today" is the museum's date (`museum_zone`).
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import functools
import getpass
import logging
import sys
import threading
import time as monotonic_clock
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html
from dash.exceptions import PreventUpdate
from flask import abort
from flask_wtf.csrf import generate_csrf
from plotly.subplots import make_subplots
from werkzeug.middleware.proxy_fix import ProxyFix

import db
from lmnh.apps import dashboard_auth as auth
from lmnh.settings import EXIT_CONFIG, DashboardSettings, MuseumEnvironment, read_settings

log = logging.getLogger("dashboard")
STATEMENT_TIMEOUT_MS = 5_000
USUAL_WEEKS = 8  # "usual" is the mean over up to this many earlier same weekdays
OPEN_HOURS = range(8, 19)  # 08:45 to 18:15, by the hour
RATINGS = ("Terrible", "Bad", "Neutral", "Good", "Amazing")  # rating_value 0 .. 4
RATING_COLOURS = ("#c62828", "#ef6c00", "#9e9e9e", "#7cb342", "#2e7d32")
PERIODS = ("Today", "Last 7 days", "All time")
SLIPPING = 0.2  # a 7-day mean this far below the all-time mean is shown in red
SHOWN_EMERGENCIES = 10  # the banner lists the latest ones
TREND_WEEKS = 8  # the trends' date range starts this many weeks back by default
NONE = "-"  # a mean over no ratings


@functools.cache
def museum_zone() -> ZoneInfo:
    """The museum's time zone (MUSEUM_TIMEZONE): the one place the dashboard takes it from."""
    return ZoneInfo(MuseumEnvironment().MUSEUM_TIMEZONE)


def museum_now() -> datetime:
    return datetime.now(museum_zone())


def museum_today() -> date:
    return museum_now().date()


def connect(settings: db.DatabaseSettings) -> db.Connection:
    """A read-only session; each refresh reads one snapshot (one repeatable-read transaction)."""
    return db.connect_reader(replace(settings, statement_timeout_ms=STATEMENT_TIMEOUT_MS),
                             "lmnh-dashboard")


# ---------------------------------------------------------------- functional core: the queries


@dataclass(frozen=True, slots=True)
class Emergency:
    at: datetime  # museum-local time
    exhibition: str  # "EXH_03 Cetacean Sensations"
    floor: str
    alert_sent_at: datetime | None  # museum-local time SNS accepted the alert
    alert_pending: bool  # recorded, not yet accepted by SNS

    def alert(self) -> str:
        """The alert column: when it went out, "pending", or a dash where none was recorded
        (no SNS topic configured, or a press stored before the alert outbox existed)."""
        if self.alert_sent_at is not None:
            return self.alert_sent_at.strftime("%H:%M:%S")
        return "pending" if self.alert_pending else "\u2014"


@dataclass(frozen=True, slots=True)
class PeriodRatings:
    ratings: int
    mean: float
    shares: tuple[float, ...]  # of RATINGS, Terrible .. Amazing


@dataclass(frozen=True, slots=True)
class ExhibitionRatings:
    exhibition: str
    floor: str
    periods: dict[str, PeriodRatings]  # by PERIODS; a period with no ratings is absent


@dataclass(frozen=True, slots=True)
class RequestsByHour:
    """Today's requests per museum-local hour, beside the usual for this weekday."""

    hours: list[int]
    assistance: list[int]
    emergency: list[int]
    usual_assistance: list[float]  # mean per hour over `usual_days` earlier same weekdays
    usual_emergency: list[float]
    usual_days: int


@dataclass(frozen=True, slots=True)
class FloorRequests:
    floor: str
    assistance: int
    emergency: int


def read_emergencies(conn: db.Connection, day: date) -> list[Emergency]:
    """The emergency requests of museum-local `day`, newest first, with their alerts' state."""
    zone = museum_zone()
    midnight = datetime.combine(day, time(), zone)
    with conn.cursor() as cur:
        cur.execute("""
            SELECT event_at_local, exhibition_id || ' ' || exhibition_name, floor,
                   alert_sent_at, alert_pending
            FROM v_request
            WHERE is_emergency AND event_at_utc >= %s AND event_at_utc < %s
            ORDER BY event_at_utc DESC, exhibition_id""",
                    (midnight, midnight + timedelta(days=1)))
        return [Emergency(at, exhibition, floor,
                          None if sent is None else sent.astimezone(zone).replace(tzinfo=None),
                          pending)
                for at, exhibition, floor, sent, pending in cur.fetchall()]


def read_ratings(conn: db.Connection, today: date) -> list[ExhibitionRatings]:
    """Per exhibition and period: ratings, mean and shares, as ratios of the daily view's sums."""
    first_days = [today, today - timedelta(days=6), date.min]  # by PERIODS
    with conn.cursor() as cur:
        cur.execute("""
            SELECT d.exhibition_id || ' ' || d.exhibition_name, d.floor, p.period,
                   sum(d.ratings)::int, sum(d.rating_sum)::numeric / sum(d.ratings),
                   sum(d.n_terrible)::numeric / sum(d.ratings),
                   sum(d.n_bad)::numeric / sum(d.ratings),
                   sum(d.n_neutral)::numeric / sum(d.ratings),
                   sum(d.n_good)::numeric / sum(d.ratings),
                   sum(d.n_amazing)::numeric / sum(d.ratings)
            FROM v_exhibition_daily d
            JOIN unnest(%(periods)s::text[], %(first_days)s::date[]) AS p (period, first_day)
              ON d.local_date BETWEEN p.first_day AND %(today)s
            WHERE d.ratings > 0
            GROUP BY d.exhibition_id, d.exhibition_name, d.floor, p.period
            ORDER BY d.exhibition_id""",
                    {"periods": list(PERIODS), "first_days": first_days, "today": today})
        rows = cur.fetchall()
    exhibitions: dict[tuple[str, str], dict[str, PeriodRatings]] = {}
    for exhibition, floor, period, ratings, mean, *shares in rows:
        exhibitions.setdefault((exhibition, floor), {})[period] = PeriodRatings(
            ratings, float(mean), tuple(float(share) for share in shares))
    return [ExhibitionRatings(exhibition, floor, periods)
            for (exhibition, floor), periods in exhibitions.items()]


def read_requests_by_hour(conn: db.Connection, today: date) -> RequestsByHour:
    """Today's requests by hour, and the mean of the earlier same weekdays that had any presses."""
    days = [today - timedelta(weeks=n) for n in range(USUAL_WEEKS + 1)]
    with conn.cursor() as cur:
        cur.execute("""
            SELECT local_date, local_hour, sum(assistance)::int, sum(emergency)::int
            FROM v_exhibition_hourly
            WHERE local_date = ANY(%s)
            GROUP BY local_date, local_hour""", (days,))
        rows = cur.fetchall()
    return compare_with_usual(rows, today)


def compare_with_usual(rows: Sequence[tuple[date, int, int, int]],
                       today: date) -> RequestsByHour:
    """(day, hour, assistance, emergency) rows -> today beside the mean of the other days."""
    assistance: Counter[int] = Counter()
    emergency: Counter[int] = Counter()
    usual_assistance: Counter[int] = Counter()
    usual_emergency: Counter[int] = Counter()
    for day, hour, assisted, emergencies in rows:
        if day == today:
            assistance[hour] += assisted
            emergency[hour] += emergencies
        else:
            usual_assistance[hour] += assisted
            usual_emergency[hour] += emergencies
    usual_days = len({day for day, *_ in rows if day != today})
    divisor = max(usual_days, 1)
    hours = sorted(set(OPEN_HOURS) | {hour for _, hour, *_ in rows})
    return RequestsByHour(
        hours=hours,
        assistance=[assistance[hour] for hour in hours],
        emergency=[emergency[hour] for hour in hours],
        usual_assistance=[usual_assistance[hour] / divisor for hour in hours],
        usual_emergency=[usual_emergency[hour] / divisor for hour in hours],
        usual_days=usual_days,
    )


def read_requests_by_floor(conn: db.Connection, day: date) -> list[FloorRequests]:
    with conn.cursor() as cur:
        cur.execute("""
            SELECT floor, sum(assistance)::int, sum(emergency)::int
            FROM v_exhibition_daily
            WHERE local_date = %s
            GROUP BY floor
            ORDER BY floor""", (day,))
        return [FloorRequests(*row) for row in cur.fetchall()]


def read_rejects(conn: db.Connection, day: date) -> list[tuple[str, int]]:
    """Rejected messages of museum-local `day` by reason, most frequent first."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT reason, rejected FROM v_rejects_daily
            WHERE local_date = %s
            ORDER BY rejected DESC, reason""", (day,))
        return cur.fetchall()


@dataclass(frozen=True, slots=True)
class Day:
    """One exhibition's figures for one museum-local day: what the trends are made of."""

    exhibition: str
    floor: str
    day: date
    ratings: int
    # The day's rating values summed: a weekly mean is then a ratio of sums, never a mean of
    # daily means.
    rating_sum: int
    assistance: int
    emergency: int


def read_days(conn: db.Connection) -> list[Day]:
    """Every exhibition-day of the daily view (small: one row per exhibition and day)."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT exhibition_id || ' ' || exhibition_name, floor, local_date, ratings::int,
                   rating_sum::int, assistance::int, emergency::int
            FROM v_exhibition_daily
            ORDER BY local_date, exhibition_id""")
        return [Day(*row) for row in cur.fetchall()]


@dataclass(frozen=True, slots=True)
class Choice:
    """What the trends' filters ask for: museum-local days `first` to `last`, some exhibitions."""

    first: date
    last: date
    exhibitions: frozenset[str]


def chosen(days: Iterable[Day], choice: Choice) -> list[Day]:
    return [d for d in days
            if choice.first <= d.day <= choice.last and d.exhibition in choice.exhibitions]


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True, slots=True)
class Weekly:
    """Per ISO week (by its Monday) of the chosen days: mean rating per exhibition, requests."""

    weeks: list[date]
    means: dict[str, list[float | None]]  # None: no ratings that week
    assistance: list[int]
    emergency: list[int]


def weekly(days: Iterable[Day], choice: Choice) -> Weekly:
    weeks = [monday(choice.first) + timedelta(weeks=n)
             for n in range((monday(choice.last) - monday(choice.first)).days // 7 + 1)]
    sums: dict[str, Counter[date]] = defaultdict(Counter)
    counts: dict[str, Counter[date]] = defaultdict(Counter)
    assistance: Counter[date] = Counter()
    emergency: Counter[date] = Counter()
    for d in chosen(days, choice):
        week = monday(d.day)
        sums[d.exhibition][week] += d.rating_sum
        counts[d.exhibition][week] += d.ratings
        assistance[week] += d.assistance
        emergency[week] += d.emergency
    means = {exhibition: [sums[exhibition][w] / counts[exhibition][w]
                          if counts[exhibition][w] else None for w in weeks]
             for exhibition in sorted(counts) if sum(counts[exhibition].values())}
    return Weekly(weeks, means, [assistance[w] for w in weeks], [emergency[w] for w in weeks])


def range_ratings(days: Iterable[Day], choice: Choice) -> list[tuple[str, int, float | None]]:
    """(exhibition, ratings, mean) over the chosen days, for every chosen exhibition."""
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for d in chosen(days, choice):
        sums[d.exhibition] += d.rating_sum
        counts[d.exhibition] += d.ratings
    return [(e, counts[e], sums[e] / counts[e] if counts[e] else None)
            for e in sorted(choice.exhibitions)]


@dataclass(frozen=True, slots=True)
class Snapshot:
    today: date
    read_at: datetime  # museum-local
    emergencies: list[Emergency]
    ratings: list[ExhibitionRatings]
    requests: RequestsByHour
    floors: list[FloorRequests]
    rejects: list[tuple[str, int]]
    days: list[Day]

    @property
    def exhibitions(self) -> list[str]:
        return sorted({d.exhibition for d in self.days} | {r.exhibition for r in self.ratings})


def read_snapshot(settings: db.DatabaseSettings) -> Snapshot:
    now = museum_now()
    today = now.date()
    conn = connect(settings)
    try:
        return Snapshot(
            today=today,
            read_at=now,
            emergencies=read_emergencies(conn, today),
            ratings=read_ratings(conn, today),
            requests=read_requests_by_hour(conn, today),
            floors=read_requests_by_floor(conn, today),
            rejects=read_rejects(conn, today),
            days=read_days(conn),
        )
    finally:
        conn.close()


# ---------------------------------------------------------------- imperative shell: one read


@dataclass(frozen=True, slots=True)
class Reading:
    snapshot: Snapshot | None  # the latest good read, if any
    failing_since: datetime | None  # museum-local; None while reads succeed


class SnapshotCache:
    """One database read per interval, shared by every viewer and callback of this process.

    The read happens in the request that finds the last one due, under a lock: concurrent
    requests wait for it and share it. A failed read is logged (the page never shows why) and
    the last good snapshot is kept.
    """

    def __init__(self, read: Callable[[], Snapshot], interval_s: float) -> None:
        self._read = read
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._due = 0.0
        self._reading = Reading(None, None)
        self._last_problem = ""

    def get(self) -> Reading:
        with self._lock:
            if monotonic_clock.monotonic() >= self._due:
                self._refresh()
                self._due = monotonic_clock.monotonic() + self._interval_s
            return self._reading

    def _refresh(self) -> None:
        try:
            snapshot = self._read()
        except db.Error as error:
            problem = " ".join(str(error).split())
            if problem != self._last_problem:  # one line per new fault, not one per refresh
                log.error("cannot read the database (retrying every %.0f s): %s",
                          self._interval_s, problem)
                self._last_problem = problem
            self._reading = replace(self._reading,
                                    failing_since=self._reading.failing_since or museum_now())
            return
        if self._reading.failing_since is not None:
            log.info("the database is readable again")
        self._last_problem = ""
        self._reading = Reading(snapshot, None)


# ---------------------------------------------------------------- imperative shell: the page

PAGE = {"fontFamily": "Liberation Sans, Arial, sans-serif", "margin": "0 auto",
        "maxWidth": "1200px", "padding": "12px", "color": "#212121"}
PANEL = {"border": "1px solid #ddd", "borderRadius": "6px", "padding": "8px 16px",
         "marginBottom": "16px"}
ALARM = PANEL | {"background": "#b71c1c", "color": "white", "borderColor": "#b71c1c"}
CALM = PANEL | {"background": "#e8f5e9", "color": "#1b5e20"}
TABLE = {"borderCollapse": "collapse", "width": "100%"}
CELL = {"padding": "4px 8px", "textAlign": "left", "borderBottom": "1px solid #ddd"}
NUMBER = CELL | {"textAlign": "right"}
RED = {"color": "#c62828", "fontWeight": "bold"}
GREEN = {"color": "#2e7d32"}


def table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
          numeric_from: int = 1, style: dict[str, str] = TABLE) -> html.Table:
    """Columns from `numeric_from` on are right-aligned; a cell may be a component."""
    def cell(i: int, tag: type[html.Th] | type[html.Td], content: Any) -> html.Th | html.Td:
        return tag(content, style=NUMBER if i >= numeric_from else CELL)

    return html.Table([
        html.Thead(html.Tr([cell(i, html.Th, h) for i, h in enumerate(headers)])),
        html.Tbody([html.Tr([cell(i, html.Td, c) for i, c in enumerate(row)]) for row in rows]),
    ], id=table_id, style=style)


def emergencies_panel(emergencies: list[Emergency]) -> html.Div:
    if not emergencies:
        return html.Div(html.H2("No emergencies today", style={"margin": "4px 0"}), style=CALM)
    rows = [(e.at.strftime("%H:%M:%S"), e.exhibition, e.floor, e.alert())
            for e in emergencies[:SHOWN_EMERGENCIES]]
    title = f"{len(emergencies)} emergenc{'y' if len(emergencies) == 1 else 'ies'} today"
    if len(rows) < len(emergencies):
        title += f" (the latest {len(rows)} shown)"
    return html.Div([
        html.H2(f"{title}, newest first", style={"margin": "4px 0"}),
        table("emergencies", ("Time", "Exhibition", "Floor", "Alert sent"), rows, numeric_from=3,
              style=TABLE | {"fontSize": "1.3em"}),
    ], style=ALARM)


def requests_figure(requests: RequestsByHour, weekday: str) -> go.Figure:
    figure = go.Figure()
    for name, today, usual, colour in (
            ("Assistance", requests.assistance, requests.usual_assistance, "#1565c0"),
            ("Emergency", requests.emergency, requests.usual_emergency, "#c62828")):
        figure.add_bar(x=requests.hours, y=today, name=f"{name} today", marker_color=colour)
        if requests.usual_days:
            figure.add_scatter(x=requests.hours, y=usual, name=f"{name}, usual {weekday}",
                               mode="lines+markers", line={"color": colour, "dash": "dot"})
    figure.update_layout(barmode="group", height=320, margin={"l": 40, "r": 10, "t": 10, "b": 40},
                         legend={"orientation": "h", "y": -0.2}, plot_bgcolor="white")
    figure.update_xaxes(title="hour (museum time)", dtick=1, gridcolor="#eee")
    figure.update_yaxes(title="requests", rangemode="tozero", gridcolor="#eee")
    return figure


def requests_summary(requests: RequestsByHour, weekday: str) -> str:
    today = f"Today: {sum(requests.assistance)} assistance, {sum(requests.emergency)} emergency."
    if not requests.usual_days:
        return f"{today} No earlier {weekday}s to compare with yet."
    return (f"{today} A usual {weekday}, whole day (mean of the last {requests.usual_days}): "
            f"{sum(requests.usual_assistance):.1f} assistance, "
            f"{sum(requests.usual_emergency):.1f} emergency.")


def shown_mean(period: PeriodRatings | None) -> str:
    return NONE if period is None else f"{period.mean:.2f} ({period.ratings})"


def trend(ratings: ExhibitionRatings) -> html.Span:
    """The 7-day mean against the all-time mean: red when the exhibition is slipping."""
    week, ever = (ratings.periods.get(period) for period in PERIODS[1:])
    if week is None or ever is None:
        return html.Span(NONE)
    change = round(week.mean - ever.mean, 2) or 0.0  # never "-0.00"
    style = RED if change <= -SLIPPING else GREEN if change >= SLIPPING else {}
    return html.Span(f"{change:+.2f}", style=style)


def ratings_table(ratings: list[ExhibitionRatings]) -> html.Table:
    rows = [(r.exhibition, r.floor, *(shown_mean(r.periods.get(p)) for p in PERIODS), trend(r))
            for r in ratings]
    headers = ("Exhibition", "Floor", *(f"{p}: mean (ratings)" for p in PERIODS),
               "7 days vs all time")
    return table("ratings", headers, rows, numeric_from=2)


def ratings_figure(ratings: list[ExhibitionRatings]) -> go.Figure:
    """Per period, each exhibition's ratings as shares of Terrible .. Amazing."""
    figure = make_subplots(rows=1, cols=len(PERIODS), shared_yaxes=True, subplot_titles=PERIODS,
                           horizontal_spacing=0.03)
    names = [r.exhibition for r in ratings]
    for column, period in enumerate(PERIODS, start=1):
        for value, (label, colour) in enumerate(zip(RATINGS, RATING_COLOURS, strict=True)):
            shares = [100 * r.periods[period].shares[value] if period in r.periods else 0
                      for r in ratings]
            figure.add_bar(x=shares, y=names, orientation="h", name=label, marker_color=colour,
                           legendgroup=label, showlegend=column == 1, row=1, col=column)
    figure.update_layout(barmode="stack", height=120 + 36 * len(ratings), plot_bgcolor="white",
                         margin={"l": 10, "r": 10, "t": 30, "b": 30},
                         legend={"orientation": "h", "y": -0.15, "traceorder": "normal"})
    figure.update_xaxes(range=[0, 100], ticksuffix="%", gridcolor="#eee")
    figure.update_yaxes(autorange="reversed")
    return figure


def rejects_panel(rejects: list[tuple[str, int]]) -> html.Div:
    if not rejects:
        return html.P("No rejected messages today.")
    total = sum(count for _, count in rejects)
    return html.Div([html.P(f"{total} messages rejected today, by reason:"),
                     table("rejects", ("Reason", "Rejected"), rejects,
                           style=TABLE | {"maxWidth": "480px"})])


def floors_table(floors: list[FloorRequests]) -> html.Table:
    rows = [(f.floor, f.assistance, f.emergency) for f in floors]
    return table("floors", ("Floor", "Assistance", "Emergency"), rows)


def panel(title: str, *children: Any) -> html.Div:
    return html.Div([html.H3(title, style={"margin": "4px 0 8px"}), *children], style=PANEL)


def status_line(reading: Reading, refresh_s: int) -> tuple[str, dict[str, str]]:
    """What the top line says: when the figures were read, or since when they are stale."""
    snap = reading.snapshot
    if reading.failing_since is None and snap is not None:
        return (f"{snap.today:%A %d %B %Y}, updated {snap.read_at:%H:%M:%S} museum time "
                f"(every {refresh_s} s)", {"color": "#616161"})
    since = snap.read_at if snap is not None else reading.failing_since
    assert since is not None
    return f"Data stale since {since:%H:%M:%S} museum time (the figures below are from then).", RED


def weekly_ratings_figure(trend: Weekly) -> go.Figure:
    figure = go.Figure()
    weeks = [w.isoformat() for w in trend.weeks]
    for exhibition, means in trend.means.items():
        figure.add_scatter(x=weeks, y=means,
                           name=exhibition, mode="lines+markers", connectgaps=False)
    figure.update_layout(height=340, margin={"l": 40, "r": 10, "t": 10, "b": 40},
                         plot_bgcolor="white", legend={"orientation": "h", "y": -0.25})
    figure.update_xaxes(title="week starting (Monday)", type="category", gridcolor="#eee")
    figure.update_yaxes(title="mean rating (0 Terrible .. 4 Amazing)", range=[0, 4.1],
                        gridcolor="#eee")
    return figure


def weekly_requests_figure(trend: Weekly) -> go.Figure:
    figure = go.Figure()
    weeks = [w.isoformat() for w in trend.weeks]
    figure.add_bar(x=weeks, y=trend.assistance, name="Assistance", marker_color="#1565c0")
    figure.add_bar(x=weeks, y=trend.emergency, name="Emergency", marker_color="#c62828")
    figure.update_layout(barmode="group", height=300, plot_bgcolor="white",
                         margin={"l": 40, "r": 10, "t": 10, "b": 40},
                         legend={"orientation": "h", "y": -0.25})
    figure.update_xaxes(title="week starting (Monday)", type="category")
    figure.update_yaxes(title="requests", rangemode="tozero", gridcolor="#eee")
    return figure


def range_table(rows: list[tuple[str, int, float | None]]) -> html.Table:
    shown = [(e, n, NONE if mean is None else f"{mean:.2f}") for e, n, mean in rows]
    return table("range-ratings", ("Exhibition", "Ratings", "Mean rating"), shown)


def parse_choice(first: str | None, last: str | None, exhibitions: Sequence[str] | None,
                 today: date) -> Choice:
    """The filters' values; a missing or unreadable date falls back to the default range."""
    def day(text: str | None, default: date) -> date:
        try:
            return date.fromisoformat(text) if text else default
        except ValueError:
            return default

    start, end = day(first, default_first_day(today)), day(last, today)
    return Choice(min(start, end), max(start, end), frozenset(exhibitions or ()))


def default_first_day(today: date) -> date:
    return monday(today) - timedelta(weeks=TREND_WEEKS - 1)


def trends_panel(viewer: auth.Viewer, today: date, exhibitions: list[str]) -> html.Div:
    date_input = {"type": "date", "debounce": False,
                  "style": {"width": "150px", "margin": "0 12px 0 6px", "display": "inline"}}
    filters = html.Div([
        html.Div([
            html.Label(["From", dcc.Input(id="first-day",
                                          value=default_first_day(today).isoformat(),
                                          **date_input)]),
            html.Label(["to", dcc.Input(id="last-day", value=today.isoformat(), **date_input)]),
        ], style={"display": "flex", "alignItems": "center", "marginBottom": "6px"}),
        dcc.Checklist(id="exhibition-filter", options=exhibitions, value=exhibitions,
                      inline=True, inputStyle={"marginRight": "4px"},
                      labelStyle={"marginRight": "14px"}),
    ], style={"marginBottom": "8px"})
    parts: list[Any] = [filters]
    if viewer.sees("ratings"):
        parts += [html.H4("Mean rating per exhibition by week (ratio of sums)"),
                  dcc.Graph(id="weekly-ratings", config={"displayModeBar": False}),
                  html.Div(id="range-ratings-panel")]
    if viewer.sees("requests"):
        parts += [html.H4("Assistance and emergency requests by week"),
                  dcc.Graph(id="weekly-requests", config={"displayModeBar": False})]
    return panel("Trends: choose the days and exhibitions", *parts)


def page_for(viewer: auth.Viewer | None, reading: Reading, signed_in: bool,
             refresh_s: int) -> html.Div:
    """The page of one viewer: only the parts their roles may see."""
    if viewer is None:
        return html.Div()
    today = museum_today()
    exhibitions = reading.snapshot.exhibitions if reading.snapshot else []
    # Signing out is a POST with the session's CSRF token (a link would let any site sign you out).
    who = [html.Span(f"{viewer.name} ", id="viewer"),
           html.Form([dcc.Input(type="hidden", name="csrf_token", value=generate_csrf()),
                      html.Button("Sign out", id="logout", type="submit")],
                     method="POST", action="/logout", style={"display": "inline"})
           ] if signed_in else []
    parts: list[Any] = [
        dcc.Interval(id="tick", interval=refresh_s * 1000),
        html.Div([html.H1("LMNH kiosks, live", style={"margin": "0 16px 0 0"}),
                  html.Span("Loading...", id="status", style={"flex": "1"}),
                  html.Span(who, style={"marginLeft": "16px", "whiteSpace": "nowrap"})],
                 style={"display": "flex", "alignItems": "baseline", "marginBottom": "12px"}),
    ]
    if viewer.sees("requests"):
        parts += [
            html.Div(id="emergencies-panel"),
            panel("Assistance and emergency requests today, by hour",
                  html.P(id="requests-summary"),
                  html.Div([dcc.Graph(id="requests-by-hour", config={"displayModeBar": False},
                                      style={"flex": "3"}),
                            html.Div(id="floors-panel", style={"flex": "1"})],
                           style={"display": "flex", "gap": "16px"}))]
    if viewer.sees("ratings"):
        parts += [panel("Ratings per exhibition", html.Div(id="ratings-panel"),
                        dcc.Graph(id="ratings-distribution", config={"displayModeBar": False}))]
    parts += [trends_panel(viewer, today, exhibitions)]
    if viewer.sees("quality"):
        parts += [panel("Data quality: rejected messages today", html.Div(id="rejects-panel"))]
    return html.Div(parts, style=PAGE)


def create_app(settings: db.DatabaseSettings, auth_config: auth.AuthConfig | None,
               refresh_s: int = 15) -> Dash:
    """The app; `auth_config` None means no sign-in (lmnh-dashboard --allow-anonymous).

    Browsers refresh every `refresh_s` seconds and the database is read at most that often.
    """
    anonymous = auth_config is None
    app = Dash(__name__, title="LMNH live dashboard", update_title=None, add_log_handler=False,
               suppress_callback_exceptions=True)  # each viewer's layout has only their parts
    if auth_config is not None:
        auth.install(app.server, auth_config)
    cache = SnapshotCache(functools.partial(read_snapshot, settings), refresh_s)

    def snapshot_for(section: auth.Section | None) -> Snapshot:
        """The shared snapshot, after checking the caller may see `section` (403 otherwise)."""
        viewer = auth.current_viewer(anonymous)
        if viewer is None or (section is not None and not viewer.sees(section)):
            abort(403)
        snap = cache.get().snapshot
        if snap is None:
            raise PreventUpdate  # nothing read yet; the status line says so
        return snap

    def layout() -> html.Div:
        viewer = auth.current_viewer(anonymous)
        return page_for(viewer, cache.get() if viewer else Reading(None, None), not anonymous,
                        refresh_s)

    app.layout = layout

    @app.callback(Output("status", "children"), Output("status", "style"),
                  Input("tick", "n_intervals"))
    def status(_tick: int | None) -> tuple[str, dict[str, str]]:
        if auth.current_viewer(anonymous) is None:
            abort(403)
        return status_line(cache.get(), refresh_s)

    @app.callback(
        Output("emergencies-panel", "children"),
        Output("requests-summary", "children"), Output("requests-by-hour", "figure"),
        Output("floors-panel", "children"),
        Input("tick", "n_intervals"),
    )
    def requests(_tick: int | None) -> tuple[Any, ...]:
        snap = snapshot_for("requests")
        weekday = f"{snap.today:%A}"
        return (emergencies_panel(snap.emergencies), requests_summary(snap.requests, weekday),
                requests_figure(snap.requests, weekday), floors_table(snap.floors))

    @app.callback(Output("ratings-panel", "children"), Output("ratings-distribution", "figure"),
                  Input("tick", "n_intervals"))
    def ratings(_tick: int | None) -> tuple[Any, ...]:
        snap = snapshot_for("ratings")
        return ratings_table(snap.ratings), ratings_figure(snap.ratings)

    @app.callback(Output("weekly-ratings", "figure"), Output("range-ratings-panel", "children"),
                  Input("tick", "n_intervals"), Input("first-day", "value"),
                  Input("last-day", "value"), Input("exhibition-filter", "value"))
    def ratings_trend(_tick: int | None, first: str | None, last: str | None,
                      exhibitions: list[str] | None) -> tuple[Any, ...]:
        snap = snapshot_for("ratings")
        choice = parse_choice(first, last, exhibitions, snap.today)
        return (weekly_ratings_figure(weekly(snap.days, choice)),
                range_table(range_ratings(snap.days, choice)))

    @app.callback(Output("weekly-requests", "figure"),
                  Input("tick", "n_intervals"), Input("first-day", "value"),
                  Input("last-day", "value"), Input("exhibition-filter", "value"))
    def requests_trend(_tick: int | None, first: str | None, last: str | None,
                       exhibitions: list[str] | None) -> go.Figure:
        snap = snapshot_for("requests")
        return weekly_requests_figure(weekly(snap.days, parse_choice(first, last, exhibitions,
                                                                     snap.today)))

    @app.callback(Output("rejects-panel", "children"), Input("tick", "n_intervals"))
    def rejects(_tick: int | None) -> Any:
        return rejects_panel(snapshot_for("quality").rejects)

    # Last: the policy allows the inline scripts (Dash's renderer) by their hashes.
    auth.install_headers(app.server, list(app.csp_hashes()),
                         cookie_secure=auth_config.cookie_secure if auth_config else True)
    return app


# ---------------------------------------------------------------- entry points


def auth_config(settings: DashboardSettings) -> auth.AuthConfig:
    """The sign-in set-up from the settings; exits (status 2) naming what is missing."""
    problem = None
    if settings.DASHBOARD_SECRET_KEY is None:
        problem = "DASHBOARD_SECRET_KEY is required (it signs the session cookies)"
    elif settings.DASHBOARD_PASSWORD_FILE is None and settings.DASHBOARD_OIDC_CLIENT_ID is None:
        problem = "set DASHBOARD_PASSWORD_FILE or the DASHBOARD_OIDC_* settings (or both)"
    elif settings.DASHBOARD_PASSWORD_FILE and not settings.DASHBOARD_PASSWORD_FILE.is_file():
        problem = "DASHBOARD_PASSWORD_FILE: no such file (lmnh-dashboard add-user ...)"
    if problem:
        print(f"configuration error: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    assert settings.DASHBOARD_SECRET_KEY is not None
    oidc = None
    if settings.DASHBOARD_OIDC_CLIENT_ID:
        assert settings.DASHBOARD_OIDC_DISCOVERY_URL and settings.DASHBOARD_OIDC_CLIENT_SECRET
        oidc = auth.Oidc(settings.DASHBOARD_OIDC_DISCOVERY_URL, settings.DASHBOARD_OIDC_CLIENT_ID,
                         settings.DASHBOARD_OIDC_CLIENT_SECRET.get_secret_value(),
                         settings.DASHBOARD_OIDC_GROUPS_CLAIM)
    return auth.AuthConfig(
        secret_key=settings.DASHBOARD_SECRET_KEY.get_secret_value(),
        password_file=settings.DASHBOARD_PASSWORD_FILE,
        oidc=oidc,
        groups={"security": settings.DASHBOARD_GROUP_SECURITY,
                "exhibitions": settings.DASHBOARD_GROUP_EXHIBITIONS,
                "admin": settings.DASHBOARD_GROUP_ADMIN},
        cookie_secure=settings.DASHBOARD_COOKIE_SECURE,
        session_hours=settings.DASHBOARD_SESSION_HOURS,
        oidc_recheck_s=settings.DASHBOARD_OIDC_RECHECK_S,
    )


def database_problem(settings: DashboardSettings) -> str | None:
    """Why the dashboard must not start, in one line: the database's schema is not this
    release's, or its museum clock (which its views count in) is not the settings'."""
    try:
        conn = connect(settings.database())
        try:
            db.check_schema(conn)
            db.check_clock(conn, settings.clock())
        finally:
            conn.close()
    except (db.SchemaMismatch, db.Error) as error:
        return " ".join(str(error).split())
    return None


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per refresh otherwise


def wsgi() -> Any:
    """For gunicorn (`gunicorn 'lmnh.apps.dashboard:wsgi()'`): sign-in always required.

    Behind the reverse proxy on this host, whose X-Forwarded-* headers give the client's address
    and the https scheme (for the OIDC redirect and the session's client check).
    """
    settings = read_settings(DashboardSettings)
    configure_logging()
    problem = database_problem(settings)
    if problem is not None:
        log.error("%s", problem)
        sys.exit(1)
    app = create_app(settings.database(), auth_config(settings), settings.DASHBOARD_REFRESH_S)
    return ProxyFix(app.server, x_for=1, x_proto=1, x_host=1)


def add_user_command(args: argparse.Namespace) -> int:
    try:
        roles = auth.parse_roles(args.roles)
    except ValueError as error:
        print(f"add-user: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Again: "):
            print("add-user: the passwords differ", file=sys.stderr)
            return 1
    if len(password) < 12:
        print("add-user: use at least 12 characters", file=sys.stderr)
        return 1
    try:
        auth.add_user(args.password_file, args.name, roles, password)
    except (OSError, ValueError) as error:
        print(f"add-user: {error}", file=sys.stderr)
        return 1
    print(f"{args.name} ({', '.join(sorted(roles))}) written to {args.password_file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050,
                        help="port on 127.0.0.1 (to serve others, use gunicorn: see README)")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="no sign-in: everyone on this computer sees everything")
    commands = parser.add_subparsers(dest="command")
    adding = commands.add_parser("add-user", help="add or replace a user in the password file")
    adding.add_argument("name")
    adding.add_argument("--roles", required=True, help=f"comma-separated: {', '.join(auth.ROLES)}")
    adding.add_argument("--password-file", type=Path, required=True)
    adding.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin (no prompt)")
    args = parser.parse_args(argv)
    if args.command == "add-user":
        return add_user_command(args)
    settings = read_settings(DashboardSettings)
    configure_logging()
    problem = database_problem(settings)
    if problem is not None:
        log.error("%s", problem)
        return 1
    config = None if args.allow_anonymous else auth_config(settings)
    # Flask's own server, on the loopback interface only: anonymous access never leaves it.
    app = create_app(settings.database(), config, settings.DASHBOARD_REFRESH_S)
    app.run(host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
