#!/usr/bin/env bash
# One command each for the stack in deploy/stack.yaml (docs/operating.md "One-command deployment").
#
#   deploy/stack.sh release BUCKET                 # the release tarball to s3://BUCKET/releases/
#   deploy/stack.sh up STACK Name=Value ...         # create or update the stack (parameters)
#   deploy/stack.sh kafka-credentials STACK         # once: the Kafka USERNAME/PASSWORD, prompted
#   deploy/stack.sh init-database STACK --yes       # once: schema, roles, their passwords
#   deploy/stack.sh refresh STACK                   # replace the instances (they check and start)
#   deploy/stack.sh down STACK --yes                # delete it all (the database's final snapshot stays)
#
# Needs the AWS CLI v2 with credentials for the account (AWS_PROFILE, AWS_REGION); init-database
# also needs the Session Manager plugin, and the project's .venv (python3 dev.py test makes it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(dirname "$here")"
python="$project/.venv/bin/python"
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
output() {  # output STACK NAME: one of the stack's outputs
    aws cloudformation describe-stacks --stack-name "$1" \
        --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}
[ $# -ge 2 ] || usage
command="$1" stack="$2"
shift 2

case "$command" in
release)
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$project/pyproject.toml")"
    key="releases/lmnh-kiosk-pipeline-$version-$(git -C "$project" rev-parse --short HEAD).tar.gz"
    archive="$(mktemp)"
    git -C "$project" archive --format=tar.gz -o "$archive" HEAD
    aws s3 cp "$archive" "s3://$stack/$key"   # here "$stack" is the artifact bucket
    rm -f "$archive"
    echo "ArtifactBucket=$stack ArtifactKey=$key"
    ;;
up)
    aws cloudformation deploy --template-file "$here/stack.yaml" --stack-name "$stack" \
        --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --parameter-overrides "$@"
    aws cloudformation describe-stacks --stack-name "$stack" --query "Stacks[0].Outputs" \
        --output table
    ;;
kafka-credentials)
    secret="$(output "$stack" PipelineSecretArn)"
    SECRET_ID="$secret" "$python" - <<'EOF'
import getpass, json, os
import boto3
client = boto3.client("secretsmanager")
secret_id = os.environ["SECRET_ID"]
value = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
value["USERNAME"] = input("Kafka USERNAME (API key): ").strip()
value["PASSWORD"] = getpass.getpass("Kafka PASSWORD (API secret, not echoed): ")
client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(value))
print(f"USERNAME and PASSWORD put into {secret_id}")
EOF
    ;;
init-database)
    [ "${1:-}" = "--yes" ] || { echo "init-database drops and recreates every kiosk table: --yes" >&2; exit 2; }
    endpoint="$(output "$stack" DatabaseEndpoint)"
    group="$(output "$stack" AutoScalingGroupName)"
    instance="$(aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$group" \
        --query "AutoScalingGroups[0].Instances[?LifecycleState=='InService'] | [0].InstanceId" \
        --output text)"
    port=15432
    # The database is private: reach it through an instance with Session Manager port forwarding.
    aws ssm start-session --target "$instance" \
        --document-name AWS-StartPortForwardingSessionToRemoteHost \
        --parameters "host=$endpoint,portNumber=5432,localPortNumber=$port" >/dev/null &
    tunnel=$!
    trap 'kill "$tunnel" 2>/dev/null || true' EXIT
    for _ in $(seq 60); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 1
    done
    # The master password: kept (and rotated) by RDS in Secrets Manager.
    MASTER="$(aws rds describe-db-instances \
        --db-instance-identifier "$(output "$stack" DatabaseInstanceId)" \
        --query "DBInstances[0].MasterUserSecret.SecretArn" --output text)" \
    PIPELINE="$(output "$stack" PipelineSecretArn)" \
    DASHBOARD="$(output "$stack" DashboardSecretArn)" \
    PORT="$port" PROJECT="$project" "$python" - <<'EOF'
import json, os, secrets, subprocess
import boto3, psycopg2
client = boto3.client("secretsmanager")
def secret(arn):
    return json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
master = secret(os.environ["MASTER"])
# TLS (sslmode=require) through the tunnel: the name in RDS's certificate is not 127.0.0.1.
where = {"DATABASE_IP": "127.0.0.1", "DATABASE_PORT": os.environ["PORT"],
         "DATABASE_NAME": "museum", "DATABASE_SSLMODE": "require"}
subprocess.run([os.path.join(os.environ["PROJECT"], ".venv/bin/lmnh-reset-database"),
                "--admin-user", master["username"], "--yes"],
               env=os.environ | where | {"PGPASSWORD": master["password"]}, check=True)
pipeline, dashboard = secret(os.environ["PIPELINE"]), secret(os.environ["DASHBOARD"])
with psycopg2.connect(host="127.0.0.1", port=os.environ["PORT"], dbname="museum",
                      user=master["username"], password=master["password"],
                      sslmode="require") as conn, conn.cursor() as cur:
    cur.execute("ALTER ROLE lmnh_writer LOGIN PASSWORD %s", (pipeline["DATABASE_PASSWORD"],))
    cur.execute("ALTER ROLE lmnh_reader LOGIN PASSWORD %s", (dashboard["DATABASE_PASSWORD"],))
if "DASHBOARD_SECRET_KEY" not in dashboard:
    dashboard["DASHBOARD_SECRET_KEY"] = secrets.token_urlsafe(48)
    client.put_secret_value(SecretId=os.environ["DASHBOARD"], SecretString=json.dumps(dashboard))
print("schema, roles and their passwords set; DASHBOARD_SECRET_KEY in the dashboard's secret")
EOF
    echo "now: deploy/stack.sh refresh $stack"
    ;;
refresh)
    aws autoscaling start-instance-refresh \
        --auto-scaling-group-name "$(output "$stack" AutoScalingGroupName)"
    ;;
down)
    [ "${1:-}" = "--yes" ] || { echo "down deletes the stack (a final database snapshot stays): --yes" >&2; exit 2; }
    aws rds modify-db-instance --db-instance-identifier "$(output "$stack" DatabaseInstanceId)" \
        --no-deletion-protection --apply-immediately >/dev/null
    aws elbv2 modify-load-balancer-attributes --load-balancer-arn "$(output "$stack" LoadBalancerArn)" \
        --attributes Key=deletion_protection.enabled,Value=false >/dev/null
    aws cloudformation delete-stack --stack-name "$stack"
    aws cloudformation wait stack-delete-complete --stack-name "$stack"
    echo "deleted $stack; its database's final snapshot is kept (aws rds describe-db-snapshots)"
    ;;
*)
    usage
    ;;
esac
