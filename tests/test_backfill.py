"""The historical backfill against a real S3 API (moto server) and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest
from conftest import ROOT, SHARED_S3, Database, unique, wait_until

import db
from lmnh.apps import backfill
from lmnh.local.embedded import MotoS3, free_port
from lmnh.services.reject_log import RejectLog
from s3_metadata import load_exhibitions
from validation import Reason, Rejection, Request, Rules, Verdict, localize, validate

LONDON = ZoneInfo("Europe/London")
RULES = Rules(sites=frozenset(range(6)))
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
HEADER = "at,site,val,type\n"

# The real exports, counted independently of this project (csv module and awk, 2 ways, agreed):
# 2,137 rows; 52 before 08:45 -> outside_hours; 2,085 stored.
REAL_FILES = {  # key: (rows read, stored, rejected as outside_hours)
    "lmnh_hist_data_0.csv": (535, 526, 9),
    "lmnh_hist_data_1.csv": (534, 519, 15),
    "lmnh_hist_data_2.csv": (534, 518, 16),
    "lmnh_hist_data_3.csv": (534, 522, 12),
}
REAL_RATINGS = {  # (site, rating value): rows stored
    (0, 0): 33, (0, 1): 77, (0, 2): 88, (0, 3): 76, (0, 4): 18,
    (1, 0): 18, (1, 1): 134, (1, 2): 142, (1, 3): 93, (1, 4): 25,
    (2, 0): 103, (2, 1): 123, (2, 2): 67, (2, 3): 48, (2, 4): 34,
    (3, 0): 31, (3, 1): 12, (3, 2): 132, (3, 3): 118, (3, 4): 169,
    (4, 0): 165, (4, 1): 141, (4, 2): 110, (4, 3): 21, (4, 4): 35,
}
REAL_REQUESTS = {(0, 0): 9, (1, 0): 9, (2, 0): 12, (2, 1): 2, (3, 0): 29, (4, 0): 11}
# Identical lines of lmnh_hist_data_3.csv (physical line numbers): distinct presses.
REAL_DUPLICATE_LINES = (166, 390, 216, 225)


# ------------------------------------------------------------------ helpers


def exhibition_json(number: int) -> bytes:
    return json.dumps({
        "EXHIBITION_NAME": f"Exhibition {number}", "EXHIBITION_ID": f"EXH_0{number}",
        "FLOOR": "1", "DEPARTMENT": "Test", "START_DATE": "01/02/23", "DESCRIPTION": "A test.",
    }).encode()


def new_bucket(moto_s3: MotoS3, files: dict[str, str | bytes]) -> str:
    """A bucket of this test's own: six exhibitions (sites 0-5) and `files`."""
    name = unique("backfill").replace("_", "-")
    client = moto_s3.client()
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    for number in range(6):
        client.put_object(Bucket=name, Key=f"lmnh_exhibition_{number}.json",
                          Body=exhibition_json(number))
    for key, body in files.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


def connect(database: Database) -> db.Connection:
    env = database.env()
    return db.connect(db.DatabaseSettings(
        host=env["DATABASE_IP"], port=int(env["DATABASE_PORT"]), name=env["DATABASE_NAME"],
        user=env["DATABASE_USERNAME"], password=env["DATABASE_PASSWORD"],
        sslmode=env["DATABASE_SSLMODE"]))


def load(moto_s3: MotoS3, bucket: str, database: Database, reject_log: Path,
         batch_size: int = 5000, s3: Any = None) -> dict[str, backfill.FileSummary]:
    """The backfill through its functions, as the command runs them; summaries by key."""
    conn = connect(database)
    log = RejectLog(reject_log, 4096)
    try:
        exhibitions = load_exhibitions(moto_s3.client(), bucket)
        db.upsert_exhibitions(conn, exhibitions.values())
        summaries = backfill.backfill(s3 or moto_s3.client(), bucket, conn, log,
                                      Rules(frozenset(exhibitions)), batch_size)
    finally:
        log.close()
        conn.close()
    return {s.source.rsplit("/", 1)[1]: s for s in summaries}


