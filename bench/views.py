"""The dashboard's queries at about 10 million rows: how long each panel's read takes.

    python bench/views.py                       # 9.7 M ratings, 300,000 requests, 1 M rejects
    python bench/views.py --ratings 200000      # a quick run (requests and rejects scale too)
    python bench/views.py --explain             # also EXPLAIN (ANALYZE, BUFFERS) each query
    python bench/views.py --workdir /tmp/views  # keep the database there; a rerun reuses it

It starts its own embedded PostgreSQL (embedded.EmbeddedPostgres) in a temporary directory
(or --workdir), applies schema.sql, inserts exhibitions 0..5 with db.upsert_exhibitions, then
makes the rows with `generate_series`: presses spread evenly, in time order, over the museum's
opening hours (08:45-18:15 Europe/London) of the 730 days up to today, with random exhibitions
and values (3% of requests are emergencies) and a handful of reject reasons. The rows go in with
plain INSERT ... SELECT, so schema.sql's statement trigger fills the hourly rollups; the run
fails unless the rollups' sums equal the row counts. Then VACUUM ANALYZE.

It times dashboard.py's own read functions on a connection made by dashboard.connect (read-only,
repeatable read, the dashboard's statement timeout), with "today" the last day of the data: one
warm-up call, then --runs timed calls, each in its own transaction. It prints one table of the
median, min and max in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import db
from lmnh.apps import dashboard
from lmnh.local.embedded import PG_SUPERUSER, EmbeddedPostgres, free_port
from s3_metadata import Exhibition

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_views"
DAYS = 730  # two years up to today
OPEN_MINUTES = 570  # 08:45 to 18:15
CHUNK = 1_000_000  # rows per INSERT statement (each fires the rollup trigger once)
RATINGS = 9_700_000
REQUESTS_PER_RATING = 300_000 / RATINGS
REJECTS_PER_RATING = 1_000_000 / RATINGS
EMERGENCY_SHARE = 0.03
REASONS = ("invalid_json", "missing_key", "invalid_val", "outside_hours", "unknown_site",
           "future_at")
SERVER_SETTINGS = {"max_wal_size": "8GB"}  # fewer checkpoints while loading; queries unaffected
EXHIBITIONS = (
    Exhibition(0, "EXH_00", "Measureless to Man", "1", "Geology", date(2021, 8, 23),
               "A cave system in 3D."),
    Exhibition(1, "EXH_01", "Adaptation", "Vault", "Entomology", date(2019, 7, 1),
               "Insects in an industrial world."),
    Exhibition(2, "EXH_02", "The Crenshaw Collection", "2", "Zoology", date(2021, 3, 3),
               "Watercolours of wildlife."),
    Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1),
               "Whales, myth to danger."),
    Exhibition(4, "EXH_04", "Our Polluted World", "3", "Ecology", date(2021, 5, 12),
               "Humanity's impact."),
    Exhibition(5, "EXH_05", "Thunder Lizards", "1", "Paleontology", date(2023, 2, 1),
               "Dinosaurs rethought."),
)

# Row i of n (1-based) at the middle of its share of the opening minutes of the DAYS days from
# %(first_day)s: evenly spaced, so in time order. Opening hours never meet a DST change.
EVENT_AT = f"""
    ((%(first_day)s::date + floor(pos)::int)::timestamp + interval '8 hours 45 minutes'
     + (pos - floor(pos)) * interval '{OPEN_MINUTES} minutes') AT TIME ZONE 'Europe/London'
