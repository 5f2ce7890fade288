"""The judging process: a batch judged there is each message judged alone, and the process
lives and dies with the pipeline."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import Broker, Database, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import all_committed, assert_tables_hold, intended_rows, simulated_presses
from test_validation import PROPERTY_NOW, PROPERTY_RULES, general_path, kiosk_messages

from lmnh.core import judging
from lmnh.core.reject_lines import format_reject_lines
from lmnh.core.rows import (
    Interaction,
    Rejected,
    interaction_rows,
    rejected_at_once,
    rejected_rows,
)
from validation import Rating, Rejection, Rules, validate_all

NOW = datetime.now(UTC)
JUNK = [None, b"", b"\xff\xfe", b"[]", b'{"at": 1}', b'{"at": "2026-02-24T12:00:00+00:00"}',
        "é\u2028".encode() * 3000]


def job_of(values: list[bytes | None], rules: Rules, now: datetime,
           topics: tuple[str, ...] = ("lmnh",)) -> judging.Job:
    """Message i is at offset 100 + i // 3 of partition i % 3, of topics[i % len(topics)]."""
    count = len(values)
    return judging.Job(values, [topics[i % len(topics)] for i in range(count)],
                       [i % 3 for i in range(count)], [100 + i // 3 for i in range(count)],
                       rules, now, 512)


def test_a_batch_judged_in_the_judging_process_is_each_message_judged_alone() -> None:
    presses = simulated_presses(3000, seed=7)
    values = [press.value for press in presses] + JUNK
    rules = Rules(sites=frozenset(range(6)))
    job = job_of(values, rules, NOW, topics=("lmnh", "other"))

    judged = judging.judge(job)

    ratings, requests, rejected, lines = [], [], [], []
    for value, source, partition, offset in zip(*job[:4], strict=True):
        verdict = general_path(value, rules, NOW)
        if isinstance(verdict, Rejection):
            rejected.append(Rejected(verdict.reason.value, NOW, source, partition, offset))
            lines.append((verdict.reason.value, f"{source}/{partition}/{offset}",
                          verdict.detail, value))
        else:
            rows = ratings if isinstance(verdict, Rating) else requests
            rows.append(Interaction.of(verdict, source, partition, offset))
    assert ratings and requests and rejected  # the simulator's mix has all three
    assert judged.ratings == interaction_rows(ratings)
    assert judged.requests == requests
    assert judged.rejects == rejected_rows(rejected)
    assert judged.reject_lines == format_reject_lines(NOW, lines, 512)
    assert judged.reasons == Counter(line[0] for line in lines)
    assert judged.spans == {(source, partition): (min(offsets), max(offsets) + 1)
                            for source in ("lmnh", "other") for partition in range(3)
                            if (offsets := [o for s, p, o in zip(*job[1:4], strict=True)
                                            if (s, p) == (source, partition)])}
    assert judged.size == len(values)
    assert judged.next_offsets == {key: end for key, (_, end) in judged.spans.items()}


@st.composite
def presses_near_now(draw: st.DrawFn) -> bytes:
    """A valid-looking press up to 15 minutes either side of PROPERTY_NOW: near the future
    bound, whose minutes the memo must not take for past."""
    at = PROPERTY_NOW + timedelta(seconds=draw(st.integers(-900, 900)),
                                  microseconds=draw(st.sampled_from([0, 1, 999_999])))
    offset = timezone(timedelta(hours=draw(st.sampled_from([0, 1, -5]))))
    return (f'{{"at": "{at.astimezone(offset).isoformat()}", "site": "{draw(st.integers(0, 5))}",'
            f' "val": {draw(st.integers(0, 4))}}}').encode()


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.lists(st.one_of(kiosk_messages(), presses_near_now()), max_size=20),
                min_size=1, max_size=4),
       st.lists(st.integers(-600, 600), min_size=4, max_size=4))
