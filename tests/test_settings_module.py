"""One settings module: each entry point asks only for what it uses, a blank optional setting
counts as not set, and an older Python gets one line instead of a traceback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Database
from test_backfill import new_bucket

from lmnh.local.embedded import MotoS3
from lmnh.settings import DashboardSettings, MigrateSettings, PipelineSettings

ENTRY_POINTS = ("pipeline.py", "lmnh/apps/backfill.py", "lmnh/apps/dashboard.py",
                "lmnh/local/demo.py", "lmnh/apps/migrate.py", "lmnh/apps/reset_database.py",
                "lmnh/apps/tableau_workbook.py")
DATABASE = {"DATABASE_NAME": "museum", "DATABASE_USERNAME": "lmnh_writer",
            "DATABASE_IP": "127.0.0.1"}
KAFKA = {"BOOTSTRAP_SERVERS": "127.0.0.1:9092", "GROUP": "g", "TOPIC": "lmnh"}


def clean_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.isupper() and name not in ("PATH", "HOME", "LANG", "TZ"):
            monkeypatch.delenv(name)
    for name, text in values.items():
        monkeypatch.setenv(name, text)


def test_the_backfill_runs_with_no_kafka_settings(moto_s3: MotoS3, database: Database,
                                                  tmp_path: Path) -> None:
    bucket = new_bucket(moto_s3, {})
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env = keep | database.env() | moto_s3.env(bucket) | {"REJECT_LOG": str(tmp_path / "r.log")}
    assert not any(name in env for name in (*KAFKA, "SECURITY_PROTOCOL", "USERNAME"))
    result = subprocess.run([sys.executable, "-m", "lmnh.apps.backfill"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backfill: total (" in result.stdout
    assert "configuration error" not in result.stderr


def test_blank_sasl_lines_with_plaintext_are_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch, DATABASE | KAFKA | {
        "S3_BUCKET": "bucket", "SECURITY_PROTOCOL": "PLAINTEXT", "SASL_MECHANISM": "",
        "USERNAME": "", "PASSWORD": "", "DATABASE_SSLMODE": "", "ALERT_SNS_TOPIC_ARN": "",
        "METRICS_PORT": "", "MUSEUM_TIMEZONE": ""})
    settings = PipelineSettings()
    assert settings.SASL_MECHANISM == "PLAIN" and settings.USERNAME is None
    assert "sasl.mechanism" not in settings.kafka()
    assert settings.DATABASE_SSLMODE is None and settings.METRICS_PORT is None
    assert settings.ALERT_SNS_TOPIC_ARN is None and settings.MUSEUM_TIMEZONE == "Europe/London"


def test_the_dashboard_needs_only_the_database_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch, DATABASE)
    assert DashboardSettings().database().user == "lmnh_writer"
    migrate = MigrateSettings()  # the migration: the database and the clock, nothing else
    assert migrate.admin_database("lmnh_admin", "").user == "lmnh_admin"
    clean_env(monkeypatch, {k: v for k, v in DATABASE.items() if k != "DATABASE_IP"})
    with pytest.raises(ValueError, match="DATABASE_IP"):
        DashboardSettings()


def test_no_entry_point_imports_another() -> None:
    modules = {name.removesuffix(".py").replace("/", ".") for name in ENTRY_POINTS}
    for name in ENTRY_POINTS:
        tree = ast.parse((ROOT / name).read_text())
        imported = {alias.name for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & (modules - {name.removesuffix(".py").replace("/", ".")}), name


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_an_older_python_gets_one_line(name: str) -> None:
    """Each entry point parses with Python 3.8's grammar and checks the version before it
    imports anything that needs 3.11; run as if by 3.9, it prints one line and exits 1."""
    source = (ROOT / name).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    first_imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert isinstance(first_imports[1], ast.ImportFrom)  # right after __future__
    assert (first_imports[1].module, first_imports[1].names[0].name) == ("lmnh", "requires_python")
    fake_39 = ("import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0);"
               f" runpy.run_path({str(ROOT / name)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", fake_39], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": os.environ["PATH"],
                                                        "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "needs Python 3.11 or newer" in lines[0], result.stderr
    assert "is Python 3.9" in lines[0] and "Traceback" not in result.stderr
