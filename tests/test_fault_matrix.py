"""Issue 21's fault matrix: one scenario runner over every fault cell, on real services.

Each cell runs `python pipeline.py` (as systemd would, restarted where systemd would restart it)
against embedded PostgreSQL, librdkafka's mock cluster and moto (S3, and SNS with the Head of
Security's SQS queue subscribed), feeds it simulated kiosk presses (lmnh/local/kiosk_simulator)
with emergencies among them, injects its fault and then asserts, for that cell:

- tables exact: every delivered message (its partition and offset as the broker acknowledged
  it) stored once as validation.validate judges it, rejects in rejected_message and the reject
  log, the rollups equal to the rows;
- every emergency alerted at least once, and its delay: from the broker's acknowledgement of
  the press (an upper bound on the delay from consumption), and from its consumption, estimated
  as the latest of that acknowledgement and the last moment consumption (re)started before the
  alert arrived ("assigned partitions", "kafka reachable again" in the daemon's log); within
  5 s except where the cell's fault makes it impossible (`ack_bound_s`, documented per cell);
- no exit loop: the daemon keeps running, or where it exits by design (read-only database) a
  systemd-like restart (Restart=on-failure, RestartSec scaled down to 2 s) ends in a run that
  keeps running and stops cleanly (0);
- one log line per event: the fault's start and end lines counted, no traceback, ERROR lines
  only where an event calls for one.

Each cell prints one `MATRIX ...` line (the table for the note) and records it in
test-artifacts/fault_matrix.json. How each kill -9 is aimed is in its cell's `aim`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import boto3
import psycopg2
import pytest
from confluent_kafka import Producer
from conftest import ROOT, Broker, Database, PipelineRun, make_database, unique, wait_until
from test_alert_outbox import Security, pending_refused_alert
from test_daemon_faults import (  # noqa: F401 - proxies: a fixture
    TcpProxy,
    delay_offset_commits,
    proxies,
    proxy_for,
    sample_rules,
)
from test_judging import judging_child
from test_pipeline import assert_rollups_match, simulated_presses, table_rows

import db
from lmnh.local.embedded import MockKafka
from validation import Rating, Rejection, Request, validate

LONDON = ZoneInfo("Europe/London")
ARTIFACT = ROOT / "test-artifacts" / "fault_matrix.json"
RESTART_S = 2.0  # systemd's RestartSec (10 s in deploy/lmnh-pipeline.service), scaled down
ALERT_BOUND_S = 5.0  # the bound, from consumption
ALERT_TEXT = re.compile(r" at (\d\d:\d\d:\d\d) on (\d\d/\d\d/\d{4}) museum time\.$")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
RESUMED = re.compile(r"assigned partitions \S+\[\d+\]|kafka reachable again")
COORDINATOR_LOAD_IN_PROGRESS = 14  # a retriable error: the commit is not stored


# ------------------------------------------------------------------ presses and alerts


def emergency_at(n: int) -> bytes:
    """The n-th marker emergency of a cell: pressed at 12:00:00 + n s (London), unique."""
    at = datetime(2026, 7, 15, 12, 0, tzinfo=LONDON) + timedelta(seconds=n)
    return json.dumps({"at": at.isoformat(), "site": str(n % 6), "val": -1, "type": 1}).encode()


BLOCKER_AT = datetime(2026, 7, 15, 11, 59, 59, tzinfo=LONDON)
BLOCKER = json.dumps({"at": BLOCKER_AT.isoformat(), "site": "5", "val": 3}).encode()


def alert_key(at: datetime) -> str:
    local = at.astimezone(LONDON)
    return f"{local:%H:%M:%S} {local:%d/%m/%Y}"


class Kiosks:
    """A producer that records each press's partition and offset as the broker acknowledged it,
    and when (the ack's wall time): the oracle of what the tables must hold."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 0})
        self.delivered: dict[tuple[int, int], tuple[bytes, float]] = {}
        self.failures: list[str] = []
        self.sent = 0

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self.failures.append(str(error))
        else:
            self.delivered[(message.partition(), message.offset())] = (message.value(),
                                                                       time.time())

    def send(self, values: list[bytes], flush: bool = True) -> None:
        for value in values:
            self.producer.produce(self.topic, value, partition=self.sent % self.partitions,
                                  on_delivery=self._on_delivery)
            self.sent += 1
            self.producer.poll(0)
        if flush:
            self.flush()

    def flush(self, timeout_s: float = 90) -> None:
        assert self.producer.flush(timeout_s) == 0 and not self.failures, self.failures[:3]

    def offset_of(self, value: bytes) -> tuple[int, int]:
        return next(k for k, (v, _) in self.delivered.items() if v == value)

    def expected(self) -> tuple[set, set, set, dict[str, float]]:
        """Ratings, requests, rejects as validate judges them, and each emergency's alert key
        with its latest acknowledgement."""
        rules, now = sample_rules(), datetime.now(UTC)
        ratings, requests, rejects, emergencies = set(), set(), set(), {}
        for (partition, offset), (value, acked) in self.delivered.items():
            verdict = validate(value, rules, now)
            if isinstance(verdict, Rating):
                ratings.add((partition, offset, verdict.site, verdict.value, verdict.at))
            elif isinstance(verdict, Request):
                requests.add((partition, offset, verdict.site, verdict.value, verdict.at))
                if verdict.value == db.EMERGENCY:
                    key = alert_key(verdict.at)
                    emergencies[key] = max(acked, emergencies.get(key, 0.0))
            else:
                assert isinstance(verdict, Rejection)
                rejects.add((partition, offset))
        return ratings, requests, rejects, emergencies


class AlertWatcher:
    """The Head of Security's queue, read continuously: when each alert first arrived."""

    def __init__(self, endpoint: str, queue_url: str) -> None:
        self.sqs = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="eu-west-2").client("sqs", endpoint_url=endpoint)
        self.queue_url = queue_url
        self.first: dict[str, float] = {}
        self.count: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1)
            now = time.time()
            for message in got.get("Messages", []):
                match = ALERT_TEXT.search(json.loads(message["Body"])["Message"])
                if match:
                    key = f"{match[1]} {match[2]}"
                    self.first.setdefault(key, now)
                    self.count[key] += 1
                self.sqs.delete_message(QueueUrl=self.queue_url,
                                        ReceiptHandle=message["ReceiptHandle"])

    def has(self, value: bytes) -> bool:
        return alert_key(datetime.fromisoformat(json.loads(value)["at"])) in self.first

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------ the daemon as systemd runs it