def stored(database: Database, table: str, value: str) -> Counter:
    """(site, value) -> rows in `table`."""
    return Counter({(site, val): n for site, val, n in database.query(
        f"SELECT exhibition_id, {value}, count(*) FROM {table} GROUP BY 1, 2")})


def stored_ratings(database: Database) -> Counter:
    return stored(database, "rating_interaction", "rating_value")


def stored_requests(database: Database) -> Counter:
    return stored(database, "request_interaction", "request_value")


def reject_lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def command_env(database: Database, moto_s3: MotoS3, bucket: str, reject_log: Path,
                **extra: str) -> dict[str, str]:
    """What `lmnh-backfill` needs; the Kafka settings are required but unused."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    return keep | database.env() | moto_s3.env(bucket) | {
        "BOOTSTRAP_SERVERS": "unused:9092", "SECURITY_PROTOCOL": "PLAINTEXT",
        "GROUP": "unused", "TOPIC": "unused", "REJECT_LOG": str(reject_log),
    } | extra


def run_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmnh.apps.backfill"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def total_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "backfill: total (" in line]
    assert len(lines) == 1, output
    return lines[0].split("backfill: ", 1)[1]


# ------------------------------------------------------------------ local time


@pytest.mark.parametrize(("local", "expected"), [
    ("2026-03-29 00:59:59", "2026-03-29T00:59:59+00:00"),
    ("2026-03-29 01:00:00", Reason.NONEXISTENT_LOCAL_TIME),
    ("2026-03-29 01:30:00", Reason.NONEXISTENT_LOCAL_TIME),
    ("2026-03-29 01:59:59", Reason.NONEXISTENT_LOCAL_TIME),
    ("2026-03-29 02:00:00", "2026-03-29T02:00:00+01:00"),
    ("2026-10-25 00:59:59", "2026-10-25T00:59:59+01:00"),
    ("2026-10-25 01:00:00", Reason.AMBIGUOUS_LOCAL_TIME),
    ("2026-10-25 01:30:00", Reason.AMBIGUOUS_LOCAL_TIME),
    ("2026-10-25 01:59:59", Reason.AMBIGUOUS_LOCAL_TIME),
    ("2026-10-25 02:00:00", "2026-10-25T02:00:00+00:00"),
    ("2023-03-06 15:09:21", "2023-03-06T15:09:21+00:00"),
    ("2023-07-06 15:09:21", "2023-07-06T15:09:21+01:00"),
    ("0001-01-01 00:00:00", "0001-01-01T00:00:00-00:01:15"),  # London mean time, no overflow
])
def test_localize_rejects_skipped_and_repeated_times(local: str,
                                                     expected: str | Reason) -> None:
    verdict = localize(datetime.fromisoformat(local), LONDON)
    if isinstance(expected, Reason):
        assert isinstance(verdict, Rejection) and verdict.reason is expected
        assert local in verdict.detail
    else:
        assert not isinstance(verdict, Rejection) and verdict.isoformat() == expected


def test_localize_out_of_range_is_invalid_at() -> None:
    verdict = localize(datetime(1, 1, 1), ZoneInfo("Asia/Tokyo"))
    assert verdict == Rejection(Reason.INVALID_AT, "at is out of range")


# ------------------------------------------------------------------ one line, strictly


def stream_message(at: str, site: object, val: object, **kind: object) -> bytes:
    return json.dumps({"at": at, "site": site, "val": val, **kind}).encode()


IN_HOURS = "2023-03-06 15:09:21"
IN_HOURS_UTC = "2023-03-06T15:09:21+00:00"


@pytest.mark.parametrize(("line", "message"), [
    (f"{IN_HOURS},4,0,", stream_message(IN_HOURS_UTC, "4", 0)),
    (f"{IN_HOURS},0,4,", stream_message(IN_HOURS_UTC, "0", 4)),
    (f"{IN_HOURS},4,-1,0.0", stream_message(IN_HOURS_UTC, "4", -1, type=0)),
    (f"{IN_HOURS},4,-1,1.0", stream_message(IN_HOURS_UTC, "4", -1, type=1)),
    ("2023-07-06 09:00:00,2,3,", stream_message("2023-07-06T09:00:00+01:00", "2", 3)),
    (f"{IN_HOURS},4,-1,2.0", stream_message(IN_HOURS_UTC, "4", -1, type=2)),
    (f"{IN_HOURS},4,-1,1.5", stream_message(IN_HOURS_UTC, "4", -1, type=1.5)),
    (f"{IN_HOURS},4,-1,x", stream_message(IN_HOURS_UTC, "4", -1, type="x")),
    (f"{IN_HOURS},4,-1,", stream_message(IN_HOURS_UTC, "4", -1)),
    (f"{IN_HOURS},4,-1,-1.0", stream_message(IN_HOURS_UTC, "4", -1, type=-1)),
    (f"{IN_HOURS},4,2,1.0", stream_message(IN_HOURS_UTC, "4", 2, type=1)),
    (f"{IN_HOURS},4,3.5,", stream_message(IN_HOURS_UTC, "4", 3.5)),
    (f"{IN_HOURS},4,3.0,", stream_message(IN_HOURS_UTC, "4", 3.0)),
    (f"{IN_HOURS},4,5,", stream_message(IN_HOURS_UTC, "4", 5)),
    (f"{IN_HOURS},4,ERR,", stream_message(IN_HOURS_UTC, "4", "ERR")),
    (f"{IN_HOURS},4,,", stream_message(IN_HOURS_UTC, "4", "")),
    (f"{IN_HOURS},ERR,2,", stream_message(IN_HOURS_UTC, "ERR", 2)),
    (f"{IN_HOURS},6,2,", stream_message(IN_HOURS_UTC, "6", 2)),
    (f"{IN_HOURS},,2,", stream_message(IN_HOURS_UTC, "", 2)),
    ("2023-03-06 08:44:59,4,2,", stream_message("2023-03-06T08:44:59+00:00", "4", 2)),
    ("2023-03-06 18:15:01,4,2,", stream_message("2023-03-06T18:15:01+00:00", "4", 2)),
    ("2099-01-01 10:00:00,4,2,", stream_message("2099-01-01T10:00:00+00:00", "4", 2)),
    ("yesterday,4,2,", stream_message("yesterday", "4", 2)),
    (",4,2,", stream_message("", "4", 2)),
    ("2023-02-30 10:00:00,4,2,", stream_message("2023-02-30T10:00:00+00:00", "4", 2)),
])
def test_a_line_gets_the_streams_verdict_for_the_same_fault(line: str, message: bytes) -> None:
    def outcome(verdict: Verdict) -> Verdict | Reason:
        """A rejection by its reason only: the details quote the CSV's text, not JSON."""
        return verdict.reason if isinstance(verdict, Rejection) else verdict

    assert outcome(backfill.judge_row(line.encode(), RULES, NOW)) == outcome(
        validate(message, RULES, NOW))


