"""The systemd units in deploy/ are hardened, and the pipeline's can still do its job.

Every deploy/*.service must be rated at most 2.0 by `systemd-analyze security --offline=true`.
This machine has systemd-analyze but no running systemd (PID 1 is not systemd), so the units are
not started here: what the pipeline needs under its sandbox is checked in the unit's settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from conftest import ROOT

UNITS = sorted((ROOT / "deploy").glob("*.service"))
PIPELINE_UNIT = ROOT / "deploy" / "lmnh-pipeline.service"
MAX_EXPOSURE = 2.0


def exposure(unit: Path) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout[-500:] + result.stderr[-500:]
    return float(found.group(1))


def service_settings(unit: Path) -> dict[str, list[str]]:
    """Every setting of the [Service] section, each with all its values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def test_there_are_units_to_check() -> None:
    assert PIPELINE_UNIT in UNITS


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_every_unit_is_rated_at_most_2(unit: Path) -> None:
    assert exposure(unit) <= MAX_EXPOSURE


def test_the_pipeline_unit_reaches_the_network_and_writes_its_reject_log() -> None:
    service = service_settings(PIPELINE_UNIT)
    families = " ".join(service["RestrictAddressFamilies"]).split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)  # Kafka, RDS, S3; DNS
    assert not any(family.startswith("~") for family in families)
    assert service.get("PrivateNetwork", ["no"]) == ["no"]
    assert "IPAddressDeny" not in service
    assert service["User"] not in (["root"], [""])

    # The reject log's default is absolute, in the folder systemd makes writable for the unit,
    # and the one logrotate rotates.
    defaults = dict(value.split("=", 1) for value in service["Environment"])
    reject_log = PurePosixPath(defaults["REJECT_LOG"])
    logs = [PurePosixPath("/var/log") / name for name in service["LogsDirectory"]]
    assert reject_log.is_absolute() and reject_log.parent in logs
    assert f"{reject_log} {{" in (ROOT / "deploy" / "lmnh-pipeline.logrotate").read_text()
    # The operator's environment file may still set another REJECT_LOG: it is read after.
    assert service["EnvironmentFile"][0].startswith("/")

    # With ProtectSystem=strict everything else is read-only: the working directory is the
    # state folder systemd makes writable, so a relative REJECT_LOG works too.
    assert service["ProtectSystem"] == ["strict"]
    states = [PurePosixPath("/var/lib") / name for name in service["StateDirectory"]]
    assert PurePosixPath(service["WorkingDirectory"][0]) in states
    # And the program is named by absolute paths, not relative to the working directory.
    program = service["ExecStart"][0].split()
    assert all(PurePosixPath(part).is_absolute() for part in program)
    assert program[-1].endswith("/pipeline.py")
