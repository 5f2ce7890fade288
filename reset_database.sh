#!/usr/bin/env bash
# Drops and recreates every table, view and index of the kiosk database from schema.sql and
# schema_views.sql.
# It destroys all stored ratings and requests, so it refuses to run without --yes.
# Settings: the pipeline's DATABASE_* variables and the museum's clock (MUSEUM_TIMEZONE,
# OPENING_TIME, CLOSING_TIME), from the environment or from ./.env.
# An existing database that holds data is upgraded with migrate.py instead.
set -euo pipefail

if [[ "${1:-}" != "--yes" ]]; then
    echo "usage: $0 --yes    (drops and recreates every kiosk table in DATABASE_NAME)" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${DATABASE_NAME:-}" && -f .env ]]; then
    set -a
    # shellcheck disable=SC1091
    source .env
    set +a
fi

for name in DATABASE_NAME DATABASE_USERNAME DATABASE_IP; do
    if [[ -z "${!name:-}" ]]; then
        echo "configuration error: $name is not set" >&2
        exit 2
    fi
done

export PGPASSWORD="${DATABASE_PASSWORD:-}"
# Like the pipeline: TLS is required unless asked otherwise or the server is on this machine.
case "$DATABASE_IP" in
    localhost | 127.0.0.1 | ::1 | /*) default_sslmode=prefer ;;
    *) default_sslmode=require ;;
esac
export PGSSLMODE="${DATABASE_SSLMODE:-$default_sslmode}"
if [[ -n "${DATABASE_SSLROOTCERT:-}" ]]; then
    export PGSSLROOTCERT="$DATABASE_SSLROOTCERT"
fi

# The museum's clock, from the same settings as the pipeline's validation (blank or unset:
# schema.sql's Europe/London 08:45-18:15), written before schema_views.sql bakes in the zone.
clock_sql="UPDATE museum_settings SET
    time_zone = coalesce(nullif(:'zone', ''), time_zone),
    opening_time = coalesce(nullif(:'opens', '')::time, opening_time),
    closing_time = coalesce(nullif(:'closes', '')::time, closing_time);"

echo "resetting database $DATABASE_NAME on $DATABASE_IP:${DATABASE_PORT:-5432}"
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --single-transaction \
    -v zone="${MUSEUM_TIMEZONE:-}" -v opens="${OPENING_TIME:-}" -v closes="${CLOSING_TIME:-}" \
    -h "$DATABASE_IP" -p "${DATABASE_PORT:-5432}" -U "$DATABASE_USERNAME" -d "$DATABASE_NAME" \
    -f "$here/schema.sql" -f <(echo "$clock_sql") -f "$here/schema_views.sql"
echo "done: schema.sql and schema_views.sql applied"
