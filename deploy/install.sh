#!/usr/bin/env bash
# Install a release of the LMNH kiosk pipeline on Amazon Linux 2023 (deploy/stack.yaml's user
# data runs this from the unpacked release; tests/test_stack.py runs it into a scratch root).
#
#   ROOT=/scratch deploy/install.sh     # everything under /scratch instead of /
#
# Settings come from the environment (the user data exports them; no secret among them):
#   DATABASE_IP DATABASE_PORT DATABASE_NAME BOOTSTRAP_SERVERS TOPIC SECURITY_PROTOCOL
#   SASL_MECHANISM S3_BUCKET ALERT_SNS_TOPIC_ARN MUSEUM_TIMEZONE AWS_REGION
#   PIPELINE_SECRET_ID DASHBOARD_SECRET_ID (Secrets Manager names: SECRETS_MANAGER_SECRET_ID)
#   LOG_GROUP (CloudWatch Logs), RDS_CA_URL (the region's RDS CA bundle; unset: sslmode=require)
#   PYTHON (default python3.11), PIP_INSTALL_OPTIONS (extra pip options, e.g. --no-index)
#
# Steps: users, the release in /opt/lmnh-pipeline with its venv, the environment files, the
# units (pipeline, dashboard behind the load balancer, health check timer), logrotate, the
# CloudWatch agent's configuration, then `lmnh-pipeline --check` and, if it passes, start.
# With ROOT set nothing is started and no package is installed: the check still runs, from the
# installed venv, and its status is this script's (3 when the check fails).
set -euo pipefail

ROOT="${ROOT:-}"
ROOT="${ROOT%/}"
PYTHON="${PYTHON:-python3.11}"
release="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app="$ROOT/opt/lmnh-pipeline"
venv="$app/.venv"
say() { printf 'install: %s\n' "$*"; }
: "${AWS_REGION:?}" "${DATABASE_IP:?}" "${BOOTSTRAP_SERVERS:?}" "${S3_BUCKET:?}"
: "${PIPELINE_SECRET_ID:?}" "${DASHBOARD_SECRET_ID:?}" "${LOG_GROUP:?}"

# 1. System users (no login, no home of their own); useradd --prefix works on a scratch root.
prefix=()
[ -n "$ROOT" ] && prefix=(--prefix "$ROOT")
for user in lmnh lmnh-dashboard; do
    if ! grep -q "^$user:" "$ROOT/etc/passwd"; then
        useradd "${prefix[@]}" --system --user-group --no-create-home \
            --home-dir /opt/lmnh-pipeline --shell /usr/sbin/nologin "$user"
    fi
done
say "users lmnh and lmnh-dashboard"

# 2. The release in /opt/lmnh-pipeline, with its own venv (copies, not links, of the
#    interpreter), the project installed into it with its pinned requirements.
mkdir -p "$app"
tar -C "$release" --exclude=./release.tar.gz --exclude=./.venv --exclude=./.local \
    --exclude=./.git --exclude=__pycache__ -cf - . | tar -C "$app" -xf -
"$PYTHON" -m venv --copies --clear "$venv"
# shellcheck disable=SC2086  # PIP_INSTALL_OPTIONS is a list of options
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ${PIP_INSTALL_OPTIONS:-} \
    -r "$app/requirements.txt" "$app"
chmod -R go-w "$app"
say "release in /opt/lmnh-pipeline, venv $("$venv/bin/python" --version)"

# 3. The environment files: settings and the name of each program's secret, never a secret.
#    The programs read DATABASE_PASSWORD, PASSWORD and DASHBOARD_SECRET_KEY from Secrets Manager.
sslmode=require
sslroot=""
mkdir -p "$ROOT/etc/lmnh-pipeline" "$ROOT/etc/lmnh-dashboard"
if [ -n "${RDS_CA_URL:-}" ] && [ -z "$ROOT" ]; then
    curl -fsS --retry 5 -o /etc/lmnh-pipeline/rds-ca.pem "$RDS_CA_URL"
    cp /etc/lmnh-pipeline/rds-ca.pem /etc/lmnh-dashboard/rds-ca.pem
    chmod 644 /etc/lmnh-pipeline/rds-ca.pem /etc/lmnh-dashboard/rds-ca.pem
    sslmode=verify-full
    sslroot=rds-ca.pem
