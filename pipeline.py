"""The LMNH kiosk pipeline: Kafka topic -> validation -> PostgreSQL, with rejects logged.

Run `python3 pipeline.py` or `lmnh-pipeline` (configured by the environment and `.env`; see
.env.example). The daemon is a handful of stages, each with one job, that this module wires:

    KafkaStage (lmnh/services/consumer.py)    poll, commit, rebalances, read-again
      -> JudgingProcess (judging_process.py)   verdicts, rows and reject lines, in a child
      -> AlertSender (alerts.py)               every emergency, at once, never paused
      -> RejectLog (reject_log.py)             the batch's reject lines
      -> Writer (writer.py)                    a transaction per batch (or per batches waiting
                                               together), in order, retried
      -> OffsetTracker (lmnh/core/offsets.py)  commits only past batches written
    ExhibitionRefresher (refresher.py)         the bucket, read beside the loop

Each batch flows one way: messages, verdicts, alerts, reject-log lines, one database
transaction, then the offset commit, so a crash at any moment replays at most the batches not
yet written, and the rows' source key with the per-partition progress mark turns the replay
into a no-op. While the database is away the judged batches wait in a bounded buffer; past it,
messages are judged for their alerts only and read again once the database has caught up.
Stop it with SIGTERM or Ctrl-C.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import db
from lmnh.core import judging, topics
from lmnh.core.errors import one_line
from lmnh.core.judging import JudgedBatch
from lmnh.core.offsets import OffsetTracker
from lmnh.core.rows import Partition
from lmnh.services import metrics
from lmnh.services.alerts import Alert, AlertSender, emergency_alert
from lmnh.services.consumer import KafkaFatal, KafkaStage, Message, describe_topic
from lmnh.services.judging_process import JudgingFailed, JudgingProcess
from lmnh.services.refresher import ExhibitionRefresher
from lmnh.services.reject_log import RejectLog
from lmnh.services.writer import WRITE_JOIN_BATCHES, Task, Writer
from lmnh.settings import PipelineSettings, read_settings
from s3_metadata import METADATA_ERRORS, Exhibition, load_exhibitions, s3_client

log = logging.getLogger("pipeline")
SWITCH_INTERVAL_S = 0.0002  # see tune_interpreter
# How long the loop waits, at most, for room in the writer's queue (Writer.wait_room).
HEALTHY_WRITE_WAIT_S = 1.0
REVOKE_WAIT_S = 2.0  # how long a rebalance waits for the writes in hand (database answering)
ALERT_RESCAN_S = 60.0  # how often the outbox is read for alerts pending elsewhere
RECORD_SENT_S = 1.0  # how often sent alerts are recorded while no batch is written
CLOSE_WRITES_S = 10.0  # how long a stop waits for the batches given to the writer
CLOSE_ALERTS_S = 5.0  # how long a stop waits for queued alerts to go
# At a stop, how long the last offset commit and the consumer's close may take: with the broker
# gone they could block for many minutes; their messages are replayed instead (stored once).
KAFKA_CLOSE_BOUND_S = 5.0
# The database's schema or clock is not this release's: a restart cannot fix it, migrate can.
EXIT_SCHEMA = 3
# Batches handed to the judging process beyond the one whose result is awaited, when behind:
# one keeps it busy while this process passes the batch before on to be written.
JUDGING_AHEAD = 1


class ToWrite(NamedTuple):
    """A judged batch given to the writer: its number for the offsets, its alerts' outbox
    rows, and its rejects per reason as the stats count them."""

    seq: int
    batch: JudgedBatch
    outbox: list[db.OutboxAlert]
    reasons: dict[str, int]


@dataclass
class Stats:
    """What the stats line and the metrics count: only what a write newly stored, so a
    replayed message is never counted twice."""

    consumed: int = 0
    ratings: int = 0
    assistance: int = 0
    emergency: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, consumed: int, result: db.WriteResult, reasons: dict[str, int]) -> None:
        emergencies = len(result.new_emergencies)
        assistance = result.requests_inserted - emergencies
        self.consumed += consumed
        self.ratings += result.ratings_inserted
        self.emergency += emergencies
        self.assistance += assistance
        self.rejected.update(reasons)
        # The metrics: a handful of calls per batch, none per message.
        metrics.CONSUMED.inc(consumed)
        metrics.ACCEPTED.labels("rating").inc(result.ratings_inserted)
        metrics.ACCEPTED.labels("assistance").inc(assistance)
        metrics.ACCEPTED.labels("emergency").inc(emergencies)
        for reason, count in reasons.items():
            metrics.REJECTED.labels(reason).inc(count)
        metrics.ROWS_WRITTEN.labels("rating_interaction").inc(result.ratings_inserted)
        metrics.ROWS_WRITTEN.labels("request_interaction").inc(result.requests_inserted)

    def line(self, lag: int | None, alerts: AlertSender) -> str:
        reasons = " ".join(f"{reason}={n}" for reason, n in sorted(self.rejected.items()))
        accepted = self.ratings + self.assistance + self.emergency
        return (f"stats: consumed={self.consumed} accepted={accepted}"
                f" (ratings={self.ratings} assistance={self.assistance} emergency={self.emergency})"
                f" rejected={sum(self.rejected.values())} [{reasons}] written={accepted}"
                f" lag={'unknown' if lag is None else lag}"
                f" alerts: sent={alerts.sent} pending={alerts.pending} failed={alerts.failed}")


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes or abandons the batch in hand and exits."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    def set(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the batch in hand", signal.Signals(signum).name)
        self.event.set()


class Catalogue:
    """The exhibitions the daemon judges by: those the database holds. A press at one it
    refused would fail its batch's write at every restart; judged by what is stored, it is
    rejected as an unknown site instead."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.loaded: dict[int, Exhibition] = {}  # the bucket's, as last read
        self.held: dict[int, Exhibition] = {}
        self.rules = settings.rules({})

    def upsert(self, exhibitions: dict[int, Exhibition], batch: bool = False) -> Task:
        """The writer's task that stores `exhibitions`, then judges by what it holds."""
        self.loaded = exhibitions
        return Task(lambda conn: db.upsert_exhibitions(conn, exhibitions.values()),
                    self._stored, batch=batch)

    def _stored(self, result: db.UpsertResult) -> None:
        for conflict in result.conflicts:
            log.warning("%s is now %r (%s) in the bucket but the database holds %r (%s) under"
                        " that number; keeping the stored exhibition, so its rows keep it",
                        conflict.new.public_id, conflict.new.name, conflict.new.department,
                        conflict.stored_name, conflict.stored_department)
        for exhibition, reason in result.refused:
            log.warning("exhibition %s not stored, the database refuses it: %s; its presses"
                        " are rejected as an unknown site", exhibition.public_id, reason)
        held = result.held
        if self.held and held != self.held:
            added = sorted(e.public_id for n, e in held.items() if n not in self.held)
            removed = sorted(e.public_id for n, e in self.held.items() if n not in held)
            log.info("exhibitions refreshed: %d loaded; added %s; removed %s", len(held),
                     ", ".join(added) or "none", ", ".join(removed) or "none")
        self.held = held
        self.rules = self.settings.rules({n: e.start_date for n, e in held.items()})
        metrics.EXHIBITIONS.set(len(held))


