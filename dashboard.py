"""The LMNH live dashboard: emergencies, ratings, requests by hour and rejects, in a browser.

Run `python dashboard.py [--host 127.0.0.1] [--port 8050]`, configured by the pipeline's
DATABASE_* variables (the environment, then `.env`). It reads only the views of schema.sql, in
read-only transactions with a short statement timeout, and refreshes itself every 15 seconds.

Functional core: the `read_*` functions run one query each and return plain data, which the
tests check against SQL. Imperative shell: the Dash layout and its one callback turn a
`Snapshot` into tables and figures. "Today" is the museum's (Europe/London) date.
"""

from __future__ import annotations

import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import plotly.graph_objects as go
import psycopg2
from dash import Dash, Input, Output, dcc, html, no_update
from plotly.subplots import make_subplots
from psycopg2.extensions import ISOLATION_LEVEL_REPEATABLE_READ
from psycopg2.extensions import connection as Connection

import db
from settings import DashboardSettings, read_settings

log = logging.getLogger("dashboard")
MUSEUM_TZ = ZoneInfo("Europe/London")  # the views' zone: main() reads the database's
REFRESH_MS = 15_000
STATEMENT_TIMEOUT_MS = 5_000
USUAL_WEEKS = 8  # "usual" is the mean over up to this many earlier same weekdays
OPEN_HOURS = range(8, 19)  # 08:45 to 18:15, by the hour
RATINGS = ("Terrible", "Bad", "Neutral", "Good", "Amazing")  # rating_value 0 .. 4
RATING_COLOURS = ("#c62828", "#ef6c00", "#9e9e9e", "#7cb342", "#2e7d32")
PERIODS = ("Today", "Last 7 days", "All time")
SLIPPING = 0.2  # a 7-day mean this far below the all-time mean is shown in red
SHOWN_EMERGENCIES = 10  # the banner lists the latest ones
NONE = "-"  # a mean over no ratings