@pytest.mark.parametrize(("line", "reason"), [
    (f"{IN_HOURS},4,2", Reason.INVALID_CSV),
    (f"{IN_HOURS},4,2,,", Reason.INVALID_CSV),
    (b"\xff\xfe,4,2,", Reason.INVALID_CSV),
    (f'"{IN_HOURS},4,2,', Reason.INVALID_CSV),
    ("2023-03-06T15:09:21,4,2,", Reason.INVALID_AT),
    ("2023-03-06 15:09:21+00:00,4,2,", Reason.INVALID_AT),
    ("2023-03-06 15:09,4,2,", Reason.INVALID_AT),
    ("2026-03-29 01:30:00,4,2,", Reason.NONEXISTENT_LOCAL_TIME),
    ("2026-10-25 01:30:00,4,2,", Reason.AMBIGUOUS_LOCAL_TIME),
])
def test_faults_only_a_csv_line_can_have(line: str | bytes, reason: Reason) -> None:
    raw = line if isinstance(line, bytes) else line.encode()
    verdict = backfill.judge_row(raw, RULES, NOW)
    assert isinstance(verdict, Rejection) and verdict.reason is reason


def test_a_quoted_field_is_read_as_csv() -> None:
    verdict = backfill.judge_row(f'"{IN_HOURS}",4,"-1","1.0"'.encode(), RULES, NOW)
    assert verdict == Request(4, 1, datetime(2023, 3, 6, 15, 9, 21, tzinfo=UTC))


