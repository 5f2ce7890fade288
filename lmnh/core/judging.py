"""The judging process: a consumed batch's values in, its rows and reject-log lines out.

Judging (the museum's rules, then each row's binary COPY encoding and each reject's log line)
is the pipeline's CPU-bound work. In a process of its own it runs beside the consumer and the
database writer instead of taking turns with them for one interpreter lock. The daemon starts
it as `python -m lmnh.core.judging` (lmnh/services/judging_process.py), sends each Job down its
stdin and reads each JudgedBatch back from its stdout, in order; it exits when its stdin closes
(the pipeline stopped, or died).

`judge` is pure: no clock, no file, no network.
"""

from __future__ import annotations

import gc
import os
import signal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from multiprocessing.connection import Connection
from typing import NamedTuple

import validation
from lmnh.core.reject_lines import format_reject_lines
from lmnh.core.rows import (
    CopyRows,
    Interaction,
    Partition,
    press_rows,
    rejected_at_once,
)
from validation import Rating, Rejection, Request, Rules

JOB_GC_THRESHOLD = 100_000  # more objects than a batch of 5,000 messages keeps alive


class Job(NamedTuple):
    """One consumed batch: each message's value and origin, and what judging needs."""

    values: list[bytes | None]
    sources: list[str]
    partitions: list[int]
    offsets: list[int]
    rules: Rules
    now: datetime  # the processing clock, also the time its rejects are logged
    max_value_bytes: int  # how much of a rejected value its log line keeps


@dataclass(frozen=True, slots=True)
class JudgedBatch:
    """One batch, judged: rows to write, reject-log lines to append, offsets to commit after."""

    ratings: CopyRows
    requests: list[Interaction]
    rejects: CopyRows
    reject_lines: list[str]
    reasons: dict[str, int]  # rejects per reason code
    spans: dict[Partition, tuple[int, int]]  # each partition's (first offset, last + 1)

    @property
    def size(self) -> int:
        return len(self.ratings) + len(self.requests) + len(self.rejects)

    @classmethod
    def joined(cls, batches: Sequence[JudgedBatch]) -> JudgedBatch:
        """Batches judged one after another, as one: what one transaction writes."""
        if len(batches) == 1:
            return batches[0]
        spans: dict[Partition, tuple[int, int]] = {}
        for batch in batches:
            for key, (low, high) in batch.spans.items():
                known = spans.get(key, (low, high))
                spans[key] = (min(known[0], low), max(known[1], high))
        return cls(
            ratings=CopyRows.joined([batch.ratings for batch in batches]),
            requests=[row for batch in batches for row in batch.requests],
            rejects=CopyRows.joined([batch.rejects for batch in batches]),
            reject_lines=[line for batch in batches for line in batch.reject_lines],
            reasons=dict(sum((Counter(batch.reasons) for batch in batches), Counter())),
            spans=spans,
        )

    @property
    def next_offsets(self) -> dict[Partition, int]:
        return {key: end for key, (_, end) in self.spans.items()}


def judge(job: Job) -> JudgedBatch:
    """Validate every message of the job and make each verdict its row or its reject line.

    The verdicts are split by kind with one pass each in C (`compress` over a mask) rather
    than one Python branch a message: this runs for every message the pipeline reads, and most
    are ratings.
    """
    verdicts = validation.validate_all(job.values, job.rules, job.now)
    kinds = list(map(type, verdicts))
    rated = [kind is Rating for kind in kinds]
    ratings = list(compress(verdicts, rated))
    requests = [Interaction(*verdict, source, partition, offset)
                for verdict, source, partition, offset in compress(
                    zip(verdicts, job.sources, job.partitions, job.offsets, strict=True),
                    [kind is Request for kind in kinds])]
    rejected = [kind is Rejection for kind in kinds]
    rejections: list[Rejection] = list(compress(verdicts, rejected))
    reasons = [rejection.reason.value for rejection in rejections]
    sources, partitions, offsets = (list(compress(column, rejected)) for column in (
        job.sources, job.partitions, job.offsets))
    # A partition's messages come in offset order: its first and its last give its span.
    keys = list(zip(job.sources, job.partitions, strict=True))
    lasts = dict(zip(keys, job.offsets, strict=True))
    firsts = dict(zip(reversed(keys), reversed(job.offsets), strict=True))
    return JudgedBatch(
        ratings=press_rows(ratings, list(compress(job.sources, rated)),
                           list(compress(job.partitions, rated)),
                           list(compress(job.offsets, rated))),
        requests=requests,
        rejects=rejected_at_once(reasons, job.now, sources, partitions, offsets),
        reject_lines=format_reject_lines(job.now, [
            (reason, f"{source}/{partition}/{offset}", rejection.detail, value)
            for reason, source, partition, offset, rejection, value in zip(
                reasons, sources, partitions, offsets, rejections,
                compress(job.values, rejected), strict=True)],
            job.max_value_bytes),
        reasons=dict(Counter(reasons)),
        spans={key: (firsts[key], last + 1) for key, last in lasts.items()},
    )


def serve() -> None:
    """Judge jobs from stdin until it closes, sending each result to stdout.

    Signals are the pipeline's to handle: a terminal's Ctrl-C reaches the whole process group,
    and the pipeline then stops this process by closing its stdin. stdout carries only results:
    anything else printed goes to stderr.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    results = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    jobs = Connection(os.dup(0), writable=False)
    gc.freeze()  # the start-up heap never becomes garbage: not scanned again
    # A batch's rows live until it is sent: with the default threshold (700) they would be
    # scanned for cycles many times over while it is judged; judging makes no cycles.
    gc.set_threshold(JOB_GC_THRESHOLD)
    rules: Rules | None = None  # kept while unchanged, with what it has memoised
    while True:
        try:
            job = jobs.recv()
        except EOFError:
            return
        if job.rules == rules:
            job = job._replace(rules=rules)
        else:
            rules = job.rules
        try:
            results.send(judge(job))
        except BrokenPipeError:  # the pipeline is gone
            return


if __name__ == "__main__":
    # Run as `python -m`, this file is `__main__`: its results would be pickled as
    # __main__.JudgedBatch, which only a reader whose own __main__ happens to import that name
    # can load. The module imported under its own name pickles them as
    # lmnh.core.judging.JudgedBatch.
    from lmnh.core.judging import serve as serve_as_module

    serve_as_module()