"""
SERIES = """(SELECT i, ((i - 0.5) * %(days)s / %(n)s)::float8 AS pos
           FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) AS s"""
INSERTS = {
    "rating_interaction": f"""
        INSERT INTO rating_interaction
            (exhibition_id, rating_value, event_at, source, source_partition, source_offset)
        SELECT floor(random() * 6), floor(random() * 5), {EVENT_AT}, 'bench', 0, i
        FROM {SERIES}""",
    "request_interaction": f"""
        INSERT INTO request_interaction
            (exhibition_id, request_value, event_at, source, source_partition, source_offset)
        SELECT floor(random() * 6), (random() < {EMERGENCY_SHARE})::int, {EVENT_AT},
               'bench', 0, i
        FROM {SERIES}""",
    "rejected_message": f"""
        INSERT INTO rejected_message (reason, rejected_at, source, source_partition, source_offset)
        SELECT (%(reasons)s::text[])[1 + floor(random() * %(reason_count)s)::int], {EVENT_AT},
               'bench', 0, i
        FROM {SERIES}""",
}


class BenchError(Exception):
    """The data is not what the benchmark needs (the rollups disagree with the rows...)."""


@dataclass(frozen=True)
class Sizes:
    ratings: int
    requests: int
    rejects: int

    @classmethod
    def scaled(cls, ratings: int) -> Sizes:
        return cls(ratings, round(ratings * REQUESTS_PER_RATING),
                   round(ratings * REJECTS_PER_RATING))

    def of(self, table: str) -> int:
        return {"rating_interaction": self.ratings, "request_interaction": self.requests,
                "rejected_message": self.rejects}[table]


@dataclass(frozen=True)
class Timing:
    name: str
    times_ms: list[float]
    returned: str


class RecordingCursor(psycopg2.extensions.cursor):
    """A cursor that keeps each statement it sent, for --explain."""

    sent: ClassVar[list[bytes]] = []

    def execute(self, query: Any, vars: Any = None) -> None:
        super().execute(query, vars)
        if self.query is not None:
            RecordingCursor.sent.append(self.query)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def query(url: str, statement: str, params: Any = None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def loaded_sizes(url: str) -> Sizes:
    (counts,) = query(url, """
        SELECT (SELECT count(*) FROM rating_interaction),
               (SELECT count(*) FROM request_interaction),
               (SELECT count(*) FROM rejected_message)""")
    return Sizes(*counts)


def load(postgres: EmbeddedPostgres, sizes: Sizes, last_day: date) -> float:
    """A fresh database with `sizes` rows up to `last_day`; returns the seconds it took."""
    started = time.perf_counter()
    postgres.create_database(DATABASE)
    url = postgres.url(DATABASE)
    conn = psycopg2.connect(url)
    try:
        db.apply_schema(conn)
        db.upsert_exhibitions(conn, EXHIBITIONS)
        first_day = last_day - timedelta(days=DAYS - 1)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")  # the same exhibitions and values every run
            for table, statement in INSERTS.items():
                n = sizes.of(table)
                for lo in range(1, n + 1, CHUNK):
                    hi = min(lo + CHUNK - 1, n)
                    cur.execute(statement, {"first_day": first_day, "days": DAYS, "n": n,
                                            "lo": lo, "hi": hi, "reasons": list(REASONS),
                                            "reason_count": len(REASONS)})
                    log(f"{table}: {hi:,} of {n:,} rows "
                        f"({time.perf_counter() - started:.0f} s)")
        check_rollups(conn, sizes)
        conn.autocommit = True
        log("VACUUM ANALYZE")
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - started


def check_rollups(conn: psycopg2.extensions.connection, sizes: Sizes) -> None:
    """The trigger's rollups must count every row, or the timed views read wrong figures."""
    with conn, conn.cursor() as cur:
        cur.execute("""
            SELECT (SELECT count(*) FROM rating_interaction),
                   (SELECT coalesce(sum(ratings), 0) FROM rating_hourly),
                   (SELECT count(*) FROM request_interaction),
                   (SELECT coalesce(sum(requests), 0) FROM request_hourly),
                   (SELECT count(*) FROM request_interaction WHERE request_value = 1),
                   (SELECT coalesce(sum(requests), 0) FROM request_hourly
                    WHERE request_value = 1),
                   (SELECT count(*) FROM rejected_message)""")
        ratings, rated, requests, requested, emergencies, emergent, rejects = cur.fetchone()
    problems = [f"{what}: {got:,} rows, {want:,} expected" for what, got, want in (
        ("rating_interaction", ratings, sizes.ratings),
        ("request_interaction", requests, sizes.requests),
        ("rejected_message", rejects, sizes.rejects),
        ("rating_hourly sum", rated, ratings),
        ("request_hourly sum", requested, requests),
        ("request_hourly emergencies", emergent, emergencies)) if got != want]
    if problems:
        raise BenchError("the data or its rollups are wrong: " + "; ".join(problems))
    log(f"rollups agree: {rated:,} ratings, {requested:,} requests ({emergent:,} emergencies)")


def describe(result: Any) -> str:
    """What a read returned, briefly: enough to see that today's panels had data."""
    if isinstance(result, dashboard.RequestsByHour):
        return (f"today {sum(result.assistance) + sum(result.emergency)}, "
                f"usual of {result.usual_days} days")
    if isinstance(result, dashboard.Snapshot):
        return f"{len(result.emergencies)} emergencies, {len(result.ratings)} exhibitions"
    return f"{len(result)} rows"


def timed(name: str, call: Callable[[], Any], after: Callable[[], None], runs: int) -> Timing:
    """One warm-up call, then `runs` timed calls; `after` ends each call's transaction."""
    result = call()
    after()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
        after()
    return Timing(name, times, describe(result))


