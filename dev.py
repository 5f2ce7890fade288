"""Set-up and the everyday commands, for a machine with nothing but Python 3.11+.

    python3 dev.py demo [demo options]   # the pipeline on embedded services, see demo.py --help
    python3 dev.py test [pytest options] # the whole test suite
    python3 dev.py bench [bench options] # the throughput and latency benchmark

Each creates .venv beside this file on first use and installs requirements-dev.txt into it
(again whenever a requirements file changes), then runs the command with that interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / "requirements.sha256"
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
COMMANDS = {
    "demo": ["demo.py"],
    "test": ["-m", "pytest"],
    "bench": ["bench/run.py"],
}
PYTEST_NO_TESTS = 5


def requirements_digest() -> str:
    digest = hashlib.sha256()
    for name in REQUIREMENTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    wanted = requirements_digest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing requirements-dev.txt (first run only)", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(ROOT / "requirements-dev.txt")], check=True)
    STAMP.write_text(wanted)


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file is what older Pythons run first
        print("Python 3.11 or newer is needed", file=sys.stderr)
        return 2
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, *rest = sys.argv[1:]
    ensure_venv()
    code = subprocess.run([str(PYTHON), *COMMANDS[command], *rest], cwd=ROOT,
                          env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}).returncode
    if command == "test" and code == PYTEST_NO_TESTS:
        print("pytest collected no test: that is a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
