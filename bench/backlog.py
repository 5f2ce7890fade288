"""Backlog throughput: a topic loaded first, then the real pipeline timed until it has caught up.

Two windows are timed. From process start: Python start-up, the S3 metadata, the database
connection and the consumer-group join (about 3 s on the mock cluster), then all the work.
The drain: from the first offset commit seen (the pipeline has its partitions and has written
its first batch) to every offset committed; its messages are exactly those committed after it
opened, so it is the catch-up rate once running, which is what the throughput target is about.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

from bench.pipeline_process import PipelineProcess
from bench.services import ROOT, SITES, STARTS, BenchError, Stage
from lmnh.local.kiosk_simulator import SimConfig, generate, latest_start, produce
from validation import Rating, Rejection, Request, Rules, Verdict, validate

SEED = 6
CAPTURE = ROOT.parent / "shared" / "data" / "stream" / "lmnh_stream_2026-02-24.txt"
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Tally:
    """What a run stores: rows per (exhibition, value) of each table, reject-log lines by reason."""

    ratings: Counter[tuple[int, int]]
    requests: Counter[tuple[int, int]]
    rejects: Counter[str]

    @classmethod
    def of_verdicts(cls, verdicts: list[Verdict]) -> Self:
        return cls(
            Counter((v.site, v.value) for v in verdicts if isinstance(v, Rating)),
            Counter((v.site, v.value) for v in verdicts if isinstance(v, Request)),
            Counter(v.reason.value for v in verdicts if isinstance(v, Rejection)),
        )

    @classmethod
    def of_stage(cls, stage: Stage) -> Self:
        """Read back from the stage's tables and reject log."""
        def per_value(table: str, column: str) -> Counter[tuple[int, int]]:
            rows = stage.query(f"SELECT exhibition_id, {column}, count(*) FROM {table}"
                               " GROUP BY 1, 2")
            return Counter({(site, value): count for site, value, count in rows})

        with stage.reject_log.open(encoding="utf-8") as log:
            rejects = Counter(line.split("\t")[1] for line in log)
        return cls(per_value("rating_interaction", "rating_value"),
                   per_value("request_interaction", "request_value"), rejects)

    @property
    def rows(self) -> int:
        return self.ratings.total() + self.requests.total()

    def differences(self, found: Tally) -> list[str]:
        """Every count that differs from `found`, e.g. "ratings (4, 2): expected 10, found 9"."""
        problems = []
        for name in ("ratings", "requests", "rejects"):
            expected, actual = getattr(self, name), getattr(found, name)
            for key in sorted(expected.keys() | actual.keys(), key=str):
                if expected[key] != actual[key]:
                    problems.append(f"{name} {key}: expected {expected[key]}, found {actual[key]}")
        return problems