def connect(settings: db.DatabaseSettings) -> Connection:
    """A read-only session; each refresh reads one snapshot (one repeatable-read transaction)."""
    conn = db.open_connection(replace(settings, statement_timeout_ms=STATEMENT_TIMEOUT_MS),
                              "lmnh-dashboard")
    conn.set_session(isolation_level=ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    return conn


def museum_today() -> date:
    return datetime.now(MUSEUM_TZ).date()


# ---------------------------------------------------------------- functional core: the queries


@dataclass(frozen=True, slots=True)
class Emergency:
    at: datetime  # museum-local time
    exhibition: str  # "EXH_03 Cetacean Sensations"
    floor: str


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    today: date
    read_at: datetime  # museum-local
    emergencies: list[Emergency]
    ratings: list[ExhibitionRatings]
    requests: RequestsByHour
    floors: list[FloorRequests]
    rejects: list[tuple[str, int]]


def read_emergencies(conn: Connection, day: date) -> list[Emergency]:
    """The emergency requests of museum-local `day`, newest first."""
    midnight = datetime.combine(day, time(), MUSEUM_TZ)
    with conn.cursor() as cur:
        cur.execute("""
            SELECT event_at_local, exhibition_id || ' ' || exhibition_name, floor
            FROM v_request
            WHERE is_emergency AND event_at_utc >= %s AND event_at_utc < %s
            ORDER BY event_at_utc DESC, exhibition_id""",
                    (midnight, midnight + timedelta(days=1)))
        return [Emergency(*row) for row in cur.fetchall()]


def read_ratings(conn: Connection, today: date) -> list[ExhibitionRatings]:
    """Per exhibition and period: ratings, mean and shares, from the daily view's figures.

    The view rounds a day's mean to 3 decimals and its shares to 4, so these are that precise.
    """
    first_days = [today, today - timedelta(days=6), date.min]  # by PERIODS
    with conn.cursor() as cur:
        cur.execute("""
            SELECT d.exhibition_id || ' ' || d.exhibition_name, d.floor, p.period,
                   sum(d.ratings)::int, sum(d.mean_rating * d.ratings) / sum(d.ratings),
                   sum(d.share_terrible * d.ratings) / sum(d.ratings),
                   sum(d.share_bad * d.ratings) / sum(d.ratings),
                   sum(d.share_neutral * d.ratings) / sum(d.ratings),
                   sum(d.share_good * d.ratings) / sum(d.ratings),
                   sum(d.share_amazing * d.ratings) / sum(d.ratings)
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


def read_requests_by_hour(conn: Connection, today: date) -> RequestsByHour:
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


def read_requests_by_floor(conn: Connection, day: date) -> list[FloorRequests]:
    with conn.cursor() as cur:
        cur.execute("""
            SELECT floor, sum(assistance)::int, sum(emergency)::int
            FROM v_exhibition_daily
            WHERE local_date = %s
            GROUP BY floor
            ORDER BY floor""", (day,))
        return [FloorRequests(*row) for row in cur.fetchall()]


def read_rejects(conn: Connection, day: date) -> list[tuple[str, int]]:
    """Rejected messages of museum-local `day` by reason, most frequent first."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT reason, rejected FROM v_rejects_daily
            WHERE local_date = %s
            ORDER BY rejected DESC, reason""", (day,))
        return cur.fetchall()


def read_snapshot(settings: db.DatabaseSettings) -> Snapshot:
    today = museum_today()
    conn = connect(settings)
    try:
        return Snapshot(
            today=today,
            read_at=datetime.now(MUSEUM_TZ),
            emergencies=read_emergencies(conn, today),
            ratings=read_ratings(conn, today),
            requests=read_requests_by_hour(conn, today),
            floors=read_requests_by_floor(conn, today),
            rejects=read_rejects(conn, today),
        )
    finally:
        conn.close()


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
    rows = [(e.at.strftime("%H:%M:%S"), e.exhibition, e.floor)
            for e in emergencies[:SHOWN_EMERGENCIES]]
    title = f"{len(emergencies)} emergenc{'y' if len(emergencies) == 1 else 'ies'} today"
    if len(rows) < len(emergencies):
        title += f" (the latest {len(rows)} shown)"
    return html.Div([
        html.H2(f"{title}, newest first", style={"margin": "4px 0"}),
        table("emergencies", ("Time", "Exhibition", "Floor"), rows, numeric_from=3,
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


def create_app(settings: db.DatabaseSettings) -> Dash:
    app = Dash(__name__, title="LMNH live dashboard", update_title=None, add_log_handler=False)
    app.layout = html.Div([
        dcc.Interval(id="tick", interval=REFRESH_MS),
        html.Div([html.H1("LMNH kiosks, live", style={"margin": "0 16px 0 0"}),
                  html.Span("Loading...", id="status")],
                 style={"display": "flex", "alignItems": "baseline", "marginBottom": "12px"}),
        html.Div(id="emergencies-panel"),
        panel("Assistance and emergency requests today, by hour",
              html.P(id="requests-summary"),
              html.Div([dcc.Graph(id="requests-by-hour", config={"displayModeBar": False},
                                  style={"flex": "3"}),
                        html.Div(id="floors-panel", style={"flex": "1"})],
                       style={"display": "flex", "gap": "16px"})),
        panel("Ratings per exhibition", html.Div(id="ratings-panel"),
              dcc.Graph(id="ratings-distribution", config={"displayModeBar": False})),
        panel("Data quality: rejected messages today", html.Div(id="rejects-panel")),
    ], style=PAGE)

    @app.callback(
        Output("status", "children"), Output("status", "style"),
        Output("emergencies-panel", "children"),
        Output("requests-summary", "children"), Output("requests-by-hour", "figure"),
        Output("floors-panel", "children"),
        Output("ratings-panel", "children"), Output("ratings-distribution", "figure"),
        Output("rejects-panel", "children"),
        Input("tick", "n_intervals"),
    )
    def refresh(_tick: int | None) -> tuple[Any, ...]:
        try:
            snap = read_snapshot(settings)
        except psycopg2.Error as error:
            problem = " ".join(str(error).split())
            log.warning("cannot read the database: %s", problem)
            failed = f"{datetime.now(MUSEUM_TZ):%H:%M:%S}"
            message = f"Database unavailable at {failed}, figures below may be out of date: "
            return (message + problem, RED, *[no_update] * 7)
        weekday = f"{snap.today:%A}"
        return (
            f"{snap.today:%A %d %B %Y}, updated {snap.read_at:%H:%M:%S} museum time "
            f"(every {REFRESH_MS // 1000} s)", {"color": "#616161"},
            emergencies_panel(snap.emergencies),
            requests_summary(snap.requests, weekday), requests_figure(snap.requests, weekday),
            floors_table(snap.floors),
            ratings_table(snap.ratings), ratings_figure(snap.ratings),
            rejects_panel(snap.rejects),
        )

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8050)
    args = parser.parse_args(argv)
    settings = read_settings(DashboardSettings)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per refresh otherwise
    global MUSEUM_TZ  # the database's clock, read once before serving
    try:
        conn = connect(settings.database())
        try:
            db.check_schema(conn)
            MUSEUM_TZ = ZoneInfo(db.read_museum_clock(conn).zone)
        finally:
            conn.close()
    except (db.SchemaMismatch, psycopg2.Error) as error:
        log.error("%s", " ".join(str(error).split()))
        return 1
    create_app(settings.database()).run(host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
