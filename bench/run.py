"""The pipeline's benchmark: backlog drain against the machine's limits and other consumers.

    python3 dev.py bench            # both databases, both mixes, 3 runs each (about 14 minutes)
    python3 dev.py bench --quick    # CI's short version: embedded PostgreSQL, simulator, one run
    python3 dev.py bench --db embedded --mix real --runs 1

For each database (the embedded PostgreSQL; Debian's PostgreSQL 15 as a standalone server over
TCP with scram-sha-256 password authentication, started here) and each mix (the simulator's;
the real capture ../shared/data/stream/lmnh_stream_2026-02-24.txt cycled), every run uses a
fresh database, topic and group for each phase, on librdkafka's mock cluster (or
TEST_BOOTSTRAP_SERVERS) and moto S3:
1. backlog: --messages loaded into a topic, then `python pipeline.py` timed until every offset
   is committed; the tables and reject log must then be exact (a fifth of the backlog goes
   first through its own pipeline, to see whether memory grows with it);
2. the limits on the same backlog (bench/limits.py): binary COPY alone of its accepted rows,
   encoded beforehand, as many messages a transaction as the pipeline's largest (BATCH_SIZE
   times WRITE_JOIN_BATCHES); a bare consume loop; and beside them the pipeline's write alone
   (the backlog judged beforehand, then db.write_interactions, as many a transaction);
3. baseline: the usual consumer (bench/baseline.py) on the first --baseline-messages;
4. the peer: the best peer's batched design (bench/peer.py) on the whole backlog, its rows
   inserted by execute_values, one transaction every 5,000 messages;
5. latency: presses at 5,000 and at 20 messages/s, produce to row commit.
Before each timed phase but latency the server is CHECKPOINTed, so that none is timed while
the pages an earlier phase dirtied are written out.
It prints one table of medians (with min and max) per database and mix, each target met or
MISSED, and exits 1 if any phase's tables are not exact. Pipeline settings (BATCH_SIZE,
BATCH_LINGER_MS, STATS_INTERVAL_S) pass through from the environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backlog import Backlog, BacklogResult, check_exact, run_backlog
from bench.baseline import run_baseline
from bench.latency import LatencyResult, run_latency
from bench.limits import consume_limit, copy_limit, write_limit
from bench.peer import run_peer
from bench.services import DATABASES, TUNABLES, BenchError, Services, running_services
from lmnh.services.writer import WRITE_JOIN_BATCHES
from lmnh.settings import PipelineSettings as Settings

MIXES = ("sim", "real")
FULL = {"messages": 140_000, "runs": 3, "latency_seconds": 10.0, "db": "all", "mix": "all"}
QUICK = {"messages": 30_000, "runs": 1, "latency_seconds": 3.0, "db": "embedded", "mix": "sim"}
HIGH_RATE, LOW_RATE = 5_000.0, 20.0
LOW_RATE_MIN_SECONDS = 20.0  # at 20 msg/s fewer seconds give too few rows for a p99
FLAT_RSS_MB = 5  # growth allowed from a fifth of the backlog to all of it
LABEL_WIDTH = 64  # the longest figure's label


@dataclass(frozen=True)
class RunResult:
    backlog: BacklogResult
    small_backlog: BacklogResult  # a fifth of the backlog, to see whether memory grows with it
    copy_rate: float  # limit (a): binary COPY alone, messages/s
    consume_rate: float  # limit (b): a bare consume loop, messages/s
    write_rate: float  # the pipeline's write path alone, messages/s
    baseline_rate: float
    peer_rate: float  # the best peer's batched design on the whole backlog, messages/s
    high: LatencyResult
    low: LatencyResult

    @property
    def drain(self) -> float:
        return self.backlog.drain_messages / self.backlog.drain_s


@dataclass(frozen=True)
class Figure:
    """One line of the table: a figure's value in each run, and its target if it has one."""

    label: str
    values: list[float]
    shown: str  # format for one value, e.g. "{:,.0f}"
    target: str = ""
    met: Callable[[float], bool] | None = None

    def line(self) -> str:
        median = statistics.median(self.values)
        cells = "".join(f"{self.shown.format(v):>10}"
                        for v in (median, min(self.values), max(self.values)))
        status = "" if self.met is None else ("met" if self.met(median) else "MISSED")
        return f"{self.label:<{LABEL_WIDTH}}{cells}  {self.target:<14}{status}".rstrip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=(*DATABASES, "all"),
                        help=f"which PostgreSQL (default {FULL['db']})")
    parser.add_argument("--mix", choices=(*MIXES, "all"), help=f"which messages "
                        f"(default {FULL['mix']}; real needs ../shared)")
    parser.add_argument("--messages", type=int, help=f"backlog size (default {FULL['messages']:,})")
    parser.add_argument("--runs", type=int, help=f"runs per figure (default {FULL['runs']})")
    parser.add_argument("--latency-seconds", type=float,
                        help=f"each latency phase's length (default {FULL['latency_seconds']:g};"
                        f" at least {LOW_RATE_MIN_SECONDS:g} at {LOW_RATE:g} msg/s)")
    parser.add_argument("--baseline-messages", type=int, default=2_000,
                        help="messages the baseline consumer is timed on (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI's short version: {QUICK['messages']:,} messages, one run, "
                        "the embedded PostgreSQL and the simulator's mix")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.messages, args.runs, args.baseline_messages) < 1 or args.latency_seconds <= 0:
        parser.error("sizes, runs and durations must be positive")
    args.dbs = DATABASES if args.db == "all" else (args.db,)
    args.mixes = MIXES if args.mix == "all" else (args.mix,)
    return args


