"""The pipeline's benchmark: backlog throughput against the usual consumer, latency, memory, CPU.

    python3 dev.py bench            # 150,000 messages, 3 runs, a 60 s latency phase (~5 minutes)
    python3 dev.py bench --quick    # CI's short version: 30,000 messages, one run

Each run uses the embedded services of the tests (PostgreSQL, librdkafka's mock cluster or
TEST_BOOTSTRAP_SERVERS, moto S3) and a fresh database, topic and group for each phase:
1. backlog: the simulator loads --messages into a topic, then `python pipeline.py` is timed
   until every offset is committed; the tables and reject log must then be exact (a fifth of
   the backlog goes first through its own pipeline, to see whether memory grows with it);
2. baseline: the usual consumer (bench/baseline.py) on the first --baseline-messages of it;
3. latency: presses at --latency-rate for --latency-seconds, produce to row commit.
It prints one table of medians (with min and max) against the targets, and exits 1 if any
phase's tables are not exact. Pipeline settings (BATCH_SIZE, BATCH_LINGER_MS, STATS_INTERVAL_S)
pass through from the environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backlog import Backlog, BacklogResult, check_exact, run_backlog
from bench.baseline import run_baseline
from bench.latency import LatencyResult, run_latency
from bench.services import TUNABLES, BenchError, Services, running_services
from settings import PipelineSettings as Settings

FULL = {"messages": 150_000, "runs": 3, "latency_seconds": 60.0}
QUICK = {"messages": 30_000, "runs": 1, "latency_seconds": 10.0}
FLAT_RSS_MB = 5  # "flat with backlog size": growth allowed from a fifth of the backlog to all


@dataclass(frozen=True)
class RunResult:
    backlog: BacklogResult
    small_backlog: BacklogResult  # a fifth of the backlog, to see whether memory grows with it
    baseline_rate: float
    latency: LatencyResult


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
        return f"{self.label:<48}{cells}  {self.target:<14}{status}".rstrip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help=f"backlog size (default {FULL['messages']:,})")
    parser.add_argument("--runs", type=int, help=f"runs per figure (default {FULL['runs']})")
    parser.add_argument("--latency-seconds", type=float,
                        help=f"latency phase length (default {FULL['latency_seconds']:g})")
    parser.add_argument("--latency-rate", type=float, default=20.0,
                        help="messages a second in the latency phase (default %(default)g)")
    parser.add_argument("--baseline-messages", type=int, default=5_000,
                        help="messages the baseline consumer is timed on (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI's short version: {QUICK['messages']:,} messages, one run, "
                        f"a {QUICK['latency_seconds']:g} s latency phase")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.messages, args.runs, args.baseline_messages) < 1 or args.latency_seconds <= 0:
        parser.error("sizes, runs and durations must be positive")
    return args


def run_once(services: Services, backlog: Backlog, args: argparse.Namespace) -> RunResult:
    small = run_backlog(services.stage("small-backlog"), backlog.head(len(backlog.values) // 5))
    backlog_result = run_backlog(services.stage("backlog"), backlog)
    if not backlog_result.drain_messages:
        raise BenchError("the whole backlog went in the first batch: use more --messages")
    head = backlog.head(args.baseline_messages)
    stage = services.stage("baseline")
    head.load(stage)
    baseline_rate = run_baseline(stage, len(head.values), services.exhibitions())
    check_exact(stage, head)
    latency = run_latency(services.stage("latency"), args.latency_rate, args.latency_seconds)
    return RunResult(backlog_result, small, baseline_rate, latency)


def figures(runs: list[RunResult], rate: float) -> list[Figure]:
    backlogs = [run.backlog for run in runs]
    drain = [b.drain_messages / b.drain_s for b in backlogs]
    return [
        Figure("backlog drain: messages/s", drain, "{:,.0f}", ">= 80,000", lambda v: v >= 80_000),
        Figure("backlog drain: rows/s", [b.drain_rows / b.drain_s for b in backlogs], "{:,.0f}"),
        Figure("from process start: messages/s", [b.messages / b.total_s for b in backlogs],
               "{:,.0f}"),
        Figure("from process start: rows/s", [b.rows / b.total_s for b in backlogs], "{:,.0f}"),
        Figure("start-up: process start to first commit, s", [b.startup_s for b in backlogs],
               "{:.2f}"),
        Figure("baseline (INSERT+COMMIT a message): msg/s", [r.baseline_rate for r in runs],
               "{:,.0f}"),
        Figure("drain / baseline", [d / r.baseline_rate for d, r in zip(drain, runs, strict=True)],
               "{:.1f}x", ">= 25x", lambda v: v >= 25),
        Figure(f"latency at {rate:g} msg/s: p50, ms", [r.latency.pipeline.p50_ms for r in runs],
               "{:.0f}", "<= 100", lambda v: v <= 100),
        Figure(f"latency at {rate:g} msg/s: p99, ms", [r.latency.pipeline.p99_ms for r in runs],
               "{:.0f}", "<= 250", lambda v: v <= 250),
        Figure(f"latency at {rate:g} msg/s: max, ms", [r.latency.pipeline.max_ms for r in runs],
               "{:.0f}"),
        Figure("  of which broker (bare consumer): p50, ms",
               [r.latency.broker.p50_ms for r in runs], "{:.0f}"),
        Figure("  of which broker (bare consumer): p99, ms",
               [r.latency.broker.p99_ms for r in runs], "{:.0f}"),
        Figure("pipeline peak RSS (VmHWM), MB", [b.peak_rss_mb for b in backlogs], "{:.0f}",
               "< 150", lambda v: v < 150),
        Figure("  the same with a fifth of the backlog, MB",
               [r.small_backlog.peak_rss_mb for r in runs], "{:.0f}"),
        Figure("  growth with the other four fifths, MB",
               [r.backlog.peak_rss_mb - r.small_backlog.peak_rss_mb for r in runs], "{:.1f}",
               f"<= {FLAT_RSS_MB} (flat)", lambda v: v <= FLAT_RSS_MB),
        Figure("CPU s per 100,000 messages, drain",
               [b.drain_cpu_s / b.drain_messages * 100_000 for b in backlogs], "{:.2f}"),
        Figure("CPU s per 100,000 messages, whole process",
               [b.total_cpu_s / b.messages * 100_000 for b in backlogs], "{:.2f}"),
    ]


def table(services: Services, backlog: Backlog, runs: list[RunResult],
          args: argparse.Namespace, load: float) -> str:
    first = runs[0]
    settings = " ".join(f"{name}={os.environ.get(name, Settings.model_fields[name].default)}"
                        for name in TUNABLES)
    expected = backlog.expected
    return "\n".join([
        f"LMNH pipeline benchmark: {len(backlog.values):,} messages on "
        f"{first.backlog.partitions} partitions, {len(runs)} run(s); {os.cpu_count()} CPU cores, "
        f"load average {load:.1f} at the start",
        f"services: embedded PostgreSQL (fsync on), {services.broker_name}, moto S3; "
        f"pipeline {settings}",
        "",
        f"{'figure':<48}{'median':>10}{'min':>10}{'max':>10}  {'target':<14}",
        *(figure.line() for figure in figures(runs, args.latency_rate)),
        "",
        f"exact: every phase's tables and reject log matched validation.validate (backlog: "
        f"{expected.ratings.total():,} ratings, {expected.requests.total():,} requests, "
        f"{expected.rejects.total():,} rejects).",
        "Targets are judged on the median.",
        "drain: from the first offset commit seen (partitions assigned, first batch written) to",
        "  the last, over the messages committed in between: the catch-up rate once running.",
        "from process start: adds Python start-up, the S3 metadata, the database connection and",
        "  the consumer-group join (about 3 s on the mock cluster), paid once per (re)start.",
        f"baseline: the first {min(args.baseline_messages, len(backlog.values)):,} messages, "
        "timed from its first message to its last commit.",
        f"latency: Kafka CreateTime to pg_xact_commit_timestamp(xmin) of the row, "
        f"{first.latency.rows:,} rows a run",
        f"  ({args.latency_seconds:g} s at {args.latency_rate:g} msg/s; rejects have no row). "
        "The broker's share is when a bare",
        "  consumer with the pipeline's consumer settings gets each message: the mock cluster "
        "answers a fetch",
        "  that finds nothing after fetch.wait.max.ms (KAFKA_FETCH_WAIT_MAX_MS) even if messages"
        " arrive meanwhile.",
        "peak RSS: the pipeline's VmHWM just before it is stopped, after the whole backlog and",
        f"  after a fifth of it (its own run); flat means at most {FLAT_RSS_MB} MB apart.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"simulating {args.messages:,} messages...", file=sys.stderr, flush=True)
    backlog = Backlog.simulate(args.messages)
    runs: list[RunResult] = []
    load = os.getloadavg()[0]  # other work on the machine makes the figures noisier
    try:
        with (tempfile.TemporaryDirectory(prefix="lmnh-bench-") as workdir,
              running_services(Path(workdir)) as services):
            for number in range(1, args.runs + 1):
                print(f"run {number} of {args.runs}: backlog, baseline, "
                      f"{args.latency_seconds:g} s of latency", file=sys.stderr, flush=True)
                runs.append(run_once(services, backlog, args))
            print(table(services, backlog, runs, args, load), flush=True)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
