"""Drop and recreate the kiosk schema as an administrator role (reset_database.sh runs this).

It applies schema.sql, the museum's clock (MUSEUM_TIMEZONE, OPENING_TIME, CLOSING_TIME, as the
pipeline validates by them), then schema_views.sql with psql in one transaction, so a failure
changes nothing. Its settings are read as every entry point reads them (the environment, then `.env`
parsed by python-dotenv, never executed), but it logs in as the administrator role
(`--admin-user`, else DATABASE_ADMIN_USERNAME), never as the pipeline's DATABASE_USERNAME: the
administrator's password comes from PGPASSWORD or ~/.pgpass, never from DATABASE_PASSWORD.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import os
import shutil
import subprocess
import sys

import db
from lmnh.settings import EXIT_CONFIG, ResetSettings, read_settings

# libpq variables this script decides; the operator's own ones (PGPASSWORD, PGPASSFILE...) pass.
CLOCK_SQL = ("UPDATE public.museum_settings SET time_zone = :'zone', opening_time = :'opens',"
             " closing_time = :'closes';\n")
DECIDED = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSSLMODE", "PGSSLROOTCERT", "PGAPPNAME")


def psql_environment(settings: ResetSettings, admin_user: str,
                     operator_env: dict[str, str]) -> dict[str, str]:
    """The operator's environment (as it was before `.env` was read) with the connection set."""
    env = {k: v for k, v in operator_env.items() if k not in DECIDED}
    env |= {
        "PGHOST": settings.DATABASE_IP,
        "PGPORT": str(settings.DATABASE_PORT),
        "PGDATABASE": settings.DATABASE_NAME,
        "PGUSER": admin_user,
        "PGSSLMODE": db.effective_sslmode(settings.DATABASE_IP, settings.DATABASE_SSLMODE),
        "PGAPPNAME": "lmnh-reset-database",
    }
    if settings.DATABASE_SSLROOTCERT:
        env["PGSSLROOTCERT"] = settings.DATABASE_SSLROOTCERT
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reset_database.sh",
        description="Drop and recreate every kiosk table, view, role and grant in DATABASE_NAME.")
    parser.add_argument("--yes", action="store_true", required=True,
                        help="confirm: every stored rating and request is destroyed")
    parser.add_argument("--admin-user", metavar="NAME",
                        help="the administrator role to log in as "
                             "(default: DATABASE_ADMIN_USERNAME); its password from PGPASSWORD "
                             "or ~/.pgpass")
    args = parser.parse_args(argv)  # exits with status 2 and the usage when --yes is missing
    operator_env = dict(os.environ)
    settings = read_settings(ResetSettings)
    admin_user = args.admin_user or settings.DATABASE_ADMIN_USERNAME
    if not admin_user:
        print("configuration error: no administrator role: pass --admin-user NAME or set "
              "DATABASE_ADMIN_USERNAME (the pipeline's DATABASE_USERNAME is never used)",
              file=sys.stderr)
        return EXIT_CONFIG
    psql = shutil.which("psql")
    if psql is None:
        print("configuration error: psql is not installed (apt-get install postgresql-client)",
              file=sys.stderr)
        return EXIT_CONFIG
    print(f"resetting database {settings.DATABASE_NAME} on {settings.DATABASE_IP}:"
          f"{settings.DATABASE_PORT} as {admin_user}", flush=True)
    clock = settings.clock()
    tables, views = (str(path) for path in db.SCHEMA_FILES)
    done = subprocess.run(
        [psql, "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "--single-transaction",
         "-v", f"zone={clock.zone}", "-v", f"opens={clock.opens}", "-v", f"closes={clock.closes}",
         # The museum's clock, from the pipeline's settings, before schema_views.sql bakes it in.
         "-f", tables, "-f", "-", "-f", views],
        input=CLOCK_SQL, text=True,
        env=psql_environment(settings, admin_user, operator_env), check=False)
    if done.returncode != 0:
        print("reset failed: nothing was changed", file=sys.stderr)
        return done.returncode
    print(f"done: {' and '.join(path.name for path in db.SCHEMA_FILES)} applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
