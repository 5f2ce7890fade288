"""reset_database.sh for real operators: an administrator role, the environment over `.env`, and
`.env` read as python-dotenv reads it, never run as shell."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from conftest import ROOT, Database, PgServer, unique

from lmnh.local.embedded import psql_path


def run_reset(cwd: Path, env: dict[str, str], *args: str,
              path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    """reset_database.sh started from `cwd` (where its .env is) with only `env` set."""
    path = [Path(sys.executable).parent, Path(psql_path()).parent, os.environ["PATH"]]
    if path_first is not None:
        path.insert(0, path_first)
    return subprocess.run(["bash", str(ROOT / "reset_database.sh"), *args], cwd=cwd,
                          env={"PATH": ":".join(map(str, path)), "HOME": str(cwd)} | env,
                          capture_output=True, text=True, timeout=120)


def owner_of_tables(database: Database) -> set[str]:
    return {row[0] for row in database.query(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename IN ('rating', 'rating_interaction', 'exhibition')")}


@pytest.fixture
def admin(pg_server: PgServer) -> Iterator[tuple[str, Database]]:
    """A role named with a `$`, owning a new empty database, with CREATEROLE (as an RDS
    master user has) but not a superuser; the kiosk roles exist already."""
    role = unique("lmnh$admin")
    database = Database(pg_server, unique("lmnh$reset"))
    server = pg_server.url(pg_server.admin_database)
    conn = psycopg2.connect(server)
    conn.autocommit = True
    with conn.cursor() as cur:
        for kiosk_role in ("lmnh_writer", "lmnh_reader"):
            with contextlib.suppress(psycopg2.errors.DuplicateObject):
                cur.execute(f"CREATE ROLE {kiosk_role} LOGIN")
        cur.execute(f'CREATE ROLE "{role}" LOGIN CREATEROLE')
        cur.execute(f'CREATE DATABASE "{database.name}" OWNER "{role}"')
    yield role, database
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE "{database.name}" WITH (FORCE)')
        cur.execute(f'DROP ROLE "{role}"')
    conn.close()


def test_env_file_is_read_as_python_dotenv_reads_it_and_never_run(
        admin: tuple[str, Database], tmp_path: Path) -> None:
    role, database = admin
    server = database.server
    pwned = tmp_path / "pwned"
    # Unquoted and double-quoted `$name` are literal for python-dotenv (bash would expand them
    # to nothing); command substitutions are text, never run.
    (tmp_path / ".env").write_text(
        f"DATABASE_NAME={database.name}\n"
        f'DATABASE_ADMIN_USERNAME="{role}"\n'
        f"DATABASE_IP={server.host}\n"
        f"DATABASE_PORT={server.port}\n"
        "DATABASE_SSLMODE=disable\n"
        f"INJECTED=$(touch {pwned})\n"
        f"INJECTED_TOO=`touch {pwned}-backticks`\n"
        f"DATABASE_USERNAME=lmnh_writer\n"
        f"DATABASE_PASSWORD=writer$(touch {pwned}-password)\n")
    done = run_reset(tmp_path, {"PGPASSWORD": server.password}, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"as {role}" in done.stdout
    assert owner_of_tables(database) == {role}  # the administrator role made them
    assert database.scalar("SELECT count(*) FROM rating") == 5
    assert not list(tmp_path.glob("pwned*"))


def test_the_environment_wins_over_env_file(admin: tuple[str, Database], tmp_path: Path) -> None:
    role, database = admin
    server = database.server
    (tmp_path / ".env").write_text(
        "DATABASE_NAME=no_such_database\n"
        "DATABASE_ADMIN_USERNAME=no_such_role\n"
        "DATABASE_IP=192.0.2.1\n"  # TEST-NET: nothing answers there
        "DATABASE_PORT=1\n")
    env = {"DATABASE_NAME": database.name, "DATABASE_ADMIN_USERNAME": role,
           "DATABASE_IP": server.host, "DATABASE_PORT": str(server.port),
           "DATABASE_SSLMODE": "disable", "PGPASSWORD": server.password}
    done = run_reset(tmp_path, env, "--yes")
    assert done.returncode == 0, done.stderr
    assert owner_of_tables(database) == {role}

    # --admin-user wins over both.
    beaten = run_reset(tmp_path, env, "--admin-user", "no_such_role_either", "--yes")
    assert beaten.returncode != 0 and "no_such_role_either" in beaten.stderr


def test_it_runs_as_the_administrator_never_as_the_pipeline(database: Database,
                                                            tmp_path: Path) -> None:
    server = database.server
    database.execute("INSERT INTO department (department_name) VALUES ('Geology')")
    env = database.env() | {"DATABASE_USERNAME": "lmnh_writer",
                            "DATABASE_PASSWORD": "the-writers-password"}

    # No administrator named: it refuses rather than fall back on the pipeline's role.
    unnamed = run_reset(tmp_path, env, "--yes")
    assert unnamed.returncode == 2
    assert "--admin-user" in unnamed.stderr and "DATABASE_ADMIN_USERNAME" in unnamed.stderr
    # The writer role cannot drop the tables: nothing changes.
    as_writer = run_reset(tmp_path, env, "--admin-user", "lmnh_writer", "--yes")
    assert as_writer.returncode != 0 and "must be owner" in as_writer.stderr
    assert database.scalar("SELECT count(*) FROM department") == 1

    # The administrator can; psql gets its name and the operator's PGPASSWORD, never the
    # writer's password. A psql first on PATH records what it was given, then runs the real one.
    probe = tmp_path / "bin"
    probe.mkdir()
    seen = tmp_path / "psql-env.json"
    (probe / "psql").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
        f"os.execv({str(Path(psql_path()))!r}, [{str(Path(psql_path()))!r}, *sys.argv[1:]])\n")
    (probe / "psql").chmod(0o755)
    as_admin = run_reset(tmp_path, env | {"PGPASSWORD": "the-admins-password"},
                         "--admin-user", server.user, "--yes", path_first=probe)
    assert as_admin.returncode == 0, as_admin.stderr
    assert database.scalar("SELECT count(*) FROM department") == 0
    given = json.loads(seen.read_text())
    assert given["PGUSER"] == server.user
    assert given["PGPASSWORD"] == "the-admins-password"
    assert "the-writers-password" not in {v for k, v in given.items() if k.startswith("PG")}
    assert (given["PGHOST"], given["PGPORT"], given["PGDATABASE"]) == (
        server.host, str(server.port), database.name)
