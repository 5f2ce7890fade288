"""The benchmark's short version, as CI runs it: it must finish and find every table exact.

The speed targets are not asserted: a CI machine's figures are too noisy to fail a build on.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from conftest import ROOT

from bench.backlog import Tally


def test_the_quick_benchmark_runs_and_every_phase_is_exact() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "exact: every phase's tables and reject log matched" in result.stdout
    assert "backlog drain: messages/s" in result.stdout
    assert "Traceback" not in result.stderr


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