@pytest.mark.parametrize(("key", "expected"), [
    ("lmnh_hist_data_0.csv", True),
    ("lmnh_hist_data_2023_march.csv", True),
    ("lmnh_hist_data_0.txt", False),
    ("lmnh_hist_data_0.csv.bak", False),
    ("lms_hist_data_0.csv", False),
    ("archive/lmnh_hist_data_0.csv", False),
    ("lmnh_exhibition_dino.json", False),
    ("lmnh_hist_data_a\tb.csv", False),  # a tab would split the reject log's columns
])
def test_which_keys_are_exports(key: str, expected: bool) -> None:
    assert backfill.is_history_key(key) is expected


# ------------------------------------------------------------------ the real exports


def test_the_real_exports_load_exactly_once(moto_s3: MotoS3, real_bucket: str, database: Database,
                                           tmp_path: Path) -> None:
    reject_log = tmp_path / "erroneous_data.log"

    first = load(moto_s3, real_bucket, database, reject_log)

    assert {key: (s.rows, s.stored, s.rejected[Reason.OUTSIDE_HOURS]) for key, s in first.items()
            } == REAL_FILES
    assert all(s.already_present == 0 and s.rejected.total() == s.rows - s.stored
               for s in first.values())
    assert stored_ratings(database) == REAL_RATINGS
    assert stored_requests(database) == REAL_REQUESTS
    source = f"s3://{real_bucket}/lmnh_hist_data_0.csv"
    assert database.query(  # line 2 of file 0: "2023-03-06 15:09:21,4,0," (GMT that day)
        "SELECT exhibition_id, rating_value, event_at FROM rating_interaction"
        " WHERE source = %s AND source_partition = 0 AND source_offset = 2", (source,)
    ) == [(4, 0, datetime(2023, 3, 6, 15, 9, 21, tzinfo=UTC))]
    duplicates = database.query(
        "SELECT source_offset FROM rating_interaction WHERE source = %s ORDER BY 1",
        (f"s3://{real_bucket}/lmnh_hist_data_3.csv",))
    assert set(REAL_DUPLICATE_LINES) <= {offset for (offset,) in duplicates}

    rejects = reject_lines(reject_log)
    assert len(rejects) == 52
    for _logged_at, reason, location, _detail, value, length, sha256 in rejects:
        assert reason == "outside_hours"
        key, line = location.removeprefix(f"s3://{real_bucket}/").split(":")
        physical_line = (SHARED_S3 / key).read_text().splitlines()[int(line) - 1]
        assert json.loads(value) == physical_line
        assert (int(length), sha256) == (len(physical_line.encode()),
                                         hashlib.sha256(physical_line.encode()).hexdigest())
        assert physical_line[11:19] < "08:45:00"

    assert database.query(
        "SELECT reason, count(*), count(DISTINCT (source, source_offset)) FROM rejected_message"
        " GROUP BY 1") == [("outside_hours", 52, 52)]

    second = load(moto_s3, real_bucket, database, reject_log)

    assert [(s.rows, s.stored, s.already_present) for s in second.values()] == [
        (rows, 0, accepted) for rows, accepted, _ in REAL_FILES.values()]
    assert stored_ratings(database) == REAL_RATINGS
    assert stored_requests(database) == REAL_REQUESTS
    assert database.scalar("SELECT count(*) FROM rejected_message") == 52
    assert database.scalar("SELECT sum(ratings) FROM rating_hourly") == sum(REAL_RATINGS.values())


