"""Set-up and the everyday commands, for a machine with nothing but Python 3.11+.

    python3 dev.py demo [demo options]   # the pipeline on embedded services, see demo.py --help
    python3 dev.py test [pytest options] # the whole test suite
    python3 dev.py bench [bench options] # the throughput and latency benchmark

Each creates .venv beside this file on first use, installs requirements-dev.txt and the project
itself (editable) into it, again whenever a requirements file or pyproject.toml changes, then runs
the command with that interpreter.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / "requirements.sha256"
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")
COMMANDS = {
    "demo": ["-m", "lmnh.local.demo"],
    "test": ["-m", "pytest"],
    "bench": ["bench/run.py"],
}
PYTEST_NO_TESTS = 5
FORWARDED = (signal.SIGINT, signal.SIGTERM)
SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel sent, e.g. the terminal's Ctrl-C


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
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements-dev.txt")], check=True)
    # The project itself, editable: its console scripts (lmnh-pipeline ...) and `python -m lmnh...`
    # from any folder; built with the venv's own setuptools, so nothing more is fetched.
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "--editable", str(ROOT)],
                   check=True)
    STAMP.write_text(wanted)


def run(command: list[str], env: dict[str, str]) -> int:
    """Run `command` and wait for it, handing it Ctrl-C and SIGTERM once each.

    The command shares this process group, so the terminal's job control and stdin reach it as
    usual. A Ctrl-C typed at the terminal already went to the whole group: it is not passed on
    again (its si_code is SI_KERNEL). SIGINT or SIGTERM that another process sent to dev.py is
    passed on to the command. Either way dev.py waits for the command and returns its status.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # taken by sigtimedwait below
    # The mask is inherited across exec: the command starts with both unblocked (dev.py runs no
    # thread, so preexec_fn is safe here).
    child = subprocess.Popen(
        command, cwd=ROOT, env=env,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED))
    while child.poll() is None:
        info = signal.sigtimedwait(FORWARDED, 0.25)
        if info is not None and info.si_code != SI_KERNEL and child.poll() is None:
            child.send_signal(info.si_signo)
    code = child.returncode
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file is what older Pythons run first
        print("Python 3.11 or newer is needed", file=sys.stderr)
        return 2
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, *rest = sys.argv[1:]
    ensure_venv()
    code = run([str(PYTHON), *COMMANDS[command], *rest],
               os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
    if command == "test" and code == PYTEST_NO_TESTS:
        print("pytest collected no test: that is a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
