"""PostgreSQL access with psycopg2: connecting, the exhibition upsert, and the batch write.

A batch is written in one transaction, each table's rows by one COPY straight into it. A row's
primary key is where its message came from (source, partition, offset), so a batch holding a
message already stored (a replay after a crash or a rebalance) fails on that key; it is then
written again through temporary staging tables and INSERT ... ON CONFLICT DO NOTHING, which
skips the stored rows. Either way a message never makes a second row, and the tables' trigger
counts exactly the new rows into the hourly rollups.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from s3_metadata import Exhibition
from validation import Rating, Request

HERE = Path(__file__).resolve().parent
SCHEMA_FILES = ("schema.sql", "schema_views.sql")  # a new database: the tables, then the rest
MIGRATIONS = HERE / "migrations"  # NNNN_name.sql: each upgrades version NNNN - 1 to NNNN
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
MIGRATE_COMMAND = "python migrate.py"
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
        return effective_sslmode(self.host, self.sslmode)


def effective_sslmode(host: str, sslmode: str | None) -> str:
    """TLS is required unless asked otherwise or the server is on this machine."""
    if sslmode:
        return sslmode
    is_local = host in LOCAL_HOSTS or host.startswith("/")
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


class TlsState(NamedTuple):
    """How a connection reaches the server: `verified` only when libpq checked both the
    certificate chain and that the certificate names the host (sslmode verify-full)."""

    sslmode: str
    protocol: str | None  # None: no TLS
    verified: bool

    def describe(self) -> str:
        if self.protocol is None:
            return f"no TLS (sslmode={self.sslmode})"
        identity = "server identity verified" if self.verified else "server identity NOT verified"
        return f"{self.protocol} (sslmode={self.sslmode}, {identity})"


def tls_state(conn: Connection, settings: DatabaseSettings) -> TlsState:
    protocol = conn.info.ssl_attribute("protocol") if conn.info.ssl_in_use else None
    return TlsState(settings.effective_sslmode, protocol,
                    protocol is not None and settings.effective_sslmode == "verify-full")


def connect(settings: DatabaseSettings, application_name: str = "lmnh-pipeline") -> Connection:
    """The writer's connection, with its session's staging tables for replayed batches.

    SchemaMismatch if the database's schema is not this release's."""
    conn = open_connection(settings, application_name)
    try:
        check_schema(conn)
    except SchemaMismatch:
        conn.close()
        raise
    with conn.cursor() as cur:
        for table in ("rating_interaction", "request_interaction", "rejected_message"):
            cur.execute(sql.SQL(
                "CREATE TEMP TABLE {staging} ON COMMIT DELETE ROWS AS SELECT * FROM {table}"
                " WITH NO DATA"
            ).format(staging=sql.Identifier(f"staging_{table}"), table=sql.Identifier(table)))
    conn.commit()
    return conn


@dataclass(frozen=True, slots=True)
class MuseumClock:
    """The museum's time zone and opening hours, as the museum_settings row holds them."""

    zone: str
    opens: time
    closes: time

    def describe(self) -> str:
        return f"{self.zone} {self.opens:%H:%M:%S}-{self.closes:%H:%M:%S}"


class SchemaMismatch(Exception):
    """The database's schema is not the one this release was written for; says what to run."""


def migrations() -> dict[int, Path]:
    """The migration files by version; release 1 (version 1) is the baseline and has none."""
    found = {}
    for path in MIGRATIONS.glob("*.sql"):
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: a migration is named NNNN_short_name.sql")
        found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def latest_version() -> int:
    """The schema version this release needs: its newest migration's number."""
    return max(migrations(), default=1)


def schema_version(conn: Connection) -> int | None:
    """The database's schema version; 1 for the first release's (which had no version table),
    None for a database without the kiosk tables. Leaves no transaction open."""
    try:
        with conn.cursor() as cur:
            return _schema_version(cur)
    finally:
        conn.rollback()


