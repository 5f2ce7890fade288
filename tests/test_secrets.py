"""Secrets read at start from AWS Secrets Manager (moto in server mode, never a mock of boto3).

SECRETS_MANAGER_SECRET_ID names one secret whose SecretString is a JSON object of setting names.
Precedence, highest first: a variable set in the environment, the secret, `.env`, the default.
A secret that cannot be read stops start-up with one line naming it, and exit status 2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import psycopg2
import pytest
from conftest import (
    ROOT,
    Broker,
    Database,
    PgServer,
    PipelineRun,
    make_database,
    unique,
    wait_until,
)
from sasl_listener import SaslListener
from test_pipeline import (
    RATINGS_TOTAL,
    REQUESTS_TOTAL,
    all_committed,
    assert_exact,
    connections_made,
    listener,  # noqa: F401 - a fixture
    row_count,
)

from lmnh.local.embedded import MotoS3
from lmnh.settings import (
    EXIT_CONFIG,
    BackfillSettings,
    DashboardSettings,
    MigrateSettings,
    PipelineSettings,
    read_settings,
)

DB_SECRET = "Okapi-Secret-5820"
KAFKA_SECRET = "Narwhal-Secret-1377"
DASHBOARD_KEY = "Pangolin-Secret-" + "k" * 32
KEEP = ("PATH", "LANG", "TZ")


def create_secret(moto_s3: MotoS3, values: dict[str, str] | str) -> str:
    """A new secret in moto holding `values` (a JSON object, or a raw SecretString)."""
    name = f"lmnh/{unique('secret')}"
    secrets = boto3.client("secretsmanager", endpoint_url=moto_s3.endpoint, region_name="eu-west-2",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    text = values if isinstance(values, str) else json.dumps(values)
    secrets.create_secret(Name=name, SecretString=text)
    return name


def aws_env(moto_s3: MotoS3, secret_id: str) -> dict[str, str]:
    env = moto_s3.env("unused-bucket")
    env.pop("S3_BUCKET")
    return env | {"SECRETS_MANAGER_SECRET_ID": secret_id}


def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, str]) -> None:
    """Only `values` in the environment, and the working folder `tmp_path` (no stray .env)."""
    for name in list(os.environ):
        if name.isupper() and name not in KEEP:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, text in values.items():
        monkeypatch.setenv(name, text)
    monkeypatch.chdir(tmp_path)


DATABASE = {"DATABASE_NAME": "museum", "DATABASE_USERNAME": "lmnh_writer",
            "DATABASE_IP": "127.0.0.1"}
KAFKA = {"BOOTSTRAP_SERVERS": "127.0.0.1:9092", "GROUP": "g", "TOPIC": "lmnh",
         "SECURITY_PROTOCOL": "SASL_SSL", "USERNAME": "kiosk"}


# ------------------------------------------------------------------ settings, through real moto


def test_the_daemon_takes_its_passwords_from_the_secret(
        moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET, "PASSWORD": KAFKA_SECRET,
                                     "DASHBOARD_SECRET_KEY": DASHBOARD_KEY, "NOT_A_SETTING": "x"})
    clean_env(monkeypatch, tmp_path, DATABASE | KAFKA | aws_env(moto_s3, secret)
              | {"S3_BUCKET": "bucket"})
    settings = read_settings(PipelineSettings)
    assert settings.database().password == DB_SECRET
    assert settings.kafka()["sasl.password"] == KAFKA_SECRET  # SASL_SSL needs it: it is there
    assert DB_SECRET not in repr(settings) and KAFKA_SECRET not in repr(settings)
    assert capsys.readouterr().err == ""


def test_precedence_environment_then_secret_then_dotenv(
        moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET, "PASSWORD": KAFKA_SECRET,
                                     "DATABASE_PORT": "6432"})
    (tmp_path / ".env").write_text("DATABASE_PASSWORD=from-dotenv\nPASSWORD=from-dotenv\n"
                                   "DATABASE_PORT=5433\nBATCH_SIZE=77\n")
    base = DATABASE | KAFKA | aws_env(moto_s3, secret) | {"S3_BUCKET": "bucket"}

    # The secret wins over .env; .env still gives what the secret does not hold.
    clean_env(monkeypatch, tmp_path, base)
    settings = read_settings(PipelineSettings)
    assert settings.DATABASE_PASSWORD.get_secret_value() == DB_SECRET
    assert settings.PASSWORD is not None and settings.PASSWORD.get_secret_value() == KAFKA_SECRET
    assert settings.DATABASE_PORT == 6432 and settings.BATCH_SIZE == 77
    assert capsys.readouterr().err == ""

    # A variable set in the environment wins over the secret, and is reported by name only.
    clean_env(monkeypatch, tmp_path, base | {"DATABASE_PASSWORD": "from-environment"})
    settings = read_settings(PipelineSettings)
    assert settings.DATABASE_PASSWORD.get_secret_value() == "from-environment"
    assert settings.PASSWORD is not None and settings.PASSWORD.get_secret_value() == KAFKA_SECRET
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"settings: DATABASE_PASSWORD set in the environment, which wins over secret {secret!r}"]
    assert "from-environment" not in err and DB_SECRET not in err

    # A blank variable counts as not set (as everywhere else): the secret's value is used.
    clean_env(monkeypatch, tmp_path, base | {"DATABASE_PASSWORD": "", "PASSWORD": " "})
    settings = read_settings(PipelineSettings)
    assert settings.DATABASE_PASSWORD.get_secret_value() == DB_SECRET
    assert capsys.readouterr().err == ""

    # No secret named: the environment and .env alone, as for the demo and museums without AWS.
    clean_env(monkeypatch, tmp_path, {k: v for k, v in base.items()
                                      if k != "SECRETS_MANAGER_SECRET_ID"})
    settings = read_settings(PipelineSettings)
    assert settings.DATABASE_PASSWORD.get_secret_value() == "from-dotenv"
    assert settings.DATABASE_PORT == 5433


def test_the_backfill_reads_its_secret(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    secret = create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET, "PASSWORD": KAFKA_SECRET})
    clean_env(monkeypatch, tmp_path, DATABASE | aws_env(moto_s3, secret) | {"S3_BUCKET": "bucket"})
    settings = read_settings(BackfillSettings)
    assert settings.database().password == DB_SECRET
    assert "PASSWORD" not in BackfillSettings.model_fields  # the Kafka password is not its own


def test_the_dashboard_reads_its_secret(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    secret = create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET,
                                     "DASHBOARD_SECRET_KEY": DASHBOARD_KEY})
    clean_env(monkeypatch, tmp_path, DATABASE | aws_env(moto_s3, secret)
              | {"DATABASE_USERNAME": "lmnh_reader"})
    settings = read_settings(DashboardSettings)
    assert settings.database().password == DB_SECRET
    assert settings.DASHBOARD_SECRET_KEY is not None
    assert settings.DASHBOARD_SECRET_KEY.get_secret_value() == DASHBOARD_KEY


def test_a_bad_value_in_the_secret_is_named_as_from_the_secret(
        moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    short = "Tapir-Secret-short"
    secret = create_secret(moto_s3, {"DASHBOARD_SECRET_KEY": short})
    clean_env(monkeypatch, tmp_path, DATABASE | aws_env(moto_s3, secret))
    with pytest.raises(SystemExit) as stopped:
        read_settings(DashboardSettings)
    assert stopped.value.code == EXIT_CONFIG
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"DASHBOARD_SECRET_KEY (from secret {secret!r})" in lines[0]
    assert short not in lines[0]


def test_a_secret_that_is_not_json_stops_without_its_value(
        moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for text in ("Zebu-Secret-plain-text", '["Zebu-Secret-in-a-list"]'):
        secret = create_secret(moto_s3, text)
        clean_env(monkeypatch, tmp_path, DATABASE | aws_env(moto_s3, secret))
        with pytest.raises(SystemExit) as stopped:
            read_settings(BackfillSettings)
        assert stopped.value.code == EXIT_CONFIG
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and secret in lines[0] and "not a JSON object" in lines[0]
        assert "Zebu-Secret" not in lines[0]


def test_migrate_never_reads_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the daemon, the backfill and the dashboard read one: migrate.py and
    reset_database.sh log in as the administrator, whose password is never in the secret."""
    clean_env(monkeypatch, tmp_path, DATABASE | {"SECRETS_MANAGER_SECRET_ID": "lmnh/none",
                                                 "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert read_settings(MigrateSettings).DATABASE_NAME == "museum"


# ------------------------------------------------------------------ start-up stops on a bad secret


ENTRY_POINTS = {"pipeline": [str(ROOT / "pipeline.py")],
                "backfill": ["-m", "lmnh.apps.backfill"],
                "dashboard": ["-m", "lmnh.apps.dashboard"]}


def entry_env(tmp_path: Path, port: int) -> dict[str, str]:
    """Every service at `port` (a listener that records any connection attempt)."""
    keep = {k: v for k, v in os.environ.items() if k in KEEP}
    return keep | DATABASE | KAFKA | {
        "HOME": str(tmp_path), "DATABASE_PORT": str(port),
        "BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "S3_BUCKET": "lmnh-bucket",
        "DASHBOARD_SECRET_KEY": DASHBOARD_KEY, "DASHBOARD_PASSWORD_FILE": str(tmp_path / "u"),
        "DATABASE_PASSWORD": "", "PASSWORD": KAFKA_SECRET,
    }


def one_line_exit_2(result: subprocess.CompletedProcess[str], secret_id: str) -> str:
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "SECRETS_MANAGER_SECRET_ID" in lines[0] and repr(secret_id) in lines[0]
    assert "Traceback" not in lines[0] and KAFKA_SECRET not in lines[0]
    return lines[0]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_wrong_secret_name_stops_start_up_with_one_line(
        entry: str, moto_s3: MotoS3, tmp_path: Path, listener: socket.socket) -> None:  # noqa: F811
    create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET})  # a secret exists, not this one
    wrong = f"lmnh/{unique('no-such-secret')}"
    env = entry_env(tmp_path, listener.getsockname()[1]) | aws_env(moto_s3, wrong)
    result = subprocess.run([sys.executable, *ENTRY_POINTS[entry]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    line = one_line_exit_2(result, wrong)
    assert "ResourceNotFoundException" in line
    assert connections_made(listener) == 0  # neither the database nor Kafka was tried


def test_an_unreachable_secrets_endpoint_stops_start_up_with_one_line(
        tmp_path: Path, listener: socket.socket) -> None:  # noqa: F811
    with socket.socket() as closed:  # a port nothing listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    secret_id = "lmnh/production"
    env = entry_env(tmp_path, listener.getsockname()[1]) | {
        "SECRETS_MANAGER_SECRET_ID": secret_id, "AWS_ENDPOINT_URL": dead,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-2", "AWS_MAX_ATTEMPTS": "2"}
    result = subprocess.run([sys.executable, *ENTRY_POINTS["pipeline"]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    line = one_line_exit_2(result, secret_id)
    assert "Could not connect to the endpoint URL" in line
    assert connections_made(listener) == 0


# ------------------------------------------------------------------ the daemon, end to end


def require_password(server: PgServer, database: Database, role: str, password: str) -> None:
    """`role` may log in over TCP with `password` only: the embedded server otherwise trusts
    local connections, and a trusted client never needs the password."""
    assert server.embedded is not None
    hba = Path(str(database.scalar("SHOW hba_file")))
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    database.execute(f"ALTER ROLE {role} PASSWORD %s", (password,))
    database.execute("SELECT pg_reload_conf()")

    def login(password: str | None) -> bool:
        try:
            psycopg2.connect(host=server.host, port=server.port, dbname=database.name, user=role,
                             password=password, connect_timeout=5).close()
        except psycopg2.OperationalError:
            return False
        return True

    wait_until(lambda: not login(None), 10, f"{role} to need a password")
    assert not login("wrong-" + password)
    assert login(password)


def test_the_daemon_with_its_database_password_only_in_the_secret_stores_the_capture_exactly(
        broker: Broker, private_pg_server: PgServer, pipeline_env: dict[str, str],
        run_pipeline, capture_lines: list[bytes], moto_s3: MotoS3, real_bucket: str,
        tmp_path: Path) -> None:
    database = make_database(private_pg_server)
    require_password(private_pg_server, database, "lmnh_writer", DB_SECRET)  # schema's writer
    secret = create_secret(moto_s3, {"DATABASE_PASSWORD": DB_SECRET})
    env = pipeline_env | database.env() | moto_s3.env(real_bucket) | {
        "HOME": str(tmp_path), "DATABASE_USERNAME": "lmnh_writer",
        "SECRETS_MANAGER_SECRET_ID": secret}
    env.pop("DATABASE_PASSWORD")
    assert DB_SECRET not in json.dumps(env) and "PGPASSWORD" not in env

    broker.produce(env["TOPIC"], list(capture_lines))
    run: PipelineRun = run_pipeline(env)
    wait_until(lambda: row_count(database) == RATINGS_TOTAL + REQUESTS_TOTAL, 90, "all rows")
    wait_until(lambda: all_committed(broker, env), 30, "offsets committed")
    assert run.stop(signal.SIGTERM) == 0

    assert_exact(database, env, capture_lines, broker.partitions(env["TOPIC"]))
    output = run.text()
    assert "loaded 6 exhibitions" in output and "stopped cleanly" in output
    assert "Traceback" not in output and DB_SECRET not in output


def test_the_daemon_sends_the_kafka_password_from_the_secret(
        pipeline_env: dict[str, str], run_pipeline, moto_s3: MotoS3, tmp_path: Path) -> None:
    secret = create_secret(moto_s3, {"PASSWORD": KAFKA_SECRET})
    sasl = SaslListener()
    env = pipeline_env | {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "PLAIN",
                          "USERNAME": "kiosk", "BOOTSTRAP_SERVERS": sasl.bootstrap,
                          "SECRETS_MANAGER_SECRET_ID": secret, "HOME": str(tmp_path)}
    assert "PASSWORD" not in env
    run = run_pipeline(env, "sasl")
    try:
        wait_until(lambda: "SASL authentication error" in run.text(), 60, "the login refused")
    finally:
        run.stop()
        sasl.close()
    assert sasl.tokens[0] == b"\0kiosk\0" + KAFKA_SECRET.encode()  # librdkafka sent it
    assert KAFKA_SECRET not in run.text()
