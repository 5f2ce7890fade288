"""The offset tracker (lmnh/core/offsets.py): nothing committable past a batch not written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmnh.core.offsets import OffsetTracker

P0, P1 = ("lmnh", 0), ("lmnh", 1)


def tracker() -> OffsetTracker:
    t = OffsetTracker()
    t.assigned({P0, P1})
    return t


def test_a_batch_not_written_holds_back_every_later_batch_whatever_their_partitions() -> None:
    t = tracker()
    t.handed_over(0, {P0: 10})
    t.handed_over(1, {P1: 5})
    t.handed_over(2, {P0: 20, P1: 9})
    t.written(1)
    t.written(2)
    assert t.take() == {}  # batch 0 (partition 0) is not written: nothing may be committed
    t.written(0)
    assert t.take() == {P0: 20, P1: 9}
    assert t.unwritten == 0


def test_a_failed_older_commit_never_moves_a_partition_back() -> None:
    """Issue 21, fault 10: the old daemon re-added a failed commit's offset even after a newer
    one had succeeded, so the committed offset went back."""
    t = tracker()
    t.handed_over(0, {P0: 10})
    t.written(0)
    assert t.take() == {P0: 10}
    t.handed_over(1, {P0: 20})
    t.written(1)
    assert t.take() == {P0: 20}
    t.committed(P0, 20, succeeded=True)
    t.committed(P0, 10, succeeded=False)  # the older commit's answer arrives late
    assert t.take() == {}
    t.committed(P0, 30, succeeded=False)
    assert t.take() == {P0: 30}  # a failed commit past the committed one is retried


def test_an_older_commit_failing_after_a_newer_was_sent_is_not_retried() -> None:
    """The broker answers in order: an older commit's failure can arrive after a newer commit
    was sent and before its success; retried, the older offset would be committed last."""
    t = tracker()
    t.handed_over(0, {P0: 10})
    t.written(0)
    assert t.take() == {P0: 10}
    t.handed_over(1, {P0: 20})
    t.written(1)
    assert t.take() == {P0: 20}
    t.committed(P0, 10, succeeded=False)
    t.committed(P0, 20, succeeded=True)
    assert t.take() == {}
    t.handed_over(2, {P0: 30})
    t.written(2)
    assert t.take() == {P0: 30}
    t.committed(P0, 30, succeeded=False)  # the newest failing is retried
    assert t.take() == {P0: 30}


def test_a_revoked_partition_is_never_committed_by_this_member() -> None:
    t = tracker()
    t.handed_over(0, {P0: 10, P1: 4})
    t.revoked({P1})
    t.written(0)
    assert t.take() == {P0: 10}
    t.committed(P1, 4, succeeded=False)
    assert t.take() == {}


def test_batches_are_handed_over_in_order() -> None:
    t = tracker()
    t.handed_over(3, {P0: 1})
    with pytest.raises(ValueError):
        t.handed_over(2, {P0: 2})
    with pytest.raises(ValueError):
        t.written(7)


@given(st.lists(st.integers(0, 1), min_size=1, max_size=30), st.randoms())
def test_what_is_committable_is_always_a_prefix_of_what_was_written(
        partitions: list[int], rnd) -> None:
    """Whatever order the writes are confirmed in, the offset taken for a partition is never
    beyond a batch that is not written."""
    t = tracker()
    keys = [P0, P1]
    ends = {P0: 0, P1: 0}
    batches = []
    for seq, p in enumerate(partitions):
        ends[keys[p]] += 1 + seq
        batches.append({keys[p]: ends[keys[p]]})
        t.handed_over(seq, batches[-1])
    order = list(range(len(batches)))
    rnd.shuffle(order)
    written: set[int] = set()
    for seq in order:
        t.written(seq)
        written.add(seq)
        first_missing = next((s for s in range(len(batches)) if s not in written), len(batches))
        allowed: dict = {}
        for s in range(first_missing):
            allowed |= batches[s]
        for key, offset in t.take().items():
            assert offset <= allowed[key]
