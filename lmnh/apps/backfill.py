"""Historical backfill: the kiosks' CSV exports in S3 -> the stream's rules -> PostgreSQL.

Run `lmnh-backfill`, configured by the same environment and `.env` as the daemon. It reads
every `lmnh_hist_data_*.csv` in S3_BUCKET (header `at,site,val,type`, `at` in museum local time),
turns each line into the shape of a Kafka message, judges it with validation.validate_object,
writes rejects to REJECT_LOG, and writes the valid presses and the reject records to the daemon's
tables, BATCH_SIZE lines per transaction. A row's source is (s3://bucket/key, 0, physical line
number), so running it again, or after it was killed, never stores a line twice.
"""

from __future__ import annotations

from lmnh import requires_python  # noqa: F401 - first: an older Python gets one line

# isort: split
import argparse
import csv
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from itertools import islice
from typing import Any, NamedTuple

import db
import validation
from lmnh.core.errors import one_line
from lmnh.core.reject_lines import format_reject_line
from lmnh.services.reject_log import RejectLog
from lmnh.settings import BackfillSettings, read_settings
from s3_metadata import METADATA_ERRORS, S3_ERRORS, load_exhibitions, s3_client
from validation import Rating, Reason, Rejection, Rules, Verdict

log = logging.getLogger("backfill")

HISTORY_PREFIX = "lmnh_hist_data_"
# No control characters or backslashes: the key goes into the tab-separated, one-line-per-reject
# log and into the rows' `source`, which travels in COPY's text format.
HISTORY_KEY = re.compile(r"lmnh_hist_data_[^/\\\x00-\x1f\x7f]*\.csv")
HEADER = b"at,site,val,type"
FIELD_COUNT = 4
SOURCE_PARTITION = 0
LOCAL_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
VAL_TEXT = re.compile(r"-?[0-9]{1,9}")
# The export wrote the request type as a float: "0.0" assistance, "1.0" emergency.
TYPE_TEXT = re.compile(r"-?[0-9]{1,9}(\.0)?")
CHUNK_BYTES = 1 << 20


# ---------------------------------------------------------------- the pure part


def is_history_key(key: str) -> bool:
    return HISTORY_KEY.fullmatch(key) is not None


def header_problem(first_line: bytes | None) -> str | None:
    """Why a file cannot be read as a kiosk export, judging by its first line; None if it can."""
    if first_line is None:
        return "the file is empty"
    if first_line != HEADER:
        shown = first_line[:60].decode("utf-8", errors="replace")
        return f"header {shown!r} is not {HEADER.decode()!r}"
    return None


def parse_local_at(text: str, tz: tzinfo) -> datetime | Rejection:
    """`YYYY-MM-DD HH:MM:SS[.ffffff]` in museum local time, as an aware datetime."""
    if LOCAL_AT.fullmatch(text) is None:
        return Rejection(Reason.INVALID_AT, f"at {text[:32]!r} is not YYYY-MM-DD HH:MM:SS")
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return Rejection(Reason.INVALID_AT, f"at {text!r} is not a real date and time")
    return validation.localize(naive, tz)


def _number_or_text(text: str, pattern: re.Pattern[str]) -> int | str:
    """The CSV's spelling of an integer as an int; anything else stays text for the rules to
    reject, exactly as the stream's `"val": "3.5"` is rejected."""
    return int(float(text)) if pattern.fullmatch(text) else text


def parse_row(raw: bytes, tz: tzinfo) -> dict[str, Any] | Rejection:
    """One data line as the stream's message object ({"at", "site", "val"[, "type"]}).

    Only the CSV's own faults are judged here (encoding, shape, the local `at`); every other
    rule is left to validation.validate_object, so a fault the stream also has gets the same
    reason code.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(Reason.INVALID_CSV, "not UTF-8")
    try:
        fields = next(csv.reader((text,), strict=True))
    except csv.Error as error:
        return Rejection(Reason.INVALID_CSV, str(error)[:80])
    if len(fields) != FIELD_COUNT:
        return Rejection(Reason.INVALID_CSV, f"{len(fields)} fields, not {FIELD_COUNT}")
    at_text, site, val_text, type_text = fields
    at = parse_local_at(at_text, tz)
    if isinstance(at, Rejection):
        return at
    obj: dict[str, Any] = {"at": at.isoformat(), "site": site,
                           "val": _number_or_text(val_text, VAL_TEXT)}
    if type_text:
        obj["type"] = _number_or_text(type_text, TYPE_TEXT)
    return obj


def judge_row(raw: bytes, rules: Rules, now: datetime) -> Verdict:
    """Judge one data line by the stream's rules. `now` is the processing clock."""
    obj = parse_row(raw, rules.museum_tz)
    if isinstance(obj, Rejection):
        return obj
    return validation.validate_object(obj, rules, now)


