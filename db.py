"""PostgreSQL access with psycopg2: connecting, the exhibition upsert, and the batch write.

A batch is written in one transaction, each table's rows by one COPY straight into it. A row's
primary key is where its message came from (source, partition, offset). One verdict per
message: the transaction first locks its partitions' rows in `source_progress`, whose
`next_offset` says every message below it has a stored verdict; a message below the mark (a
replay after a crash, a rebalance or an offset reset) is written only if none of the three
tables holds it, so the first stored verdict stands whatever a later judging says. The batch's
emergencies get their alert rows (the outbox) in the same transaction. Should a COPY still meet
a stored key (a database whose progress rows were removed by hand), the batch is written again
through temporary staging tables and INSERT ... ON CONFLICT DO NOTHING. Either way a message
never makes a second row, and the tables' trigger counts exactly the new rows into the rollups.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extras import execute_values

from lmnh.core import topics
from lmnh.core.rows import (
    CopyRows,
    Interaction,
    Origin,
    Partition,
    Rejected,
    interaction_rows,
    rejected_rows,
)
from s3_metadata import Exhibition

HERE = Path(__file__).resolve().parent
SQL = HERE / "lmnh" / "sql"
# A new database: the tables, then the rest.
SCHEMA_FILES = (HERE / "schema.sql", SQL / "schema_views.sql")
MIGRATIONS = SQL / "migrations"  # NNNN_name.sql: each upgrades version NNNN - 1 to NNNN
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
MIGRATE_COMMAND = "lmnh-migrate"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The errors after which a new connection may succeed: server gone, restarted, failed over.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
Error = psycopg2.Error  # any error the database or the driver raises
# Worth a new connection and another try: the server gone, or (after a failover) a session that
# can no longer write, which a new connection to the writable instance can.
RETRYABLE_ERRORS = (*CONNECTION_ERRORS, psycopg2.errors.ReadOnlySqlTransaction)
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
    # How long sent data may stay unacknowledged before the kernel drops the connection (libpq's
    # tcp_user_timeout, Linux): a COPY on a link that went silent fails within this, rather than
    # after minutes of retransmissions, so a SIGTERM is answered within the unit's 10 s.
    tcp_user_timeout_ms: int = 10_000

    @property
    def effective_sslmode(self) -> str:
        return effective_sslmode(self.host, self.sslmode)


def effective_sslmode(host: str, sslmode: str | None) -> str:
    """TLS is required unless asked otherwise or the server is on this machine."""
    if sslmode:
        return sslmode
    is_local = host in LOCAL_HOSTS or host.startswith("/")
    return "prefer" if is_local else "require"


RATING_COLUMNS = ("exhibition_id", "rating_value", "event_at", "source", "source_partition",
                  "source_offset")
REQUEST_COLUMNS = ("exhibition_id", "request_value", "event_at", "source", "source_partition",
                   "source_offset")


class OutboxAlert(NamedTuple):
    """An emergency's alert as the outbox holds it: pending while sent_at and failed_at are
    None; failed_at and failure say when and why SNS refused it for good (it is not re-sent)."""

    source: str
    source_partition: int
    source_offset: int
    pressed_at: datetime
    subject: str
    message: str
    sent_at: datetime | None = None
    failed_at: datetime | None = None
    failure: str | None = None

    @classmethod
    def outcome(cls, alert: Sequence[Any], at: datetime, failure: str | None = None,
                ) -> OutboxAlert:
        """An alert (its first six fields) SNS accepted `at`, or refused for good `at` for the
        reason `failure`: what alerts.AlertSender.take_sent hands back, as the outbox records
        it."""
        fields = tuple(alert)[:6]
        if failure is None:
            return cls(*fields, sent_at=at)
        return cls(*fields, failed_at=at, failure=failure)


@dataclass(frozen=True, slots=True)
class WriteResult:
    ratings_inserted: int
    requests_inserted: int
    new_emergencies: tuple[Interaction, ...]
    already_judged: int = 0  # messages dropped: a verdict for them was stored before


@dataclass(frozen=True, slots=True)
class ExhibitionConflict:
    """An exhibition number the metadata now gives another name or department: the stored
    exhibition is kept, so the rows already stored keep theirs."""

    stored_name: str
    stored_department: str
    new: Exhibition


@dataclass(frozen=True, slots=True)
class UpsertResult:
    conflicts: tuple[ExhibitionConflict, ...] = ()
    refused: tuple[tuple[Exhibition, str], ...] = ()  # (exhibition, the database's reason)
    # number -> the exhibition as the database holds it after the upsert (a conflict's stored
    # one), for every number given but the refused: what the rules may be built from.
    held: dict[int, Exhibition] = dataclasses.field(default_factory=dict)


def open_connection(settings: DatabaseSettings, application_name: str) -> Connection:
    """A connection with TLS, timeouts and keepalives as configured. Keepalives find a silent
    peer while the connection is idle (within 30 + 3 x 10 s); tcp_user_timeout while data is
    waiting for its acknowledgement (a COPY or a query sent into a dead link)."""
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
        tcp_user_timeout=settings.tcp_user_timeout_ms,
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


def connect_reader(settings: DatabaseSettings, application_name: str) -> Connection:
    """A read-only session whose every transaction reads one snapshot (repeatable read)."""
    conn = open_connection(settings, application_name)
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                     readonly=True)
    return conn


def connect(settings: DatabaseSettings, application_name: str = "lmnh-pipeline",
            clock: MuseumClock | None = None) -> Connection:
    """The writer's connection, with its session's staging tables for replayed batches.

    Raises SchemaMismatch, on every connection (the first or a reconnect), when the database's
    schema is not this release's or, given `clock`, when the database counts in another museum
    clock (or holds none); the connection is closed first. Any other failure is a psycopg2.Error
    (CONNECTION_ERRORS: the server may be back later), the connection closed as well."""
    conn = open_connection(settings, application_name)
    try:
        check_schema(conn)
        if clock is not None:
            check_clock(conn, clock)
        with conn.cursor() as cur:
            for table in ("rating_interaction", "request_interaction", "rejected_message"):
                cur.execute(sql.SQL(
                    "CREATE TEMP TABLE {staging} ON COMMIT DELETE ROWS AS SELECT * FROM {table}"
                    " WITH NO DATA"
                ).format(staging=sql.Identifier(f"staging_{table}"),
                         table=sql.Identifier(table)))
        conn.commit()
    except BaseException:
        conn.close()
        raise
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
    """The zone and hours the views, rollups and dashboard use (SchemaMismatch if the row is
    missing). Leaves no transaction open."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT time_zone, opening_time, closing_time FROM museum_settings")
            row = cur.fetchone()
    finally:
        conn.rollback()
    if row is None:
        raise SchemaMismatch(f"the database holds no museum clock (its museum_settings row is"
                             f" missing): run `{MIGRATE_COMMAND}` to write it")
    return MuseumClock(*row)


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
        cur.execute(SCHEMA_FILES[0].read_text())
        if clock is not None:
            _write_clock(cur, clock)
        cur.execute(SCHEMA_FILES[1].read_text())


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
        # A database whose clock row was deleted gets the settings' (the views bake it in).
        cur.execute("INSERT INTO museum_settings (time_zone, opening_time, closing_time)"
                    " SELECT %s, %s, %s WHERE NOT EXISTS (SELECT FROM museum_settings)",
                    (clock.zone, clock.opens, clock.closes))
        views = SCHEMA_FILES[1].read_text()
        cur.execute(views)
        cur.execute("SELECT time_zone, opening_time, closing_time FROM museum_settings")
        if MuseumClock(*cur.fetchone()) != clock:
            _write_clock(cur, clock)
            cur.execute(views)
    return found, applied


