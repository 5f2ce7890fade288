"""The daemon end to end: `python pipeline.py` against a real broker, PostgreSQL and S3 API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    Broker,
    Database,
    PgServer,
    PipelineRun,
    make_database,
    wait_until,
)

from lmnh.local import kiosk_simulator
from lmnh.local.embedded import MotoS3, psql_path
from validation import Rating, Rejection, Request, Rules, validate

RATINGS_TOTAL = 4003
REQUESTS_TOTAL = 142
REJECTS_TOTAL = 873


def expected_rows(lines: list[bytes], partitions: int,
                  rules: Rules | None = None) -> tuple[set, set, set]:
    """What the tables must hold after the capture (or any values) is produced round-robin to a
    new topic, as validation.validate says by `rules` (the museum's six sites by default):
    ratings, requests and the (partition, offset) of each reject."""
    rules = rules or Rules(sites=frozenset(range(6)))
    now = datetime.now(UTC)
    ratings, requests, rejects = set(), set(), set()
    for index, line in enumerate(lines):
        source = (index % partitions, index // partitions)
        verdict = validate(line, rules, now)
        if isinstance(verdict, Rating):
            ratings.add((*source, verdict.site, verdict.value, verdict.at))
        elif isinstance(verdict, Request):
            requests.add((*source, verdict.site, verdict.value, verdict.at))
        else:
            assert isinstance(verdict, Rejection)
            rejects.add(source)
    return ratings, requests, rejects


def simulated_presses(count: int = 5000, seed: int = 24) -> list[kiosk_simulator.Press]:
    """Kiosk traffic in the real stream's proportions, ending now, each press labelled with
    what the simulator made it to be (a rating, a request, or one kind of junk)."""
    config = kiosk_simulator.SimConfig(
        start=kiosk_simulator.latest_start(datetime.now(UTC), count), count=count, seed=seed)
    return list(kiosk_simulator.generate(config))


def intended_rows(presses: list[kiosk_simulator.Press], partitions: int) -> tuple[set, set, set]:
    """`expected_rows` from the simulator's own labels, read without validation.py: an oracle
    independent of the code under test."""
    ratings, requests, rejects = set(), set(), set()
    for index, press in enumerate(presses):
        source = (index % partitions, index // partitions)
        message = json.loads(press.value)
        if press.kind is kiosk_simulator.Kind.RATING:
            ratings.add((*source, int(message["site"]), message["val"],
                         datetime.fromisoformat(message["at"])))
        elif press.kind in kiosk_simulator.VALID:
            requests.add((*source, int(message["site"]), message["type"],
                          datetime.fromisoformat(message["at"])))
        else:
            rejects.add(source)
    return ratings, requests, rejects


def recorded_rows(record: Path) -> tuple[set, set, set]:
    """`intended_rows` from the simulator's record of what it delivered (kiosk_simulator's
    `produce(..., record=)`): each press's partition, offset, kind and value."""
    ratings, requests, rejects = set(), set(), set()
    for line in record.read_text(encoding="utf-8").splitlines():
        press = json.loads(line)
        source = (press["partition"], press["offset"])
        message = json.loads(press["value"])
        if press["kind"] == kiosk_simulator.Kind.RATING:
            ratings.add((*source, int(message["site"]), message["val"],
                         datetime.fromisoformat(message["at"])))
        elif press["kind"] in kiosk_simulator.VALID:
            requests.add((*source, int(message["site"]), message["type"],
                          datetime.fromisoformat(message["at"])))
        else:
            rejects.add(source)
    return ratings, requests, rejects


def table_rows(database: Database, topic: str) -> tuple[set, set]:
    ratings = database.query(
        "SELECT source_partition, source_offset, exhibition_id, rating_value, event_at"
        " FROM rating_interaction WHERE source = %s", (topic,))
    requests = database.query(
        "SELECT source_partition, source_offset, exhibition_id, request_value, event_at"
        " FROM request_interaction WHERE source = %s", (topic,))
    return set(ratings), set(requests)


def row_count(database: Database) -> int:
    return int(database.scalar("SELECT (SELECT count(*) FROM rating_interaction)"
                               " + (SELECT count(*) FROM request_interaction)"))


