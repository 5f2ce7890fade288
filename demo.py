"""The pipeline's demo on embedded services: no configuration, no network, no cloud account.

It starts an embedded PostgreSQL (kept in .local/demo between runs), librdkafka's mock Kafka
cluster, moto's S3 server loaded with the sample exhibition files in sample_metadata/, then the
real `pipeline.py` (the production code path: Kafka consumer, validation, reject log, psycopg2),
the live dashboard (`dashboard.py`, its URL is printed) and the kiosk simulator at a visible
rate. The pipeline's own stats lines show live progress. On Ctrl-C, or after --duration
seconds, it stops everything cleanly and prints a report read back from the database.
"""

from __future__ import annotations

import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
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

import db
import kiosk_simulator
from embedded import EmbeddedPostgres, MockKafka, MotoS3, free_port, psql_path

ROOT = Path(__file__).resolve().parent
SAMPLE_METADATA = ROOT / "sample_metadata"
DATABASE = "lmnh_demo"
BUCKET = "lmnh-demo-bucket"


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
             stop: threading.Event) -> None:
    """Kiosk presses at `rate` a second until `stop` is set.

    Stamped in real time from ten opening-hours minutes before now (so they count as today's on
    the dashboard); when the museum is closed, that is the ten minutes before it closed.
    """
    interval = timedelta(seconds=1 / rate)
    now = datetime.now(UTC)
    start = kiosk_simulator.latest_start(now, int(rate * 600), interval)
    config = kiosk_simulator.SimConfig(start=start, count=int(rate * 24 * 3600), seed=seed,
                                       interval=interval)
    values = (press.value for press in kiosk_simulator.generate(config))
    kiosk_simulator.produce(broker.producer(), topic,
                            itertools.takewhile(lambda _: not stop.is_set(), values), rate)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = EmbeddedPostgres(args.data_dir / "pg", args.pg_port)
    if args.stop_db:
        server.stop()
        return 0
    if args.fresh:
        server.remove()
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
    upload_sample_metadata(s3)
    topic = f"lmnh-demo-{datetime.now(UTC):%Y%m%d%H%M%S}"  # offsets restart with each broker
    reject_log = args.data_dir / "erroneous_data.log"
    env = (os.environ | server.env(DATABASE) | broker.env(topic, "lmnh-demo") | s3.env(BUCKET)
           | {"REJECT_LOG": str(reject_log), "STATS_INTERVAL_S": "2"})
    pipeline = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py")], cwd=args.data_dir,
                                env=env, start_new_session=True)
    dashboard_port = port_or_free(args.dashboard_port)
    dashboard_log = args.data_dir / "dashboard.log"
    with dashboard_log.open("ab") as log:
        dashboard = subprocess.Popen(
            [sys.executable, str(ROOT / "dashboard.py"), "--port", str(dashboard_port)],
            cwd=args.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    print(f"dashboard: http://127.0.0.1:{dashboard_port}/ (log: {dashboard_log})", flush=True)
    stop = threading.Event()
    simulator = threading.Thread(target=simulate, daemon=True,
                                 args=(broker, topic, args.rate, args.seed, stop))
    simulator.start()
    print(f"kiosks pressing {args.rate:g} times a second; "
          + ("Ctrl-C to stop" if args.duration is None else f"stopping in {args.duration:g} s"),
          flush=True)
    try:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while pipeline.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    stop.set()
    simulator.join(timeout=35)
    time.sleep(1)  # let the pipeline's linger flush the last presses
    if pipeline.poll() is None:
        pipeline.send_signal(signal.SIGTERM)
    code = pipeline.wait(timeout=60)
    dashboard.terminate()
    dashboard.wait(timeout=10)
    print(report(url, reject_log, server), flush=True)
    s3.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