def upsert_exhibitions(conn: Connection, exhibitions: Iterable[Exhibition]) -> UpsertResult:
    """Make the exhibition, department and floor tables match the metadata, in one transaction.

    An exhibition whose number is stored under another name or department is left as stored
    (reported as a conflict); one the database refuses (a value it cannot hold) is skipped and
    reported, so a bad file never stops the others. The result's `held` is what the database
    holds afterwards for the numbers given, as stored (a conflict's stored exhibition), without
    the refused: judge presses by it, never by the metadata alone.

    A department or floor is inserted only when absent, so an upsert of known exhibitions spends
    no identity value (their SMALLINT identities would run out after some thousands of starts).
    Exhibitions go in number order, so two writers upserting at once take their row locks in one
    order; a department or floor another writer is inserting is waited for, then used.
    """
    conflicts: list[ExhibitionConflict] = []
    refused: list[tuple[Exhibition, str]] = []
    held: dict[int, Exhibition] = {}
    with conn, conn.cursor() as cur:
        for exhibition in sorted(exhibitions, key=lambda e: e.number):
            cur.execute("SAVEPOINT exhibition")
            try:
                stored = _upsert_exhibition(cur, exhibition)
            except (psycopg2.DataError, psycopg2.IntegrityError,
                    psycopg2.errors.ProgramLimitExceeded) as error:
                # DataError includes an identity whose values are used up (2200H).
                cur.execute("ROLLBACK TO SAVEPOINT exhibition")
                refused.append((exhibition, " ".join(str(error).split())))
                continue
            cur.execute("RELEASE SAVEPOINT exhibition")
            if stored != exhibition:
                conflicts.append(ExhibitionConflict(stored.name, stored.department, exhibition))
            held[exhibition.number] = stored
    return UpsertResult(tuple(conflicts), tuple(refused), held)


