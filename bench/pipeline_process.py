"""`python pipeline.py` as a subprocess, with its CPU time and peak memory (its own and its
judging process's) read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.services import ROOT, BenchError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 0.02
T = TypeVar("T")


@dataclass
class PipelineProcess:
    process: subprocess.Popen
    log_path: Path
    started: float  # time.time() just before the process was started

    @classmethod
    def start(cls, env: dict[str, str], workdir: Path) -> PipelineProcess:
        log_path = workdir / "pipeline.out"
        with log_path.open("ab") as output:
            started = time.time()
            process = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py")], cwd=workdir,
                                       env=env, stdout=output, stderr=subprocess.STDOUT)
        return cls(process, log_path, started)

    def pids(self) -> list[int]:
        """The pipeline and its child processes (the judging process)."""
        pids = [self.process.pid]
        for pid in pids:  # grows while it is walked: children's children too
            path = Path(f"/proc/{pid}/task/{pid}/children")
            with contextlib.suppress(OSError):
                pids.extend(int(child) for child in path.read_text().split())
        return pids

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far of the pipeline and its children (fields 14 and 15
        of /proc/PID/stat)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()  # the name in brackets may hold spaces
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        """The resident sets' high-water marks (VmHWM) so far, the pipeline's and its
        children's added up."""
        total_kb = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        if not total_kb:
            raise BenchError("no VmHWM in /proc/PID/status")
        return total_kb / 1024

    def wait_for(self, probe: Callable[[], T], timeout: float, what: str) -> T:
        """Call `probe` every POLL_S until it returns a true value, and return that value.

        Fails if the pipeline exits or `timeout` passes first.
        """
        deadline = time.monotonic() + timeout
        while not (result := probe()):
            if self.process.poll() is not None:
                raise BenchError(f"the pipeline exited ({self.process.returncode}) before {what}"
                                 f"\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}"
                                 f"\n{self.log_tail()}")
            time.sleep(POLL_S)
        return result

    def stop(self) -> None:
        """SIGTERM, as an operator would; the pipeline must exit 0."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        if code != 0:
            raise BenchError(f"the pipeline exited {code} on SIGTERM\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
