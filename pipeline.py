"""The LMNH kiosk pipeline: Kafka topic -> validation -> PostgreSQL, with rejects logged.

Run `python pipeline.py` (configured by the environment and `.env`; see .env.example). Each
batch flows one way: messages, verdicts, reject-log lines, one database transaction, then the
offset commit, so a crash at any moment replays at most the batch in hand, and the rows'
source key (topic, partition, offset) turns the replay into a no-op. Stop it with SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import psycopg2
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

import db
import metrics
import validation
from alerts import EmergencyAlerts
from outage import Outage
from reject_log import RejectLog, format_reject_line
from s3_metadata import METADATA_ERRORS, Exhibition, load_exhibitions, s3_client
from settings import PipelineSettings, read_settings
from validation import Rating, Reason, Rejection, Rules

log = logging.getLogger("pipeline")
SWITCH_INTERVAL_S = 0.0002  # see tune_interpreter
# At a stop, how long the last offset commit and the consumer's close may take: with the broker
# gone they could block for many minutes; their messages are replayed instead (stored once).
KAFKA_CLOSE_BOUND_S = 5.0
# librdkafka's own log: critical lines only. Its per-reconnect lines (hundreds a minute while a
# broker is away) are replaced by the error callback's one line per outage and minute.
KAFKA_LOG_LEVEL = 2
# The database's schema or clock is not this release's: a restart cannot fix it, migrate.py can.
EXIT_SCHEMA = 3
T = TypeVar("T")


# ---------------------------------------------------------------- the pure part of a batch


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    topic: str
    partition: int
    offset: int
    reason: Reason
    detail: str
    value: bytes | None


@dataclass(slots=True)
class JudgedBatch:
    """One consumed batch, judged: rows to write, rejects to log, offsets to commit after."""

    ratings: list[db.Interaction] = field(default_factory=list)
    requests: list[db.Interaction] = field(default_factory=list)
    rejects: list[RejectedMessage] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def judge_batch(messages: Sequence[Message], rules: Rules, now: datetime) -> JudgedBatch:
    """Validate every message of a batch; messages carrying a Kafka error are skipped."""
    batch = JudgedBatch()
    for message in messages:
        if message.error() is not None:
            continue
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        verdict = validation.validate(message.value(), rules, now)
        if isinstance(verdict, Rejection):
            batch.rejects.append(RejectedMessage(
                topic, partition, offset, verdict.reason, verdict.detail, message.value()))
        else:
            rows = batch.ratings if type(verdict) is Rating else batch.requests
            rows.append(db.Interaction.of(verdict, topic, partition, offset))
        batch.next_offsets[(topic, partition)] = offset + 1
    return batch


def format_reject(reject: RejectedMessage, logged_at: datetime, max_value_bytes: int) -> str:
    return format_reject_line(logged_at, reject.reason,
                              f"{reject.topic}/{reject.partition}/{reject.offset}",
                              reject.detail, reject.value, max_value_bytes)


# ---------------------------------------------------------------- the imperative shell


@dataclass
class Stats:
    consumed: int = 0
    ratings: int = 0
    assistance: int = 0
    emergency: int = 0
    rows_written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    lag: int | None = None

    def add(self, batch: JudgedBatch, result: db.WriteResult) -> None:
        self.consumed += len(batch.ratings) + len(batch.requests) + len(batch.rejects)
        self.ratings += len(batch.ratings)
        self.emergency += sum(1 for r in batch.requests if r.value == db.EMERGENCY)
        self.assistance += sum(1 for r in batch.requests if r.value != db.EMERGENCY)
        self.rejected.update(r.reason.value for r in batch.rejects)
        self.rows_written += result.ratings_inserted + result.requests_inserted
        # The metrics: a handful of calls per batch, none per message.
        emergencies = sum(1 for r in batch.requests if r.value == db.EMERGENCY)
        metrics.CONSUMED.inc(len(batch.ratings) + len(batch.requests) + len(batch.rejects))
        metrics.ACCEPTED.labels("rating").inc(len(batch.ratings))
        metrics.ACCEPTED.labels("assistance").inc(len(batch.requests) - emergencies)
        metrics.ACCEPTED.labels("emergency").inc(emergencies)
        for reason, count in Counter(r.reason.value for r in batch.rejects).items():
            metrics.REJECTED.labels(reason).inc(count)
        metrics.ROWS_WRITTEN.labels("rating_interaction").inc(result.ratings_inserted)
        metrics.ROWS_WRITTEN.labels("request_interaction").inc(result.requests_inserted)

    def line(self) -> str:
        reasons = " ".join(f"{reason}={n}" for reason, n in sorted(self.rejected.items()))
        lag = "unknown" if self.lag is None else str(self.lag)
        accepted = self.ratings + self.assistance + self.emergency
        return (f"stats: consumed={self.consumed} accepted={accepted}"
                f" (ratings={self.ratings} assistance={self.assistance} emergency={self.emergency})"
                f" rejected={sum(self.rejected.values())} [{reasons}] written={self.rows_written}"
                f" lag={lag}")


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes or abandons the batch in hand and exits."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    def set(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the batch in hand", signal.Signals(signum).name)
        self.event.set()


class Pipeline:
    """Owns the consumer, the database connection and the reject log for the daemon's life.

    One batch is written on the writer thread while the next is consumed and judged on the
    main thread; a batch's offsets are committed, in order, once its transaction has committed.
    Only the writer thread touches the connection while a write is in flight.
    """

    def __init__(self, settings: PipelineSettings, exhibitions: dict[int, Exhibition],
                 stopping: StopFlag, health: metrics.Health | None = None) -> None:
        self.settings = settings
        self.health = health or metrics.Health(settings.HEALTH_STALL_S)
        self.kafka_outage = Outage(
            log, "kafka unreachable: {detail}; consuming pauses and resumes by itself",
            "kafka still unreachable after {seconds} s: {detail}",
            "kafka reachable again after {seconds} s")
        self.database_outage = Outage(
            log, "database unavailable ({detail}); retrying until it answers",
            "database still unavailable after {seconds} s ({detail})",
            "database connection re-established after {seconds} s")
        self.s3_outage = Outage(
            log, "exhibition refresh failed, keeping the {detail}",
            "exhibition refresh still failing after {seconds} s, keeping the {detail}",
            "exhibition refresh works again after {seconds} s")
        self.kafka_abandoned = False  # its close did not finish in time: exit without waiting
        self.exhibitions = exhibitions
        self.rules = settings.rules(
            {number: e.start_date for number, e in exhibitions.items()})
        self.stopping = stopping
        self.stats = Stats()
        self.fatal_error: KafkaError | None = None
        self.pending_offsets: dict[tuple[str, int], int] = {}
        self.reject_log = RejectLog(settings.REJECT_LOG, settings.REJECT_LOG_MAX_VALUE_BYTES)
        self.alerts = EmergencyAlerts(settings.ALERT_SNS_TOPIC_ARN, exhibitions,
                                      self.rules.museum_tz)
        self.conn: db.Connection | None = None
        self._with_database(self._check_database)
        self._with_database(lambda conn: db.upsert_exhibitions(conn, exhibitions.values()))
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        self.in_flight: tuple[JudgedBatch, Future[db.WriteResult]] | None = None
        self.consumer = Consumer(settings.kafka() | {
            "error_cb": self._on_kafka_error,
            "stats_cb": self._on_kafka_stats,
            "statistics.interval.ms": settings.STATS_INTERVAL_S * 1000,
            "logger": logging.getLogger("kafka"),
            "log_level": KAFKA_LOG_LEVEL,
            "on_commit": self._on_commit,
        })
        metrics.EXHIBITIONS.set(len(exhibitions))
        metrics.METADATA_REFRESHED.set_to_current_time()

    # ---- database, with retries while it is away
    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(db.CONNECTION_ERRORS),
            wait=wait_exponential(multiplier=0.5, max=30),
            stop=stop_when_event_set(self.stopping.event),
            sleep=self.stopping.event.wait,
            before_sleep=lambda state: self._database_failed(state.outcome.exception()),
            reraise=True,
        )

    def _database_failed(self, error: BaseException | None) -> None:
        """Before each wait for the database: the daemon is alive (retrying is its job, and the
        loop may be waiting for this write), but not ready."""
        self.health.turned()
        self.health.database_up = False
        metrics.DATABASE_UP.set(0)
        self.database_outage.failed(_one_line(error))

    def _with_database(self, work: Callable[[db.Connection], T]) -> T:
        """Run `work` on the connection, reconnecting and retrying while the database is away.

        Raises the last connection error only when a stop was asked for meanwhile.
        """
        for attempt in self._retrying():
            with attempt:
                if self.conn is None or self.conn.closed:
                    self.conn = db.connect(self.settings.database())
                try:
                    result = work(self.conn)
                except db.CONNECTION_ERRORS:
                    self.conn.close()
                    raise
                self.health.database_up = True
                metrics.DATABASE_UP.set(1)
                self.database_outage.recovered()
                return result
        raise AssertionError("unreachable")  # pragma: no cover - Retrying returns or raises

    def _check_database(self, conn: db.Connection) -> None:
        """SchemaMismatch unless the clock is the settings' (db.connect checked the schema)."""
        db.check_clock(conn, self.settings.clock())

    def _refresh_exhibitions(self) -> None:
        """Pick up exhibitions added to (or removed from) the bucket; keep the last good set."""
        try:
            exhibitions = load_metadata(self.settings)
        except METADATA_ERRORS as error:
            self.s3_outage.failed(f"{len(self.exhibitions)} loaded: {_one_line(error)}")
            return
        self.s3_outage.recovered()
        metrics.METADATA_REFRESHED.set_to_current_time()
        if exhibitions == self.exhibitions:
            return
        self._finish_in_flight()  # the connection is the writer's until then
        self._with_database(lambda conn: db.upsert_exhibitions(conn, exhibitions.values()))
        added = sorted(e.public_id for n, e in exhibitions.items() if n not in self.exhibitions)
        removed = sorted(e.public_id for n, e in self.exhibitions.items() if n not in exhibitions)
        self.exhibitions = self.alerts.exhibitions = exhibitions
        self.rules = self.settings.rules(
            {number: e.start_date for number, e in exhibitions.items()})
        metrics.EXHIBITIONS.set(len(exhibitions))
        log.info("exhibitions refreshed: %d loaded; added %s; removed %s", len(exhibitions),
                 ", ".join(added) or "none", ", ".join(removed) or "none")

    # ---- Kafka callbacks (run inside consume())
    def _on_kafka_error(self, error: KafkaError) -> None:
        """Every broker gone, or a lasting fault (authentication, TLS): one line when it starts,
        a reminder a minute. A lone connection dropping while others answer is routine."""
        if error.fatal():
            self.fatal_error = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            metrics.KAFKA_UP.set(0)
            self.kafka_outage.failed("no broker answers")
        elif error.code() != KafkaError._TRANSPORT or self.kafka_outage.ongoing:
            self.kafka_outage.failed(error.str())

    def _kafka_answered(self) -> None:
        metrics.KAFKA_UP.set(1)
        self.kafka_outage.recovered()

    def _on_kafka_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        if any(broker.get("nodeid", -1) >= 0 and broker.get("state") == "UP"
               for broker in stats.get("brokers", {}).values()):
            self._kafka_answered()
        lags = {
            (name, p["partition"]): p["consumer_lag"]
            for name, topic in stats.get("topics", {}).items()
            for p in topic.get("partitions", {}).values()
            if p.get("partition", -1) >= 0 and p.get("consumer_lag", -1) >= 0
        }
        for (topic, partition), lag in lags.items():
            if (topic, partition) in self.health.assigned:
                metrics.LAG.labels(topic, str(partition)).set(lag)
        self.stats.lag = sum(lags.values()) if lags else None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._kafka_answered()
        self.health.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned partitions %s", _partition_list(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked partitions %s", _partition_list(partitions))
        revoked = {(p.topic, p.partition) for p in partitions}
        self.health.assigned -= revoked
        for topic, partition in revoked:
            with contextlib.suppress(KeyError):  # no lag was reported for it yet
                metrics.LAG.remove(topic, str(partition))
        self._finish_in_flight()
        for key in revoked:
            self.pending_offsets.pop(key, None)

    def _commit_pending(self) -> None:
        """Commit the offsets of every batch already written, without waiting (a commit to a
        vanished broker may hang for minutes): _on_commit hears the outcome, and a failed
        commit's offsets go back to be committed with the next batch."""
        if not self.pending_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.pending_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
            self.pending_offsets.clear()
        except KafkaException as error:
            metrics.COMMIT_FAILURES.inc()
            self.kafka_outage.failed(f"offset commit failed, will retry: {error.args[0].str()}")

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is None and not failed:
            metrics.COMMITS.inc()
            return
        metrics.COMMIT_FAILURES.inc()
        reason = error if error is not None else failed[0].error
        self.kafka_outage.failed(f"offset commit failed, will retry: {reason.str()}")
        for p in failed or partitions:
            key = (p.topic, p.partition)
            if key in self.health.assigned and p.offset > self.pending_offsets.get(key, -1):
                self.pending_offsets[key] = p.offset

    # ---- the loop
    def run(self) -> int:
        log.info("consuming topic %s as group %s", self.settings.TOPIC, self.settings.GROUP)
        self.consumer.subscribe([self.settings.TOPIC], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)
        linger_s = self.settings.BATCH_LINGER_MS / 1000
        next_stats = time.monotonic() + self.settings.STATS_INTERVAL_S
        next_refresh = time.monotonic() + self.settings.METADATA_REFRESH_S
        try:
            while not self.stopping:
                self.health.turned()
                self.kafka_outage.remind()
                messages = self.consumer.consume(self.settings.BATCH_SIZE, timeout=linger_s)
                if self.fatal_error is not None:
                    log.error("kafka fatal error, exiting: %s", self.fatal_error.str())
                    return 1
                for message in messages:
                    error = message.error()
                    if error is not None:
                        log.warning("kafka: %s", error.str())
                        if error.fatal():
                            return 1
                if messages:
                    self._kafka_answered()
                    self.process(messages)
                else:
                    self._finish_in_flight()
                if time.monotonic() >= next_stats:
                    log.info("%s", self.stats.line())
                    next_stats = time.monotonic() + self.settings.STATS_INTERVAL_S
                if time.monotonic() >= next_refresh:
                    self._refresh_exhibitions()
                    next_refresh = time.monotonic() + self.settings.METADATA_REFRESH_S
        except OSError as error:
            log.error("cannot write the reject log %s (%s); stopping without committing",
                      self.settings.REJECT_LOG, error.strerror or error)
            return 1
        except psycopg2.Error as error:
            log.error("database error, stopping without committing: %s", _one_line(error))
            return 1
        finally:
            self.close()
        return 0

    def process(self, messages: Sequence[Message]) -> None:
        batch = judge_batch(messages, self.rules, datetime.now(UTC))
        logged_at = datetime.now(UTC)
        limit = self.reject_log.max_value_bytes
        self.reject_log.write([format_reject(r, logged_at, limit) for r in batch.rejects])
        rejected = [db.Rejected(r.reason, logged_at, r.topic, r.partition, r.offset)
                    for r in batch.rejects]
        self._finish_in_flight()
        if self.stopping:  # this batch is not written; it is replayed after the restart
            return
        self.in_flight = (batch, self.writer.submit(
            self._with_database,
            lambda conn: _timed_write(conn, batch.ratings, batch.requests, rejected)))

    def _finish_in_flight(self) -> None:
        """Wait for the batch being written, then count it and commit its offsets."""
        if self.in_flight is None:
            return
        batch, write = self.in_flight
        self.in_flight = None
        try:
            result = write.result()
        except db.CONNECTION_ERRORS:
            log.warning("stopping before the database came back; the batch will be replayed")
            return
        self.alerts.send(result.new_emergencies)
        self.stats.add(batch, result)
        self.pending_offsets.update(batch.next_offsets)
        self._commit_pending()

    def close(self) -> None:
        try:
            self._finish_in_flight()
        except psycopg2.Error as error:
            log.error("database error, the batch in hand is not written: %s", _one_line(error))
        self.writer.shutdown()
        log.info("%s", self.stats.line())
        closing = threading.Thread(target=self._close_consumer, name="kafka-close", daemon=True)
        closing.start()
        closing.join(KAFKA_CLOSE_BOUND_S)
        if closing.is_alive():
            self.kafka_abandoned = True
            log.warning("kafka did not confirm the last offset commit within %.0f s; those"
                        " messages will be read again after the restart and stored once",
                        KAFKA_CLOSE_BOUND_S)
        self.alerts.close()
        self.reject_log.close()
        if self.conn is not None:
            self.conn.close()
        log.info("stopped cleanly")


    def _close_consumer(self) -> None:
        """The last commit, then the close: librdkafka waits in it for the commit's answer."""
        self._commit_pending()
        self.consumer.close()