fi
common() {  # $1: the settings folder
    echo "AWS_REGION=$AWS_REGION"
    echo "AWS_DEFAULT_REGION=$AWS_REGION"
    echo "DATABASE_IP=$DATABASE_IP"
    echo "DATABASE_PORT=${DATABASE_PORT:-5432}"
    echo "DATABASE_NAME=${DATABASE_NAME:-museum}"
    echo "DATABASE_SSLMODE=$sslmode"
    [ -n "$sslroot" ] && echo "DATABASE_SSLROOTCERT=$1/$sslroot"
    echo "MUSEUM_TIMEZONE=${MUSEUM_TIMEZONE:-Europe/London}"
}
umask 077
{
    echo "# Written by deploy/install.sh: settings only; the secrets are in Secrets Manager."
    common /etc/lmnh-pipeline
    echo "DATABASE_USERNAME=lmnh_writer"
    echo "SECRETS_MANAGER_SECRET_ID=$PIPELINE_SECRET_ID"
    echo "BOOTSTRAP_SERVERS=$BOOTSTRAP_SERVERS"
    echo "TOPIC=${TOPIC:-lmnh}"
    echo "SECURITY_PROTOCOL=${SECURITY_PROTOCOL:-SASL_SSL}"
    echo "SASL_MECHANISM=${SASL_MECHANISM:-PLAIN}"
    echo "GROUP=lmnh-pipeline"
    echo "S3_BUCKET=$S3_BUCKET"
    echo "ALERT_SNS_TOPIC_ARN=${ALERT_SNS_TOPIC_ARN:-}"
    echo "METRICS_PORT=9108"
} > "$ROOT/etc/lmnh-pipeline/pipeline.env"
{
    echo "# Written by deploy/install.sh: settings only; the secrets are in Secrets Manager."
    common /etc/lmnh-dashboard
    echo "DATABASE_USERNAME=lmnh_reader"
    echo "SECRETS_MANAGER_SECRET_ID=$DASHBOARD_SECRET_ID"
    echo "DASHBOARD_PASSWORD_FILE=/etc/lmnh-dashboard/users"
} > "$ROOT/etc/lmnh-dashboard/dashboard.env"
touch "$ROOT/etc/lmnh-dashboard/users"
umask 022
chmod 600 "$ROOT/etc/lmnh-pipeline/pipeline.env"
chmod 640 "$ROOT/etc/lmnh-dashboard/dashboard.env" "$ROOT/etc/lmnh-dashboard/users"
[ -z "$ROOT" ] && chown root:root "$ROOT/etc/lmnh-pipeline/pipeline.env"
# the group by number: on a scratch root the host's own /etc/group does not know it
gid="$(awk -F: '$1 == "lmnh-dashboard" {print $3}' "$ROOT/etc/group")"
chgrp "$gid" "$ROOT/etc/lmnh-dashboard/dashboard.env" "$ROOT/etc/lmnh-dashboard/users"
say "settings in /etc/lmnh-pipeline/pipeline.env and /etc/lmnh-dashboard/dashboard.env"

# 4. The units, the dashboard's drop-in for the load balancer, logrotate; enabled for boot.
units="$ROOT/etc/systemd/system"
mkdir -p "$units/lmnh-dashboard.service.d" "$ROOT/etc/logrotate.d"
install -m 644 "$app"/deploy/lmnh-pipeline.service "$app"/deploy/lmnh-dashboard.service \
    "$app"/deploy/lmnh-healthcheck.service "$app"/deploy/lmnh-healthcheck.timer "$units/"
install -m 644 "$app/deploy/lmnh-dashboard-alb.conf" "$units/lmnh-dashboard.service.d/alb.conf"
install -m 644 "$app/deploy/lmnh-pipeline.logrotate" "$ROOT/etc/logrotate.d/lmnh-pipeline"
systemctl_root=()
[ -n "$ROOT" ] && systemctl_root=(--root="$ROOT")
systemctl "${systemctl_root[@]}" enable lmnh-pipeline.service lmnh-dashboard.service \
    lmnh-healthcheck.timer
say "units installed and enabled"

# 5. The CloudWatch agent: /metrics scraped every minute into LMNH/Pipeline, reject log shipped.
agent="$ROOT/opt/aws/amazon-cloudwatch-agent/etc"
mkdir -p "$agent"
install -m 644 "$app/deploy/cloudwatch-prometheus.yaml" "$agent/prometheus.yaml"
sed "s|@LOG_GROUP@|$LOG_GROUP|g" "$app/deploy/cloudwatch-agent.json" \
    > "$agent/amazon-cloudwatch-agent.json"
say "CloudWatch agent configured (log group $LOG_GROUP)"

# 6. Check, then start (on a real host only).
check_env=()
while IFS= read -r line; do
    case "$line" in ''|'#'*) ;; *) check_env+=("$line") ;; esac
done < "$ROOT/etc/lmnh-pipeline/pipeline.env"
if [ -z "$ROOT" ]; then
    systemctl daemon-reload
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s \
        -c file:/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
    check=(systemd-run --wait --pipe --quiet --uid=lmnh
           -p EnvironmentFile=/etc/lmnh-pipeline/pipeline.env
           /opt/lmnh-pipeline/.venv/bin/lmnh-pipeline --check)
else
    check=(env "${check_env[@]}" "$venv/bin/lmnh-pipeline" --check)
fi
if ! "${check[@]}"; then
    say "lmnh-pipeline --check failed: the units are enabled but not started."
    say "After the one-time set-up (docs/operating.md): deploy/stack.sh refresh STACK"
    exit 3
fi
if [ -z "$ROOT" ]; then
    systemctl start lmnh-pipeline.service lmnh-dashboard.service lmnh-healthcheck.timer
    say "started"
fi