class Alerting:
    """Every emergency goes to SNS as soon as it is judged, whatever becomes of its batch
    (the sender's own thread); the outbox, written by the writer, records what SNS did."""

    def __init__(self, sender: AlertSender, catalogue: Catalogue) -> None:
        self.sender, self.catalogue = sender, catalogue
        self.marks: dict[Partition, int] = {}  # each assigned partition's stored progress
        self.next_record = time.monotonic()
        self.next_rescan = self.next_record + ALERT_RESCAN_S

    def read_marks(self, settings: PipelineSettings, keys: set[Partition]) -> None:
        """Each newly assigned partition's progress: a message below it was judged before."""
        try:
            marks = db.judged_marks(settings.database(), sorted(keys))
        except db.Error as error:  # alert every emergency read: a duplicate, not a loss
            log.warning("cannot read the stored progress (%s); emergencies read again may be"
                        " alerted again", one_line(error))
            marks = {}
        for key in keys:
            self.marks[key] = marks.get(key, 0)

    def judged_before(self, origin: tuple[str, int, int]) -> bool:
        source, partition, offset = origin
        return offset < self.marks.get((source, partition), 0)

    def replayed(self, batch: JudgedBatch) -> bool:
        return any(low < self.marks.get(key, 0) for key, (low, _) in batch.spans.items())

    def judged(self, batch: JudgedBatch) -> list[db.OutboxAlert]:
        """Send the batch's emergencies not judged before; their outbox rows."""
        alerts = self._alerts_for(r for r in batch.requests if r.value == db.EMERGENCY)
        self.sender.submit(a for a in alerts if not self.judged_before(a[:3]))
        return [db.OutboxAlert(*alert) for alert in alerts]

    def stored(self, result: db.WriteResult) -> None:
        """A newly stored emergency not alerted from memory (its partition's mark said it was
        judged, yet no table held it): alert it now."""
        self.sender.submit(self._alerts_for(
            r for r in result.new_emergencies if self.judged_before(r[-3:])))

    def write(self, conn: db.Connection, batch: JudgedBatch,
              outbox: list[db.OutboxAlert]) -> db.WriteResult:
        """On the writer's thread: one batch's transaction, recording with it every alert SNS
        accepted meanwhile."""
        sent = self.sender.take_sent()
        started = time.perf_counter()
        try:
            result = db.write_interactions(
                conn, batch.ratings, batch.requests, batch.rejects, outbox,
                [db.OutboxAlert.outcome(*taken) for taken in sent], batch.spans)
        except BaseException:
            self.sender.give_back(sent)
            raise
        metrics.BATCH_WRITE.observe(time.perf_counter() - started)
        metrics.LAST_BATCH.set_to_current_time()
        return result

    def chores(self, writer: Writer) -> None:
        """While no batch is being written: record what SNS did, and now and then read the
        outbox for alerts left pending elsewhere (by a process that died or lost its
        partitions)."""
        if writer.down.is_set() or not writer.idle:
            return
        now = time.monotonic()
        if now >= self.next_record and self.sender.has_unrecorded():
            self.next_record = now + RECORD_SENT_S
            writer.submit(Task(self.record_sent, _nothing))
        if now >= self.next_rescan:
            self.next_rescan = now + ALERT_RESCAN_S
            writer.submit(Task(lambda conn: db.pending_alerts(
                conn, datetime.now(UTC) - timedelta(seconds=ALERT_RESCAN_S)), self.resend))

    def resend(self, pending: Iterable[db.OutboxAlert]) -> None:
        self.sender.submit(Alert(*row[:6]) for row in pending)

    def record_sent(self, conn: db.Connection) -> None:
        sent = self.sender.take_sent()
        try:
            db.mark_alerts_sent(conn, [db.OutboxAlert.outcome(*taken) for taken in sent])
        except BaseException:
            self.sender.give_back(sent)
            raise

    def _alerts_for(self, presses: Iterable[db.Interaction]) -> list[Alert]:
        """The presses' alerts; none without an SNS topic (nothing to send or record)."""
        if not self.sender.enabled:
            return []
        held, zone = self.catalogue.held, self.catalogue.rules.museum_tz
        return [emergency_alert(press, held.get(press.exhibition_id), zone) for press in presses]


