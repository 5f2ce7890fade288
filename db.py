"""PostgreSQL access with psycopg2: connecting, the exhibition upsert, and the batch write.

A batch is written in one transaction: its rows are COPYed into temporary staging tables and
moved into the interaction tables by one INSERT ... ON CONFLICT DO NOTHING each, so a replayed
message (same source, partition, offset) never makes a second row.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from s3_metadata import Exhibition
from validation import Rating, Request

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The errors after which a new connection may succeed: server gone, restarted, failed over.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
EMERGENCY = 1


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str
    sslmode: str | None = None
    sslrootcert: str | None = None
    connect_timeout_s: int = 10
    statement_timeout_ms: int = 30_000

    @property
    def effective_sslmode(self) -> str:
        """TLS is required unless asked otherwise or the server is on this machine."""
        if self.sslmode:
            return self.sslmode
        is_local = self.host in LOCAL_HOSTS or self.host.startswith("/")
        return "prefer" if is_local else "require"


class Interaction(NamedTuple):
    """One row for rating_interaction (value = rating) or request_interaction (value = request)."""

    exhibition_id: int
    value: int
    event_at: datetime
    source: str
    source_partition: int
    source_offset: int

    @classmethod
    def of(cls, press: Rating | Request, source: str, partition: int,
           offset: int) -> Interaction:
        """The row for an accepted press, recording where it came from."""
        return cls(press.site, press.value, press.at, source, partition, offset)


RATING_COLUMNS = ("exhibition_id", "rating_value", "event_at", "source", "source_partition",
                  "source_offset")
REQUEST_COLUMNS = ("exhibition_id", "request_value", "event_at", "source", "source_partition",
                   "source_offset")


class Rejected(NamedTuple):
    """One row for rejected_message: why and when, and where the message came from."""

    reason: str
    rejected_at: datetime
    source: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    ratings_inserted: int
    requests_inserted: int
    new_emergencies: tuple[Interaction, ...]


def open_connection(settings: DatabaseSettings, application_name: str) -> Connection:
    """A connection with TLS, timeouts and keepalives as configured."""
    return psycopg2.connect(
        host=settings.host,
        port=settings.port,
        dbname=settings.name,
        user=settings.user,
        password=settings.password,
        sslmode=settings.effective_sslmode,
        sslrootcert=settings.sslrootcert,
        connect_timeout=settings.connect_timeout_s,
        options=f"-c statement_timeout={settings.statement_timeout_ms}",
        application_name=application_name,
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )


def connect(settings: DatabaseSettings, application_name: str = "lmnh-pipeline") -> Connection:
    """The writer's connection, with its session's staging tables for the batch COPYs."""
    conn = open_connection(settings, application_name)
    with conn.cursor() as cur:
        for table in ("rating_interaction", "request_interaction", "rejected_message"):
            cur.execute(sql.SQL(
                "CREATE TEMP TABLE {staging} ON COMMIT DELETE ROWS AS SELECT * FROM {table}"
                " WITH NO DATA"
            ).format(staging=sql.Identifier(f"staging_{table}"), table=sql.Identifier(table)))
    conn.commit()
    return conn


def upsert_exhibitions(conn: Connection, exhibitions: Iterable[Exhibition]) -> None:
    """Make the exhibition, department and floor tables match the metadata, in one transaction."""
    with conn, conn.cursor() as cur:
        for exhibition in exhibitions:
            cur.execute(
                "INSERT INTO department (department_name) VALUES (%s) ON CONFLICT DO NOTHING",
                (exhibition.department,),
            )
            cur.execute(
                "INSERT INTO floor (floor_name) VALUES (%s) ON CONFLICT DO NOTHING",
                (exhibition.floor,),
            )
            cur.execute(
                """
                INSERT INTO exhibition (exhibition_id, public_id, exhibition_name,
                                        exhibition_description, start_date, department_id, floor_id)
                VALUES (%(number)s, %(public_id)s, %(name)s, %(description)s, %(start_date)s,
                        (SELECT department_id FROM department
                         WHERE department_name = %(department)s),
                        (SELECT floor_id FROM floor WHERE floor_name = %(floor)s))
                ON CONFLICT (exhibition_id) DO UPDATE SET
                    public_id = EXCLUDED.public_id,
                    exhibition_name = EXCLUDED.exhibition_name,
                    exhibition_description = EXCLUDED.exhibition_description,
                    start_date = EXCLUDED.start_date,
                    department_id = EXCLUDED.department_id,
                    floor_id = EXCLUDED.floor_id
                """,
                {
                    "number": exhibition.number,
                    "public_id": exhibition.public_id,
                    "name": exhibition.name,
                    "description": exhibition.description,
                    "start_date": exhibition.start_date,
                    "department": exhibition.department,
                    "floor": exhibition.floor,
                },
            )


def _copy_field(value: object) -> str:
    """One field in COPY's text format (numbers, timestamps and names; text is escaped)."""
    if isinstance(value, str):
        return (value.replace("\\", "\\\\").replace("\t", "\\t")
                .replace("\n", "\\n").replace("\r", "\\r"))
    return str(value)