class Service:
    """`python pipeline.py` supervised: with `restart_s`, a run that exits other than 0, 2 or 3
    is started again `restart_s` later (Restart=on-failure, RestartPreventExitStatus=2 3).
    `exits` holds every exit the test did not ask for (not its kill -9 or SIGTERM)."""

    def __init__(self, run_pipeline: Callable[..., PipelineRun], env: dict[str, str],
                 name: str, restart_s: float | None = None) -> None:
        self._start_run, self.env, self.name, self.restart_s = run_pipeline, env, name, restart_s
        self.runs: list[PipelineRun] = []
        self.exits: list[tuple[float, int]] = []
        self._handled: set[int] = set()
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self.start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def start(self) -> PipelineRun:
        with self._lock:
            run = self._start_run(self.env, f"{self.name}-{len(self.runs)}")
            self.runs.append(run)
            return run

    @property
    def run(self) -> PipelineRun:
        return self.runs[-1]

    def alive(self) -> bool:
        return self.run.process.poll() is None

    def _watch(self) -> None:
        while not self._closing.wait(0.1):
            with self._lock:
                run = self.runs[-1]
                code = run.process.poll()
                if code is None or id(run) in self._handled:
                    continue
                self._handled.add(id(run))
                self.exits.append((time.time(), code))
            restart = self.restart_s is not None and code not in (0, 2, 3)
            if restart and not self._closing.wait(self.restart_s):
                self.start()

    def kill9(self) -> None:
        """kill -9 the daemon and its judging child, as systemd's kill of the unit's cgroup."""
        with self._lock:
            run = self.run
            self._handled.add(id(run))
            with contextlib.suppress(AssertionError, FileNotFoundError, ProcessLookupError):
                os.kill(judging_child(run.process.pid), signal.SIGKILL)
            run.process.kill()
            run.process.wait()

    def stop(self) -> int:
        self._closing.set()
        self._thread.join(5)
        with self._lock:
            self._handled.add(id(self.run))
            return self.run.stop(timeout=60)

    def text(self) -> str:
        return "".join(run.text() for run in self.runs)

    def resumed_at(self) -> list[float]:
        """When consumption (re)started, by the log: each assignment, each broker return."""
        found = []
        for line in self.text().splitlines():
            stamp = LOG_TIME.match(line)
            if stamp and RESUMED.search(line):
                found.append(datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp())
        return found


