"""Emergency alerts for the Head of Security: SNS messages that are sent at least once.

The pipeline hands an emergency's alert over as soon as the press is judged, before (and
whatever becomes of) the database write, and again from the database's outbox on start-up for
what an earlier process left pending. `AlertSender` publishes them on its own thread in press
order, retrying with backoff for as long as it takes; what SNS accepted is handed back
(`take_sent`) for the pipeline to record. Each alert is known by its message's source key, so
one handed over twice in a process is sent once.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from db import Interaction
from s3_metadata import Exhibition

log = logging.getLogger("alerts")

SUBJECT_LIMIT = 99  # SNS: "less than 100 characters"
TIME_WORDS = len(", 14:32:05 15/07/2026")  # what the subject gives the press's time and date
NAME_LIMIT = 200  # of an exhibition's name in the message: metadata may hold anything
PENDING_ERROR_S = 60.0  # an alert pending this long is logged as an error, once a minute
BACKOFF_S = (0.5, 30.0)  # first and longest wait between attempts
Key = tuple[str, int, int]  # the press's source, partition, offset


class Alert(NamedTuple):
    source: str
    source_partition: int
    source_offset: int
    pressed_at: datetime
    subject: str
    message: str

    @property
    def key(self) -> Key:
        return (self.source, self.source_partition, self.source_offset)


def one_line(text: str, limit: int) -> str:
    """`text` without control characters or line breaks, whitespace runs as one space, cut to
    `limit` characters (an ellipsis marks a cut)."""
    kept = "".join(" " if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in
                   ("Zl", "Zp") else c for c in text)
    flat = " ".join(kept.split())
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def emergency_alert(press: Interaction, exhibition: Exhibition | None,
                    museum_tz: tzinfo) -> Alert:
    """The words the Head of Security reads: where, which floor, when in museum time."""
    local = press.event_at.astimezone(museum_tz)
    where, floor, heading = _words(exhibition, press.exhibition_id)
    return Alert(
        press.source, press.source_partition, press.source_offset, press.event_at,
        subject=f"{heading}, {local:%H:%M:%S} {local:%d/%m/%Y}",
        message=(f"Emergency button pressed at {where}, {floor}, at {local:%H:%M:%S} on "
                 f"{local:%d/%m/%Y} museum time."),
    )


@functools.lru_cache(maxsize=256)
def _words(exhibition: Exhibition | None, site: int) -> tuple[str, str, str]:
    """Where, which floor, and the subject's heading (all but the press's time, whose
    ", HH:MM:SS DD/MM/YYYY" the heading leaves room for): the same for every press at an
    exhibition."""
    if exhibition is None:
        where, floor = f"site {site}", "unknown floor"
    else:
        where = f"{exhibition.public_id} {one_line(exhibition.name, NAME_LIMIT)}"
        floor = f"floor {one_line(exhibition.floor, NAME_LIMIT)}"
    return where, floor, one_line(f"EMERGENCY at {where}, {floor}", SUBJECT_LIMIT - TIME_WORDS)


class AlertSender:
    """Publishes alerts to `topic_arn` in press order until SNS accepts each one.

    Without a topic it sends nothing and counts nothing. `sent`, `pending` and `failed` (failed
    attempts) are the counts the stats line and the metrics show.
    """

    def __init__(self, topic_arn: str | None, client: Any = None) -> None:
        self.topic_arn = topic_arn
        self.sent = 0
        self.failed = 0
        self._queue: list[tuple[datetime, Key, Alert, float]] = []  # press order
        self._known: set[Key] = set()
        self._accepted: list[tuple[Alert, datetime]] = []
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if topic_arn:
            # Short timeouts and a single retry inside boto3: the loop below retries for ever,
            # and a stuck attempt must not hold up the next alert's first try for long.
            self.client = client or boto3.client("sns", config=BotoConfig(
                retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2,
                read_timeout=4))
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def submit(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts not seen before in this process."""
        if self._thread is None:
            return
        with self._lock:
            for alert in alerts:
                if alert.key in self._known:
                    continue
                self._known.add(alert.key)
                pressed = alert.pressed_at.astimezone(UTC)
                bisect.insort(self._queue, (pressed, alert.key, alert, time.monotonic()),
                              key=lambda item: item[:2])
            self._lock.notify()

    def take_sent(self) -> list[tuple[Alert, datetime]]:
        """The alerts SNS accepted since the last call, with when; the caller records them
        (and gives them back with `give_back` if it could not)."""
        with self._lock:
            taken, self._accepted = self._accepted, []
        return taken

    def give_back(self, taken: list[tuple[Alert, datetime]]) -> None:
        with self._lock:
            self._accepted[:0] = taken

    def has_unrecorded(self) -> bool:
        with self._lock:
            return bool(self._accepted)

    def _run(self) -> None:
        wait = BACKOFF_S[0]
        last_error_log = 0.0
        while not self._closing.is_set():
            with self._lock:
                while not self._queue and not self._closing.is_set():
                    self._lock.wait()
                if self._closing.is_set():
                    return
                _, _, alert, queued_at = self._queue[0]
            try:
                self.client.publish(TopicArn=self.topic_arn, Subject=alert.subject,
                                    Message=alert.message)
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as error:
                self.failed += 1
                waited = time.monotonic() - queued_at
                if waited >= PENDING_ERROR_S and (
                        time.monotonic() - last_error_log >= PENDING_ERROR_S):
                    last_error_log = time.monotonic()
                    log.error("alert pending for %.0f s, SNS still refuses (%s): %s",
                              waited, " ".join(str(error).split()), alert.subject)
                elif self.failed == 1 or wait == BACKOFF_S[0]:
                    log.warning("alert not sent yet (%s); retrying with backoff: %s",
                                " ".join(str(error).split()), alert.subject)
                self._closing.wait(wait)
                wait = min(wait * 2, BACKOFF_S[1])
                continue
            wait = BACKOFF_S[0]
            with self._lock:
                self._queue = [item for item in self._queue if item[1] != alert.key]
                self._accepted.append((alert, datetime.now(UTC)))
                self.sent += 1
            log.info("alert sent: %s", alert.subject)

    def close(self, timeout_s: float) -> None:
        """Give the queued alerts up to `timeout_s` to go, then stop; what is still pending is
        in the outbox (or not yet committed in Kafka) for the next start."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing.set()
        with self._lock:
            self._lock.notify()
        self._thread.join(timeout=10)
        if self.pending:
            log.warning("stopping with %d alert(s) not yet sent; they are sent on the next start",
                        self.pending)