def run_once(services: Services, backlog: Backlog, mix: str,
             args: argparse.Namespace) -> RunResult:
    small = run_backlog(services.stage("small-backlog"), backlog.head(len(backlog.values) // 5))
    stage = services.stage("backlog")
    backlog_result = run_backlog(stage, backlog)
    if not backlog_result.drain_messages:
        raise BenchError("the whole backlog went in the first batch: use more --messages")
    # The most messages one of the pipeline's transactions writes: the limits write as many.
    transaction = WRITE_JOIN_BATCHES * int(stage.pipeline_env.get(
        "BATCH_SIZE", Settings.model_fields["BATCH_SIZE"].default))
    stage.checkpoint()
    copy_rate = copy_limit(stage, backlog, transaction)
    consume_rate = consume_limit(stage, len(backlog.values))
    write_stage = services.stage("write-alone")
    write_stage.checkpoint()
    write_rate = write_limit(write_stage, backlog, transaction, services.exhibitions().values())
    head = backlog.head(args.baseline_messages)
    stage = services.stage("baseline")
    head.load(stage)
    stage.checkpoint()
    baseline_rate = run_baseline(stage, len(head.values), services.exhibitions())
    check_exact(stage, head)
    stage = services.stage("peer")
    backlog.load(stage)
    stage.checkpoint()
    peer_rate = run_peer(stage, len(backlog.values), services.exhibitions())
    check_exact(stage, backlog)
    high = run_latency(services.stage("latency-high"), HIGH_RATE, args.latency_seconds, mix)
    low = run_latency(services.stage("latency-low"), LOW_RATE,
                      max(args.latency_seconds, LOW_RATE_MIN_SECONDS if not args.quick else 0),
                      mix)
    return RunResult(backlog_result, small, copy_rate, consume_rate, write_rate, baseline_rate,
                     peer_rate, high, low)


def figures(runs: list[RunResult]) -> list[Figure]:
    backlogs = [run.backlog for run in runs]
    limit = [min(r.copy_rate, r.consume_rate) for r in runs]
    return [
        Figure("backlog drain: messages/s", [r.drain for r in runs], "{:,.0f}"),
        Figure("limit (a) binary COPY alone: messages/s", [r.copy_rate for r in runs],
               "{:,.0f}"),
        Figure("limit (b) bare consume loop: messages/s", [r.consume_rate for r in runs],
               "{:,.0f}"),
        Figure("drain / min(limits)", [r.drain / lim for r, lim in zip(runs, limit, strict=True)],
               "{:.0%}", ">= 60%", lambda v: v >= 0.6),
        Figure("the pipeline's write alone: messages/s", [r.write_rate for r in runs], "{:,.0f}"),
        Figure("  its share of limit (a)",
               [r.write_rate / r.copy_rate for r in runs], "{:.0%}"),
        Figure("baseline (INSERT+COMMIT a message): msg/s", [r.baseline_rate for r in runs],
               "{:,.0f}"),
        Figure("drain / baseline", [r.drain / r.baseline_rate for r in runs], "{:.1f}x",
               ">= 60x", lambda v: v >= 60),
        Figure("peer's batched design (execute_values, 5,000 rows a txn): msg/s",
               [r.peer_rate for r in runs], "{:,.0f}"),
        Figure("drain / peer's batched design", [r.drain / r.peer_rate for r in runs],
               "{:.1f}x", ">= 4x", lambda v: v >= 4),
        Figure("backlog drain: rows/s", [b.drain_rows / b.drain_s for b in backlogs], "{:,.0f}"),
        Figure("start-up: process start to first commit, s", [b.startup_s for b in backlogs],
               "{:.2f}"),
        *(figure for rate, target, results in (
            (HIGH_RATE, 250, [r.high for r in runs]), (LOW_RATE, 100, [r.low for r in runs]))
          for figure in (
            Figure(f"latency at {rate:,.0f} msg/s: p50, ms", [x.pipeline.p50_ms for x in results],
                   "{:.0f}"),
            Figure(f"latency at {rate:,.0f} msg/s: p99, ms", [x.pipeline.p99_ms for x in results],
                   "{:.0f}", f"<= {target}", lambda v, target=target: v <= target),
            Figure("  of which broker (bare consumer): p99, ms",
                   [x.broker.p99_ms for x in results], "{:.0f}"))),
        Figure("pipeline peak RSS (VmHWM, with judging), MB", [b.peak_rss_mb for b in backlogs],
               "{:.0f}", "<= 150", lambda v: v <= 150),
        Figure("  the same with a fifth of the backlog, MB",
               [r.small_backlog.peak_rss_mb for r in runs], "{:.0f}"),
        Figure("  growth with the other four fifths, MB",
               [r.backlog.peak_rss_mb - r.small_backlog.peak_rss_mb for r in runs], "{:.1f}",
               f"<= {FLAT_RSS_MB}", lambda v: v <= FLAT_RSS_MB),
        Figure("CPU s per 100,000 messages, drain",
               [b.drain_cpu_s / b.drain_messages * 100_000 for b in backlogs], "{:.2f}"),
        Figure("CPU s per 100,000 messages, whole run",
               [b.total_cpu_s / b.messages * 100_000 for b in backlogs], "{:.2f}"),
    ]


def section(database: str, mix: str, services: Services, backlog: Backlog,
            runs: list[RunResult], seconds: float) -> str:
    expected = backlog.expected
    server = ("embedded PostgreSQL (pip), fsync on" if database == "embedded" else
              "Debian PostgreSQL 15, TCP, scram-sha-256 password, fsync on")
    return "\n".join([
        f"== {server}; {'the real capture cycled' if mix == 'real' else 'the simulator'}: "
        f"{len(backlog.values):,} messages on {runs[0].backlog.partitions} partitions "
        f"({services.broker_name}), {len(runs)} run(s)",
        f"{'figure':<{LABEL_WIDTH}}{'median':>10}{'min':>10}{'max':>10}  {'target':<14}",
        *(figure.line() for figure in figures(runs)),
        f"exact: every phase's tables and reject log matched validation.validate (backlog: "
        f"{expected.ratings.total():,} ratings, {expected.requests.total():,} requests, "
        f"{expected.rejects.total():,} rejects); latency {seconds:g} s a rate.",
        "",
    ])


NOTES = f"""Targets are judged on the median. drain: from the first offset commit seen (partitions
  assigned, first batch written) to the last, over the messages committed in between.
limits: (a) binary COPY alone of the backlog's accepted rows, encoded by rows.py before timing,
  into tables LIKE ours INCLUDING ALL (same key), {WRITE_JOIN_BATCHES} x BATCH_SIZE messages
  a transaction (the most the pipeline's writer joins into one); (b) a bare consume loop
  (bench/limits.py's settings), from its first batch. Both in messages/s.
the write alone: db.write_interactions of the backlog judged beforehand (every table, the rollup
  trigger, the progress marks), {WRITE_JOIN_BATCHES} x BATCH_SIZE messages a transaction:
  the drain's bound on the database's side.
Each phase but latency starts after a CHECKPOINT of the server.
baseline: one INSERT and COMMIT a message, from its first message to its last commit.
the peer's batched design: the whole backlog by one consumer, single thread, each message
  validated, rejects to the log; every 5,000 messages its ratings and requests inserted by
  execute_values (bench/peer.py's page_size) in one transaction, then the offsets committed
  (no rejected_message rows, no progress marks); from its first message to its last commit.
latency: Kafka CreateTime to pg_xact_commit_timestamp(xmin) of the row (rejects have no row);
  the broker's share is when a bare consumer with the pipeline's settings gets each message.
peak RSS: the pipeline's VmHWM plus its judging process's, after the whole backlog and after a
  fifth of it (its own run). CPU: both processes' user and system time from /proc."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load, started = os.getloadavg()[0], time.monotonic()
    settings = " ".join(f"{name}={os.environ.get(name, Settings.model_fields[name].default)}"
                        for name in TUNABLES)
    print(f"LMNH pipeline benchmark: {os.cpu_count()} CPU cores, load average {load:.1f} at the "
          f"start; pipeline {settings}\n", flush=True)
    try:
        backlogs = {mix: Backlog.of_mix(mix, args.messages) for mix in args.mixes}
        for database in args.dbs:
            with (tempfile.TemporaryDirectory(prefix="lmnh-bench-") as workdir,
                  running_services(Path(workdir), database) as services):
                for mix, backlog in backlogs.items():
                    runs = []
                    for number in range(1, args.runs + 1):
                        print(f"{database} / {mix}: run {number} of {args.runs}", file=sys.stderr,
                              flush=True)
                        runs.append(run_once(services, backlog, mix, args))
                    print(section(database, mix, services, backlog, runs, args.latency_seconds),
                          flush=True)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    print(NOTES)
    print(f"benchmark took {time.monotonic() - started:,.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