def reject_lines(env: dict[str, str]) -> list[str]:
    path = Path(env["REJECT_LOG"])
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def assert_tables_hold(database: Database, env: dict[str, str],
                       expected: tuple[set, set, set]) -> None:
    """The tables, the rollups and the reject log hold exactly `expected`, nothing twice."""
    want_ratings, want_requests, want_rejects = expected
    topic = env["TOPIC"]
    ratings, requests = table_rows(database, topic)
    assert ratings == want_ratings  # per exhibition, value, event_at and source offset
    assert requests == want_requests
    assert row_count(database) == len(want_ratings) + len(want_requests)  # no duplicate
    assert_rollups_match(database)
    rejected = database.query("SELECT source_partition, source_offset FROM rejected_message"
                              " WHERE source = %s", (topic,))
    assert len(rejected) == len(want_rejects) and set(rejected) == want_rejects
    logged = {line.split("\t")[2] for line in reject_lines(env)}
    # each reject at least once (a replay after a crash may repeat a line)
    assert logged == {f"{topic}/{partition}/{offset}" for partition, offset in want_rejects}


def assert_exact(database: Database, env: dict[str, str], capture_lines: list[bytes],
                 partitions: int) -> None:
    """The real capture's known totals, and every row as `validate` judges it."""
    expected = expected_rows(capture_lines, partitions)
    assert_tables_hold(database, env, expected)
    ratings, requests = table_rows(database, env["TOPIC"])
    assert len(ratings) == RATINGS_TOTAL and len(requests) == REQUESTS_TOTAL
    assert database.scalar("SELECT count(*) FROM rejected_message WHERE source = %s",
                           (env["TOPIC"],)) == REJECTS_TOTAL
    per_exhibition = Counter((r[2], r[3]) for r in ratings)
    assert sum(n for (site, _), n in per_exhibition.items() if site == 4) == 853
    assert Counter(r[3] for r in requests) == {0: 133, 1: 9}


def assert_rollups_match(database: Database) -> None:
    """The hourly rollups count exactly the stored rows, replays and crashes notwithstanding."""
    for table, rollup, value, count in (("rating_interaction", "rating_hourly", "rating_value",
                                         "ratings"),
                                        ("request_interaction", "request_hourly",
                                         "request_value", "requests")):
        from_rows = database.query(
            f"SELECT (event_at AT TIME ZONE 'Europe/London')::date, exhibition_id,"
            f" extract(hour FROM event_at AT TIME ZONE 'Europe/London')::int, {value}, count(*)"
            f" FROM {table} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4")
        from_rollup = database.query(
            f"SELECT local_date, exhibition_id, local_hour::int, {value}, {count}"
            f" FROM {rollup} ORDER BY 1, 2, 3, 4")
        assert from_rollup == from_rows


def all_committed(broker: Broker, env: dict[str, str]) -> bool:
    return broker.committed(env["TOPIC"], env["GROUP"]) == broker.end_offsets(env["TOPIC"])


def test_the_real_capture_end_to_end(broker: Broker, database: Database,
                                     pipeline_env: dict[str, str], run_pipeline,
                                     capture_lines: list[bytes], moto_s3: MotoS3,
                                     real_bucket: str) -> None:
    pipeline_env = pipeline_env | moto_s3.env(real_bucket)  # the museum's own exhibitions
    broker.produce(pipeline_env["TOPIC"], list(capture_lines))
    run: PipelineRun = run_pipeline(pipeline_env)
    wait_until(lambda: row_count(database) == RATINGS_TOTAL + REQUESTS_TOTAL, 60, "all rows")
    wait_until(lambda: all_committed(broker, pipeline_env), 30, "offsets committed")
    assert run.stop(signal.SIGTERM) == 0

    assert_exact(database, pipeline_env, capture_lines, broker.partitions(pipeline_env["TOPIC"]))
    lines = reject_lines(pipeline_env)
    assert len(lines) == REJECTS_TOTAL  # no crash, so no replayed reject
    reasons = Counter(line.split("\t")[1] for line in lines)
    assert reasons == {"invalid_val": 231, "invalid_type": 217, "unknown_site": 200,
                       "missing_key": 152, "outside_hours": 73}
    assert all(len(line.split("\t")) == 7 for line in lines)
    output = run.text()
    assert "loaded 6 exhibitions" in output
    assert "stats: consumed=5018 accepted=4145" in output
    assert "stopped cleanly" in output
    assert "Traceback" not in output
    exhibitions = database.query("SELECT public_id, exhibition_name FROM exhibition ORDER BY 1")
    assert exhibitions[5] == ("EXH_05", "Thunder Lizards")