class RowReject(NamedTuple):
    line: int
    reason: Reason
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class JudgedRows:
    """One batch of a file's lines, judged: rows to write and rejects to log."""

    ratings: list[db.Interaction] = field(default_factory=list)
    requests: list[db.Interaction] = field(default_factory=list)
    rejects: list[RowReject] = field(default_factory=list)


def judge_rows(lines: Iterable[tuple[int, bytes]], source: str, rules: Rules,
               now: datetime) -> JudgedRows:
    """Judge (line number, line) pairs of the file `source` (s3://bucket/key)."""
    batch = JudgedRows()
    for number, raw in lines:
        verdict = judge_row(raw, rules, now)
        if isinstance(verdict, Rejection):
            batch.rejects.append(RowReject(number, verdict.reason, verdict.detail, raw))
        else:
            rows = batch.ratings if type(verdict) is Rating else batch.requests
            rows.append(db.Interaction.of(verdict, source, SOURCE_PARTITION, number))
    return batch


def format_reject(source: str, reject: RowReject, logged_at: datetime,
                  max_value_bytes: int) -> str:
    """The daemon's reject-log line, located by file and line: `s3://bucket/key:17`."""
    return format_reject_line(logged_at, reject.reason, f"{source}:{reject.line}", reject.detail,
                              reject.raw, max_value_bytes)


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What one file gave; `already_present` rows were valid but stored by an earlier run."""

    source: str
    rows: int = 0
    stored: int = 0
    already_present: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: str | None = None

    def add(self, batch: JudgedRows, inserted: int) -> FileSummary:
        accepted = len(batch.ratings) + len(batch.requests)
        return replace(self, rows=self.rows + accepted + len(batch.rejects),
                       stored=self.stored + inserted,
                       already_present=self.already_present + accepted - inserted,
                       rejected=self.rejected + Counter(r.reason.value for r in batch.rejects))

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.source}: skipped ({self.skipped})"
        reasons = " ".join(f"{reason}={n}" for reason, n in sorted(self.rejected.items()))
        return (f"{self.source}: read={self.rows} stored={self.stored}"
                f" already_present={self.already_present}"
                f" rejected={self.rejected.total()} [{reasons}]")


def total(summaries: Sequence[FileSummary]) -> FileSummary:
    """All files together, as one summary whose source says how many were read or skipped."""
    skipped = sum(1 for s in summaries if s.skipped is not None)
    return FileSummary(
        source=f"total (files={len(summaries) - skipped} skipped={skipped})",
        rows=sum(s.rows for s in summaries),
        stored=sum(s.stored for s in summaries),
        already_present=sum(s.already_present for s in summaries),
        rejected=sum((s.rejected for s in summaries), Counter()),
    )


def batches(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# ---------------------------------------------------------------- the imperative shell


def history_keys(s3: Any, bucket: str) -> list[str]:
    """Every page of the bucket's `lmnh_hist_data_` keys, keeping only the CSV exports."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=HISTORY_PREFIX)
    return [item["Key"] for page in pages for item in page.get("Contents", ())
            if is_history_key(item["Key"])]


