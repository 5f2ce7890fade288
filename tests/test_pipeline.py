"""The daemon end to end: `python pipeline.py` against a real broker, PostgreSQL and S3 API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
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

from embedded import psql_path
from validation import Rating, Rejection, Request, Rules, validate

RATINGS_TOTAL = 4003
REQUESTS_TOTAL = 142
REJECTS_TOTAL = 873


def expected_rows(lines: list[bytes], partitions: int) -> tuple[set, set, Counter]:
    """What the tables must hold after the capture is produced round-robin to a new topic."""
    rules = Rules(sites=frozenset(range(6)))
    now = datetime.now(UTC)
    ratings, requests, rejects = set(), set(), Counter()
    for index, line in enumerate(lines):
        source = (index % partitions, index // partitions)
        verdict = validate(line, rules, now)
        if isinstance(verdict, Rating):
            ratings.add((*source, verdict.site, verdict.value, verdict.at))
        elif isinstance(verdict, Request):
            requests.add((*source, verdict.site, verdict.value, verdict.at))
        else:
            assert isinstance(verdict, Rejection)
            rejects[verdict.reason.value] += 1
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


def assert_exact(database: Database, env: dict[str, str], capture_lines: list[bytes],
                 partitions: int) -> None:
    ratings, requests = table_rows(database, env["TOPIC"])
    want_ratings, want_requests, want_rejects = expected_rows(capture_lines, partitions)
    assert len(ratings) == RATINGS_TOTAL and len(requests) == REQUESTS_TOTAL
    assert row_count(database) == RATINGS_TOTAL + REQUESTS_TOTAL  # no duplicate anywhere
    assert ratings == want_ratings  # per exhibition, value, event_at and source offset
    assert requests == want_requests
    per_exhibition = Counter((r[2], r[3]) for r in ratings)
    assert sum(n for (site, _), n in per_exhibition.items() if site == 4) == 853
    assert Counter(r[3] for r in requests) == {0: 133, 1: 9}
    assert_rollups_match(database)
    logged = {tuple(line.split("\t")[2:3]) for line in reject_lines(env)}
    assert len(logged) == REJECTS_TOTAL  # each reject at least once (a replay may repeat one)
    assert sum(want_rejects.values()) == REJECTS_TOTAL


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
                                     capture_lines: list[bytes]) -> None:
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


def test_kill_9_mid_stream_and_restart_leaves_exact_tables(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        capture_lines: list[bytes]) -> None:
    env = pipeline_env | {"BATCH_SIZE": "25"}
    broker.produce(env["TOPIC"], list(capture_lines))
    for threshold in (800, 2000, 3200):
        run = run_pipeline(env)
        wait_until(lambda t=threshold: row_count(database) >= t, 60, f"{threshold} rows",
                   interval=0.005)
        run.stop(signal.SIGKILL)
        assert row_count(database) < RATINGS_TOTAL + REQUESTS_TOTAL, "killed too late"
    final = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "offsets committed")
    assert final.stop(signal.SIGTERM) == 0
    assert_exact(database, env, capture_lines, broker.partitions(env["TOPIC"]))


def test_database_outage_mid_stream_without_restart(
        broker: Broker, private_pg_server: PgServer, pipeline_env: dict[str, str],
        run_pipeline, capture_lines: list[bytes]) -> None:
    database = make_database(private_pg_server)
    env = pipeline_env | database.env() | {"BATCH_SIZE": "100"}
    partitions = broker.partitions(env["TOPIC"])
    half = len(capture_lines) // 2 // partitions * partitions  # keeps the round-robin aligned
    broker.produce(env["TOPIC"], list(capture_lines[:half]))
    run = run_pipeline(env)
    wait_until(lambda: row_count(database) > 0, 60, "first rows")
    assert private_pg_server.embedded is not None
    private_pg_server.embedded.stop("immediate")
    broker.produce(env["TOPIC"], list(capture_lines[half:]))
    time.sleep(3)
    assert run.process is not None and run.process.poll() is None, "the pipeline died"
    private_pg_server.embedded.start()
    wait_until(lambda: all_committed(broker, env), 90, "offsets committed after the outage")
    assert run.stop(signal.SIGTERM) == 0
    assert_exact(database, env, capture_lines, partitions)
    output = run.text()
    assert "database unavailable" in output
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
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path, change: dict,
                                                    named: str) -> None:
    env = minimal_env(tmp_path)
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    started = time.monotonic()
    result = run_once(env)
    assert result.returncode == 2
    assert time.monotonic() - started < 15  # no connection was tried
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines
    assert "Zebra-Secret" not in lines[0] and "Walrus-Secret" not in lines[0]


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
