"""Emergency alerts for the Head of Security: SNS messages that are sent at least once.

The pipeline hands an emergency's alert over as soon as the press is judged, before (and
whatever becomes of) the database write, and again from the database's outbox on start-up for
what an earlier process left pending. `AlertSender` publishes them on its own thread in press
order. An attempt SNS fails for a while (throttling, its errors, no connection, even a refusal
that would refuse every alert: access denied, no such topic) is retried with backoff for as long
as it takes, each alert on its own schedule, so one alert's retries never hold up the next
one's first attempt. One that SNS refuses for good (a parameter it rejects: `PERMANENT`) is
logged, counted and given up. Both outcomes are handed back (`take_sent`) for the pipeline to
record in the outbox. Each alert is known by its message's source key, so one handed over twice
in a process is sent once.
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

from lmnh.core import errors
from lmnh.core.rows import Interaction
from s3_metadata import Exhibition

log = logging.getLogger("alerts")

SUBJECT_LIMIT = 99  # SNS: "less than 100 characters"
TIME_WORDS = len(", 14:32:05 15/07/2026")  # what the subject gives the press's time and date
NAME_LIMIT = 200  # of an exhibition's name in the message: metadata may hold anything
PENDING_ERROR_S = 60.0  # an alert pending this long is logged as an error, once a minute
BACKOFF_S = (0.5, 30.0)  # first and longest wait between attempts
Key = tuple[str, int, int]  # the press's source, partition, offset
# Publish's error codes that refuse this request whatever the retries (SNS API reference: a
# parameter that does not comply; InvalidParameterValueException's code is
# ParameterValueInvalid). Those that would refuse every alert alike (AuthorizationError,
# NotFound, InvalidSecurity, the KMS ones) and SNS's own failures are retried.
PERMANENT = frozenset({"InvalidParameter", "InvalidParameterValue", "ParameterValueInvalid",
                       "InvalidParameterCombination", "MissingParameter", "ValidationError",
                       "ValidationException"})


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


class Outcome(NamedTuple):
    """What became of an alert: SNS accepted it `at` (failure None), or refused it for good
    `at` for the reason `failure`."""

    alert: Alert
    at: datetime
    failure: str | None = None


def permanent_refusal(error: Exception) -> str | None:
    """The reason, if `error` refuses this one alert for good; None if a retry may succeed."""
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return errors.one_line(error)  # boto3 would not even send it
    if isinstance(error, botocore.exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in PERMANENT:
            return " ".join(f"{code}: {error.response['Error'].get('Message', '')}".split())
    return None


def one_line(text: str, limit: int, ellipsis: str = "…") -> str:
    """`text` without control characters or line breaks, whitespace runs as one space, cut to
    `limit` characters (`ellipsis` marks a cut)."""
    kept = "".join(" " if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in
                   ("Zl", "Zp") else c for c in text)
    flat = " ".join(kept.split())
    cut = limit - len(ellipsis)
    return flat if len(flat) <= limit else flat[:cut].rstrip() + ellipsis


def ascii_line(text: str, limit: int) -> str:
    """one_line in ASCII, as SNS requires of a subject: accents dropped ("Café" is "Cafe"),
    any other character not in ASCII shown as "?"."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text)
                     if not unicodedata.combining(c))
    return one_line(folded.encode("ascii", "replace").decode("ascii"), limit, "...")


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
    return where, floor, ascii_line(f"EMERGENCY at {where}, {floor}",
                                    SUBJECT_LIMIT - TIME_WORDS)


class _Queued:
    """An alert not sent yet, and when its next attempt is due."""

    __slots__ = ("alert", "attempts", "due", "order", "queued_at", "wait")

    def __init__(self, alert: Alert, now: float) -> None:
        self.alert = alert
        self.order = (alert.pressed_at.astimezone(UTC), alert.key)
        self.queued_at = now
        self.due = now
        self.wait = BACKOFF_S[0]
        self.attempts = 0


class AlertSender:
    """Publishes alerts to `topic_arn`, in press order, until SNS accepts or refuses each one.

    Without a topic it sends nothing and counts nothing. `sent` (accepted), `failed` (refused
    for good: given up), `failed_attempts` (attempts that failed, each retried unless refused
    for good) and `pending` are the counts the stats line and the metrics show.
    """

    def __init__(self, topic_arn: str | None, client: Any = None) -> None:
        self.topic_arn = topic_arn
        self.sent = 0
        self.failed = 0
        self.failed_attempts = 0
        self._queue: list[_Queued] = []  # press order
        self._known: set[Key] = set()
        self._done: list[Outcome] = []
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if topic_arn:
            # Short timeouts and a single retry inside boto3: the loop below retries, and a
            # stuck attempt must not hold up the next alert's first try for long.
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
            now = time.monotonic()
            for alert in alerts:
                if alert.key in self._known:
                    continue
                self._known.add(alert.key)
                queued = _Queued(alert, now)
                bisect.insort(self._queue, queued, key=lambda item: item.order)
            self._lock.notify()

    def take_sent(self) -> list[Outcome]:
        """The alerts SNS accepted or refused for good since the last call, with when (and,
        refused, why); the caller records them (and gives them back with `give_back` if it
        could not)."""
        with self._lock:
            taken, self._done = self._done, []
        return taken

    def give_back(self, taken: list[Outcome]) -> None:
        with self._lock:
            self._done[:0] = taken

    def has_unrecorded(self) -> bool:
        with self._lock:
            return bool(self._done)

    def _next(self) -> _Queued | None:
        """The first alert in press order whose attempt is due, waiting for one; None when
        closing."""
        with self._lock:
            while not self._closing.is_set():
                now = time.monotonic()
                due = [item for item in self._queue if item.due <= now]
                if due:
                    return due[0]  # the queue is in press order
                self._lock.wait(min(item.due for item in self._queue) - now
                                if self._queue else None)
            return None

    def _run(self) -> None:
        last_error_log = 0.0
        while (item := self._next()) is not None:
            alert = item.alert
            try:
                self.client.publish(TopicArn=self.topic_arn, Subject=alert.subject,
                                    Message=alert.message)
            except (botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as error:
                reason = permanent_refusal(error)
                if reason is not None:
                    self._finish(item, Outcome(alert, datetime.now(UTC), reason))
                    log.error("alert NOT sent, SNS refuses it for good (%s); given up, kept in"
                              " the outbox as failed: %s", reason, alert.subject)
                    continue
                self.failed_attempts += 1
                item.attempts += 1
                now = time.monotonic()
                waited = now - item.queued_at
                if waited >= PENDING_ERROR_S and now - last_error_log >= PENDING_ERROR_S:
                    last_error_log = now
                    log.error("alert pending for %.0f s, SNS still refuses (%s): %s",
                              waited, errors.one_line(error), alert.subject)
                elif item.attempts == 1:
                    log.warning("alert not sent yet (%s); retrying with backoff: %s",
                                errors.one_line(error), alert.subject)
                with self._lock:
                    item.due = now + item.wait
                    item.wait = min(item.wait * 2, BACKOFF_S[1])
                continue
            self._finish(item, Outcome(alert, datetime.now(UTC)))
            log.info("alert sent: %s", alert.subject)

    def _finish(self, item: _Queued, outcome: Outcome) -> None:
        with self._lock:
            self._queue.remove(item)
            self._done.append(outcome)
            if outcome.failure is None:
                self.sent += 1
            else:
                self.failed += 1

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