def test_one_rules_object_judging_batch_after_batch_gives_what_fresh_rules_give(
        batches: list[list[bytes]], shifts: list[int]) -> None:
    """The minutes memoised on a Rules object (the judging process keeps one while the
    exhibitions do not change) never change a verdict, whatever the clock does between
    batches: it may go back, and a minute first seen in the future may later be past."""
    rules = Rules(PROPERTY_RULES.sites, starts=PROPERTY_RULES.starts)
    for batch, shift in zip(batches, shifts, strict=False):
        now = PROPERTY_NOW + timedelta(seconds=shift)
        assert validate_all(batch, rules, now) == [general_path(raw, rules, now)
                                                   for raw in batch]


def test_presses_near_the_future_bound_over_a_moving_clock() -> None:
    """A minute memoised while in the future is judged again, message by message, once the
    clock reaches it; a press exactly at the bound is accepted."""
    rules = Rules(sites=frozenset({1}))
    now = datetime(2026, 7, 15, 12, 0, 30, tzinfo=UTC)
    values = [f'{{"at": "{(now + timedelta(minutes=5, seconds=s)).isoformat()}", "site": "1",'
              f' "val": 2}}'.encode() for s in (-1, 0, 1, 29)]
    first = validate_all(values, rules, now)
    assert [type(v) for v in first] == [Rating, Rating, Rejection, Rejection]
    later = validate_all(values, rules, now + timedelta(seconds=29))
    assert all(type(v) is Rating for v in later)
    assert later == [general_path(value, rules, now + timedelta(seconds=29))
                     for value in values]


