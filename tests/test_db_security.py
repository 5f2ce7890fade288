"""The database cannot be subverted by its readers, and the writer can only write rows.

The database starts with PostgreSQL 14's old grants (every role may create objects in schema
public), as many RDS instances upgraded from 14 still have. The Tableau login (lmnh_reader) plants
functions and operators that would make it a superuser and record the call if anything ran them,
then reset_database.sh applies the schema as an administrator role, and the pipeline's writer
stores presses through db.write_interactions, replays included. Nothing planted may ever run, the
rollups must match the rows, and neither role may create, drop or grant anything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from conftest import ROOT, Database, PgServer, unique

import db
from lmnh.local.embedded import psql_path

READER_PASSWORD = "reader-secret"
WRITER_PASSWORD = "writer-secret"

# Bait: each records that it ran, as whom, and tries to make the reader a superuser. The
# date_bin with a text first argument is what an untyped '1 hour' once picked over pg_catalog's.
BAIT = """
CREATE TABLE public.planted_calls (what text, by_role text, at timestamptz DEFAULT now());
GRANT INSERT, SELECT ON public.planted_calls TO PUBLIC;
CREATE FUNCTION public.planted(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.planted_calls (what, by_role) VALUES (what, current_user);
    BEGIN
        ALTER ROLE lmnh_reader SUPERUSER;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
END $$;
CREATE FUNCTION public.date_bin(text, timestamptz, timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('date_bin(text)'); RETURN TIMESTAMPTZ '1999-01-01 00:00+00'; END $$;
CREATE FUNCTION public.date_bin(interval, timestamptz, timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('date_bin(interval)'); RETURN TIMESTAMPTZ '1999-01-01 00:00+00';
END $$;
CREATE FUNCTION public.format(text, text, text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('format'); RETURN 'SELECT 1'; END $$;
CREATE FUNCTION public.count(anyelement) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('count'); RETURN 0; END $$;
CREATE FUNCTION public.evil_smallint_eq(smallint, smallint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('= (smallint, smallint)'); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = smallint, RIGHTARG = smallint,
                          FUNCTION = public.evil_smallint_eq);
CREATE FUNCTION public.evil_bigint_plus(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('+ (bigint, bigint)'); RETURN 0; END $$;
CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.evil_bigint_plus);
CREATE FUNCTION public.evil_text_eq(smallint, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('= (smallint, text)'); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = smallint, RIGHTARG = text, FUNCTION = public.evil_text_eq);
"""

# What the same role tries once the schema is applied: every one must be refused.
ATTEMPTS_AFTER = (
    "CREATE FUNCTION public.date_bin(text, timestamptz, timestamptz) RETURNS timestamptz"
    " LANGUAGE sql AS $$ SELECT now() $$",
    "CREATE FUNCTION public.nothing() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    "CREATE OPERATOR public.=== (LEFTARG = smallint, RIGHTARG = smallint,"
    " FUNCTION = pg_catalog.int2eq)",
    "CREATE TABLE public.squat (x int)",
    "CREATE VIEW public.squat_view AS SELECT 1 AS x",
    "CREATE SCHEMA evil",
    "INSERT INTO public.rating_interaction VALUES (1, 4, now(), 'x', 0, 0)",
    "UPDATE public.rating_hourly SET ratings = 0",
    "DELETE FROM public.exhibition",
    "ALTER TABLE public.rating_interaction DISABLE TRIGGER USER",
    "CREATE OR REPLACE FUNCTION public.count_into_hourly() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
)
# A GRANT without the privilege only warns: what counts is that nothing was granted.
GRANTS_TRIED = (
    "GRANT CREATE ON SCHEMA public TO lmnh_reader, lmnh_writer",
    "GRANT INSERT, UPDATE, DELETE ON public.rating_hourly TO lmnh_reader, lmnh_writer",
)

WRITER_FORBIDDEN = (
    "DROP TABLE public.rating_interaction",
    "DROP TABLE public.rating_hourly",
    "TRUNCATE public.rating_interaction",
    "DELETE FROM public.rating_interaction",
    "UPDATE public.rating_hourly SET ratings = 0",
    "ALTER TABLE public.rating_interaction DISABLE TRIGGER USER",
    "CREATE ROLE lmnh_escalated LOGIN SUPERUSER",
    "CREATE ROLE lmnh_escalated LOGIN",
    "CREATE FUNCTION public.nothing() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    "CREATE TABLE public.squat (x int)",
    "CREATE SCHEMA evil",
    "ALTER ROLE lmnh_writer CREATEROLE",
)


def role_url(server: PgServer, database: str, role: str, password: str) -> str:
    return (f"postgresql://{role}:{quote(password, safe='')}@{server.host}:{server.port}"
            f"/{database}")


def execute_as(url: str, *statements: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def refused(url: str, statement: str) -> bool:
    """True if the statement fails for want of privilege (any other error fails the test)."""
    try:
        execute_as(url, statement)
    except psycopg2.errors.InsufficientPrivilege:
        return True
    except psycopg2.Error as error:
        # "must be owner of table": also a missing privilege, reported under its own code
        if error.pgcode == "42501" or "must be owner" in str(error):
            return True
        raise
    return False


def nothing_granted(database: Database) -> bool:
    return database.query("""
        SELECT has_schema_privilege(r, 'public', 'CREATE'),
               has_table_privilege(r, 'public.rating_hourly', 'INSERT'),
               has_table_privilege(r, 'public.rating_hourly', 'UPDATE'),
               has_table_privilege(r, 'public.rating_interaction', 'DELETE')
        FROM unnest(ARRAY['lmnh_reader', 'lmnh_writer']) AS r""") == [(False,) * 4] * 2


def reset_database(database: Database, admin: str) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}:{Path(psql_path()).parent}:{os.environ['PATH']}"
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/"),
           "PGPASSWORD": database.server.password} | database.env()
    return subprocess.run(["bash", str(ROOT / "reset_database.sh"), "--admin-user", admin,
                           "--yes"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def old_database(pg_server: PgServer) -> Iterator[Database]:
    """An empty database with PostgreSQL 14's grants on schema public, and the kiosk roles
    (with passwords) already there, as on an instance reset before."""
    database = Database(pg_server, unique("lmnh_old_grants"))
    pg_server.create_database(database.name)
    for role, password in (("lmnh_reader", READER_PASSWORD), ("lmnh_writer", WRITER_PASSWORD)):
        with contextlib.suppress(psycopg2.errors.DuplicateObject):  # roles are per server
            execute_as(pg_server.url(database.name), f"CREATE ROLE {role} LOGIN")
        execute_as(pg_server.url(database.name), f"ALTER ROLE {role} PASSWORD '{password}'")
    database.execute("GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC")
    yield database


def presses(count: int, offset: int = 0) -> tuple[list[db.Interaction], list[db.Interaction]]:
    start = datetime(2026, 3, 28, 9, 0, tzinfo=UTC)  # across the spring clock change
    ratings = [db.Interaction(i % 3, i % 5, start + timedelta(minutes=37 * i), "lmnh", 0,
                              offset + i) for i in range(count)]
    requests = [db.Interaction(i % 3, i % 2, start + timedelta(minutes=53 * i), "lmnh", 1,
                               offset + i) for i in range(count // 4)]
    return ratings, requests


def test_nothing_the_reader_plants_is_ever_called(old_database: Database) -> None:
    server = old_database.server
    reader = role_url(server, old_database.name, "lmnh_reader", READER_PASSWORD)

    # With the old grants the reader may create in public: it plants the bait.
    execute_as(reader, BAIT)
    # The bait is live: an untyped call, as the old trigger made, picks the planted function,
    # which makes the reader a superuser when a superuser's statement runs it.
    old_database.execute("SELECT date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-01 00:00+00')")
    assert old_database.query("SELECT what FROM public.planted_calls") == [("date_bin(text)",)]
    assert old_database.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = 'lmnh_reader'")
    old_database.execute("ALTER ROLE lmnh_reader NOSUPERUSER")
    old_database.execute("DELETE FROM public.planted_calls")

    done = reset_database(old_database, server.user)
    assert done.returncode == 0, done.stderr

    # Now the reader can create nothing in public, nor write anything.
    for statement in ATTEMPTS_AFTER:
        assert refused(reader, statement), statement
    execute_as(reader, *GRANTS_TRIED)
    assert nothing_granted(old_database)
    # Its own session's pg_temp is all it has; functions there are never looked up by others.
    execute_as(reader, "CREATE FUNCTION pg_temp.date_bin(text, timestamptz, timestamptz)"
                       " RETURNS timestamptz LANGUAGE sql AS $$ SELECT now() $$")

    # The writer plants in its own session's pg_temp too (the trigger runs as the owner in
    # that session): a rollup table of the same name, and functions.
    settings = db.DatabaseSettings(server.host, server.port, old_database.name, "lmnh_writer",
                                   WRITER_PASSWORD, sslmode="disable")
    conn = db.connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE rating_hourly (LIKE public.rating_hourly)")
            cur.execute("CREATE TEMP TABLE request_hourly (LIKE public.request_hourly)")
            cur.execute("CREATE FUNCTION pg_temp.date_bin(text, timestamptz, timestamptz)"
                        " RETURNS timestamptz LANGUAGE sql AS $$ SELECT now() $$")
        execute_as(server.url(old_database.name), """
            INSERT INTO public.department (department_name) VALUES ('Zoology');
            INSERT INTO public.floor (floor_name) VALUES ('1');
            INSERT INTO public.exhibition SELECT n, 'EXH_0' || n, 'E' || n, '', '2024-01-01',
                   1, 1 FROM generate_series(0, 2) AS n""")
        ratings, requests = presses(200)
        first = db.write_interactions(conn, ratings, requests)
        replay = db.write_interactions(conn, ratings[100:] + presses(50, 200)[0], requests)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_temp.rating_hourly")
            assert cur.fetchone()[0] == 0
        conn.rollback()
    finally:
        conn.close()
    assert first.ratings_inserted == 200 and len(first.new_emergencies) == 25
    assert replay.ratings_inserted == 50 and replay.new_emergencies == ()

    assert old_database.query("SELECT what, by_role FROM public.planted_calls") == []
    assert old_database.scalar(
        "SELECT rolsuper FROM pg_roles WHERE rolname = 'lmnh_reader'") is False
    for rollup, table, value, counted in (
            ("rating_hourly", "rating_interaction", "rating_value", "ratings"),
            ("request_hourly", "request_interaction", "request_value", "requests")):
        from_rows = old_database.query(f"""
            SELECT (event_at AT TIME ZONE 'Europe/London')::date, exhibition_id,
                   extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, {value},
                   count(*)
            FROM {table} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""")
        in_rollup = old_database.query(f"""
            SELECT local_date, exhibition_id, local_hour::int, {value}, {counted}
            FROM {rollup} ORDER BY 1, 2, 3, 4""")
        assert in_rollup == from_rows and from_rows, rollup
    assert old_database.scalar("SELECT sum(ratings) FROM rating_hourly") == 250


def test_the_writer_can_only_write_rows(old_database: Database) -> None:
    server = old_database.server
    assert reset_database(old_database, server.user).returncode == 0
    writer = role_url(server, old_database.name, "lmnh_writer", WRITER_PASSWORD)
    for statement in WRITER_FORBIDDEN:
        assert refused(writer, statement), statement
    execute_as(writer, *GRANTS_TRIED)
    assert nothing_granted(old_database)
    assert old_database.scalar(
        "SELECT count(*) FROM pg_roles WHERE rolname = 'lmnh_escalated'") == 0
    assert old_database.scalar("SELECT to_regclass('public.rating_interaction')") is not None
    roles = old_database.query("""
        SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication
        FROM pg_roles WHERE rolname IN ('lmnh_reader', 'lmnh_writer') ORDER BY 1""")
    assert roles == [("lmnh_reader", False, False, False, False, False),
                     ("lmnh_writer", False, False, False, False, False)]
    # What the writer needs still works: exhibitions and rows.
    execute_as(writer, "INSERT INTO public.department (department_name) VALUES ('Geology')",
               "INSERT INTO public.floor (floor_name) VALUES ('2')")


def test_no_role_but_the_owner_may_create_in_public_after_the_schema(
        old_database: Database) -> None:
    assert reset_database(old_database, old_database.server.user).returncode == 0
    for role in ("lmnh_reader", "lmnh_writer", "public"):
        grantee = "0" if role == "public" else f"'{role}'::regrole"
        assert not old_database.scalar(f"""
            SELECT bool_or(a.privilege_type = 'CREATE')
            FROM pg_namespace n, aclexplode(n.nspacl) a
            WHERE n.nspname = 'public' AND a.grantee = {grantee}"""), role
    assert not old_database.scalar("""
        SELECT bool_or(has_function_privilege('lmnh_writer', p.oid, 'EXECUTE'))
        FROM pg_proc p WHERE p.proname = 'count_into_hourly'""")


# Bait for the reset itself: what its schema_views.sql calls or resolves by name. museum_zone()
# is called (to learn the zone baked before) before the new one replaces it; format(text, text)
# is a closer match than pg_catalog's variadic format for a two-argument call; date_trunc(text,
# date) a closer one than pg_catalog's (text, timestamptz) for a view's date_trunc('week', date).
RESET_BAIT = """
CREATE FUNCTION public.museum_zone() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('museum_zone'); RETURN 'Europe/London'; END $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('format(text, text)'); RETURN pg_catalog.format($1, $2); END $$;
CREATE FUNCTION public.date_trunc(text, date) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.planted('date_trunc(text, date)'); RETURN now(); END $$;
"""


def test_nothing_the_reader_plants_for_the_reset_is_called(old_database: Database) -> None:
    server = old_database.server
    reader = role_url(server, old_database.name, "lmnh_reader", READER_PASSWORD)
    execute_as(reader, BAIT, RESET_BAIT)

    done = reset_database(old_database, server.user)
    assert done.returncode == 0, done.stderr
    assert old_database.query("SELECT what, by_role FROM public.planted_calls") == []
    # The museum's clock is the administrator's function, searching nothing it did not choose.
    assert old_database.query("""
        SELECT pg_get_userbyid(proowner), proconfig FROM pg_proc
        WHERE oid = 'public.museum_zone()'::regprocedure""") == [
        (server.user, ["search_path=pg_catalog, pg_temp"])]
    assert old_database.scalar("SELECT public.museum_zone()") == "Europe/London"
    # The views answer without the planted functions, for the administrator and the reader.
    execute_as(server.url(old_database.name), """
        INSERT INTO public.department (department_name) VALUES ('Zoology');
        INSERT INTO public.floor (floor_name) VALUES ('1');
        INSERT INTO public.exhibition VALUES (0, 'EXH_00', 'E', '', '2024-01-01', 1, 1);
        INSERT INTO public.rating_interaction VALUES (0, 4, '2026-03-04 10:00+00', 'lmnh', 0, 0)
        """)
    assert old_database.query("SELECT local_week FROM v_exhibition_daily") == [
        (date(2026, 3, 2),)]
    execute_as(reader, "SELECT * FROM public.v_exhibition_daily, public.v_exhibition_hourly,"
                       " public.v_rating, public.v_rejects_daily")
    assert old_database.query("SELECT what, by_role FROM public.planted_calls") == []
    assert old_database.scalar(
        "SELECT rolsuper FROM pg_roles WHERE rolname = 'lmnh_reader'") is False
    # Nor may the reader replace the administrator's function now.
    assert refused(reader, "CREATE OR REPLACE FUNCTION public.museum_zone() RETURNS text"
                           " LANGUAGE sql AS $$ SELECT 'UTC'::text $$")