_STORED_EXHIBITION = (
    "SELECT e.exhibition_id, e.public_id, e.exhibition_name, f.floor_name, d.department_name,"
    " e.start_date, e.exhibition_description FROM exhibition e"
    " JOIN department d USING (department_id) JOIN floor f USING (floor_id)"
    " WHERE e.exhibition_id = %s")


def _upsert_exhibition(cur: psycopg2.extensions.cursor, exhibition: Exhibition) -> Exhibition:
    """Insert or update one exhibition and return it as stored: the metadata's, or the stored
    one (unchanged) when it has another name or department."""
    cur.execute(_STORED_EXHIBITION, (exhibition.number,))
    row = cur.fetchone()
    if row is not None:
        stored = Exhibition(*row, source_key=exhibition.source_key)
        if (stored.name, stored.department) != (exhibition.name, exhibition.department):
            return stored
        if stored == exhibition:
            return exhibition  # nothing to write
    cur.execute(
        """
        INSERT INTO exhibition (exhibition_id, public_id, exhibition_name,
                                exhibition_description, start_date, department_id, floor_id)
        VALUES (%(number)s, %(public_id)s, %(name)s, %(description)s, %(start_date)s,
                %(department_id)s, %(floor_id)s)
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
            "department_id": _name_id(cur, "department", exhibition.department),
            "floor_id": _name_id(cur, "floor", exhibition.floor),
        },
    )
    return exhibition


def _name_id(cur: psycopg2.extensions.cursor, table: str, name: str) -> int:
    """The id of the department or floor named `name`, inserting it only when absent: an
    INSERT, even one that ON CONFLICT skips, spends an identity value. When another writer
    inserts the same name at once, ON CONFLICT waits for its transaction: committed, its row is
    read back (this statement's snapshot is newer); rolled back, this insert goes ahead."""
    select = sql.SQL("SELECT {id} FROM {table} WHERE {name} = %s").format(
        id=sql.Identifier(f"{table}_id"), table=sql.Identifier(table),
        name=sql.Identifier(f"{table}_name"))
    cur.execute(select, (name,))
    row = cur.fetchone()
    if row is None:
        cur.execute(sql.SQL(
            "INSERT INTO {table} ({name}) VALUES (%s) ON CONFLICT DO NOTHING RETURNING {id}"
        ).format(id=sql.Identifier(f"{table}_id"), table=sql.Identifier(table),
                 name=sql.Identifier(f"{table}_name")), (name,))
        row = cur.fetchone()
        if row is None:  # another writer's, committed while this insert waited
            cur.execute(select, (name,))
            row = cur.fetchone()
    return row[0]


class Table(NamedTuple):
    name: str
    columns: tuple[str, ...]

    def copy(self, cur: psycopg2.extensions.cursor, rows: CopyRows,
             staging: bool = False) -> None:
        """COPY `rows` into this table, or into its session's staging table."""
        name = f"staging_{self.name}" if staging else self.name
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, self.columns)))
        payload = rows.payload()
        # One read of the whole payload: psycopg2 re-takes the GIL for every read.
        cur.copy_expert(statement.as_string(cur), io.BytesIO(payload), size=len(payload))

    def insert_new(self, cur: psycopg2.extensions.cursor, rows: CopyRows) -> list[tuple]:
        """Insert the rows not stored yet, through the staging table; return those rows."""
        self.copy(cur, rows, staging=True)
        columns = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        cur.execute(sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}"
            " ON CONFLICT DO NOTHING RETURNING {columns}"
        ).format(table=sql.Identifier(self.name), columns=columns,
                 staging=sql.Identifier(f"staging_{self.name}")))
        return cur.fetchall()


