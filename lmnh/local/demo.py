"""The pipeline's demo on embedded services: no configuration, no network, no cloud account.

It starts an embedded PostgreSQL (kept in .local/demo between runs), librdkafka's mock Kafka
cluster, moto's S3 server loaded with the sample exhibition files in sample_metadata/, then the
real `pipeline.py` (the production code path: Kafka consumer, validation, reject log, psycopg2),
the live dashboard (`dashboard.py`, its URL is printed) and the kiosk simulator at a visible
rate. The pipeline's own stats lines show live progress. On Ctrl-C, or after --duration
seconds, it stops everything cleanly and prints a report read back from the database.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
from confluent_kafka import Consumer, TopicPartition

import db
from lmnh.local import kiosk_simulator
from lmnh.local.embedded import (
    EmbeddedPostgres,
    MockKafka,
    MotoS3,
    free_port,
    psql_path,
    topic_partitions,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_METADATA = ROOT / "sample_metadata"
DATABASE = "lmnh_demo"
BUCKET = "lmnh-demo-bucket"
CATCH_UP_S = 30.0  # at most this long, after the kiosks stop, for the pipeline to store the rest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=20.0, help="kiosk presses a second")
    parser.add_argument("--seed", type=int, default=None, help="simulator seed (repeatable runs)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".local" / "demo",
                        help="where the demo keeps its database and reject log")
    parser.add_argument("--pg-port", type=int, default=54329, help="the demo database's port")
    parser.add_argument("--dashboard-port", type=int, default=8050,
                        help="the dashboard's port (a free one if this is taken)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty database")
    parser.add_argument("--record", type=Path, default=None,
                        help="write each press the kiosks sent to this file, one JSON line: "
                        "partition, offset, what it was made to be, value")
    parser.add_argument("--stop-db", action="store_true",
                        help="only stop the demo database left running by an earlier demo")
    return parser.parse_args(argv)


def schema_exists(url: str) -> bool:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('rating_interaction') IS NOT NULL")
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def apply_schema(url: str) -> None:
    conn = psycopg2.connect(url)
    try:
        db.apply_schema(conn)
    finally:
        conn.close()


def port_or_free(port: int) -> int:
    """`port` if it is free on 127.0.0.1, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def upload_sample_metadata(s3: MotoS3) -> None:
    client = s3.client()
    client.create_bucket(Bucket=BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    for path in sorted(SAMPLE_METADATA.iterdir()):
        client.put_object(Bucket=BUCKET, Key=path.name, Body=path.read_bytes())


def simulate(broker: MockKafka, topic: str, rate: float, seed: int | None,
             stop: threading.Event, record: Path | None) -> None:
    """Kiosk presses at `rate` a second until `stop` is set.

    Stamped in real time from ten opening-hours minutes before now (so they count as today's on
    the dashboard); when the museum is closed, that is the ten minutes before it closed.
    """
    interval = timedelta(seconds=1 / rate)
    now = datetime.now(UTC)
    start = kiosk_simulator.latest_start(now, int(rate * 600), interval)
    config = kiosk_simulator.SimConfig(start=start, count=int(rate * 24 * 3600), seed=seed,
                                       interval=interval)
    presses = itertools.takewhile(lambda _: not stop.is_set(), kiosk_simulator.generate(config))
    with contextlib.ExitStack() as files:
        out = None if record is None else files.enter_context(record.open("w", encoding="utf-8"))
        kiosk_simulator.produce(broker.producer(), topic, presses, rate, out)


def report(url: str, reject_log: Path, server: EmbeddedPostgres) -> str:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                SELECT e.public_id, e.exhibition_name, count(r.rating_value),
                       round(avg(r.rating_value), 2)
                FROM exhibition e LEFT JOIN rating_interaction r USING (exhibition_id)
                GROUP BY e.exhibition_id ORDER BY e.exhibition_id""")
            ratings = cur.fetchall()
            cur.execute("""
                SELECT q.request_description, count(i.request_value)
                FROM request q LEFT JOIN request_interaction i USING (request_value)
                GROUP BY q.request_value ORDER BY q.request_value""")
            requests = cur.fetchall()
    finally:
        conn.close()
    rejects: dict[str, int] = {}
    if reject_log.exists():
        with reject_log.open(encoding="utf-8") as log:
            for line in log:
                reason = line.split("\t", 2)[1]
                rejects[reason] = rejects.get(reason, 0) + 1
    lines = ["", "== Report (from the database; totals over every demo run it has kept) ==",
             f"{'exhibition':<34}{'ratings':>9}{'mean':>7}"]
    for public_id, name, count, mean in ratings:
        shown_mean = "-" if mean is None else str(mean)
        lines.append(f"{public_id + ' ' + name:<34}{count:>9}{shown_mean:>7}")
    lines.append("requests: " + ", ".join(f"{name.lower()} {count}" for name, count in requests))
    lines.append("rejected: " + (", ".join(f"{reason} {count}" for reason, count in
                                           sorted(rejects.items())) or "none"))
    lines += [
        f"database:   {url} (data in {server.cluster_dir}; still running so you can look inside)",
        f"reject log: {reject_log}",
        f"look inside: {psql_path()} -h 127.0.0.1 -p {server.port} -U postgres {DATABASE}",
        "stop the database: python3 dev.py demo --stop-db",
    ]
    return "\n".join(lines)


class StopRequest:
    """Ctrl-C and SIGTERM, taken as a request to stop: the first one counts, later ones are
    ignored, so a second Ctrl-C cannot cut the shutdown (and the report) short."""

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"\n{name}: " + ("already stopping" if self.event.is_set() else "stopping..."),
              flush=True)
        self.event.set()


def wait_for_commits(broker: MockKafka, topic: str, group: str, pipeline: subprocess.Popen,
                     timeout: float) -> bool:
    """Wait until `group` has committed every message of `topic` (the pipeline stored every
    press the kiosks sent), so the report covers them all; False after `timeout` seconds."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        count = topic_partitions(broker.bootstrap, topic)
        partitions = [TopicPartition(topic, p) for p in range(count)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pipeline.poll() is None:
            ends = [consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in partitions]
            committed = [tp.offset for tp in consumer.committed(partitions, timeout=5)]
            if all(end == 0 or offset == end for offset, end in zip(committed, ends,
                                                                     strict=True)):
                return True
            time.sleep(0.2)
        return False
    finally:
        consumer.close()


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = EmbeddedPostgres(args.data_dir / "pg", args.pg_port)
    if args.stop_db:
        server.stop()
        return 0
    if args.fresh:
        server.remove()
    stop = StopRequest()
    if args.fresh and args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting PostgreSQL ({server.cluster_dir}, port {args.pg_port}), "
          "the Kafka mock cluster and the S3 server...", flush=True)
    server.start()
    server.create_database(DATABASE)
    url = server.url(DATABASE)
    if not schema_exists(url):
        apply_schema(url)
    broker = MockKafka()
    s3 = MotoS3()
    with contextlib.ExitStack() as started:  # everything below is stopped on the way out
        started.callback(s3.stop)
        upload_sample_metadata(s3)
        topic = f"lmnh-demo-{datetime.now(UTC):%Y%m%d%H%M%S}"  # offsets restart with each broker
        reject_log = args.data_dir / "erroneous_data.log"
        env = (os.environ | server.env(DATABASE) | broker.env(topic, "lmnh-demo") | s3.env(BUCKET)
               | {"REJECT_LOG": str(reject_log), "STATS_INTERVAL_S": "2"})
        # Their own sessions: the terminal's Ctrl-C reaches only this process, which stops them
        # in order (kiosks first, then the pipeline once it has stored what they sent).
        pipeline = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py")],
                                    cwd=args.data_dir, env=env, start_new_session=True)
        started.callback(stop_process, pipeline, 60)
        dashboard_port = port_or_free(args.dashboard_port)
        dashboard_log = args.data_dir / "dashboard.log"
        with dashboard_log.open("ab") as log:
            dashboard = subprocess.Popen(
                # No sign-in: the demo's dashboard listens on 127.0.0.1 only, on sample data.
                [sys.executable, "-m", "lmnh.apps.dashboard", "--port", str(dashboard_port),
                 "--allow-anonymous"],
                cwd=args.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        started.callback(stop_process, dashboard, 10)
        print(f"dashboard: http://127.0.0.1:{dashboard_port}/ (log: {dashboard_log})",
              flush=True)
        kiosks_stop = threading.Event()
        simulator = threading.Thread(target=simulate, daemon=True,
                                     args=(broker, topic, args.rate, args.seed, kiosks_stop,
                                           args.record))
        simulator.start()
        print(f"kiosks pressing {args.rate:g} times a second; "
              + ("Ctrl-C to stop" if args.duration is None
                 else f"stopping in {args.duration:g} s"), flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while pipeline.poll() is None and (deadline is None or time.monotonic() < deadline):
            stop.event.wait(0.2)
            if stop.event.is_set():
                break
        kiosks_stop.set()
        simulator.join(timeout=35)
        caught_up = wait_for_commits(broker, topic, "lmnh-demo", pipeline, CATCH_UP_S)
        if not caught_up:
            print(f"the pipeline had not stored every press after {CATCH_UP_S:g} s; "
                  "stopping it anyway", flush=True)
        code = stop_process(pipeline, 60)
        stop_process(dashboard, 10)
        print(report(url, reject_log, server), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