def _timed_write(conn: db.Connection, ratings: list[db.Interaction],
                 requests: list[db.Interaction], rejected: list[db.Rejected]) -> db.WriteResult:
    started = time.perf_counter()
    result = db.write_interactions(conn, ratings, requests, rejected)
    metrics.BATCH_WRITE.observe(time.perf_counter() - started)
    metrics.LAST_BATCH.set_to_current_time()
    return result


def _partition_list(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none"


def _one_line(error: BaseException | None) -> str:
    return " ".join(str(error).split()) if error else "unknown error"


def load_metadata(settings: PipelineSettings) -> dict[int, Exhibition]:
    return load_exhibitions(s3_client(), settings.S3_BUCKET)


def check(settings: PipelineSettings) -> int:
    """Reach every service once and say what was found: 0 if all answered, else 1."""

    def s3() -> str:
        return f"{len(load_metadata(settings))} exhibitions in s3://{settings.S3_BUCKET}"

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
        errors: list[KafkaError] = []  # librdkafka's first complaint names the cause
        consumer = Consumer(settings.kafka() | {
            "logger": logging.getLogger("kafka"), "log_level": KAFKA_LOG_LEVEL,
            "error_cb": errors.append})
        try:
            topic = consumer.list_topics(settings.TOPIC, timeout=15).topics[settings.TOPIC]
        except KafkaException as error:
            consumer.poll(0)  # serves the error callback: not subscribed, so no message
            cause = f" ({errors[0].str()})" if errors else ""
            raise KafkaException(f"{error.args[0].str()}{cause}") from None
        finally:
            consumer.close()
        if topic.error is not None:
            raise KafkaException(topic.error)
        return f"topic {settings.TOPIC} has {len(topic.partitions)} partitions"

    failures = 0
    for name, probe in (("s3", s3), ("database", database), ("kafka", kafka)):
        try:
            print(f"ok    {name}: {probe()}", flush=True)
        except Exception as error:  # each failure is reported; none stops the other checks
            failures += 1
            print(f"FAIL  {name}: {_one_line(error)}", flush=True)
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
        exhibitions = load_metadata(settings)
    except METADATA_ERRORS as error:
        log.error("cannot load exhibitions from s3://%s: %s", settings.S3_BUCKET, _one_line(error))
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
        pipeline = Pipeline(settings, exhibitions, stopping, health)
    except db.CONNECTION_ERRORS as error:
        log.error("cannot reach the database: %s", _one_line(error))
        return 0 if stopping else 1
    except db.SchemaMismatch as error:
        log.error("refusing to start: %s", error)
        return EXIT_SCHEMA
    log.info("database %s:%s/%s, topic %s, group %s, reject log %s", settings.DATABASE_IP,
             settings.DATABASE_PORT, settings.DATABASE_NAME, settings.TOPIC, settings.GROUP,
             settings.REJECT_LOG)
    tune_interpreter()
    code = pipeline.run()
    if pipeline.kafka_abandoned:  # a thread is still inside librdkafka: do not wait for it
        logging.shutdown()
        os._exit(code)
    return code


def tune_interpreter() -> None:
    """Two settings for a loop that makes objects fast while another thread waits on I/O.

    - The writer thread needs the GIL back after each database call; by default it may wait
      5 ms for the judging thread to let go, which idled the writer for much of a batch.
    - Start-up leaves a large heap (boto3, pydantic, librdkafka's wrapper) that never becomes
      garbage; frozen, the cyclic garbage collector stops re-scanning it every few thousand
      messages (backlog drain in alternating runs: 90,800/s mean with it, 81,700/s without).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
