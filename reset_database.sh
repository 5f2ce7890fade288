#!/usr/bin/env bash
# Drops and recreates every table, view, role and grant of the kiosk database from schema.sql and
# schema_views.sql, in one transaction. It destroys all stored ratings and requests, so it
# refuses to run without --yes.
#   ./reset_database.sh [--admin-user NAME] --yes
# It logs in as an administrator role (--admin-user, or DATABASE_ADMIN_USERNAME), never as the
# pipeline's role; that role's password comes from PGPASSWORD or ~/.pgpass. The other settings
# (DATABASE_NAME, DATABASE_IP, DATABASE_PORT, DATABASE_SSLMODE, DATABASE_SSLROOTCERT) come from the
# environment, then from .env, read by python-dotenv as the pipeline reads it (never run as shell).
# Needs psql and the project's Python (.venv, or python3 with requirements.txt installed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$here/.venv/bin/python"
if [[ ! -x "$python" ]]; then
    python="$(command -v python3 || true)"
fi
if [[ -z "$python" ]]; then
    echo "configuration error: no Python: create .venv (README)" >&2
    exit 2
fi
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m lmnh.apps.reset_database "$@"