def _copy_rows(rows: Sequence[tuple]) -> io.StringIO:
    if rows and isinstance(rows[0], Interaction):  # the hot path: numbers, a time, a topic
        return io.StringIO("".join(
            f"{r.exhibition_id}\t{r.value}\t{r.event_at}\t{_copy_field(r.source)}\t"
            f"{r.source_partition}\t{r.source_offset}\n" for r in rows))
    return io.StringIO("".join("\t".join(map(_copy_field, row)) + "\n" for row in rows))


class Rollup(NamedTuple):
    """The hourly rollup table an interaction table keeps in step."""

    table: str
    value_column: str
    count_column: str


ROLLUPS = {
    "rating_interaction": Rollup("rating_hourly", "rating_value", "ratings"),
    "request_interaction": Rollup("request_hourly", "request_value", "requests"),
}


def _insert(cur: psycopg2.extensions.cursor, table: str, columns: Sequence[str],
            rows: Sequence[tuple], return_rows: bool = False) -> tuple[int, list[tuple]]:
    """COPY `rows` into `table`'s staging table, move the new ones in and count them in the
    rollup (when the table has one), all in one statement.

    Returns how many rows were new and, with `return_rows`, those rows.
    """
    if not rows:
        return 0, []
    column_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    staging = sql.Identifier(f"staging_{table}")
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN").format(staging, column_list).as_string(cur),
        _copy_rows(rows))
    insert_new = sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}"
        " ON CONFLICT ON CONSTRAINT {constraint} DO NOTHING RETURNING {columns}"
    ).format(table=sql.Identifier(table), columns=column_list, staging=staging,
             constraint=sql.Identifier(f"{table}_source_key"))
    result = sql.SQL("SELECT * FROM new" if return_rows else "SELECT count(*) FROM new")
    rollup = ROLLUPS.get(table)
    if rollup is None:
        cur.execute(sql.SQL("WITH new AS ({}) {}").format(insert_new, result))
    else:
        cur.execute(_with_rollup(insert_new, rollup, result))
    fetched = cur.fetchall()
    return (len(fetched), fetched) if return_rows else (fetched[0][0], [])


def _with_rollup(insert_new: sql.Composable, rollup: Rollup,
                 result: sql.Composable) -> sql.Composed:
    """One statement: the insert, then its new rows counted into the hourly rollup.

    Rows are locked in primary-key order, so concurrent instances cannot deadlock on it.
    """
    value, count = sql.Identifier(rollup.value_column), sql.Identifier(rollup.count_column)
    return sql.SQL("""
        WITH new AS ({insert_new}),
        counted AS (
            INSERT INTO {rollup} (local_date, exhibition_id, local_hour, {value}, {count})
            SELECT (event_at AT TIME ZONE 'Europe/London')::date, exhibition_id,
                   extract(hour FROM event_at AT TIME ZONE 'Europe/London'), {value}, count(*)
            FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
            ON CONFLICT (local_date, exhibition_id, local_hour, {value})
            DO UPDATE SET {count} = {rollup}.{count} + EXCLUDED.{count}
        )
        {result}""").format(insert_new=insert_new, rollup=sql.Identifier(rollup.table),
                            value=value, count=count, result=result)


def write_interactions(conn: Connection, ratings: Sequence[Interaction],
                       requests: Sequence[Interaction],
                       rejects: Sequence[Rejected] = ()) -> WriteResult:
    """Write one batch in one transaction; return what was new (replays insert nothing)."""
    with conn, conn.cursor() as cur:
        ratings_inserted, _ = _insert(cur, "rating_interaction", RATING_COLUMNS, ratings)
        requests_inserted, new_requests = _insert(
            cur, "request_interaction", REQUEST_COLUMNS, requests, return_rows=True)
        _insert(cur, "rejected_message", Rejected._fields, rejects)
    emergencies = tuple(Interaction._make(row) for row in new_requests if row[1] == EMERGENCY)
    return WriteResult(ratings_inserted, requests_inserted, emergencies)