def _schema_version(cur: Any) -> int | None:
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL,"
                " to_regclass('rating_interaction') IS NOT NULL")
    has_versions, has_tables = cur.fetchone()
    if has_versions:
        cur.execute("SELECT max(version) FROM schema_version")
        return cur.fetchone()[0]
    return 1 if has_tables else None


def check_schema(conn: Connection) -> int:
    """The database's schema version if it is this release's, else SchemaMismatch saying what
    to run, in one line."""
    found, needed = schema_version(conn), latest_version()
    if found is None:
        raise SchemaMismatch("the database has no kiosk tables: for a new database run"
                             " `./reset_database.sh --yes` (README \"Operating it\")")
    if found < needed:
        raise SchemaMismatch(f"the database schema is version {found}, this release needs"
                             f" {needed}: run `{MIGRATE_COMMAND}` (README \"Upgrades\")")
    if found > needed:
        raise SchemaMismatch(f"the database schema is version {found}, newer than this"
                             f" release's {needed}: run the release that upgraded it")
    return found


def read_museum_clock(conn: Connection) -> MuseumClock:
    """The zone and hours the views, rollups and dashboard use. Leaves no transaction open."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT time_zone, opening_time, closing_time FROM museum_settings")
            return MuseumClock(*cur.fetchone())
    finally:
        conn.rollback()


def check_clock(conn: Connection, clock: MuseumClock) -> None:
    """SchemaMismatch, in one line, unless the settings' clock is the one the database counts in
    (validation must judge by the hours and zone that the rollups and views use)."""
    stored = read_museum_clock(conn)
    if stored != clock:
        raise SchemaMismatch(
            f"the settings' museum clock (MUSEUM_TIMEZONE, OPENING_TIME, CLOSING_TIME:"
            f" {clock.describe()}) differs from the database's ({stored.describe()}): fix the"
            f" settings, or run `{MIGRATE_COMMAND}` to write them into the database")


def _write_clock(cur: Any, clock: MuseumClock) -> None:
    cur.execute("UPDATE museum_settings SET time_zone = %s, opening_time = %s,"
                " closing_time = %s", (clock.zone, clock.opens, clock.closes))


def apply_schema(conn: Connection, clock: MuseumClock | None = None) -> None:
    """Create every table, view, role and grant on a new (or to be emptied) database, in one
    transaction: what reset_database.sh does with psql. The clock defaults to schema.sql's
    (Europe/London, 08:45-18:15)."""
    with conn, conn.cursor() as cur:
        cur.execute((HERE / "schema.sql").read_text())
        if clock is not None:
            _write_clock(cur, clock)
        cur.execute((HERE / "schema_views.sql").read_text())


def migrate(conn: Connection, clock: MuseumClock) -> tuple[int, list[int]]:
    """Upgrade the database in place to this release's schema, keeping every row, and write the
    museum's clock; one transaction. Returns the version found and the migrations applied.

    Each migration file runs in order, its version recorded; then schema_views.sql is re-applied
    (it recreates what holds no data for the new tables), and once more if the clock's zone
    changed, so the rollups are recounted in the new zone."""
    with conn, conn.cursor() as cur:
        found = _schema_version(cur)
        if found is None:
            raise SchemaMismatch("the database has no kiosk tables: for a new database run"
                                 " `./reset_database.sh --yes`")
        if found > latest_version():
            raise SchemaMismatch(f"the database schema is version {found}, newer than this"
                                 f" release's {latest_version()}")
        # No writer may insert while the trigger and rollups are being replaced.
        cur.execute("LOCK TABLE rating_interaction, request_interaction IN SHARE MODE")
        applied = []
        for version, path in migrations().items():
            if version > found:
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
        views = (HERE / "schema_views.sql").read_text()
        cur.execute(views)
        cur.execute("SELECT time_zone, opening_time, closing_time FROM museum_settings")
        if MuseumClock(*cur.fetchone()) != clock:
            _write_clock(cur, clock)
            cur.execute(views)
    return found, applied


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


# COPY's binary format: a header, then per row a field count and each field as its length and
# its bytes, then a trailer. The server parses no text, and here a row is one struct.pack.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz is microseconds since this
MICROSECOND = timedelta(microseconds=1)


@functools.lru_cache(maxsize=256)
def _interaction_layout(source: str) -> tuple[struct.Struct, bytes]:
    """exhibition_id int2, value int2, event_at timestamptz, source text, int4, int8."""
    name = source.encode()
    return struct.Struct(f">h ih ih iq i{len(name)}s ii iq"), name


@functools.lru_cache(maxsize=256)
def _rejected_layout(reason: str, source: str) -> tuple[struct.Struct, bytes, bytes]:
    """reason text, rejected_at timestamptz, source text, partition int4, offset int8."""
    code, name = reason.encode(), source.encode()
    return struct.Struct(f">h i{len(code)}s iq i{len(name)}s ii iq"), code, name


def _encode_interaction(row: Interaction) -> bytes:
    layout, name = _interaction_layout(row.source)
    return layout.pack(6, 2, row.exhibition_id, 2, row.value,
                       8, (row.event_at - PG_EPOCH) // MICROSECOND, len(name), name,
                       4, row.source_partition, 8, row.source_offset)


def _encode_rejected(row: Rejected) -> bytes:
    layout, code, name = _rejected_layout(row.reason, row.source)
    return layout.pack(5, len(code), code, 8, (row.rejected_at - PG_EPOCH) // MICROSECOND,
                       len(name), name, 4, row.source_partition, 8, row.source_offset)


class Table(NamedTuple):
    name: str
    columns: tuple[str, ...]
    encode: Callable[[Any], bytes]

    def copy(self, cur: psycopg2.extensions.cursor, rows: Sequence[tuple],
             staging: bool = False) -> None:
        """COPY `rows` into this table, or into its session's staging table."""
        name = f"staging_{self.name}" if staging else self.name
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, self.columns)))
        payload = b"".join([COPY_HEADER, *map(self.encode, rows), COPY_TRAILER])
        # One read of the whole payload: psycopg2 re-takes the GIL for every read, and each
        # time can wait for the judging thread to let go of it.
        cur.copy_expert(statement.as_string(cur), io.BytesIO(payload), size=len(payload))

    def insert_new(self, cur: psycopg2.extensions.cursor, rows: Sequence[tuple]) -> list[tuple]:
        """Insert the rows not stored yet, through the staging table; return those rows."""
        self.copy(cur, rows, staging=True)
        columns = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        cur.execute(sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}"
            " ON CONFLICT DO NOTHING RETURNING {columns}"
        ).format(table=sql.Identifier(self.name), columns=columns,
                 staging=sql.Identifier(f"staging_{self.name}")))
        return cur.fetchall()


