"""Which offsets the daemon may commit: never one past a batch whose write did not succeed.

Batches are numbered as they are handed to the writer. A batch's offsets become committable
only once it and every batch handed over before it are written: the committable offsets are
those of the longest run of written batches from the oldest, so a failed or abandoned write
holds back every later batch's offsets, whichever partitions they share. A commit that fails
is retried with the next one unless a later offset of that partition has been sent since: the
broker's answers to an older commit may come after a newer one was sent, and a retried older
offset would move the partition's committed offset back.
"""

from __future__ import annotations

from collections import OrderedDict

from lmnh.core.rows import Partition


class OffsetTracker:
    def __init__(self) -> None:
        self._in_flight: OrderedDict[int, dict[Partition, int]] = OrderedDict()
        self._written: set[int] = set()
        self._ready: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        self._sent: dict[Partition, int] = {}  # the newest offset taken to be committed
        self._assigned: set[Partition] = set()

    def assigned(self, partitions: set[Partition]) -> None:
        self._assigned |= partitions

    def revoked(self, partitions: set[Partition]) -> None:
        """Forget the partitions: another member commits them from now on."""
        self._assigned -= partitions
        for key in partitions:
            self._ready.pop(key, None)
            self._committed.pop(key, None)
            self._sent.pop(key, None)

    def handed_over(self, seq: int, next_offsets: dict[Partition, int]) -> None:
        """Batch `seq` (numbered in the order batches reach the writer) will be written."""
        if self._in_flight and seq <= next(reversed(self._in_flight)):
            raise ValueError(f"batch {seq} handed over out of order")
        self._in_flight[seq] = next_offsets

    def written(self, seq: int) -> None:
        """Batch `seq` is stored: its offsets, and those of the written batches after it
        up to the first one not written, may be committed."""
        if seq not in self._in_flight:
            raise ValueError(f"batch {seq} was not handed over")
        self._written.add(seq)
        while self._in_flight and next(iter(self._in_flight)) in self._written:
            first, offsets = self._in_flight.popitem(last=False)
            self._written.discard(first)
            for key, offset in offsets.items():
                if key in self._assigned and offset > self._ready.get(key, -1):
                    self._ready[key] = offset

    @property
    def unwritten(self) -> int:
        """Batches handed over and not yet known to be written."""
        return len(self._in_flight)

    def take(self) -> dict[Partition, int]:
        """The offsets to commit now (each partition's next offset to read)."""
        taken, self._ready = self._ready, {}
        for key, offset in taken.items():
            self._sent[key] = max(offset, self._sent.get(key, -1))
        return taken

    def committed(self, key: Partition, offset: int, succeeded: bool) -> None:
        """The broker's answer to a commit of `offset`: a failed one is retried with the next
        commit, unless a later offset of its partition was sent, committed or made ready
        since."""
        if key not in self._assigned:
            return
        if succeeded:
            self._committed[key] = max(offset, self._committed.get(key, -1))
        elif offset >= max(self._sent.get(key, -1), self._committed.get(key, -1) + 1,
                           self._ready.get(key, -1) + 1):
            self._ready[key] = offset