def test_the_command_on_the_real_bucket_then_again(moto_s3: MotoS3, real_bucket: str,
                                                   database: Database, tmp_path: Path) -> None:
    env = command_env(database, moto_s3, real_bucket, tmp_path / "erroneous_data.log")

    first = run_command(env)
    second = run_command(env)

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traceback" not in first.stdout + first.stderr + second.stdout + second.stderr
    assert total_line(first.stdout).startswith(
        "total (files=4 skipped=0): read=2137 stored=2085 already_present=0 rejected=52"
        " [outside_hours=52] in ")
    assert total_line(second.stdout).startswith(
        "total (files=4 skipped=0): read=2137 stored=0 already_present=2085 rejected=52"
        " [outside_hours=52] in ")
    assert total_line(first.stdout).endswith(" rows/s)")
    assert (f"s3://{real_bucket}/lmnh_hist_data_2.csv: read=534 stored=518 already_present=0"
            " rejected=16 [outside_hours=16]") in first.stdout
    assert sum(stored_ratings(database).values()) + sum(stored_requests(database).values()) == 2085
    assert len(reject_lines(tmp_path / "erroneous_data.log")) == 2 * 52  # logged by each run
    print(f"\nthe real exports: {total_line(first.stdout)}")


# ------------------------------------------------------------------ synthetic exports


def test_clock_change_days_are_converted_or_rejected(moto_s3: MotoS3, database: Database,
                                                     tmp_path: Path) -> None:
    export = HEADER + "".join(f"{at},1,3,\n" for at in (
        "2026-03-28 09:00:00",  # line 2: GMT
        "2026-03-29 01:30:00",  # line 3: skipped by the spring change
        "2026-03-29 08:44:59",  # line 4: before opening, BST
        "2026-03-29 08:45:00",  # line 5: opening, BST
        "2026-10-25 01:30:00",  # line 6: repeated by the autumn change
        "2026-10-24 18:15:00",  # line 7: closing, BST
        "2026-10-25 18:15:00",  # line 8: closing, GMT
    ))
    bucket = new_bucket(moto_s3, {"lmnh_hist_data_clocks.csv": export})

    summary = load(moto_s3, bucket, database, tmp_path / "rejects.log")["lmnh_hist_data_clocks.csv"]

    assert (summary.rows, summary.stored) == (7, 4)
    assert database.query(
        "SELECT source_offset, event_at FROM rating_interaction ORDER BY 1") == [
        (2, datetime(2026, 3, 28, 9, 0, tzinfo=UTC)),
        (5, datetime(2026, 3, 29, 7, 45, tzinfo=UTC)),
        (7, datetime(2026, 10, 24, 17, 15, tzinfo=UTC)),
        (8, datetime(2026, 10, 25, 18, 15, tzinfo=UTC)),
    ]
    rejects = {location.rsplit(":", 1)[1]: reason
               for _, reason, location, *_ in reject_lines(tmp_path / "rejects.log")}
    assert rejects == {"3": "nonexistent_local_time", "4": "outside_hours",
                       "6": "ambiguous_local_time"}