RATINGS = Table("rating_interaction", RATING_COLUMNS, _encode_interaction)
REQUESTS = Table("request_interaction", REQUEST_COLUMNS, _encode_interaction)
REJECTS = Table("rejected_message", Rejected._fields, _encode_rejected)


def write_interactions(conn: Connection, ratings: Sequence[Interaction],
                       requests: Sequence[Interaction],
                       rejects: Sequence[Rejected] = ()) -> WriteResult:
    """Write one batch in one transaction; return what was new (replays insert nothing)."""
    batch = [(table, rows) for table, rows in ((RATINGS, ratings), (REQUESTS, requests),
                                               (REJECTS, rejects)) if rows]
    try:
        with conn, conn.cursor() as cur:
            for table, rows in batch:
                table.copy(cur, rows)
        return _result(len(ratings), list(requests))
    except psycopg2.errors.UniqueViolation:  # a replay, rolled back: write what is not stored
        with conn, conn.cursor() as cur:
            inserted = {table: table.insert_new(cur, rows) for table, rows in batch}
        return _result(len(inserted.get(RATINGS, [])),
                       [Interaction._make(row) for row in inserted.get(REQUESTS, [])])


def _result(new_ratings: int, new_requests: list[Interaction]) -> WriteResult:
    return WriteResult(new_ratings, len(new_requests),
                       tuple(row for row in new_requests if row.value == EMERGENCY))