def reads(conn: psycopg2.extensions.connection,
          today: date) -> list[tuple[str, Callable[[], Any]]]:
    """The dashboard's read functions, called as read_snapshot calls them."""
    return [
        ("read_emergencies (v_request, today)", lambda: dashboard.read_emergencies(conn, today)),
        ("read_ratings (v_exhibition_daily, today/7 days/all time)",
         lambda: dashboard.read_ratings(conn, today)),
        ("read_requests_by_hour (v_exhibition_hourly, today + 8 weekdays)",
         lambda: dashboard.read_requests_by_hour(conn, today)),
        ("read_requests_by_floor (v_exhibition_daily, today)",
         lambda: dashboard.read_requests_by_floor(conn, today)),
        ("read_rejects (v_rejects_daily, today)", lambda: dashboard.read_rejects(conn, today)),
        ("read_days (v_exhibition_daily, every day: the trends)",
         lambda: dashboard.read_days(conn)),
    ]


def explain(conn: psycopg2.extensions.connection, call: Callable[[], Any]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement `call` sends, printed."""
    RecordingCursor.sent.clear()
    call()
    conn.rollback()
    for statement in list(RecordingCursor.sent):
        with conn.cursor() as cur:
            cur.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + statement)
            print("\n".join(line for (line,) in cur.fetchall()))
        conn.rollback()


@contextmanager
def running_postgres(workdir: Path | None) -> Iterator[EmbeddedPostgres]:
    """The embedded server in `workdir` (kept) or a temporary directory, stopped on the way out."""
    with ExitStack() as stack:
        kept = workdir is not None
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="views-")))
        postgres = EmbeddedPostgres(workdir / "pg", free_port(), SERVER_SETTINGS)
        stack.callback(postgres.stop if kept else postgres.remove)
        postgres.start()
        yield postgres


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) if i in (0, len(row) - 1) else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=RATINGS,
                        help="ratings to make; requests and rejects scale with it "
                             "(default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per query (default 3)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the database cluster here and reuse it if it has the rows")
    parser.add_argument("--explain", action="store_true",
                        help="also print EXPLAIN (ANALYZE, BUFFERS) of each query")
    args = parser.parse_args(argv)
    sizes = Sizes.scaled(args.ratings)
    command = shlex.join([Path(sys.executable).name, *sys.argv])

    with running_postgres(args.workdir) as postgres:
        postgres.create_database(DATABASE)
        url = postgres.url(DATABASE)
        reused = args.workdir is not None and bool(query(
            url, "SELECT 1 FROM pg_tables WHERE tablename = 'rating_interaction'")) and (
            loaded_sizes(url) == sizes)
        if reused:
            load_note = "reused the database in --workdir"
        else:
            log(f"loading {sizes.ratings:,} ratings, {sizes.requests:,} requests, "
                f"{sizes.rejects:,} rejects")
            load_note = f"load {load(postgres, sizes, dashboard.museum_today()):.0f} s"
        ((today, version),) = query(url, """
            SELECT (max(event_at) AT TIME ZONE 'Europe/London')::date,
                   current_setting('server_version')
            FROM rating_interaction""")
        settings = db.DatabaseSettings(host="127.0.0.1", port=postgres.port, name=DATABASE,
                                       user=PG_SUPERUSER, password="", sslmode="disable")
        conn = dashboard.connect(settings)
        conn.cursor_factory = RecordingCursor
        try:
            calls = reads(conn, today)
            timings = [timed(name, call, conn.rollback, args.runs) for name, call in calls]
            if today == dashboard.museum_today():
                timings.append(timed("read_snapshot (all five, new connection)",
                                     lambda: dashboard.read_snapshot(settings), lambda: None,
                                     args.runs))
            if args.explain:
                for name, call in calls:
                    print(f"\n=== {name}")
                    explain(conn, call)
                print()
        finally:
            conn.close()

    rows = [["query", "median ms", "min", "max", "returned"]]
    rows += [[t.name, f"{statistics.median(t.times_ms):.1f}", f"{min(t.times_ms):.1f}",
              f"{max(t.times_ms):.1f}", t.returned] for t in timings]
    print(f"{sizes.ratings:,} ratings, {sizes.requests:,} requests, {sizes.rejects:,} rejects "
          f"over {DAYS} days to {today}; {os.cpu_count()} CPUs; PostgreSQL {version}; "
          f"{load_note}")
    print(f"command: {command}")
    print(f"median of {args.runs} after one warm-up, dashboard.connect session "
          f"(read-only, repeatable read, {dashboard.STATEMENT_TIMEOUT_MS} ms statement timeout)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/views.py: {error}", file=sys.stderr)
        sys.exit(1)