def backfill_file(s3: Any, bucket: str, key: str, conn: db.Connection, reject_log: RejectLog,
                  rules: Rules, batch_size: int) -> FileSummary:
    """Stream one object and load it batch by batch: rejects logged first, then one transaction
    for the batch's rows and reject records (the same as the daemon's batch).

    Line numbers are physical (the header is line 1), so `s3://bucket/key:17` is `sed -n 17p`
    of the file. Blank lines are not rows.
    """
    source = f"s3://{bucket}/{key}"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        lines = enumerate(body.iter_lines(chunk_size=CHUNK_BYTES), start=1)
        first = next(lines, None)
        problem = header_problem(None if first is None else first[1])
        if problem is not None:
            return FileSummary(source, skipped=problem)
        summary = FileSummary(source)
        for chunk in batches(((n, raw) for n, raw in lines if raw), batch_size):
            batch = judge_rows(chunk, source, rules, datetime.now(UTC))
            logged_at = datetime.now(UTC)
            reject_log.write([format_reject(source, r, logged_at, reject_log.max_value_bytes)
                              for r in batch.rejects])
            rejected = [db.Rejected(r.reason, logged_at, source, SOURCE_PARTITION, r.line)
                        for r in batch.rejects]
            result = db.write_interactions(conn, batch.ratings, batch.requests, rejected)
            summary = summary.add(batch, result.ratings_inserted + result.requests_inserted)
        return summary
    finally:
        body.close()


def backfill(s3: Any, bucket: str, conn: db.Connection, reject_log: RejectLog, rules: Rules,
             batch_size: int) -> list[FileSummary]:
    """Load every export in the bucket, logging one summary line per file as it finishes."""
    keys = history_keys(s3, bucket)
    if not keys:
        log.warning("no %s*.csv in s3://%s: nothing to backfill", HISTORY_PREFIX, bucket)
    summaries = []
    for key in keys:
        summary = backfill_file(s3, bucket, key, conn, reject_log, rules, batch_size)
        log.log(logging.INFO if summary.skipped is None else logging.WARNING, "%s", summary.line())
        summaries.append(summary)
    return summaries


def run(settings: BackfillSettings) -> int:
    """The whole command after the settings are read; returns the exit status."""
    try:
        exhibitions = load_exhibitions(s3_client(), settings.S3_BUCKET)
    except METADATA_ERRORS as error:
        log.error("cannot load exhibitions from s3://%s: %s", settings.S3_BUCKET, one_line(error))
        return 1
    try:
        conn = db.connect(settings.database(), "lmnh-backfill", clock=settings.clock())
    except db.SchemaMismatch as error:
        log.error("%s", error)
        return 1
    except db.Error as error:
        log.error("cannot reach the database: %s", one_line(error))
        return 1
    log.info("backfilling s3://%s/%s*.csv into %s:%s/%s, %d exhibitions, reject log %s",
             settings.S3_BUCKET, HISTORY_PREFIX, settings.DATABASE_IP, settings.DATABASE_PORT,
             settings.DATABASE_NAME, len(exhibitions), settings.REJECT_LOG)
    started = time.monotonic()
    try:
        # Judged by what the database holds: a row at an exhibition it refused would fail.
        held = db.upsert_exhibitions(conn, exhibitions.values()).held
        rules = settings.rules({number: e.start_date for number, e in held.items()})
        reject_log = RejectLog(settings.REJECT_LOG, settings.REJECT_LOG_MAX_VALUE_BYTES)
        try:
            summaries = backfill(s3_client(), settings.S3_BUCKET, conn, reject_log, rules,
                                 settings.BATCH_SIZE)
        finally:
            reject_log.close()
    except S3_ERRORS as error:
        log.error("s3 error, stopping (run again to finish; nothing is stored twice): %s",
                  one_line(error))
        return 1
    except db.Error as error:
        log.error("database error, stopping (run again to finish; nothing is stored twice): %s",
                  one_line(error))
        return 1
    except OSError as error:
        log.error("cannot write the reject log %s (%s); stopping", settings.REJECT_LOG,
                  error.strerror or error)
        return 1
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    overall = total(summaries)
    log.info("%s in %.1fs (%.0f rows/s)", overall.line(), elapsed,
             overall.rows / elapsed if elapsed > 0 else 0.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials in ..." lines
    settings = read_settings(BackfillSettings)
    try:
        return run(settings)
    except KeyboardInterrupt:
        log.warning("interrupted; run again to finish (nothing is stored twice)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