RATINGS = Table("rating_interaction", RATING_COLUMNS)
REQUESTS = Table("request_interaction", REQUEST_COLUMNS)
REJECTS = Table("rejected_message", Rejected._fields)


def write_interactions(conn: Connection, ratings: Sequence[Interaction] | CopyRows,
                       requests: Sequence[Interaction],
                       rejects: Sequence[Rejected] | CopyRows = (),
                       alerts: Sequence[OutboxAlert] = (),
                       sent: Sequence[OutboxAlert] = (),
                       spans: dict[Partition, tuple[int, int]] | None = None) -> WriteResult:
    """Write one batch in one transaction; return what was new.

    Ratings and rejects may come already encoded (the pipeline's judging process encodes
    them); requests come as rows, whose new emergencies the result names.
    `alerts` are the batch's emergencies' alerts: each newly stored emergency's is recorded
    (pending unless its sent_at is set). `sent` are alerts SNS has accepted (or refused for
    good: failed_at set) since the last write, from any batch: marked so (an alert already
    marked keeps its first time).
    `spans`, each partition's (lowest offset, highest offset + 1) in the batch, saves a pass
    over the rows when the caller knows them (the daemon does; it may include partitions whose
    messages made no row).
    """
    encoded = [
        (RATINGS, ratings if isinstance(ratings, CopyRows) else interaction_rows(ratings)),
        (REQUESTS, interaction_rows(requests)),
        (REJECTS, rejects if isinstance(rejects, CopyRows) else rejected_rows(rejects)),
    ]
    batch = [(table, rows) for table, rows in encoded if len(rows)]
    if spans is None:
        spans = _spans(rows for _, rows in batch)
    by_source = {(r.source, r.source_partition, r.source_offset): r for r in requests}
    try:
        with conn, conn.cursor() as cur:
            return _write(cur, batch, spans, alerts, sent, by_source, Table.copy)
    except psycopg2.errors.UniqueViolation:  # rolled back: write what is not stored
        with conn, conn.cursor() as cur:
            return _write(cur, batch, spans, alerts, sent, by_source, Table.insert_new)


def _write(cur: psycopg2.extensions.cursor, batch: list[tuple[Table, CopyRows]],
           spans: dict[Partition, tuple[int, int]],
           alerts: Sequence[OutboxAlert], sent: Sequence[OutboxAlert],
           requests: dict[Origin, Interaction],
           insert: Callable[[Table, psycopg2.extensions.cursor, CopyRows], list[tuple] | None],
           ) -> WriteResult:
    """`requests`: the batch's request rows by source, for the new emergencies."""
    marks = _lock_progress(cur, spans)
    written: dict[Table, int] = {}
    new_requests: list[Interaction] = []
    already_judged = 0
    replayed = any(low < marks[key] for key, (low, _) in spans.items())
    for table, rows in batch:
        if replayed:
            kept = _unjudged(cur, rows, marks)
            already_judged += len(rows) - len(kept)
            rows = kept
        if not len(rows):
            continue
        returned = insert(table, cur, rows)
        written[table] = len(rows) if returned is None else len(returned)
        if table is REQUESTS:
            new_requests = ([requests[key] for key in rows.origins()] if returned is None
                            else [Interaction._make(row) for row in returned])
    _advance_progress(cur, spans)
    new_emergencies = tuple(row for row in new_requests if row.value == EMERGENCY)
    stored = {(r.source, r.source_partition, r.source_offset) for r in new_emergencies}
    outbox = {alert[:3]: alert for alert in alerts if alert[:3] in stored}
    for alert in sent:
        earlier = outbox.get(alert[:3])
        outbox[alert[:3]] = alert if earlier is None else earlier._replace(
            sent_at=earlier.sent_at or alert.sent_at,
            failed_at=earlier.failed_at or alert.failed_at,
            failure=earlier.failure or alert.failure)
    if outbox:
        _record_alerts(cur, list(outbox.values()))
    return WriteResult(written.get(RATINGS, 0), len(new_requests), new_emergencies,
                       already_judged)