def stopped_judging(run: PipelineRun) -> int:
    """SIGSTOP the judging child; its pid."""
    child = judging_child(run.process.pid)
    os.kill(child, signal.SIGSTOP)
    return child


def unread_bytes(pid: int) -> int:
    """Bytes written to the judging child's stdin and not read by it: a batch handed over."""
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    finally:
        os.close(fd)


def pipeline_backends(database: Database, wait_event: str | None = None) -> int:
    where = " AND wait_event = %s" if wait_event else ""
    return int(database.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lmnh-pipeline'"
        f" AND datname = %s{where}", (database.name, *([wait_event] if wait_event else []))))


def terminate_backends(database: Database) -> None:
    database.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE application_name = 'lmnh-pipeline' AND datname = %s",
                   (database.name,))


def sleep_trigger(database: Database, table: str, at: datetime, seconds: int = 20) -> None:
    """A statement inserting a row pressed `at` into `table` sleeps `seconds` in its trigger,
    inside the batch's transaction (under the daemon's 30 s statement timeout)."""
    database.execute(f"""
        CREATE FUNCTION test_matrix_sleep() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_rows WHERE event_at = '{at.isoformat()}') THEN
                PERFORM pg_sleep({seconds});
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_matrix_sleep AFTER INSERT ON {table}
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
            EXECUTE FUNCTION test_matrix_sleep();
    """)


def drop_sleep_trigger(database: Database, table: str) -> None:
    database.execute(f"DROP TRIGGER test_matrix_sleep ON {table};"
                     " DROP FUNCTION test_matrix_sleep()")


def set_read_only(database: Database, on: bool) -> None:
    """The 'failover' case: new sessions read-only (ALTER DATABASE, from the admin database: it
    is refused in a read-only session), the pipeline's sessions ended."""
    conn = psycopg2.connect(database.server.url(database.server.admin_database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database.name}" SET default_transaction_read_only'
                        f" = {'on' if on else 'off'}")
    finally:
        conn.close()
    if on:
        terminate_backends(database)


def everything_committed(broker: Broker, kiosks: Kiosks, group: str) -> bool:
    return broker.committed(kiosks.topic, group) == broker.end_offsets(kiosks.topic)


# ------------------------------------------------------------------ a cell's outcome


@dataclass
class Cell:
    """What a cell hands the common checks."""

    services: list[Service]
    tables: list[tuple[str, Kiosks]]  # each source with the presses delivered to it
    ack_bound_s: float = ALERT_BOUND_S  # the documented bound, from the broker's ack
    consumed_bound_s: float = ALERT_BOUND_S
    log_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # regex: (min, max)
    errors: tuple[int, int] = (0, 0)  # ERROR lines, min and max
    allowed_exits: int = 0  # unasked exits allowed (each restarted), before a clean run
    aim: str = "-"
    codes: list[int] = field(default_factory=list)  # the final SIGTERMs' exit codes
    extra_rows: int = 0  # rows of other sources the cell put there itself
    notes: list[str] = field(default_factory=list)