@pytest.mark.slow
def test_kill_9_mid_stream_and_restart_leaves_exact_tables(
        broker: Broker, database: Database, pipeline_env: dict[str, str],
        run_pipeline) -> None:
    env = pipeline_env | {"BATCH_SIZE": "25"}
    presses = simulated_presses()
    expected = intended_rows(presses, broker.partitions(env["TOPIC"]))
    total = len(expected[0]) + len(expected[1])
    broker.produce(env["TOPIC"], [press.value for press in presses])
    for share in (0.2, 0.5, 0.8):
        run = run_pipeline(env)
        wait_until(lambda s=share: row_count(database) >= s * total, 60, f"{share:.0%} of rows",
                   interval=0.005)
        run.stop(signal.SIGKILL)
        assert row_count(database) < total, "killed too late"
    final = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "offsets committed")
    assert final.stop(signal.SIGTERM) == 0
    assert_tables_hold(database, env, expected)


@pytest.mark.slow
def test_database_outage_mid_stream_without_restart(
        broker: Broker, private_pg_server: PgServer, pipeline_env: dict[str, str],
        run_pipeline) -> None:
    database = make_database(private_pg_server)
    env = pipeline_env | database.env() | {"BATCH_SIZE": "100"}
    partitions = broker.partitions(env["TOPIC"])
    presses = simulated_presses()
    values = [press.value for press in presses]
    half = len(values) // 2 // partitions * partitions  # keeps the round-robin aligned
    broker.produce(env["TOPIC"], values[:half])
    run = run_pipeline(env)
    wait_until(lambda: row_count(database) > 0, 60, "first rows")
    assert private_pg_server.embedded is not None
    private_pg_server.embedded.stop("immediate")
    broker.produce(env["TOPIC"], values[half:])
    wait_until(lambda: "database unavailable" in run.text(), 60, "the outage noticed")
    assert run.process is not None and run.process.poll() is None, "the pipeline died"
    private_pg_server.embedded.start()
    wait_until(lambda: all_committed(broker, env), 90, "offsets committed after the outage")
    assert run.stop(signal.SIGTERM) == 0
    assert_tables_hold(database, env, intended_rows(presses, partitions))
    output = run.text()
    assert "database connection re-established" in output
    assert "Traceback" not in output


# ------------------------------------------------------------------ configuration


def run_once(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def minimal_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "DATABASE_NAME": "lmnh", "DATABASE_USERNAME": "writer",
        "DATABASE_PASSWORD": "Zebra-Secret-9431", "DATABASE_IP": "127.0.0.1",
        "DATABASE_PORT": "1", "BOOTSTRAP_SERVERS": "127.0.0.1:1", "SECURITY_PROTOCOL": "SASL_SSL",
        "USERNAME": "kiosk", "PASSWORD": "Walrus-Secret-2718", "GROUP": "g", "TOPIC": "lmnh",
        "S3_BUCKET": "lmnh-bucket",
    }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and keeps them queued, so a test can tell whether any
    was made (a closed port refuses at once and proves nothing about trying)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        server.setblocking(False)
        yield server


def connections_made(server: socket.socket) -> int:
    made = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return made
        conn.close()
        made += 1


