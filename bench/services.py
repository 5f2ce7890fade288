"""The services a benchmark run uses, and a fresh database, topic and group for each phase.

PostgreSQL is embedded.EmbeddedPostgres, or Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin)
started here as an ordinary server over TCP with password authentication (scram-sha-256), both
with commit timestamps on (the latency phase reads them); Kafka is librdkafka's mock cluster
unless TEST_BOOTSTRAP_SERVERS names a broker; S3 is moto, holding six exhibition files
EXH_00..EXH_05 in the museum's format.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg2
from confluent_kafka import Consumer, Producer, TopicPartition

import db
from lmnh.local import embedded
from lmnh.local.embedded import EmbeddedPostgres, MockKafka, MotoS3, free_port, topic_partitions
from s3_metadata import Exhibition, load_exhibitions

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASES = ("embedded", "debian")
SITES = range(6)
BUCKET = "lmnh-bench"
# Pipeline settings passed through from the benchmark's environment, to try other values.
TUNABLES = ("BATCH_SIZE", "BATCH_LINGER_MS", "STATS_INTERVAL_S")
EXHIBITIONS = (
    ("cave", "Measureless to Man", "1", "Geology", "23/08/21", "A cave system in 3D."),
    ("bugs", "Adaptation", "Vault", "Entomology", "01/07/19", "Insects in an industrial world."),
    ("art", "The Crenshaw Collection", "2", "Zoology", "03/03/21", "Watercolours of wildlife."),
    ("whales", "Cetacean Sensations", "1", "Zoology", "01/07/19", "Whales, myth to danger."),
    ("pollution", "Our Polluted World", "3", "Ecology", "12/05/21", "Humanity's impact."),
    ("dino", "Thunder Lizards", "1", "Paleontology", "01/02/23", "Dinosaurs rethought."),
)


# Each site's START_DATE, as the pipeline reads it from the files above.
STARTS = {site: datetime.strptime(row[4], "%d/%m/%y").date()
          for site, row in zip(SITES, EXHIBITIONS, strict=True)}


class BenchError(Exception):
    """The benchmark cannot give a trustworthy figure (inexact tables, a dead process...)."""


def exhibition_files() -> dict[str, bytes]:
    """lmnh_exhibition_<name>.json for sites 0..5, in the format of the museum's bucket."""
    return {
        f"lmnh_exhibition_{key}.json": json.dumps({
            "EXHIBITION_NAME": name, "EXHIBITION_ID": f"EXH_{site:02d}", "FLOOR": floor,
            "DEPARTMENT": department, "START_DATE": start, "DESCRIPTION": description,
        }, indent=4).encode()
        for site, (key, name, floor, department, start, description) in zip(
            SITES, EXHIBITIONS, strict=True)
    }


