"""The benchmark's short version, as CI runs it: it must finish and find every table exact.

The speed targets are not asserted: a CI machine's figures are too noisy to fail a build on.
The standalone server the full benchmark starts (Debian's PostgreSQL 15, .ci/run installs it)
must take a password and refuse a wrong one.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import psycopg2
import pytest
from conftest import ROOT

from bench.backlog import Tally
from bench.services import DEBIAN_PG_BIN, DebianPostgres
from lmnh.local.embedded import free_port


def test_the_quick_benchmark_runs_and_every_phase_is_exact() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    print(result.stdout)
    assert "exact: every phase's tables and reject log matched" in result.stdout
    for figure in ("backlog drain: messages/s", "limit (a) binary COPY alone",
                   "limit (b) bare consume loop", "drain / min(limits)", "drain / baseline",
                   "peer's batched design", "drain / peer's batched design",
                   "latency at 5,000 msg/s: p99", "latency at 20 msg/s: p99",
                   "growth with the other four fifths", "CPU s per 100,000 messages"):
        line = next(line for line in result.stdout.splitlines() if line.lstrip().startswith(figure))
        assert any(char.isdigit() for char in line), line
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not (DEBIAN_PG_BIN / "initdb").exists(),
                    reason=f"{DEBIAN_PG_BIN} is absent: apt-get install postgresql (.ci/run does)")
def test_the_standalone_server_takes_a_password_over_tcp_and_refuses_a_wrong_one(
        tmp_path) -> None:
    server = DebianPostgres(tmp_path / "pg", free_port()).start()
    try:
        conn = psycopg2.connect(server.url("postgres"))
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')::int / 10000,"
                        " inet_server_addr() IS NOT NULL")
            assert cur.fetchone() == (15, True)  # version 15, over TCP (not a Unix socket)
        conn.close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(server.url("postgres").replace(server.password, "not-it"))
        assert server.env("x")["DATABASE_PASSWORD"] == server.password
    finally:
        server.remove()


def test_the_exactness_check_names_every_difference() -> None:
    expected = Tally(Counter({(4, 2): 10, (0, 0): 1}), Counter({(1, 1): 2}),
                     Counter({"invalid_val": 3}))
    found = Tally(Counter({(4, 2): 9, (0, 0): 1, (5, 0): 1}), Counter({(1, 1): 2}),
                  Counter({"invalid_val": 3, "missing_key": 1}))
    assert expected.differences(expected) == []
    assert expected.differences(found) == [
        "ratings (4, 2): expected 10, found 9",
        "ratings (5, 0): expected 0, found 1",
        "rejects missing_key: expected 0, found 1",
    ]