def judging_child(pipeline_pid: int) -> int:
    children = Path(f"/proc/{pipeline_pid}/task/{pipeline_pid}/children").read_text().split()
    commands = {int(pid): Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
    found = [pid for pid, command in commands.items() if command.endswith(b"lmnh.core.judging\0")]
    assert len(found) == 1, commands
    return found[0]


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its parent


@pytest.mark.parametrize("when", ["mid-stream", "idle"])
def test_the_pipeline_stops_without_committing_when_its_judging_process_dies(
        broker: Broker, database: Database, pipeline_env: dict[str, str],
        run_pipeline, when: str) -> None:
    """Mid-stream, the next batch handed over finds it gone; idle, the loop notices."""
    env = pipeline_env | {"BATCH_SIZE": "50"}
    presses = simulated_presses(2000, seed=3)
    expected = intended_rows(presses, broker.partitions(env["TOPIC"]))
    broker.produce(env["TOPIC"], [press.value for press in presses[:1000]])
    run = run_pipeline(env)
    if when == "idle":
        wait_until(lambda: all_committed(broker, env), 60, "the first half committed")
    else:
        wait_until(lambda: database.scalar("SELECT count(*) FROM rating_interaction") > 0, 60,
                   "first rows")
    os.kill(judging_child(run.process.pid), signal.SIGKILL)
    assert run.wait(30) == 1
    errors = [line for line in run.text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "the judging process exited (-9); stopping without" in errors[0]
    assert "Traceback" not in run.text()
    # Restarted, it stores what the first did not, once.
    broker.produce(env["TOPIC"], [press.value for press in presses[1000:]])
    final = run_pipeline(env)
    wait_until(lambda: all_committed(broker, env), 60, "offsets committed")
    assert final.stop(signal.SIGTERM) == 0
    assert_tables_hold(database, env, expected)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_judging_process_ends_with_the_pipeline(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        sig: signal.Signals) -> None:
    broker.produce(pipeline_env["TOPIC"], [press.value for press in simulated_presses(200)])
    run = run_pipeline(pipeline_env)
    wait_until(lambda: database.scalar("SELECT count(*) FROM rating_interaction") > 0, 60,
               "first rows")
    child = judging_child(run.process.pid)
    assert run.stop(sig) == (-9 if sig == signal.SIGKILL else 0)
    deadline = time.monotonic() + 10
    while not is_gone(child):
        assert time.monotonic() < deadline, "the judging process outlived the pipeline"
        time.sleep(0.05)


def test_rows_kept_from_a_replayed_batch_are_those_rows_encoded_alone() -> None:
    """CopyRows.only splits the encoded rows at their field lengths: the rows it keeps are
    byte for byte what encoding only them gives (rows of several sources and reasons)."""
    at = datetime(2026, 7, 15, 9, 30, 1, 5, tzinfo=UTC)
    ratings = [Interaction(n % 6, n % 5, at + timedelta(seconds=n), "lmnh" + "x" * (n % 3),
                           n % 2, 10 + n) for n in range(40)]
    rejects = [Rejected(("invalid_val", "unknown_site", "x")[n % 3], at, "lmnh" * (n % 2 + 1),
                        0, n) for n in range(40)]
    for rows, encode in ((ratings, interaction_rows), (rejects, rejected_rows)):
        def kept(origin: tuple[str, int, int]) -> bool:
            return origin[2] % 3 != 1

        assert encode(rows).only(kept) == encode(
            [row for row in rows if kept((row.source, row.source_partition, row.source_offset))])
        assert encode(rows).only(lambda origin: True) == encode(rows)
        assert len(encode(rows).only(lambda origin: False)) == 0


def test_a_batchs_rejects_encoded_from_columns_are_its_rows_encoded_one_by_one() -> None:
    """The judging process encodes a batch's rejects (one rejected_at) from its columns:
    byte for byte the rows rejected_rows makes (several reasons and sources)."""
    at = datetime(2026, 7, 15, 9, 30, 1, 5, tzinfo=UTC)
    rows = [Rejected(("invalid_val", "unknown_site", "x")[n % 3], at, "lmnh" * (n % 2 + 1),
                     n % 4, 100 + n) for n in range(50)]
    assert rejected_at_once([r.reason for r in rows], at, [r.source for r in rows],
                            [r.source_partition for r in rows],
                            [r.source_offset for r in rows]) == rejected_rows(rows)
    assert rejected_at_once([], at, [], [], []) == rejected_rows([])


def test_batches_judged_one_after_another_joined_are_the_two_judged_as_one() -> None:
    """What one transaction writes for two batches (JudgedBatch.joined) is byte for byte the
    one batch of all their messages judged together: rows, requests, rejects, reject lines,
    reasons and each partition's span."""
    presses = simulated_presses(2000, seed=11)
    values = [press.value for press in presses] + JUNK
    rules = Rules(sites=frozenset(range(6)))
    whole = job_of(values, rules, NOW, topics=("lmnh", "other"))
    cut = 1234
    first, second = (judging.Job(*(column[part] for column in whole[:4]), rules, NOW, 512)
                     for part in (slice(None, cut), slice(cut, None)))

    joined = judging.JudgedBatch.joined([judging.judge(first), judging.judge(second)])

    assert joined == judging.judge(whole)
    assert judging.JudgedBatch.joined([judging.judge(first)]) == judging.judge(first)


def test_the_judging_process_pipes_hold_a_whole_job_and_its_result() -> None:
    """A job (about 400 KB for 5,000 messages) fits in the pipe to the judging process, so the
    loop hands it over without waiting for the process to read it (the results' pipe is
    enlarged the same way)."""
    import fcntl

    from lmnh.services.judging_process import PIPE_BYTES, JudgingProcess

    process = JudgingProcess()
    try:
        allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        assert fcntl.fcntl(process.jobs.fileno(), fcntl.F_GETPIPE_SZ) >= min(PIPE_BYTES, allowed)
        process.submit(job_of([b"{}"], Rules(sites=frozenset({1})), NOW))
        # Read by a process whose __main__ is not pipeline.py: the result names its classes
        # by their module (a child run as __main__ once named them __main__.JudgedBatch, and
        # this reader waited forever for a result it could not load).
        wait_until(lambda: process.pending[0].done(), 10, "the judged batch")
        assert [batch.reasons for batch in process.take(keep=0)] == [{"missing_key": 1}]
    finally:
        process.close()