@pytest.mark.parametrize(("change", "named"), [
    ({"TOPIC": None}, "TOPIC"),
    ({"DATABASE_NAME": None}, "DATABASE_NAME"),
    ({"DATABASE_PORT": "fifty"}, "DATABASE_PORT"),
    ({"AUTO_OFFSET": "middle"}, "AUTO_OFFSET"),
    ({"SECURITY_PROTOCOL": "SASL_SSL", "PASSWORD": None}, "PASSWORD"),
    ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ({"MUSEUM_TIMEZONE": "Europe/Atlantis"}, "MUSEUM_TIMEZONE"),
    ({"OPENING_TIME": "quarter to nine"}, "OPENING_TIME"),
])
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path, change: dict, named: str,
                                                    listener: socket.socket) -> None:
    port = str(listener.getsockname()[1])
    env = minimal_env(tmp_path) | {  # every service at the listener: any attempt is seen
        "DATABASE_PORT": port, "BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    result = run_once(env)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines
    assert "Zebra-Secret" not in lines[0] and "Walrus-Secret" not in lines[0]
    assert connections_made(listener) == 0  # no connection was tried


def test_the_listener_sees_a_connection_attempt(tmp_path: Path, listener: socket.socket) -> None:
    """The check above can fail: with good settings the daemon does connect to it."""
    port = str(listener.getsockname()[1])
    env = minimal_env(tmp_path) | {
        "DATABASE_PORT": port, "BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-2",
        "SECURITY_PROTOCOL": "PLAINTEXT",
    }
    process = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py")], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        made = 0

        def connected() -> bool:
            nonlocal made
            made += connections_made(listener)
            return made > 0

        wait_until(connected, 60, "a connection to the listener")
    finally:
        process.kill()
        process.wait()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = minimal_env(tmp_path)
    env.pop("TOPIC")
    env.pop("DATABASE_PORT")  # the environment wins over .env, so leave these to the file
    (tmp_path / ".env").write_text("TOPIC=lmnh\nDATABASE_PORT=oops\n")
    result = subprocess.run([sys.executable, str(ROOT / "pipeline.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DATABASE_PORT" in result.stderr and "TOPIC" not in result.stderr


# ------------------------------------------------------------------ reset_database.sh


def reset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """reset_database.sh with the test server's superuser as its administrator role."""
    path = f"{Path(sys.executable).parent}:{Path(psql_path()).parent}:{os.environ['PATH']}"
    admin = {"DATABASE_ADMIN_USERNAME": env.get("DATABASE_USERNAME", ""),
             "PGPASSWORD": env.get("DATABASE_PASSWORD", "")}
    return subprocess.run(["bash", str(ROOT / "reset_database.sh"), *args],
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/")} | admin | env,
                          capture_output=True, text=True, timeout=60)


def test_reset_database_refuses_without_yes_then_recreates(database: Database) -> None:
    database.execute("INSERT INTO department (department_name) VALUES ('Geology'), ('Zoology')")
    database.execute("CREATE TABLE keepme (x int)")
    refused = reset(database.env())
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert database.scalar("SELECT count(*) FROM department") == 2

    done = reset(database.env(), "--yes")
    assert done.returncode == 0, done.stderr
    assert database.scalar("SELECT count(*) FROM department") == 0
    assert database.scalar("SELECT count(*) FROM rating") == 5
    assert database.scalar("SELECT count(*) FROM request") == 2
    assert database.scalar("SELECT to_regclass('keepme') IS NOT NULL")  # only ours is dropped


def test_reset_database_stops_on_the_first_error_and_changes_nothing(database: Database) -> None:
    database.execute("INSERT INTO department (department_name) VALUES ('Geology')")
    # An index of another table holding a name schema.sql creates makes it fail half-way.
    database.execute("CREATE TABLE squatter (x int)")
    database.execute("DROP INDEX rating_interaction_event_at_idx")
    database.execute("CREATE INDEX rating_interaction_event_at_idx ON squatter (x)")
    failed = reset(database.env(), "--yes")
    assert failed.returncode != 0
    assert "already exists" in failed.stderr
    assert "done" not in failed.stdout
    assert database.scalar("SELECT count(*) FROM department") == 1  # the drop was rolled back

    missing = reset({k: v for k, v in database.env().items() if k != "DATABASE_NAME"}, "--yes")
    assert missing.returncode == 2 and "DATABASE_NAME" in missing.stderr