def test_decoys_are_ignored_a_wrong_header_skipped_and_every_page_listed(
        moto_s3: MotoS3, database: Database, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    row = "2023-03-06 10:00:00,2,4,\n"
    bucket = new_bucket(moto_s3, {
        "lms_hist_data_0.csv": HEADER + row,
        "lmnh_hist_data_0.txt": HEADER + row,
        "lmnh_hist_data_0.csv.bak": HEADER + row,
        "archive/lmnh_hist_data_0.csv": HEADER + row,
        "history.csv": HEADER + row,
        "lmnh_hist_data_header.csv": "time,site,val,type\n" + row,
        "lmnh_hist_data_empty.csv": "",
    })
    client = moto_s3.client()
    for n in range(150):  # more than a page of keys with the prefix before the real export
        client.put_object(Bucket=bucket, Key=f"lmnh_hist_data_{n:04d}.txt", Body=row)
    client.put_object(Bucket=bucket, Key="lmnh_hist_data_zz.csv", Body=HEADER + row + "\n" + row)
    # Pages of 100 keys instead of S3's 1,000, so two pages need 150 uploads, not 1,000.
    listings = []
    client.meta.events.register("before-parameter-build.s3.ListObjectsV2",
                                lambda params, **_: params.update(MaxKeys=100))
    client.meta.events.register("after-call.s3.ListObjectsV2",
                                lambda parsed, **_: listings.append(parsed["KeyCount"]))

    with caplog.at_level("INFO", logger="backfill"):
        summaries = load(moto_s3, bucket, database, tmp_path / "rejects.log", s3=client)

    assert listings == [100, 55]  # 155 keys start with lmnh_hist_data_
    assert sorted(summaries) == ["lmnh_hist_data_empty.csv", "lmnh_hist_data_header.csv",
                                 "lmnh_hist_data_zz.csv"]
    assert summaries["lmnh_hist_data_empty.csv"].skipped == "the file is empty"
    assert summaries["lmnh_hist_data_header.csv"].skipped == (
        "header 'time,site,val,type' is not 'at,site,val,type'")
    assert (summaries["lmnh_hist_data_zz.csv"].rows,
            summaries["lmnh_hist_data_zz.csv"].stored) == (2, 2)  # the blank line is no row
    assert database.query("SELECT source, source_offset FROM rating_interaction ORDER BY 2") == [
        (f"s3://{bucket}/lmnh_hist_data_zz.csv", 2), (f"s3://{bucket}/lmnh_hist_data_zz.csv", 4)]
    skipped = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in skipped] == [
        f"s3://{bucket}/lmnh_hist_data_empty.csv: skipped (the file is empty)",
        f"s3://{bucket}/lmnh_hist_data_header.csv: skipped"
        " (header 'time,site,val,type' is not 'at,site,val,type')",
    ]


class Expected(NamedTuple):
    ratings: Counter
    requests: Counter
    outside_hours: int
    invalid_val: int


