"""Schema upgrades that keep the data: a database of the first release, filled, then upgraded by
`lmnh-migrate`; and every entry point refusing a schema it was not written for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from conftest import ROOT, Broker, Database, PgServer, PipelineRun, unique, wait_until
from test_backfill import new_bucket
from test_pipeline import row_count, simulated_presses

import db
from lmnh.local.embedded import MotoS3, free_port

RELEASE_1 = Path(__file__).parent / "fixtures" / "schema_release_1.sql"

# What the first release stored: exhibitions, then presses across a spring-forward night, an
# autumn night and ordinary days, inserted as its pipeline did (through its trigger).
FILL = """
INSERT INTO department (department_name) VALUES ('Geology'), ('Zoology');
INSERT INTO floor (floor_name) VALUES ('1'), ('2');
INSERT INTO exhibition VALUES
    (0, 'EXH_00', 'Measureless to Man', 'Caves', '2021-08-23', 1, 1),
    (4, 'EXH_04', 'Our Polluted World', 'Plastics', '2021-05-12', 2, 2);
INSERT INTO rating_interaction
SELECT (n % 2) * 4, n % 5, TIMESTAMPTZ '2025-03-29 20:00+00' + n * interval '7 minutes',
       'lmnh', n % 3, n
FROM generate_series(0, 799) AS n;
INSERT INTO rating_interaction
SELECT 4, n % 5, TIMESTAMPTZ '2025-10-25 22:00+00' + n * interval '3 minutes', 'lmnh', 7, n
FROM generate_series(0, 199) AS n;
INSERT INTO request_interaction
SELECT (n % 2) * 4, (n % 9 = 0)::int, TIMESTAMPTZ '2025-03-29 21:00+00' + n * interval '11 minutes',
       'lmnh', n % 3, 100000 + n
FROM generate_series(0, 299) AS n;
INSERT INTO rejected_message
SELECT (ARRAY['invalid_val', 'unknown_site', 'outside_hours'])[n % 3 + 1],
       TIMESTAMPTZ '2025-03-29 20:30+00' + n * interval '13 minutes', 'lmnh', 0, 200000 + n
FROM generate_series(0, 399) AS n;
"""
DATA_TABLES = ("department", "floor", "exhibition", "rating", "request", "rating_interaction",
               "request_interaction", "rejected_message", "rating_hourly", "request_hourly")
VIEWS = ("v_rating", "v_request", "v_exhibition_hourly", "v_exhibition_daily",
         "v_rejects_daily", "exhibition_hour_counts")

# The shape of a schema, as the catalog holds it: what a fresh database and an upgraded one must
# share. A table change in schema.sql without its migration shows up here.
CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default,
                         is_identity, identity_generation
                  FROM information_schema.columns WHERE table_schema = 'public'""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "views": """SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'""",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace""",
    "triggers": """SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
                   WHERE NOT tgisinternal""",
    "grants": """SELECT grantee, table_name, privilege_type
                 FROM information_schema.role_table_grants
                 WHERE table_schema = 'public' AND grantee IN ('lmnh_writer', 'lmnh_reader')""",
}


def catalog(database: Database) -> dict[str, list[tuple]]:
    return {name: sorted(database.query(query), key=repr) for name, query in CATALOG.items()}


def contents(database: Database, names: tuple[str, ...]) -> dict[str, list[tuple]]:
    return {name: sorted(database.query(f"SELECT * FROM {name}"), key=repr) for name in names}


def columns(database: Database, name: str) -> list[str]:
    return [row[0] for row in database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        " ORDER BY ordinal_position", (name,))]


