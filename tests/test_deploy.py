"""The operating files: .env.example, the systemd unit and the logrotate snippet."""

from __future__ import annotations

import configparser
import re

from conftest import ROOT

from lmnh.settings import PipelineSettings as Settings

UNIT = ROOT / "deploy" / "lmnh-pipeline.service"
LOGROTATE = ROOT / "deploy" / "lmnh-pipeline.logrotate"


def example_lines() -> list[str]:
    return (ROOT / ".env.example").read_text().splitlines()


def test_env_example_lists_every_setting() -> None:
    named = {m.group(1) for line in example_lines()
             if (m := re.match(r"^#? ?([A-Z][A-Z0-9_]+)=", line))}
    assert set(Settings.model_fields) <= named


def test_env_example_works_as_a_systemd_environment_file() -> None:
    for line in example_lines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), line  # no inline comments


def test_the_unit_restarts_on_failure_as_an_unprivileged_user() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root")
    assert service["EnvironmentFile"].startswith("/")
    assert service["ExecStart"].endswith("pipeline.py")
    assert service["KillSignal"] == "SIGTERM"
    # a configuration error; a database schema or clock other than this release's
    assert service["RestartPreventExitStatus"].split() == ["2", "3"]


def test_logrotate_moves_the_file_rather_than_truncating_it() -> None:
    text = LOGROTATE.read_text()
    assert "erroneous_data.log" in text
    assert "copytruncate" not in text.replace("no copytruncate", "")
    assert "delaycompress" in text
