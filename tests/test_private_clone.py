"""Run as root from a clone in a 0700 home, the embedded PostgreSQL and the demo work and change
nothing above the clone: no folder's mode, no file outside it but their private temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from lmnh.local import embedded
from lmnh.local.embedded import EmbeddedPostgres, free_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="as another user the server runs as that user; the 0700 case is root's")

COPY_IGNORES = shutil.ignore_patterns(".git", ".venv", ".local", "__pycache__", ".pytest_cache",
                                      ".ruff_cache", "test-artifacts")


@pytest.fixture
def home() -> Iterator[Path]:
    """A 0700 folder of root's, as /root is (not under pytest's tmp folder, whose mode other
    pytest runs on this machine may change)."""
    with tempfile.TemporaryDirectory(prefix="lmnh-home-") as folder:
        yield Path(folder)


def private_clone(home: Path) -> tuple[Path, Path, dict[Path, int]]:
    """A copy of the project in a 0700 home, with the embedded server's package inside it as a
    venv would have it; returns the clone, that site folder and every folder's mode above."""
    assert home.stat().st_mode & 0o777 == 0o700
    clone = home / "lmnh"
    shutil.copytree(ROOT, clone, ignore=COPY_IGNORES)
    install = embedded._pg_bin().parent
    package = install.parent
    site = clone / ".venv" / "site-packages"
    for source in (package, package.parent / f"{package.name}.libs"):
        shutil.copytree(source, site / source.name, copy_function=os.link,
                        ignore=shutil.ignore_patterns("__pycache__"))
    modes = {folder: folder.stat().st_mode for folder in (clone, home, *home.parents)}
    return clone, site, modes


def run_in(clone: Path, site: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
    env |= {"HOME": str(clone.parent), "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=timeout)


def modes_now(modes: dict[Path, int]) -> dict[Path, int]:
    return {folder: folder.stat().st_mode for folder in modes}


def test_embedded_postgres_from_a_clone_in_a_private_home(home: Path) -> None:
    clone, site, modes = private_clone(home)
    script = (
        "from lmnh.local import embedded\nimport psycopg2, sys\n"
        f"assert embedded._pg_bin().is_relative_to({str(site)!r}), embedded._pg_bin()\n"
        f"server = embedded.EmbeddedPostgres(embedded.Path('.local/pg'), {free_port()})\n"
        "try:\n"
        "    server.start()\n"
        "    conn = psycopg2.connect(server.url('postgres'))\n"
        "    with conn.cursor() as cur:\n"
        "        cur.execute('SELECT current_setting(%s)', ('data_directory',))\n"
        "        print(cur.fetchone()[0])\n"
        "    conn.close()\n"
        "finally:\n"
        "    server.remove()\n")
    result = run_in(clone, site, "-c", script, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    data_directory = Path(result.stdout.strip())
    assert data_directory.name == "data" and data_directory.parent.name.startswith("lmnh-pg-")
    assert not data_directory.parent.exists()  # remove() took the private folder away
    assert modes_now(modes) == modes


@pytest.mark.slow
def test_the_demo_from_a_clone_in_a_private_home(home: Path) -> None:
    clone, site, modes = private_clone(home)
    port = free_port()
    server = EmbeddedPostgres(clone / ".local" / "demo" / "pg", port)
    try:
        result = run_in(clone, site, "-m", "lmnh.local.demo", "--duration", "5", "--pg-port",
                        str(port), timeout=240)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "stopped cleanly" in result.stdout and "Traceback" not in result.stderr
        assert f"data in {server.cluster_dir}" in result.stdout
        assert (clone / ".local" / "demo" / "erroneous_data.log").exists()
        assert modes_now(modes) == modes
    finally:
        server.remove()
    assert not server.cluster_dir.parent.exists()
