"""The database writer: the one thread that owns the daemon's PostgreSQL connection.

Work reaches it as Tasks, done strictly in the order given, each in its own transaction, and
retried (reconnecting with backoff) for as long as the connection is lost or, after a failover,
the session cannot write. What a task returns is handed back with `deliver()`, on the caller's
thread and in the same order, so the loop alone decides what a result means. Any other error,
in a task that carries a batch, ends all writing: nothing given after it is written, so nothing
after it can be committed. An error in other work (an exhibition refresh, recording a sent alert) is
logged and the next task goes on.

Judged batches come through `submit_batch`: those that wait behind the write in hand join into
one task, up to `join_messages`, so a writer that is behind commits less often, with fewer round
trips and trigger statements a message; one that keeps up writes each batch as it comes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import psycopg2
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

import db
from lmnh.core.errors import one_line
from lmnh.core.outage import Outage
from lmnh.services import metrics

log = logging.getLogger("pipeline")
BACKOFF_S = (0.5, 30.0)  # first and longest wait between attempts while the database is away
# How many of the loop's batches one transaction writes at most, when they wait behind the write
# in hand (submit_batch): two measured 1.13-1.16 times the drain of one (docs/performance.md),
# and the judged batches held stay a few megabytes.
WRITE_JOIN_BATCHES = 2


class Task(NamedTuple):
    work: Callable[[db.Connection], Any]  # on the writer's thread, once per attempt
    then: Callable[[Any], None]  # with work's result, on the thread that calls deliver()
    messages: int = 0  # judged messages it writes: what the write buffer counts
    batch: bool = False  # an error writing it ends all writing
    parts: tuple[Any, ...] = ()  # the judged batches it writes, given to submit_batch


class Writer:
    def __init__(self, connect: Callable[[], db.Connection], health: metrics.Health,
                 write_batches: Callable[[db.Connection, tuple[Any, ...]], Any],
                 batches_written: Callable[[tuple[Any, ...], Any], None],
                 join_messages: int) -> None:
        """`write_batches(conn, parts)` writes judged batches in the transaction open on
        `conn`; `batches_written(parts, result)` is their task's `then`."""
        self._connect = connect
        self._write_batches, self._batches_written = write_batches, batches_written
        self._join_messages = join_messages
        self._health = health
        self.outage = Outage(
            log, "database unavailable ({detail}); retrying until it answers",
            "database still unavailable after {seconds} s ({detail})",
            "database connection re-established after {seconds} s")
        self._conn: db.Connection | None = None
        self._queue: deque[Task] = deque()
        self._done: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._abort = threading.Event()  # stops retrying: the daemon is stopping
        self.failure: BaseException | None = None  # what ended all writing
        self.backlog = 0  # judged messages given and not yet written
        self.down = threading.Event()  # set while the database does not answer
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()

    def submit(self, task: Task) -> None:
        with self._changed:
            self._queue.append(task)
            self.backlog += task.messages
            self._changed.notify_all()

    def submit_batch(self, part: Any, messages: int) -> None:
        """A judged batch of `messages` messages to write: it joins the batches that wait
        behind the write in hand if they and it come to at most `join_messages`."""
        with self._changed:
            waiting = self._waiting_batches()
            if waiting is not None and waiting.messages + messages <= self._join_messages:
                self._queue[-1] = self._batches_task((*waiting.parts, part),
                                                     waiting.messages + messages)
            else:
                self._queue.append(self._batches_task((part,), messages))
            self.backlog += messages
            self._changed.notify_all()

    def wait_room(self, messages: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until `messages` more would leave at most `join_messages`
        waiting behind the task in hand; True if so. The loop's back-pressure while the
        database answers: the batches judged ahead of the writer stay bounded."""
        def room() -> bool:
            return (len(self._queue) <= 1
                    or self.backlog - self._queue[0].messages + messages <= self._join_messages
                    or self.failure is not None or not self._thread.is_alive())
        with self._changed:
            return self._changed.wait_for(room, timeout_s)

    def _waiting_batches(self) -> Task | None:
        """The last task given if it writes judged batches and has not started (the task in
        hand stays first in the queue until it is done)."""
        last = self._queue[-1] if len(self._queue) > 1 else None
        return last if last is not None and last.parts else None

    def _batches_task(self, parts: tuple[Any, ...], messages: int) -> Task:
        return Task(partial(self._write_batches, parts=parts),
                    partial(self._batches_written, parts), messages, batch=True, parts=parts)

    @property
    def idle(self) -> bool:
        """Nothing given is still to be done."""
        return not self._queue

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every task given to be done; True if they are."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue or self.failure is not None
                                          or not self._thread.is_alive(), timeout_s)

    def deliver(self) -> None:
        """Hand each finished task's result to its `then`, oldest first."""
        while self._done:
            then, result = self._done.popleft()
            then(result)

    def close(self, wait_s: float) -> None:
        """Finish what was given for up to `wait_s` seconds, then stop retrying and return.
        What is not written then is read again from Kafka after the restart."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(wait_s)
        self._abort.set()
        self._thread.join(5.0)  # a call in progress ends within the connection's timeouts
        if self._conn is not None and not self._thread.is_alive():
            self._conn.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                task = self._queue[0]
            try:
                result = self._attempts(task.work)
            except db.RETRYABLE_ERRORS:  # a stop was asked for while the database was away
                return
            except (psycopg2.Error, db.SchemaMismatch) as error:
                if task.batch or isinstance(error, db.SchemaMismatch):
                    with self._changed:
                        self.failure = error
                        self._changed.notify_all()
                    return
                log.warning("database work besides the batches failed: %s", one_line(error))
                result = None
                task = task._replace(then=_ignore)
            with self._changed:
                self._queue.popleft()
                self.backlog -= task.messages
                self._done.append((task.then, result))
                self._changed.notify_all()

    def _attempts(self, work: Callable[[db.Connection], Any]) -> Any:
        for attempt in Retrying(
                retry=retry_if_exception_type(db.RETRYABLE_ERRORS),
                wait=wait_exponential(multiplier=BACKOFF_S[0], max=BACKOFF_S[1]),
                stop=stop_when_event_set(self._abort), sleep=self._abort.wait,
                before_sleep=lambda state: self._failed(state.outcome.exception()),
                reraise=True):
            with attempt:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    result = work(self._conn)
                except db.RETRYABLE_ERRORS:
                    self._conn.close()
                    raise
                self.down.clear()
                self._health.database_up = True
                metrics.DATABASE_UP.set(1)
                self.outage.recovered()
                return result
        raise AssertionError("unreachable")  # pragma: no cover - Retrying returns or raises

    def _failed(self, error: BaseException | None) -> None:
        """Before each wait for the database: the daemon is alive (retrying is its job), but
        not ready."""
        self.down.set()
        self._health.database_up = False
        metrics.DATABASE_UP.set(0)
        self.outage.failed(one_line(error))


def _ignore(_: Any) -> None:
    """The `then` of work whose error was logged: nothing to hand on."""