class Daemon:
    """Wires the stages; every error has its meaning decided in run()."""

    def __init__(self, settings: PipelineSettings, exhibitions: dict[int, Exhibition],
                 stopping: StopFlag, health: metrics.Health) -> None:
        self.settings, self.stopping, self.health = settings, stopping, health
        self.stats = Stats()
        self.writer = Writer(lambda: db.connect(settings.database(), clock=settings.clock()),
                             health, self._write, self._written,
                             join_messages=settings.BATCH_SIZE * WRITE_JOIN_BATCHES)
        self.tracker = OffsetTracker()
        self.catalogue = Catalogue(settings)
        self.alerting = Alerting(AlertSender(settings.ALERT_SNS_TOPIC_ARN), self.catalogue)
        self._start_up(exhibitions)
        self.reject_log = RejectLog(settings.REJECT_LOG, settings.REJECT_LOG_MAX_VALUE_BYTES)
        self.batches = itertools.count()
        self.sources: dict[str, str] = {}  # each topic's source name, if not its own
        self.refresher = ExhibitionRefresher(settings.S3_BUCKET, settings.METADATA_REFRESH_S,
                                             exhibitions)
        self.judging = JudgingProcess()
        self.kafka = KafkaStage(settings.kafka() | {
            "statistics.interval.ms": settings.STATS_INTERVAL_S * 1000},
            settings.TOPIC, self._assigned, self._revoked, self.tracker.committed, health)
        metrics.METADATA_REFRESHED.set_to_current_time()

    def _start_up(self, exhibitions: dict[int, Exhibition]) -> None:
        """Store the exhibitions and queue the alerts left pending, before consuming;
        raises the writer's failure, or ConnectionError if stopped meanwhile."""
        self.writer.submit(self.catalogue.upsert(exhibitions, batch=True))
        self.writer.submit(Task(db.pending_alerts, self.alerting.resend, batch=True))
        while not self.writer.wait_idle(0.2):
            if self.stopping:
                raise ConnectionError("stopped before the database answered")
        if self.writer.failure is not None:
            raise self.writer.failure
        self.writer.deliver()

    def run(self) -> int:
        """Consume until stopped; 0 after a stop, 1 on a fault that stops without committing
        past it, EXIT_SCHEMA when the database's schema or clock is not this release's."""
        log.info("consuming topic %s as group %s", self.settings.TOPIC, self.settings.GROUP)
        self.kafka.subscribe()
        linger_s = self.settings.BATCH_LINGER_MS / 1000
        next_stats = time.monotonic() + self.settings.STATS_INTERVAL_S
        try:
            while not self.stopping:
                self.health.turned()
                if self.judging.failure is not None:
                    raise self.judging.failure
                messages = self.kafka.poll(self.settings.BATCH_SIZE, linger_s)
                if messages:
                    self._judge(messages)
                else:
                    self._pass_on(self.judging.take(keep=len(self.judging.pending)))
                self._deliver()
                self._read_again_when_caught_up()
                self._chores()
                if time.monotonic() >= next_stats:
                    log.info("%s", self.stats.line(self.kafka.lag, self.alerting.sender))
                    next_stats = time.monotonic() + self.settings.STATS_INTERVAL_S
        except OSError as error:
            log.error("cannot write the reject log %s (%s); stopping without committing",
                      self.settings.REJECT_LOG, error.strerror or error)
            return 1
        except db.SchemaMismatch as error:
            log.error("refusing to go on: %s", error)
            return EXIT_SCHEMA
        except db.Error as error:
            log.error("database error, stopping without committing: %s", one_line(error))
            return 1
        except (JudgingFailed, KafkaFatal) as error:
            log.error("%s; stopping without committing", error)
            return 1
        finally:
            self.kafka_abandoned = not self.close()
        return 0

    def _deliver(self) -> None:
        """Hand on what the writer finished, commit what may be, raise what ended writing."""
        self.writer.deliver()
        self.kafka.commit(self.tracker.take())
        if self.writer.failure is not None:
            raise self.writer.failure

    def _judge(self, messages: Sequence[Message]) -> None:
        """Hand a consumed batch to the judging process, then pass on every batch judged.
        Behind on the topic (a full batch), the next batch is consumed while this one is
        judged; caught up, this one is waited for, as nothing would come to take its place."""
        self.judging.submit(judging.Job(
            [m.value() for m in messages],
            topics.sources_of([m.topic() for m in messages], self.sources),
            [m.partition() for m in messages], [m.offset() for m in messages],
            self.catalogue.rules, datetime.now(UTC), self.reject_log.max_value_bytes))
        behind = len(messages) >= self.settings.BATCH_SIZE
        self._pass_on(self.judging.take(keep=JUDGING_AHEAD if behind else 0))

    def _pass_on(self, batches: Iterable[JudgedBatch]) -> None:
        for batch in batches:
            self._process(batch)

    def _process(self, batch: JudgedBatch) -> None:
        """Alerts first, whatever becomes of the batch; then its reject lines and its write,
        or, past the write buffer, a rewind to read it again once the database caught up."""
        outbox = self.alerting.judged(batch)
        if self.stopping:  # not written: it is read again after the restart
            return
        if self.kafka.rewinds or self.writer.backlog >= self.settings.WRITE_BUFFER_MESSAGES:
            if not self.kafka.rewinds:
                log.warning("%d judged messages wait for the database; newer ones are judged"
                            " for their alerts only and read again once it catches up",
                            self.writer.backlog)
            self.kafka.rewind(topics.by_topic(batch.spans))
            return
        lines, reasons = batch.reject_lines, batch.reasons
        if self.alerting.replayed(batch):  # logged and counted before
            lines = [line for line, origin in zip(lines, batch.rejects.origins(), strict=True)
                     if not self.alerting.judged_before(origin)]
            reasons = Counter(line.split("\t", 2)[1] for line in lines)
        self.reject_log.write(lines)
        self.writer.wait_room(batch.size,
                              0 if self.writer.down.is_set() else HEALTHY_WRITE_WAIT_S)
        seq = next(self.batches)
        self.tracker.handed_over(seq, topics.by_topic(batch.next_offsets))
        self.writer.submit_batch(ToWrite(seq, batch, outbox, reasons), batch.size)

    def _write(self, conn: db.Connection, parts: tuple[ToWrite, ...]) -> db.WriteResult:
        """On the writer's thread: judged batches in one transaction."""
        return self.alerting.write(conn, JudgedBatch.joined([part.batch for part in parts]),
                                   [alert for part in parts for alert in part.outbox])

    def _written(self, parts: tuple[ToWrite, ...], result: db.WriteResult) -> None:
        self.alerting.stored(result)
        self.stats.add(sum(part.batch.size for part in parts), result,
                       sum((Counter(part.reasons) for part in parts), Counter()))
        for part in parts:
            self.tracker.written(part.seq)

    def _read_again_when_caught_up(self) -> None:
        if self.kafka.rewinds and (
                self.writer.backlog <= self.settings.WRITE_BUFFER_MESSAGES // 2):
            self._pass_on(self.judging.take(keep=0))  # still rewound: none is kept
            self.kafka.read_again()

    def _chores(self) -> None:
        fresh = self.refresher.take()
        if fresh is not None and fresh != self.catalogue.loaded:
            self.writer.submit(self.catalogue.upsert(fresh))
        self.alerting.chores(self.writer)

    # ---- the group's rebalances (inside poll)
    def _assigned(self, keys: set[Partition], ends: dict[str, dict[int, int]]) -> set[str]:
        """Each topic's source (lmnh.core.topics) and the partitions' marks; the topics found
        recreated, to be read from their first message."""
        self.sources, recreated = topic_sources(self.settings, ends, self.sources)
        self.tracker.assigned(keys)
        self.alerting.read_marks(self.settings, {(self.sources.get(t, t), p) for t, p in keys})
        return recreated

    def _revoked(self, keys: set[Partition]) -> None:
        """Commit what is written, waiting a little for the writes in hand while the database
        answers, never for a database that is away: the group must not wait for it. Batches
        still queued are written when it answers; their partitions' new owners read from the
        last commit, and the source key stores each message once."""
        if not self.writer.down.is_set() and self.writer.wait_idle(REVOKE_WAIT_S):
            self._pass_on(self.judging.take(keep=0))
            self.writer.wait_idle(REVOKE_WAIT_S)
        self.writer.deliver()
        self.kafka.commit(self.tracker.take())
        self.tracker.revoked(keys)
        for topic, partition in keys:
            self.alerting.marks.pop((self.sources.get(topic, topic), partition), None)

    def close(self) -> bool:
        """Stop every stage within bounds; False if Kafka's close did not finish in time (a
        thread is still inside librdkafka: the process must exit without waiting for it)."""
        self.judging.close()  # what it still holds was not written: replayed after a restart
        self.refresher.stop()
        healthy = self.writer.failure is None and not self.writer.down.is_set()
        if self.writer.down.is_set():
            log.warning("stopping before the database came back; the batches not written are"
                        " read again after the restart")
        self.writer.wait_idle(CLOSE_WRITES_S if healthy else 0)
        self.alerting.sender.close(CLOSE_ALERTS_S if self.alerting.sender.pending else 0)
        if healthy and self.alerting.sender.has_unrecorded():
            self.writer.submit(Task(self.alerting.record_sent, _nothing))
        self.writer.close(CLOSE_WRITES_S if healthy else 0)
        self.writer.deliver()
        log.info("%s", self.stats.line(self.kafka.lag, self.alerting.sender))
        closed = self.kafka.close(self.tracker.take(), KAFKA_CLOSE_BOUND_S)
        if not closed:
            log.warning("kafka did not confirm the last offset commit within %.0f s; those"
                        " messages will be read again after the restart and stored once",
                        KAFKA_CLOSE_BOUND_S)
        self.reject_log.close()
        log.info("stopped cleanly")
        return closed


def topic_sources(settings: PipelineSettings, ends: dict[str, dict[int, int]],
                  known: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """Each assigned topic's source name, and the topics found recreated now: decided with the
    database from the partitions' high watermarks (a topic ending below a mark was recreated,
    said in one warning line). When the database does not answer, a topic keeps its last
    known source (its name at first), said in one line; never raises."""
    sources = dict(known)
    try:
        found = db.topic_sources(settings.database(), ends)
    except db.Error as error:
        for topic in sorted(ends):
            log.warning("cannot check whether topic %s was recreated (%s); its messages are"
                        " stored as source %s, the last known", topic, one_line(error),
                        known.get(topic, topic))
        return sources, set()
    recreated = set()
    for topic, current in sorted(found.items()):
        sources[topic] = current.source
        if current.recreated is not None:
            recreated.add(topic)
            log.warning("%s", topics.recreated_line(topic, current.recreated, current.source))
        elif current.source != known.get(topic, topic):
            log.info("topic %s is in its incarnation %d: its messages are stored as source %s",
                     topic, current.incarnation, current.source)
    return sources, recreated


def _nothing(_: object) -> None:
    """The `then` of writer work that hands nothing on."""


def check(settings: PipelineSettings) -> int:
    """Reach every service once and say what was found: 0 if all answered, else 1."""

    def s3() -> str:
        loaded = load_exhibitions(s3_client(), settings.S3_BUCKET)
        return f"{len(loaded)} exhibitions in s3://{settings.S3_BUCKET}"

    warnings: list[str] = []

    def database() -> str:
        conn = db.connect(settings.database(), application_name="lmnh-pipeline-check")
        try:
            version = db.check_schema(conn)
            db.check_clock(conn, settings.clock())
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM exhibition")
                count = cur.fetchone()[0]
            tls = db.tls_state(conn, settings.database())
        finally:
            conn.close()
        if not tls.verified:
            warnings.append("database: the server's identity is not verified; in production set "
                            "DATABASE_SSLMODE=verify-full and DATABASE_SSLROOTCERT (README)")
        return (f"{settings.DATABASE_IP}:{settings.DATABASE_PORT}/{settings.DATABASE_NAME}"
                f" as {settings.DATABASE_USERNAME}, schema version {version}, museum clock"
                f" {settings.clock().describe()}, {count} exhibitions stored, {tls.describe()}")

    def kafka() -> str:
        return describe_topic(settings.kafka(), settings.TOPIC)

    failures = 0
    for name, probe in (("s3", s3), ("database", database), ("kafka", kafka)):
        try:
            print(f"ok    {name}: {probe()}", flush=True)
        except Exception as error:  # each failure is reported; none stops the other checks
            failures += 1
            print(f"FAIL  {name}: {one_line(error)}", flush=True)
    for warning in warnings:
        print(f"WARN  {warning}", flush=True)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="check the settings and reach S3, the database and Kafka, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    settings = read_settings(PipelineSettings)
    if args.check:
        return check(settings)
    try:
        exhibitions = load_exhibitions(s3_client(), settings.S3_BUCKET)
    except METADATA_ERRORS as error:
        log.error("cannot load exhibitions from s3://%s: %s", settings.S3_BUCKET, one_line(error))
        return 1
    log.info("loaded %d exhibitions from s3://%s: %s", len(exhibitions), settings.S3_BUCKET,
             ", ".join(e.public_id for e in exhibitions.values()))
    stopping = StopFlag()
    signal.signal(signal.SIGTERM, stopping.set)
    signal.signal(signal.SIGINT, stopping.set)
    health = metrics.Health(settings.HEALTH_STALL_S)
    if settings.METRICS_PORT:
        try:
            metrics.serve(settings.METRICS_ADDRESS, settings.METRICS_PORT, health)
        except OSError as error:
            log.error("cannot serve metrics on %s:%d: %s", settings.METRICS_ADDRESS,
                      settings.METRICS_PORT, error.strerror or error)
            return 1
        log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz",
                 settings.METRICS_ADDRESS, settings.METRICS_PORT)
    try:
        daemon = Daemon(settings, exhibitions, stopping, health)
    except ConnectionError:  # stopped while the database was away
        return 0
    except db.SchemaMismatch as error:
        log.error("refusing to start: %s", error)
        return EXIT_SCHEMA
    except db.Error as error:
        log.error("database error at start-up: %s", one_line(error))
        return 1
    metrics.watch_alerts(daemon.alerting.sender)
    log.info("database %s:%s/%s, topic %s, group %s%s, reject log %s", settings.DATABASE_IP,
             settings.DATABASE_PORT, settings.DATABASE_NAME, settings.TOPIC, settings.GROUP,
             f" as static member {settings.GROUP_INSTANCE_ID}"
             if settings.GROUP_INSTANCE_ID.lower() != "off"
             else "", settings.REJECT_LOG)
    tune_interpreter()
    code = daemon.run()
    if daemon.kafka_abandoned:  # a thread is still inside librdkafka: do not wait for it
        logging.shutdown()
        os._exit(code)
    return code


def tune_interpreter() -> None:
    """Two settings for a loop that makes objects fast while another thread waits on I/O.

    - The writer thread needs the GIL back after each database call; by default it may wait
      5 ms for the main thread to let go, which idled the writer for much of a batch.
    - Start-up leaves a large heap (boto3, pydantic, librdkafka's wrapper) that never becomes
      garbage; frozen, the cyclic garbage collector stops re-scanning it every few thousand
      messages (backlog drain in alternating runs: 90,800/s mean with it, 81,700/s without).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