def _spans(tables: Iterable[CopyRows]) -> dict[Partition, tuple[int, int]]:
    """(lowest offset, highest offset + 1) of each source partition in the batch."""
    spans: dict[Partition, tuple[int, int]] = {}
    for rows in tables:
        for source, partition, offset in rows.origins():
            key = (source, partition)
            low, high = spans.get(key, (offset, offset + 1))
            spans[key] = (min(low, offset), max(high, offset + 1))
    return spans


def _lock_progress(cur: psycopg2.extensions.cursor,
                   spans: dict[Partition, tuple[int, int]]) -> dict[Partition, int]:
    """Lock the batch's progress rows (in key order: no deadlock between two writers) and
    return each partition's next_offset; a new partition starts at 0."""
    if not spans:
        return {}
    keys = sorted(spans)
    cur.execute(
        "INSERT INTO source_progress AS p (source, source_partition, next_offset)"
        " SELECT s, n, 0 FROM unnest(%s::text[], %s::int[]) AS k(s, n) ORDER BY s, n"
        " ON CONFLICT (source, source_partition) DO UPDATE SET next_offset = p.next_offset"
        " RETURNING source, source_partition, next_offset",
        ([k[0] for k in keys], [k[1] for k in keys]))
    return {(source, partition): mark for source, partition, mark in cur.fetchall()}


def _unjudged(cur: psycopg2.extensions.cursor, rows: CopyRows,
              marks: dict[Partition, int]) -> CopyRows:
    """The rows to write: those past their partition's mark, and those below it that no table
    holds (a message the consumer skipped, then read after an offset reset)."""
    below: dict[Partition, list[int]] = {}
    for source, partition, offset in rows.origins():
        if offset < marks[source, partition]:
            below.setdefault((source, partition), []).append(offset)
    if not below:
        return rows
    stored: set[Origin] = set()
    for (source, partition), offsets in below.items():
        for table in ("rating_interaction", "request_interaction", "rejected_message"):
            cur.execute(sql.SQL(
                "SELECT source_offset FROM {} WHERE source = %s AND source_partition = %s"
                " AND source_offset = ANY(%s)").format(sql.Identifier(table)),
                (source, partition, offsets))
            stored.update((source, partition, offset) for (offset,) in cur.fetchall())
    return rows.only(lambda key: key not in stored)


def _advance_progress(cur: psycopg2.extensions.cursor,
                      spans: dict[Partition, tuple[int, int]]) -> None:
    if not spans:
        return
    keys = sorted(spans)
    cur.execute(
        "UPDATE source_progress p SET next_offset = greatest(p.next_offset, v.n)"
        " FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(s, pa, n)"
        " WHERE p.source = v.s AND p.source_partition = v.pa",
        ([k[0] for k in keys], [k[1] for k in keys], [spans[k][1] for k in keys]))


def _record_alerts(cur: psycopg2.extensions.cursor, alerts: list[OutboxAlert]) -> None:
    """Insert alerts, or mark them sent or failed; what is already recorded is never
    replaced."""
    execute_values(
        cur,
        "INSERT INTO emergency_alert AS a (source, source_partition, source_offset, pressed_at,"
        " subject, message, sent_at, failed_at, failure) VALUES %s"
        " ON CONFLICT (source, source_partition, source_offset)"
        " DO UPDATE SET sent_at = coalesce(a.sent_at, EXCLUDED.sent_at),"
        " failed_at = coalesce(a.failed_at, EXCLUDED.failed_at),"
        " failure = coalesce(a.failure, EXCLUDED.failure)",
        sorted(alerts, key=lambda alert: alert[:3]),
        template="(%s, %s, %s, %s, %s, %s, %s::timestamptz, %s::timestamptz, %s)")