@dataclass(frozen=True)
class Backlog:
    """The simulator's messages and what validation.validate makes of each."""

    values: list[bytes]
    verdicts: list[Verdict]

    @classmethod
    def judge(cls, values: list[bytes]) -> Self:
        rules, now = Rules(sites=frozenset(SITES), starts=STARTS), datetime.now(UTC)
        return cls(values, [validate(value, rules, now) for value in values])

    @classmethod
    def simulate(cls, count: int) -> Self:
        """`count` presses with the real junk mix, a replay ending now (so `at` is valid)."""
        config = SimConfig(start=latest_start(datetime.now(UTC), count), count=count, seed=SEED)
        return cls.judge([press.value for press in generate(config)])

    @classmethod
    def real(cls, count: int) -> Self:
        """The museum's real capture (5,018 messages) cycled to `count` messages."""
        if not CAPTURE.is_file():
            raise BenchError(f"{CAPTURE} is absent: the real capture mix needs it (--mix sim)")
        lines = CAPTURE.read_bytes().split(b"\n")[:-1]
        return cls.judge([lines[i % len(lines)] for i in range(count)])

    @classmethod
    def of_mix(cls, mix: str, count: int) -> Self:
        return cls.real(count) if mix == "real" else cls.simulate(count)

    def head(self, count: int) -> Backlog:
        return Backlog(self.values[:count], self.verdicts[:count])

    @property
    def expected(self) -> Tally:
        return Tally.of_verdicts(self.verdicts)

    def rows_before(self, offsets: list[int]) -> int:
        """Rows from the messages before `offsets`; message i is at offset i // P of i % P."""
        partitions = len(offsets)
        return sum(not isinstance(self.verdicts[offset * partitions + partition], Rejection)
                   for partition, end in enumerate(offsets) for offset in range(end))

    def load(self, stage: Stage) -> None:
        """Produce the backlog round-robin over the partitions and check the broker kept it."""
        delivery = produce(stage.producer(), stage.topic, self.values)
        if delivery.failed:
            raise BenchError(f"{delivery.failed} messages not delivered: {delivery.error}")
        share = [len(range(p, len(self.values), stage.partitions))
                 for p in range(stage.partitions)]
        offsets = stage.offsets()
        try:
            held = offsets.watermarks()
        finally:
            offsets.close()
        if held != [(0, end) for end in share]:
            raise BenchError(f"the broker holds offsets {held}, not {share} from 0: it dropped "
                             "messages (the mock cluster keeps 5 MB a partition); use fewer "
                             "--messages or TEST_BOOTSTRAP_SERVERS")


@dataclass(frozen=True)
class BacklogResult:
    partitions: int
    messages: int
    rows: int
    total_s: float  # process start -> every offset committed
    startup_s: float  # process start -> first offset commit seen
    drain_messages: int  # committed after the first commit seen (0 if all were in it)
    drain_rows: int
    drain_s: float  # first offset commit seen -> every offset committed
    drain_cpu_s: float
    total_cpu_s: float
    peak_rss_mb: float


def run_backlog(stage: Stage, backlog: Backlog) -> BacklogResult:
    """Load the backlog, time the pipeline through it, and check the tables are exact."""
    backlog.load(stage)
    stage.checkpoint()
    offsets = stage.offsets()
    ends = offsets.ends()
    pipeline = PipelineProcess.start(stage.pipeline_env, stage.workdir)

    def first_commit() -> list[int] | None:
        committed = offsets.committed()
        return committed if any(committed) else None

    try:
        first_offsets = pipeline.wait_for(first_commit, START_TIMEOUT_S, "a first commit")
        first_seen, first_cpu = time.time(), pipeline.cpu_seconds()
        drain_timeout = START_TIMEOUT_S + len(backlog.values) / 1000
        pipeline.wait_for(lambda: offsets.committed() == ends, drain_timeout,
                          "every offset committed")
        done, done_cpu = time.time(), pipeline.cpu_seconds()
        peak_rss = pipeline.peak_rss_mb()
        pipeline.stop()
    finally:
        pipeline.kill()
        offsets.close()
    check_exact(stage, backlog)
    rows = backlog.expected.rows
    return BacklogResult(
        partitions=stage.partitions,
        messages=len(backlog.values),
        rows=rows,
        total_s=done - pipeline.started,
        startup_s=first_seen - pipeline.started,
        drain_messages=len(backlog.values) - sum(first_offsets),
        drain_rows=rows - backlog.rows_before(first_offsets),
        drain_s=done - first_seen,
        drain_cpu_s=done_cpu - first_cpu,
        total_cpu_s=done_cpu,
        peak_rss_mb=peak_rss,
    )


def check_exact(stage: Stage, backlog: Backlog) -> None:
    """Fail loudly unless the stage's tables and reject log hold exactly what the backlog gives."""
    problems = backlog.expected.differences(Tally.of_stage(stage))
    if problems:
        raise BenchError(f"the tables of {stage.database_url} are not exact:\n  "
                         + "\n  ".join(problems[:20]))
