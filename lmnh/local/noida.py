"""A second local Kafka-protocol broker: the Kafka service of noida-db (a pip package bundling
one Rust binary), for what librdkafka's mock cluster does not model.

librdkafka's mock cluster (2.16.0) does not give a restarted static member (group.instance.id,
KIP-345) its partitions back: with the classic protocol it waits the dead member's session
timeout, and with the KIP-848 protocol it refuses the new member id under the same instance id
until that session has ended. noida-db's group coordinator does hand a static member that
rejoins after a kill -9 its partitions at once (measured: 0.2 to 0.4 s with
session.timeout.ms=30000), so tests/test_daemon_faults.py measures fault 9 on it.

What it does not model: a *dynamic* member killed with -9 is never dropped while the member
that replaced it waits in JoinGroup (still unassigned after 330 s, past both the 30 s session
and the 300 s rebalance timeout), where Apache Kafka drops it when its session times out. A
test on it can show that a dynamic restart is still blind long after a static one is served,
not how long a real broker keeps it blind.

Nothing here is used by the production daemon.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from lmnh.local.embedded import free_port


def noida_binary() -> Path:
    """The noida-db executable shipped in its wheel (its `noida-db` script only wraps it)."""
    binary = Path(str(files("noida_db").joinpath("noida-db")))
    if not binary.is_file():
        raise RuntimeError(f"no noida-db binary at {binary}: pip install noida-db")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


class NoidaKafka:
    """noida-db's Kafka service alone, on 127.0.0.1 at a free port, in a child process.

    Its data lives in a temporary folder removed by `stop`. The binary prints a harmless
    "weak version GLIBC_2.39 not found" line on Debian 12 (glibc 2.36); it runs all the same.
    """

    def __init__(self, start_timeout: float = 30) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="lmnh-noida-"))
        self.log_path = self.data_dir / "noida.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(noida_binary()), "start", "--data-dir", str(self.data_dir / "data"),
             "--host", "127.0.0.1", "--only", "kafka", "--kafka-port", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.process.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"noida-db exited with {self.process.returncode}: {output}")
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"noida-db did not listen on {self.bootstrap} in"
                                   f" {start_timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