def mark_alerts_sent(conn: Connection, sent: Sequence[OutboxAlert]) -> None:
    """Record alerts SNS accepted or refused for good, outside any batch (when no batch is
    being written)."""
    with conn, conn.cursor() as cur:
        _record_alerts(cur, list(sent))


def pending_alerts(conn: Connection, recorded_before: datetime | None = None,
                   ) -> list[OutboxAlert]:
    """Alerts recorded, neither sent nor refused for good (optionally only those recorded
    before a time), oldest press first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT source, source_partition, source_offset, pressed_at, subject, message,"
            " sent_at, failed_at, failure FROM emergency_alert"
            " WHERE sent_at IS NULL AND failed_at IS NULL"
            " AND recorded_at < coalesce(%s::timestamptz, 'infinity') ORDER BY pressed_at",
            (recorded_before,))
        return [OutboxAlert._make(row) for row in cur.fetchall()]


def judged_marks(settings: DatabaseSettings, partitions: Sequence[Partition],
                 timeout_s: int = 2) -> dict[Partition, int]:
    """Each partition's next_offset (missing: nothing judged yet), read on a connection of its
    own that gives up within about `timeout_s` seconds."""
    quick = dataclasses.replace(settings, connect_timeout_s=max(2, timeout_s),
                                statement_timeout_ms=timeout_s * 1000)
    conn = open_connection(quick, "lmnh-pipeline-marks")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT source, source_partition, next_offset FROM source_progress"
                " WHERE (source, source_partition) IN"
                " (SELECT * FROM unnest(%s::text[], %s::int[]))",
                ([p[0] for p in partitions], [p[1] for p in partitions]))
            return {(source, partition): mark for source, partition, mark in cur.fetchall()}
    finally:
        conn.close()


class TopicSource(NamedTuple):
    """The source name a topic's messages are stored under now (lmnh.core.topics)."""

    topic: str
    source: str
    incarnation: int  # 1: the topic's first life, whose source is its name
    recreated: str | None = None  # set when this call started the incarnation: the reason


def topic_sources(settings: DatabaseSettings, ends: Mapping[str, Mapping[int, int]],
                  timeout_s: int = 2) -> dict[str, TopicSource]:
    """Each topic's current source, given its partitions' high watermarks as the broker reports
    them now; a topic that ends below a stored mark of its current source was recreated, and
    gets a new incarnation (recorded here, and named in the result's `recreated`).

    One transaction on a connection of its own (giving up within about `timeout_s` seconds)
    holds each topic's row locked (in topic order) while it decides, so two processes assigned
    the topic at once start one incarnation between them, and the second sees it.
    """
    quick = dataclasses.replace(settings, connect_timeout_s=max(2, timeout_s),
                                statement_timeout_ms=timeout_s * 1000)
    conn = open_connection(quick, "lmnh-pipeline-topics")
    found: dict[str, TopicSource] = {}
    try:
        with conn, conn.cursor() as cur:
            for topic in sorted(ends):
                cur.execute("INSERT INTO topic_source (topic, source, incarnation)"
                            " VALUES (%s, %s, 1) ON CONFLICT (topic) DO NOTHING", (topic, topic))
                cur.execute("SELECT source, incarnation FROM topic_source WHERE topic = %s"
                            " FOR UPDATE", (topic,))
                source, incarnation = cur.fetchone()
                cur.execute("SELECT source_partition, next_offset FROM source_progress"
                            " WHERE source = %s", (source,))
                detail = topics.recreated(dict(cur.fetchall()), ends[topic])
                if detail is not None:
                    incarnation += 1
                    source = topics.source_name(topic, incarnation)
                    cur.execute("UPDATE topic_source SET source = %s, incarnation = %s,"
                                " changed_at = now() WHERE topic = %s",
                                (source, incarnation, topic))
                found[topic] = TopicSource(topic, source, incarnation, detail)
    finally:
        conn.close()
    return found