@dataclass
class Ctx:
    broker: Broker
    database: Database
    env: dict[str, str]
    run_pipeline: Callable[..., PipelineRun]
    security: Security
    moto_s3: object
    proxies: list[TcpProxy]
    request: pytest.FixtureRequest
    watcher: AlertWatcher
    marks: int = 0

    def emergency(self) -> bytes:
        self.marks += 1
        return emergency_at(self.marks)

    def kiosks(self, partitions: int = 2, broker: Broker | None = None) -> Kiosks:
        broker = broker or self.broker
        broker.create_topic(self.env["TOPIC"], partitions)
        return Kiosks(broker.bootstrap, self.env["TOPIC"], partitions)

    def traffic(self, count: int, seed: int, emergencies: int = 1) -> list[bytes]:
        values = [press.value for press in simulated_presses(count, seed=seed)]
        for n in range(emergencies):
            values.insert((n + 1) * len(values) // (emergencies + 1), self.emergency())
        return values

    def alerted(self, values: list[bytes], timeout: float = 10) -> None:
        wait_until(lambda: all(self.watcher.has(v) for v in values), timeout, "the alerts")


def committed_all(broker: Broker, kiosks: Kiosks, group: str, what: str,
                  timeout: float = 90) -> None:
    wait_until(lambda: everything_committed(broker, kiosks, group), timeout, what, 0.2)


# ------------------------------------------------------------------ the cells

KILL_LOG = {r"Traceback": (0, 0)}


def kill_cell(ctx: Ctx, point: int) -> Cell:
    """kill -9 at one point of a batch's life, then a restart (as systemd's Restart= would)."""
    own = MockKafka() if point == 4 else None  # point 4 delays commits: a broker of its own
    broker = Broker(own.bootstrap, own) if own else ctx.broker
    env = ctx.env | {"BOOTSTRAP_SERVERS": broker.bootstrap}
    kiosks = ctx.kiosks(2, broker)
    kiosks.send(ctx.traffic(300, seed=point, emergencies=2))
    service = Service(ctx.run_pipeline, env, f"kill{point}")
    committed_all(broker, kiosks, env["GROUP"], "the first presses stored")
    marker = ctx.emergency()
    ack_bound = ALERT_BOUND_S
    if point == 1:
        child = stopped_judging(service.run)
        kiosks.send([marker])
        wait_until(lambda: unread_bytes(child) > 0, 20, "the batch handed to judging", 0.01)
        time.sleep(0.3)
        assert not ctx.watcher.has(marker), "alerted though never judged"
        aim = ("judging child SIGSTOPped; kill once /proc/<child>/fd/0 holds unread bytes"
               " (FIONREAD): consumed, handed over, not judged, no alert yet - certain")
        ack_bound = 45.0  # its alert waits for the restart: session timeout + start-up
    elif point == 2:
        sleep_trigger(ctx.database, "rating_interaction", BLOCKER_AT)
        kiosks.send([BLOCKER])
        wait_until(lambda: pipeline_backends(ctx.database, "PgSleep") == 1, 20,
                   "the writer held in the batch before", 0.02)
        kiosks.send([marker])
        ctx.alerted([marker])
        assert pipeline_backends(ctx.database, "PgSleep") == 1
        aim = ("the writer held in the batch before (pg_sleep trigger, pg_stat_activity"
               " wait_event=PgSleep); kill once the marker's alert arrived: judged and alerted,"
               " its write not begun (one writer, in order) - certain")
    elif point == 3:
        sleep_trigger(ctx.database, "request_interaction",
                      datetime.fromisoformat(json.loads(marker)["at"]))
        kiosks.send([marker])
        wait_until(lambda: pipeline_backends(ctx.database, "PgSleep") == 1, 20,
                   "the marker's write inside its transaction", 0.02)
        aim = ("pg_sleep in a trigger on the marker's own INSERT; kill while pg_stat_activity"
               " shows the daemon's backend in it (transaction open) - certain")
    elif point == 4:
        assert own is not None
        delay_offset_commits(own, 1, COORDINATOR_LOAD_IN_PROGRESS, 5000)
        stored = ("SELECT count(*) FROM request_interaction WHERE source = %s"
                  " AND event_at = %s")
        at = datetime.fromisoformat(json.loads(marker)["at"])
        kiosks.send([marker])
        wait_until(lambda: ctx.database.scalar(stored, (env["TOPIC"], at)) == 1, 20,
                   "the marker's row committed", 0.005)
        aim = ("the broker answers the next OffsetCommit after 5 s with a retriable error"
               " (mock API); kill as soon as the marker's row is visible (committed); checked"
               " after the kill: committed offset not past the marker - certain")
    else:
        kiosks.send([marker])
        partition, offset = kiosks.offset_of(marker)
        wait_until(lambda: broker.committed(kiosks.topic, env["GROUP"])[partition] > offset,
                   20, "the marker's offset committed", 0.02)
        aim = "kill once the broker reports the marker's offset committed - certain"
    service.kill9()
    if point == 4:
        partition, offset = kiosks.offset_of(marker)
        committed = broker.committed(kiosks.topic, env["GROUP"])[partition]
        assert committed <= offset, f"the kill landed after the offset commit ({committed})"
    if point in (2, 3):
        terminate_backends(ctx.database)  # its connection's transaction, orphaned by the kill
        drop_sleep_trigger(ctx.database, "rating_interaction" if point == 2 else
                           "request_interaction")
    service.start()
    wait_until(lambda: "assigned partitions" in service.run.text(), 60, "the restart assigned")
    kiosks.send(ctx.traffic(100, seed=10 + point))
    committed_all(broker, kiosks, env["GROUP"], "everything stored after the restart")
    return Cell([service], [(env["TOPIC"], kiosks)], ack_bound_s=ack_bound,
                log_counts=KILL_LOG, aim=aim, codes=[service.stop()])


def database_away(ctx: Ctx) -> Cell:
    server = ctx.request.getfixturevalue("private_pg_server")
    ctx.database = database = make_database(server)
    env = ctx.env | database.env()
    kiosks = ctx.kiosks()
    kiosks.send(ctx.traffic(200, seed=21))
    service = Service(ctx.run_pipeline, env, "db-away")
    committed_all(ctx.broker, kiosks, env["GROUP"], "the first presses stored")
    server.embedded.stop("immediate")
    stopped = time.monotonic()
    time.sleep(1)
    kiosks.send(ctx.traffic(200, seed=22))
    time.sleep(15)
    kiosks.send(ctx.traffic(100, seed=23))
    while time.monotonic() < stopped + 30:
        assert service.alive(), service.text()[-2000:]
        time.sleep(0.5)
    server.embedded.start()
    committed_all(ctx.broker, kiosks, env["GROUP"], "everything stored after the outage")
    kiosks.send(ctx.traffic(50, seed=24))
    committed_all(ctx.broker, kiosks, env["GROUP"], "the presses after the outage")
    return Cell([service], [(env["TOPIC"], kiosks)], log_counts={
        r"database unavailable": (1, 1), r"database connection re-established": (1, 1),
        r"still unavailable": (0, 0)}, codes=[service.stop()])


def read_only(ctx: Ctx, seconds: float) -> Cell:
    env = ctx.env
    kiosks = ctx.kiosks()
    kiosks.send(ctx.traffic(200, seed=31))
    service = Service(ctx.run_pipeline, env, f"ro{seconds:g}", restart_s=RESTART_S)
    committed_all(ctx.broker, kiosks, env["GROUP"], "the first presses stored")
    set_read_only(ctx.database, True)
    began = time.monotonic()
    kiosks.send(ctx.traffic(100, seed=32))
    time.sleep(max(0.0, began + seconds - time.monotonic()))
    set_read_only(ctx.database, False)
    writable = time.time()
    committed_all(ctx.broker, kiosks, env["GROUP"], "everything stored once writable", 120)
    time.sleep(3)
    late = [code for at, code in service.exits if at > writable + RESTART_S + 1]
    assert service.alive() and not late, f"exits once writable again: {service.exits}"
    kiosks.send(ctx.traffic(50, seed=33))
    committed_all(ctx.broker, kiosks, env["GROUP"], "the presses after the failover")
    # A session that cannot write is retried like a lost connection (a new one reaches the
    # writable instance): no exit, one line when it starts and one when it ends.
    return Cell([service], [(env["TOPIC"], kiosks)], allowed_exits=0,
                log_counts={r"Traceback": (0, 0), r"database unavailable": (1, 1),
                            r"database connection re-established": (1, 1)},
                codes=[service.stop()])


def broker_away(ctx: Ctx) -> Cell:
    mock = MockKafka()
    broker = Broker(mock.bootstrap, mock)
    env = ctx.env | {"BOOTSTRAP_SERVERS": mock.bootstrap}
    kiosks = ctx.kiosks(2, broker)
    kiosks.send(ctx.traffic(200, seed=41))
    service = Service(ctx.run_pipeline, env, "broker-away")
    committed_all(broker, kiosks, env["GROUP"], "the first presses stored")
    mock.take_down()
    down = time.monotonic()
    kiosks.send(ctx.traffic(200, seed=42, emergencies=2), flush=False)
    while time.monotonic() < down + 30:
        assert service.alive(), service.text()[-2000:]
        kiosks.producer.poll(0.5)
    mock.bring_up()
    kiosks.flush()
    committed_all(broker, kiosks, env["GROUP"], "everything stored after the outage")
    kiosks.send(ctx.traffic(50, seed=43))
    committed_all(broker, kiosks, env["GROUP"], "the presses after the outage")
    # The presses wait in the kiosks' producer; the broker acknowledges them when it is back,
    # and the consumer reconnects on its own backoff (reconnect.backoff.max.ms, 10 s).
    return Cell([service], [(env["TOPIC"], kiosks)], ack_bound_s=15.0, log_counts={
        r"kafka unreachable": (1, 1), r"kafka reachable again": (1, 1),
        r"still unreachable": (0, 0)}, codes=[service.stop()])


def s3_away(ctx: Ctx) -> Cell:
    host, port = ctx.moto_s3.endpoint.removeprefix("http://").split(":")
    proxy = proxy_for(ctx.proxies, host, int(port))
    env = ctx.env | {"METADATA_REFRESH_S": "2",
                     "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.port}",
                     "AWS_ENDPOINT_URL_SNS": ctx.moto_s3.endpoint}
    kiosks = ctx.kiosks()
    kiosks.send(ctx.traffic(200, seed=51))
    service = Service(ctx.run_pipeline, env, "s3-away")
    committed_all(ctx.broker, kiosks, env["GROUP"], "the first presses stored")
    wait_until(lambda: proxy.accepted >= 2, 30, "a refresh through the proxy")
    proxy.set_mode("hang")
    wait_until(lambda: proxy.swallowed > 0, 30, "a refresh hanging on S3")
    during = ctx.traffic(100, seed=52, emergencies=2)
    kiosks.send(during)
    committed_all(ctx.broker, kiosks, env["GROUP"], "presses stored during the hung refresh")
    time.sleep(3)
    proxy.set_mode("refuse")  # the hung read ends as S3 goes away: the outage is logged
    wait_until(lambda: "exhibition refresh failed" in service.text(), 60, "the refresh failing")
    proxy.set_mode("forward")
    wait_until(lambda: "exhibition refresh works again" in service.text(), 60, "S3 back")
    kiosks.send(ctx.traffic(50, seed=53))
    committed_all(ctx.broker, kiosks, env["GROUP"], "the presses after the outage")
    return Cell([service], [(env["TOPIC"], kiosks)], log_counts={
        r"exhibition refresh failed": (1, 1), r"exhibition refresh works again": (1, 1),
        r"still failing": (0, 0)}, codes=[service.stop()],
        notes=["S3 hung (hang mode) then refused: the hang logs nothing until boto's 60 s"
               " read timeout; the refusal ends it"])


def sns_refuses_one(ctx: Ctx) -> Cell:
    database = ctx.database
    pending_refused_alert(database)
    env = ctx.env
    kiosks = ctx.kiosks()
    kiosks.send(ctx.traffic(200, seed=61, emergencies=2))
    service = Service(ctx.run_pipeline, env, "sns-refuses")
    committed_all(ctx.broker, kiosks, env["GROUP"], "the first presses stored")
    kiosks.send(ctx.traffic(100, seed=62, emergencies=2))
    committed_all(ctx.broker, kiosks, env["GROUP"], "the later presses stored")
    failed = "SELECT failed_at IS NOT NULL FROM emergency_alert WHERE source = 'earlier'"
    wait_until(lambda: database.scalar(failed), 30, "the refused alert recorded as failed")
    wait_until(lambda: database.scalar("SELECT count(*) FROM v_request WHERE alert_pending")
               == 0, 30, "every other alert recorded as sent")
    return Cell([service], [(env["TOPIC"], kiosks)], errors=(1, 1), extra_rows=1,
                log_counts={r"alert NOT sent": (1, 1), r"Traceback": (0, 0)},
                codes=[service.stop()],
                notes=["the refused alert (150-character subject) is given up by design"])


def rebalance_database_away(ctx: Ctx) -> Cell:
    proxy = proxy_for(ctx.proxies, ctx.database.server.host, ctx.database.server.port)
    # The fixture's 6 s session: librdkafka's mock cluster ends a classic-protocol rebalance
    # only once a session timeout has passed (plain consumers, database healthy: 40 s with a
    # 45 s session), where a real broker ends it once every member has rejoined.
    env = ctx.env | {"BATCH_SIZE": "20"}
    env_a = env | {"DATABASE_IP": "127.0.0.1", "DATABASE_PORT": str(proxy.port),
                   "GROUP_INSTANCE_ID": unique("instance-a")}
    env_b = env | {"GROUP_INSTANCE_ID": unique("instance-b")}
    kiosks = ctx.kiosks(4)
    kiosks.send(ctx.traffic(200, seed=71))
    a = Service(ctx.run_pipeline, env_a, "a")
    committed_all(ctx.broker, kiosks, env["GROUP"], "A storing the first presses")
    proxy.set_mode("refuse")
    kiosks.send(ctx.traffic(100, seed=72))
    wait_until(lambda: "database unavailable" in a.text(), 60, "A finding the database away")
    b = Service(ctx.run_pipeline, env_b, "b")
    wait_until(lambda: re.search(r"assigned partitions \S+\[\d+\]", b.text()) is not None
               or "revoked partitions" in a.text(), 60, "the rebalance under way", 0.02)
    kiosks.send([ctx.emergency() for _ in range(4)])  # one on each partition
    kiosks.send(ctx.traffic(100, seed=73))
    time.sleep(5)
    proxy.set_mode("forward")
    committed_all(ctx.broker, kiosks, env["GROUP"], "everything stored", 120)
    # The group is rebalancing when the emergencies are pressed: no member consumes until it
    # ends, on the mock some 6-9 s later (above); from consumption the bound is the usual 5 s.
    revoked = a.text().find("revoked partitions")
    assert revoked >= 0 and "assigned partitions" in a.text()[revoked:], \
        "A took no part in the new assignment: its revoke waited for the database"
    return Cell([a, b], [(env["TOPIC"], kiosks)], ack_bound_s=20.0, consumed_bound_s=5.0,
                log_counts={r"database unavailable": (1, 1),
                            r"database connection re-established": (1, 1)},
                codes=[a.stop(), b.stop()])


def topic_recreated(ctx: Ctx) -> Cell:
    env = ctx.env
    old = ctx.kiosks(2)
    old.send(ctx.traffic(200, seed=81, emergencies=2))
    first = Service(ctx.run_pipeline, env, "old-topic")
    committed_all(ctx.broker, old, env["GROUP"], "the old topic stored")
    codes = [first.stop()]
    mock = MockKafka()
    recreated = Broker(mock.bootstrap, mock)
    new = ctx.kiosks(2, recreated)
    second_env = env | {"BOOTSTRAP_SERVERS": mock.bootstrap}
    second = Service(ctx.run_pipeline, second_env, "new-topic")
    wait_until(lambda: "assigned partitions" in second.text(), 60, "the new topic assigned")
    new.send(ctx.traffic(150, seed=82, emergencies=2))
    committed_all(recreated, new, env["GROUP"], "the new topic stored")
    codes.append(second.stop())
    return Cell([first, second], [(env["TOPIC"], old), (f"{env['TOPIC']}~2", new)],
                log_counts={r"was recreated": (1, 1)}, codes=codes)


CELLS: dict[str, Callable[[Ctx], Cell]] = {
    "kill9_1_consumed_not_judged": lambda ctx: kill_cell(ctx, 1),
    "kill9_2_judged_not_written": lambda ctx: kill_cell(ctx, 2),
    "kill9_3_in_write_transaction": lambda ctx: kill_cell(ctx, 3),
    "kill9_4_db_committed_offset_not": lambda ctx: kill_cell(ctx, 4),
    "kill9_5_offset_committed": lambda ctx: kill_cell(ctx, 5),
    "database_away_30s": database_away,
    "database_read_only_1s": lambda ctx: read_only(ctx, 1),
    "database_read_only_10s": lambda ctx: read_only(ctx, 10),
    "broker_away_30s": broker_away,
    "s3_away_during_refresh": s3_away,
    "sns_refuses_one_for_good": sns_refuses_one,
    "rebalance_during_database_outage": rebalance_database_away,
    "topic_recreated": topic_recreated,
}


# ------------------------------------------------------------------ the common checks


def exact_problems(database: Database, cell: Cell, reject_log: Path) -> list[str]:
    problems = []
    logged = {line.split("\t")[2] for line in reject_log.read_text(encoding="utf-8")
              .splitlines()} if reject_log.exists() else set()
    total = 0
    for source, kiosks in cell.tables:
        want_ratings, want_requests, want_rejects, _ = kiosks.expected()
        total += len(want_ratings) + len(want_requests)
        ratings, requests = table_rows(database, source)
        for name, got, want in (("ratings", ratings, want_ratings),
                                ("requests", requests, want_requests)):
            if got != want:
                problems.append(f"{source} {name}: {len(want - got)} missing,"
                                f" {len(got - want)} unexpected")
        rejected = database.query("SELECT source_partition, source_offset FROM rejected_message"
                                  " WHERE source = %s", (source,))
        if len(rejected) != len(want_rejects) or set(rejected) != want_rejects:
            problems.append(f"{source} rejects: {len(rejected)} stored, {len(want_rejects)}"
                            " expected")
        mine = {item for item in logged if item.rsplit("/", 2)[0] == source}
        if mine != {f"{source}/{p}/{o}" for p, o in want_rejects}:
            problems.append(f"{source} reject log: {len(mine)} logged, {len(want_rejects)}"
                            " expected")
    rows = int(database.scalar("SELECT (SELECT count(*) FROM rating_interaction)"
                               " + (SELECT count(*) FROM request_interaction)"))
    if rows != total + cell.extra_rows:
        problems.append(f"{rows} rows stored, {total + cell.extra_rows} expected")
    try:
        assert_rollups_match(database)
    except AssertionError:
        problems.append("rollups differ from the rows")
    return problems


def record(cell_name: str, summary: dict) -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    table = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    table[cell_name] = summary
    ARTIFACT.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_fault_matrix(cell_name: str, broker: Broker, database: Database,
                      pipeline_env: dict[str, str], run_pipeline, moto_s3,
                      proxies: list[TcpProxy],  # noqa: F811 - the fixture
                      request: pytest.FixtureRequest) -> None:
    security = Security(moto_s3.endpoint)
    watcher = AlertWatcher(moto_s3.endpoint, security.queue_url)
    env = pipeline_env | {"ALERT_SNS_TOPIC_ARN": security.topic_arn}
    ctx = Ctx(broker, database, env, run_pipeline, security, moto_s3, proxies, request, watcher)
    started = time.monotonic()
    try:
        cell = CELLS[cell_name](ctx)
        emergencies: dict[str, float] = {}
        for _, kiosks in cell.tables:
            emergencies |= kiosks.expected()[3]
        with contextlib.suppress(AssertionError):
            wait_until(lambda: set(emergencies) <= set(watcher.first), 30, "every alert")
    finally:
        watcher.close()
    failures = []
    exact = exact_problems(ctx.database, cell, Path(env["REJECT_LOG"]))
    failures += exact

    resumed = sorted(t for service in cell.services for t in service.resumed_at())
    # A press made before the cell's daemon first consumed waits for it by the test's design,
    # not the fault's: its delay counts from then.
    began = resumed[0] if resumed else 0.0
    from_ack, from_consumed, missing = [], [], []
    for key, acked in emergencies.items():
        arrived = watcher.first.get(key)
        if arrived is None:
            missing.append(key)
            continue
        consumed = max([acked, *(t for t in resumed if acked <= t <= arrived)])
        from_ack.append(max(0.0, arrived - max(acked, began)))
        from_consumed.append(max(0.0, arrived - consumed))
    worst_ack = max(from_ack, default=0.0)
    worst_consumed = max(from_consumed, default=0.0)
    if missing:
        failures.append(f"emergencies never alerted: {missing}")
    if worst_ack > cell.ack_bound_s:
        failures.append(f"worst alert {worst_ack:.1f} s after the ack > {cell.ack_bound_s} s")
    if worst_consumed > cell.consumed_bound_s:
        failures.append(f"worst alert {worst_consumed:.1f} s after consumption"
                        f" > {cell.consumed_bound_s} s")

    text = "".join(service.text() for service in cell.services)
    exits = [code for service in cell.services for _, code in service.exits]
    if len(exits) > cell.allowed_exits:
        failures.append(f"exits {exits}, at most {cell.allowed_exits} allowed")
    if any(code != 0 for code in cell.codes):
        failures.append(f"final SIGTERM exit codes {cell.codes}")
    counts = {pattern: len(re.findall(pattern, text)) for pattern in cell.log_counts}
    counts["Traceback"] = text.count("Traceback")
    for pattern, (low, high) in (cell.log_counts | {"Traceback": (0, 0)}).items():
        if not low <= counts[pattern] <= high:
            failures.append(f"log: {counts[pattern]} lines match {pattern!r},"
                            f" expected {low}..{high}")
    errors = [line for line in text.splitlines() if " ERROR " in line]
    if not cell.errors[0] <= len(errors) <= cell.errors[1]:
        failures.append(f"ERROR lines {[line[:200] for line in errors]}")

    summary = {
        "exact": not exact, "alerts": f"{len(from_ack)}/{len(emergencies)}",
        "worst_alert_from_ack_s": round(worst_ack, 2),
        "worst_alert_from_consumed_s": round(worst_consumed, 2),
        "ack_bound_s": cell.ack_bound_s, "exits": exits, "final_codes": cell.codes,
        "log_counts": counts, "error_lines": len(errors), "aim": cell.aim,
        "notes": cell.notes, "seconds": round(time.monotonic() - started, 1),
        "result": "pass" if not failures else "FAIL: " + "; ".join(failures),
    }
    record(cell_name, summary)
    print(f"\nMATRIX {cell_name}: exact={'yes' if not exact else 'NO'}"
          f" alerts={summary['alerts']} worst_from_ack={worst_ack:.1f}s"
          f" worst_from_consumed={worst_consumed:.1f}s (bound {cell.ack_bound_s:g}s)"
          f" exits={exits} codes={cell.codes} {summary['seconds']}s"
          f" result={summary['result']}", flush=True)
    assert not failures, failures
