"""Upgrade the kiosk database's schema in place, keeping every row.

Run `lmnh-migrate` (settings from the environment and `.env`, as the pipeline's) after
installing a new release and before starting its pipeline, backfill or dashboard, which refuse
an older schema. It connects as the administrator role that owns the tables, as
reset_database.sh does (--admin-user, else DATABASE_ADMIN_USERNAME; its password from PGPASSWORD
or ~/.pgpass, never DATABASE_PASSWORD), applies every migrations/NNNN_name.sql newer than the
database's version, each recorded in schema_version, re-applies schema_views.sql and writes the
museum's clock (MUSEUM_TIMEZONE, OPENING_TIME, CLOSING_TIME): all in one transaction, so a
failure changes nothing. Running it again on an up-to-date database changes nothing but the
clock, if its settings changed. `--status` only says what it would do.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import os
import sys
from collections.abc import Sequence

import db
from lmnh.core.errors import one_line
from lmnh.settings import EXIT_CONFIG, MigrateSettings, read_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-user", metavar="NAME", help="the administrator role that owns"
                        " the tables (default: DATABASE_ADMIN_USERNAME); its password from"
                        " PGPASSWORD or ~/.pgpass")
    parser.add_argument("--status", action="store_true",
                        help="print the database's schema version and this release's, then exit")
    args = parser.parse_args(argv)
    password = os.environ.get("PGPASSWORD", "")  # the operator's, before .env is read
    settings = read_settings(MigrateSettings)
    admin_user = args.admin_user or settings.DATABASE_ADMIN_USERNAME
    if not admin_user:
        print("configuration error: no administrator role: pass --admin-user NAME or set"
              " DATABASE_ADMIN_USERNAME (the pipeline's DATABASE_USERNAME is never used)",
              file=sys.stderr)
        return EXIT_CONFIG
    target = settings.admin_database(admin_user, password)
    where = f"{target.host}:{target.port}/{target.name} as {target.user}"
    try:
        conn = db.open_connection(target, "lmnh-migrate")
    except db.Error as error:
        print(f"cannot reach the database {where}: {one_line(error)}", file=sys.stderr)
        return 1
    try:
        if args.status:
            found = db.schema_version(conn)
            print(f"database {where}: schema version {found or 'none (no kiosk tables)'};"
                  f" this release's: {db.latest_version()}")
            return 0 if found == db.latest_version() else 1
        found, applied = db.migrate(conn, settings.clock())
    except db.SchemaMismatch as error:
        print(f"not migrated: {error}", file=sys.stderr)
        return 1
    except db.Error as error:
        print(f"migration failed, nothing changed: {one_line(error)}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    done = ", ".join(f"{v:04d}" for v in applied) or "none needed"
    print(f"database {where}: schema version {found} -> {db.latest_version()}"
          f" (migrations applied: {done}); museum clock {settings.clock().describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
