"""Real services for the tests: PostgreSQL, a Kafka-protocol broker and an S3 API.

By default they are embedded (see embedded.py); TEST_DATABASE_URL and TEST_BOOTSTRAP_SERVERS
point the suite at other servers instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg2
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import db
from lmnh.local.embedded import EmbeddedPostgres, MockKafka, MotoS3, free_port, topic_partitions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CAPTURE = SHARED / "data" / "stream" / "lmnh_stream_2026-02-24.txt"
SHARED_S3 = SHARED / "data" / "s3"
SAMPLE_METADATA = ROOT / "sample_metadata"
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


@pytest.fixture(scope="session")
def shared_s3_files() -> dict[str, bytes]:
    if not SHARED_S3.is_dir():
        pytest.skip(f"{SHARED_S3} is absent: the museum's real bucket files are not here")
    return {path.name: path.read_bytes() for path in sorted(SHARED_S3.iterdir())}


@pytest.fixture(scope="session")
def capture_lines() -> list[bytes]:
    """The real capture's message values, exactly as received (one per line)."""
    if not CAPTURE.is_file():
        pytest.skip(f"{CAPTURE} is absent: the real stream capture is not here")
    return CAPTURE.read_bytes().split(b"\n")[:-1]


# ------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    admin_database: str
    embedded: EmbeddedPostgres | None

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def env(self, database: str) -> dict[str, str]:
        return {
            "DATABASE_IP": self.host,
            "DATABASE_PORT": str(self.port),
            "DATABASE_NAME": database,
            "DATABASE_USERNAME": self.user,
            "DATABASE_PASSWORD": self.password,
            "DATABASE_SSLMODE": "prefer" if self.embedded is None else "disable",
        }

    def create_database(self, name: str) -> None:
        conn = psycopg2.connect(self.url(self.admin_database))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()


def _start_embedded(data_dir: Path) -> PgServer:
    server = EmbeddedPostgres(data_dir, free_port()).start()
    return PgServer("127.0.0.1", server.port, "postgres", "", "postgres", server)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        yield PgServer(parts.hostname or "127.0.0.1", parts.port or 5432,
                       unquote(parts.username or "postgres"), unquote(parts.password or ""),
                       parts.path.lstrip("/") or "postgres", None)
        return
    server = _start_embedded(tmp_path_factory.mktemp("pg") / "data")
    yield server
    assert server.embedded is not None
    server.embedded.remove()


@pytest.fixture
def private_pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A server of this test's own, which the test may stop and start."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("stopping the server needs the embedded PostgreSQL, not TEST_DATABASE_URL")
    server = _start_embedded(tmp_path_factory.mktemp("pg_private") / "data")
    yield server
    assert server.embedded is not None
    server.embedded.remove("immediate")


def apply_schema(url: str) -> None:
    conn = psycopg2.connect(url)
    try:
        db.apply_schema(conn)
    finally:
        conn.close()


@dataclass(frozen=True)
class Database:
    server: PgServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def env(self) -> dict[str, str]:
        return self.server.env(self.name)

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()

    def execute(self, statement: str, params: tuple = ()) -> None:
        """Run and commit a statement that returns nothing."""
        conn = psycopg2.connect(self.url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement, params)
        finally:
            conn.close()

    def scalar(self, statement: str, params: tuple = ()) -> object:
        return self.query(statement, params)[0][0]


def make_database(server: PgServer) -> Database:
    database = Database(server, unique("lmnh_test"))
    server.create_database(database.name)
    apply_schema(database.url)
    return database


@pytest.fixture
def database(pg_server: PgServer) -> Database:
    """A new database with schema.sql applied, for this test alone."""
    return make_database(pg_server)


# ------------------------------------------------------------------ Kafka


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    mock: MockKafka | None = None  # None with TEST_BOOTSTRAP_SERVERS

    def create_topic(self, topic: str, partitions: int) -> None:
        if self.mock is not None:
            self.mock.create_topic(topic, partitions)
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, partitions)])[topic].result(timeout=30)

    def producer(self, linger_ms: int = 5) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": linger_ms})

    def partitions(self, topic: str) -> int:
        """Partition count, creating the topic (auto-create) on first use."""
        return topic_partitions(self.bootstrap, topic)

    def produce(self, topic: str, values: list[bytes | None]) -> None:
        """Produce values spread round-robin over the partitions, and wait for every ack."""
        count = self.partitions(topic)
        producer = self.producer()
        failures: list[str] = []

        def on_delivery(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        for index, value in enumerate(values):
            while True:
                try:
                    producer.produce(topic, value, partition=index % count, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(60) == 0
        assert not failures, failures[:3]

    def committed(self, topic: str, group: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            partitions = [TopicPartition(topic, p) for p in range(self.partitions(topic))]
            return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": unique("probe")})
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(self.partitions(topic))}
        finally:
            consumer.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    bootstrap = os.environ.get("TEST_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield Broker(bootstrap)
        return
    mock = MockKafka()
    yield Broker(mock.bootstrap, mock)


# ------------------------------------------------------------------ S3


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


def _new_bucket(moto_s3: MotoS3, files: dict[str, bytes]) -> str:
    name = unique("lmnh-bucket").replace("_", "-")
    client = moto_s3.client()
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    for key, body in files.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    """A bucket of the demo's sample exhibition files (sites 0-5 and a decoy): the repository's
    own, so a test that needs exhibitions but not the museum's data runs on a fresh clone."""
    return _new_bucket(moto_s3, {path.name: path.read_bytes()
                                 for path in sorted(SAMPLE_METADATA.iterdir())})


@pytest.fixture
def real_bucket(moto_s3: MotoS3, shared_s3_files: dict[str, bytes]) -> str:
    """A bucket holding every file of ../shared/data/s3, as the museum's bucket does."""
    return _new_bucket(moto_s3, shared_s3_files)


# ------------------------------------------------------------------ the pipeline process


@dataclass
class PipelineRun:
    """`python pipeline.py` as a subprocess, configured by environment."""

    env: dict[str, str]
    log_path: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    def start(self) -> PipelineRun:
        self.output = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), *self.args],
                                        cwd=ROOT,
                                        env=self.env, stdout=self.output,
                                        stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.output.close()
        return code

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def pipeline_env(database: Database, broker: Broker, moto_s3: MotoS3, bucket: str,
                 tmp_path: Path) -> dict[str, str]:
    """Everything `python pipeline.py` needs, pointing at this test's services."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    return keep | database.env() | moto_s3.env(bucket) | {
        "BOOTSTRAP_SERVERS": broker.bootstrap,
        "SECURITY_PROTOCOL": "PLAINTEXT",
        "TOPIC": unique("lmnh"),
        "GROUP": unique("pipeline"),
        "AUTO_OFFSET": "earliest",
        "REJECT_LOG": str(tmp_path / "erroneous_data.log"),
        "BATCH_LINGER_MS": "50",
        "STATS_INTERVAL_S": "1",
        # A process killed with -9 holds its partitions until its session times out.
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        # Dynamic membership, so concurrent and successive runs of a test never fence each
        # other; the static-membership tests set their own.
        "GROUP_INSTANCE_ID": "off",
    }


@pytest.fixture
def run_pipeline(tmp_path: Path) -> Iterator[Callable[..., PipelineRun]]:
    runs: list[PipelineRun] = []

    def start(env: dict[str, str], name: str = "pipeline", *args: str) -> PipelineRun:
        run = PipelineRun(env, tmp_path / f"{name}-{len(runs)}.out", args).start()
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