def view_rows(database: Database, shape: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Each view's rows, in the given columns only (a later release may add columns)."""
    return {name: sorted(database.query(f"SELECT {', '.join(cols)} FROM {name}"), key=repr)
            for name, cols in shape.items()}


def new_database(server: PgServer) -> Database:
    database = Database(server, unique("lmnh_migrate"))
    server.create_database(database.name)
    return database


def run_sql(database: Database, text: str) -> None:
    """A script (holding % signs) in one transaction, as psql -1 would run it."""
    conn = psycopg2.connect(database.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(text)
    finally:
        conn.close()


def release_1_database(server: PgServer) -> Database:
    database = new_database(server)
    run_sql(database, RELEASE_1.read_text())
    run_sql(database, FILL)
    return database


def migrate(database: Database, *args: str,
            extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")} | database.env()
    env |= {"DATABASE_ADMIN_USERNAME": env.pop("DATABASE_USERNAME"),  # the server's superuser
            "PGPASSWORD": env.pop("DATABASE_PASSWORD")}
    return subprocess.run([sys.executable, "-m", "lmnh.apps.migrate", *args], cwd=ROOT,
                          env=env | (extra or {}), capture_output=True, text=True, timeout=120)


def test_a_release_1_database_is_upgraded_keeping_every_row(pg_server: PgServer) -> None:
    old = release_1_database(pg_server)
    assert db.schema_version(psycopg2.connect(old.url)) == 1
    before = contents(old, DATA_TABLES)
    release_1_views = {name: columns(old, name) for name in VIEWS}
    before_views = view_rows(old, release_1_views)
    assert len(before["rating_interaction"]) == 1000 and len(before["rating_hourly"]) > 20

    status = migrate(old, "--status")
    assert status.returncode == 1
    assert f"schema version 1; this release's: {db.latest_version()}" in status.stdout

    result = migrate(old)
    assert result.returncode == 0, result.stderr
    assert f"schema version 1 -> {db.latest_version()}" in result.stdout
    assert "0002" in result.stdout and "0004" in result.stdout and result.stderr == ""

    fresh = new_database(pg_server)
    conn = psycopg2.connect(fresh.url)
    db.apply_schema(conn)
    conn.close()
    run_sql(fresh, FILL)

    assert contents(old, DATA_TABLES) == before  # every row and every rollup kept
    assert contents(old, DATA_TABLES) == contents(fresh, DATA_TABLES)
    assert contents(old, VIEWS) == contents(fresh, VIEWS)  # as on a fresh database
    assert view_rows(old, release_1_views) == before_views  # what release 1 answered, unchanged
    assert catalog(old) == catalog(fresh)
    assert old.scalar("SELECT max(version) FROM schema_version") == db.latest_version()
    # 0004: each identity continues after the highest id stored, as on the fresh database.
    for database in (old, fresh):
        assert database.query(
            "SELECT last_value FROM pg_sequences WHERE schemaname = 'public' AND sequencename"
            " IN ('department_department_id_seq', 'floor_floor_id_seq') ORDER BY 1") == [
            (2,), (2,)]

    again = migrate(old)  # nothing left to do, nothing changed
    assert again.returncode == 0 and "migrations applied: none needed" in again.stdout
    assert contents(old, DATA_TABLES) == before


def test_the_pipeline_runs_on_an_upgraded_database(
        pg_server: PgServer, broker: Broker, pipeline_env: dict[str, str],
        run_pipeline) -> None:
    old = release_1_database(pg_server)
    refused: PipelineRun = run_pipeline(pipeline_env | old.env(), "before")
    assert refused.wait(timeout=60) == 3  # the unit's RestartPreventExitStatus
    errors = [line for line in refused.text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, refused.text()
    assert "schema is version 1" in errors[0] and "lmnh-migrate" in errors[0]
    assert "Traceback" not in refused.text()

    assert migrate(old).returncode == 0
    stored = row_count(old)
    broker.produce(pipeline_env["TOPIC"], [press.value for press in simulated_presses(500)])
    run = run_pipeline(pipeline_env | old.env(), "after")
    wait_until(lambda: row_count(old) > stored, 60, "new rows on the upgraded database")
    assert run.stop() == 0
    assert "Traceback" not in run.text()
    # The rollups still count exactly the stored rows, old and new.
    for table, rollup, count in (("rating_interaction", "rating_hourly", "ratings"),
                                 ("request_interaction", "request_hourly", "requests")):
        assert old.scalar(f"SELECT count(*) FROM {table}") == \
            old.scalar(f"SELECT sum({count}) FROM {rollup}")


@pytest.mark.parametrize("damage", ["newer", "empty"])
def test_an_unknown_schema_is_refused_with_one_line(
        pg_server: PgServer, pipeline_env: dict[str, str], run_pipeline, damage: str) -> None:
    database = new_database(pg_server)
    if damage == "newer":
        conn = psycopg2.connect(database.url)
        db.apply_schema(conn)
        conn.close()
        database.execute("INSERT INTO schema_version (version) VALUES (99)")
    run = run_pipeline(pipeline_env | database.env(), damage)
    assert run.wait(timeout=60) == 3
    errors = [line for line in run.text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, run.text()
    assert ("version 99, newer than this release's" if damage == "newer"
            else "reset_database.sh --yes") in errors[0]
    assert "Traceback" not in run.text()
    status = migrate(database)
    assert status.returncode == 1 and len(status.stderr.splitlines()) == 1


def test_migrations_are_numbered_from_0002_and_schema_sql_records_the_latest(
        database: Database) -> None:
    versions = list(db.migrations())
    assert versions == list(range(2, db.latest_version() + 1))
    assert database.scalar("SELECT max(version) FROM schema_version") == db.latest_version()


def test_the_backfill_and_the_dashboard_refuse_an_older_schema_with_one_line(
        pg_server: PgServer, moto_s3: MotoS3, tmp_path: Path) -> None:
    old = release_1_database(pg_server)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env = keep | old.env() | moto_s3.env(new_bucket(moto_s3, {})) | {
        "REJECT_LOG": str(tmp_path / "rejects.log")}
    commands = (["lmnh.apps.backfill"], ["lmnh.apps.dashboard", "--port", str(free_port())])
    for command in commands:
        result = subprocess.run([sys.executable, "-m", *command],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if " ERROR " in line]
        assert result.returncode == 1, output
        assert len(errors) == 1 and "lmnh-migrate" in errors[0], output
        assert "Traceback" not in output


def test_migrate_needs_an_administrator_role(pg_server: PgServer) -> None:
    database = release_1_database(pg_server)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")} | database.env()
    result = subprocess.run([sys.executable, "-m", "lmnh.apps.migrate"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "--admin-user" in result.stderr
    assert db.schema_version(psycopg2.connect(database.url)) == 1  # nothing was touched
