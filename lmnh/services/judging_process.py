"""The judging process (lmnh.core.judging) as a stage of the daemon: each Job goes down its
stdin and its JudgedBatch comes back on its stdout, in the same order."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path

from lmnh.core import judging
from lmnh.core.judging import JudgedBatch

# The folder that holds the lmnh package: the judging process imports it from there.
PACKAGE_HOME = Path(judging.__file__).resolve().parents[2]
CLOSE_S = 5.0  # how long a stop waits for it to finish the job in hand
# Each pipe's buffer: a whole job or result fits, so neither side waits for the other to read
# it (the 64 KiB default held a 400 KB job back until the process had read most of it).
PIPE_BYTES = 1 << 20


class JudgingFailed(Exception):
    """The judging process is gone: nothing more can be judged."""


class JudgingProcess:
    """A child process judging batches in order.

    A thread reads the results, so the two pipes never both fill up and stall each other.
    Sending a job returns once the process has taken it, so it waits while the process is
    still judging the job before: that is the back-pressure on the consumer.
    """

    def __init__(self) -> None:
        path = os.pathsep.join(filter(None, (str(PACKAGE_HOME), os.environ.get("PYTHONPATH"))))
        self.process = subprocess.Popen([sys.executable, "-m", "lmnh.core.judging"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=os.environ | {"PYTHONPATH": path})
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.jobs = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        results = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.pending: deque[Future[JudgedBatch]] = deque()  # oldest first, until taken
        self.failure: JudgingFailed | None = None  # set once it has exited
        self._unanswered: deque[Future[JudgedBatch]] = deque()  # the reader's share of them
        self.reader = threading.Thread(target=self._read, args=(results,), name="judged",
                                       daemon=True)
        self.reader.start()

    def submit(self, job: judging.Job) -> None:
        future: Future[JudgedBatch] = Future()
        self.pending.append(future)
        self._unanswered.append(future)
        try:
            self.jobs.send(job)
        except OSError:
            raise JudgingFailed(f"the judging process exited ({self.process.wait()})") from None

    def take(self, keep: int) -> list[JudgedBatch]:
        """Every batch judged so far, oldest first, waiting for the oldest while more than
        `keep` batches are still being judged."""
        taken = []
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            taken.append(self.pending[0].result())
            self.pending.popleft()
        return taken

    def _read(self, results: Connection) -> None:
        unreadable = None
        while True:
            try:
                judged = results.recv()
            except (EOFError, OSError):
                break
            except Exception as error:  # the loop must hear of it, not wait for it
                unreadable = f"a result of the judging process could not be read ({error})"
                self.process.kill()
                break
            self._unanswered.popleft().set_result(judged)
        results.close()
        self.failure = JudgingFailed(
            unreadable or f"the judging process exited ({self.process.wait()})")
        while self._unanswered:
            self._unanswered.popleft().set_exception(self.failure)

    def close(self) -> None:
        """Close its stdin, so it exits once the job in hand is judged; it is killed if it
        has not within CLOSE_S. What it still held is replayed after a restart."""
        self.jobs.close()
        try:
            self.process.wait(CLOSE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join()
        self.pending.clear()