def generated_export(rows: int) -> tuple[str, Expected]:
    """`rows` deterministic lines, 1,000 a day from 2024-01-01, and what they must give.

    A million rows span 1,000 days, clock changes included. Every 50th press is at 07:00
    (outside hours); val cycles -1..5 (5 is invalid); every 1,000th line repeats the line
    before it word for word (two presses, both stored).
    """
    days = [(date(2024, 1, 1) + timedelta(days=n)).isoformat() for n in range(1000)]
    ratings, requests = Counter(), Counter()
    outside = invalid = 0
    lines = [HEADER]
    fields: tuple[str, str, int, str] = ("", "", 0, "")
    for i in range(rows):
        if i % 1000 != 999:  # otherwise the previous fields again: an identical line
            seconds = 9 * 3600 + (i % 1000) * 30
            clock = "07:00:00" if i % 50 == 49 else (
                f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
            val = i % 7 - 1
            fields = (f"{days[i // 1000 % 1000]} {clock}", str(i % 6), val,
                      ("0.0" if i % 2 else "1.0") if val == -1 else "")
        at, site, val, kind = fields
        lines.append(f"{at},{site},{val},{kind}\n")
        if at.endswith("07:00:00"):
            outside += 1
        elif val == 5:
            invalid += 1
        elif val == -1:
            requests[(int(site), int(float(kind)))] += 1
        else:
            ratings[(int(site), val)] += 1
    return "".join(lines), Expected(ratings, requests, outside, invalid)


def test_a_rerun_after_a_kill_9_mid_file_stores_each_line_once(
        moto_s3: MotoS3, database: Database, tmp_path: Path) -> None:
    """`kill -9` once some batches are committed, then the same command again: every line
    stored once. BACKFILL_ROWS=1000000 makes the rerun a throughput measurement (pytest -s)."""
    rows = int(os.environ.get("BACKFILL_ROWS", "20000"))
    export, expected = generated_export(rows)
    accepted = sum(expected.ratings.values()) + sum(expected.requests.values())
    rejected = expected.outside_hours + expected.invalid_val
    bucket = new_bucket(moto_s3, {"lmnh_hist_data_generated.csv": export})
    env = command_env(database, moto_s3, bucket, tmp_path / "rejects.log", BATCH_SIZE="500")

    def stored_rows() -> int:
        return int(database.scalar("SELECT (SELECT count(*) FROM rating_interaction)"
                                   " + (SELECT count(*) FROM request_interaction)"))

    killed = subprocess.Popen([sys.executable, "-m", "lmnh.apps.backfill"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: stored_rows() >= 1000 or killed.poll() is not None, 120,
                   "the first batches committed", interval=0.002)
    finally:
        killed.kill()
        killed.wait()
    already = stored_rows()
    assert 1000 <= already < accepted, f"killed too late ({already} of {accepted} rows)"

    resumed = run_command(env)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert total_line(resumed.stdout).startswith(
        f"total (files=1 skipped=0): read={rows} stored={accepted - already}"
        f" already_present={already} rejected={rejected}"
        f" [invalid_val={expected.invalid_val} outside_hours={expected.outside_hours}] in ")
    assert stored_ratings(database) == expected.ratings
    assert stored_requests(database) == expected.requests
    assert stored_rows() == accepted
    assert database.query("SELECT count(*), count(DISTINCT source_offset) FROM rejected_message"
                          ) == [(rejected, rejected)]
    assert database.scalar("SELECT sum(ratings) FROM rating_hourly") == sum(
        expected.ratings.values())
    print(f"\n{rows} generated rows, rerun after kill -9: {total_line(resumed.stdout)}")


# ------------------------------------------------------------------ failures


def test_an_unreachable_database_exits_1_with_one_line(moto_s3: MotoS3, database: Database,
                                                       tmp_path: Path) -> None:
    bucket = new_bucket(moto_s3, {})
    env = command_env(database, moto_s3, bucket, tmp_path / "rejects.log",
                      DATABASE_PORT=str(free_port()), DATABASE_CONNECT_TIMEOUT_S="2")

    result = run_command(env)

    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot reach the database" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_bucket_exits_1_with_one_line(moto_s3: MotoS3, database: Database,
                                                tmp_path: Path) -> None:
    env = command_env(database, moto_s3, "no-such-bucket-here", tmp_path / "rejects.log")

    result = run_command(env)

    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot load exhibitions from s3://no-such-bucket-here" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_the_exit_codes_0_1_2_and_130(moto_s3: MotoS3, database: Database,
                                      tmp_path: Path) -> None:
    """0 done, 1 a service failed (both tested above), 2 a bad setting, 130 interrupted."""
    export, _ = generated_export(20000)
    bucket = new_bucket(moto_s3, {"lmnh_hist_data_generated.csv": export})
    env = command_env(database, moto_s3, bucket, tmp_path / "rejects.log", BATCH_SIZE="500")

    bad = run_command(env | {"BATCH_SIZE": "0"})
    assert bad.returncode == 2 and "BATCH_SIZE" in bad.stdout + bad.stderr
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 0

    # Run as a shell script's background job, this suite starts with SIGINT ignored, and an
    # ignored signal stays ignored across exec; caught here, it is the default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupted = subprocess.Popen([sys.executable, "-m", "lmnh.apps.backfill"], cwd=ROOT,
                                       env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_until(lambda: database.scalar("SELECT count(*) FROM rating_interaction") > 0
                   or interrupted.poll() is not None, 120, "the first batch", interval=0.002)
        interrupted.send_signal(signal.SIGINT)
        output, _ = interrupted.communicate(timeout=60)
    finally:
        interrupted.kill()
    assert interrupted.returncode == 130, output
    assert "interrupted; run again to finish" in output and "Traceback" not in output