@dataclass(frozen=True)
class Stage:
    """One phase's own database, topic (created), consumer group and reject log."""

    bootstrap: str
    topic: str
    group: str
    partitions: int
    database_url: str
    workdir: Path
    pipeline_env: dict[str, str]

    @property
    def reject_log(self) -> Path:
        return Path(self.pipeline_env["REJECT_LOG"])

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap})

    def offsets(self) -> GroupOffsets:
        return GroupOffsets(self.bootstrap, self.topic, self.group, self.partitions)

    def checkpoint(self) -> None:
        """Flush what earlier phases left in the server's buffers (CHECKPOINT), so that no
        phase is timed while another's dirty pages are written out."""
        conn = psycopg2.connect(self.database_url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
        finally:
            conn.close()

    def query(self, statement: str) -> list[tuple]:
        conn = psycopg2.connect(self.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall()
        finally:
            conn.close()


class GroupOffsets:
    """A group's committed offsets and the topic's watermarks, read without joining the group."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                  "enable.auto.commit": False})
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self) -> list[int]:
        """The next offset to read, per partition (0 where nothing is committed yet)."""
        return [max(tp.offset, 0) for tp in self.consumer.committed(self.partitions, timeout=10)]

    def watermarks(self) -> list[tuple[int, int]]:
        """(first offset held, end offset) per partition."""
        return [self.consumer.get_watermark_offsets(tp, timeout=10) for tp in self.partitions]

    def ends(self) -> list[int]:
        return [high for _, high in self.watermarks()]

    def close(self) -> None:
        self.consumer.close()


class Services:
    """PostgreSQL, the broker and S3 for the whole benchmark; `stage` makes a phase's share."""

    def __init__(self, workdir: Path, postgres: EmbeddedPostgres, s3: MotoS3) -> None:
        self.workdir = workdir
        self.postgres = postgres
        self.s3 = s3
        self.prefix = f"lmnh-bench-{os.getpid()}-{int(time.time())}"
        self.stages = 0
        external = os.environ.get("TEST_BOOTSTRAP_SERVERS")
        self.mock = None if external else MockKafka()  # the mock cluster lives as long as this
        self.bootstrap = external or self.mock.bootstrap
        client = s3.client()
        # One S3 server serves every database's run: the bucket may be there already.
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=BUCKET,
                                 CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        for key, body in exhibition_files().items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)

    @property
    def broker_name(self) -> str:
        return "librdkafka mock cluster" if self.mock else f"broker {self.bootstrap}"

    def exhibitions(self) -> dict[int, Exhibition]:
        return load_exhibitions(self.s3.client(), BUCKET)

    def stage(self, name: str) -> Stage:
        self.stages += 1
        label = f"{self.prefix}-{self.stages}-{name}"
        workdir = self.workdir / label
        workdir.mkdir()
        database = label.replace("-", "_")
        self.postgres.create_database(database)
        url = self.postgres.url(database)
        conn = psycopg2.connect(url)
        try:
            db.apply_schema(conn)
        finally:
            conn.close()
        topic, group = label, f"{label}-pipeline"
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        env = keep | self.postgres.env(database) | self.s3.env(BUCKET) | {
            "BOOTSTRAP_SERVERS": self.bootstrap,
            "SECURITY_PROTOCOL": "PLAINTEXT",
            "TOPIC": topic,
            "GROUP": group,
            "AUTO_OFFSET": "earliest",
            "REJECT_LOG": str(workdir / "erroneous_data.log"),
        } | {k: v for k, v in os.environ.items() if k in TUNABLES}
        return Stage(self.bootstrap, topic, group, create_topic(self.bootstrap, topic), url,
                     workdir, env)


def create_topic(bootstrap: str, topic: str) -> int:
    """Create `topic` by asking for it (broker auto-create); return its partition count."""
    try:
        return topic_partitions(bootstrap, topic)
    except RuntimeError as error:
        raise BenchError(str(error)) from None


@dataclass
class DebianPostgres(EmbeddedPostgres):
    """Debian's PostgreSQL 15 as a standalone server: TCP, scram-sha-256 with a password.

    Everything but the binaries and the authentication is EmbeddedPostgres's (the same data
    folder, private to the server's user when run as root; fsync on).
    """

    bin_dir: Path | None = DEBIAN_PG_BIN
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    def start(self) -> DebianPostgres:
        if not (DEBIAN_PG_BIN / "initdb").exists():
            raise BenchError(f"{DEBIAN_PG_BIN} has no initdb: apt-get install postgresql")
        data = self.cluster_dir
        if not (data / "PG_VERSION").exists():
            # initdb takes the superuser's password from a file only the server's user reads.
            if embedded._as_root():
                embedded._prepare_private_home(self.data_dir)
            data.parent.mkdir(parents=True, exist_ok=True)
            password_file = data.parent / "initdb.pw"
            password_file.touch(mode=0o600)
            password_file.write_text(self.password)
            if embedded._as_root():
                account = embedded._system_account()
                os.chown(password_file, account.pw_uid, account.pw_gid)
            try:
                self._run("initdb", "--auth=scram-sha-256", "--encoding=UTF8",
                          "--locale=C.UTF-8", "-U", embedded.PG_SUPERUSER,
                          f"--pwfile={password_file}", "-D", str(data))
            finally:
                password_file.unlink()
        super().start()
        return self

    def url(self, database: str) -> str:
        return (f"postgresql://{embedded.PG_SUPERUSER}:{self.password}@127.0.0.1:{self.port}"
                f"/{database}?sslmode=disable")

    def env(self, database: str) -> dict[str, str]:
        return super().env(database) | {"DATABASE_PASSWORD": self.password}


@contextmanager
def running_services(workdir: Path, database: str = "embedded") -> Iterator[Services]:
    """The services, stopped on the way out whatever happens."""
    with ExitStack() as stack:
        server = DebianPostgres if database == "debian" else EmbeddedPostgres
        postgres = server(workdir / "pg", free_port(), {"track_commit_timestamp": "on"})
        stack.callback(postgres.remove)  # the workdir is temporary
        postgres.start()
        s3 = MotoS3()
        stack.callback(s3.stop)
        yield Services(workdir, postgres, s3)
