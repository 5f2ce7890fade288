"""The rows the pipeline stores, and PostgreSQL's binary COPY encoding of them.

Pure: no connection, no file. db.py sends what is encoded here; the judging process
(judging.py) encodes a batch's rows while it judges them, so the process holding the database
connection only passes bytes on.

COPY's binary format: a header, then per row a field count and each field as its length and
its bytes, then a trailer. The server parses no text, and here a row is one struct.pack.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import NamedTuple

from validation import Rating, Request

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz is microseconds since this
MICROSECOND = timedelta(microseconds=1)

Origin = tuple[str, int, int]  # where a message came from: (source, partition, offset)


class Interaction(NamedTuple):
    """One row for rating_interaction (value = rating) or request_interaction (value = request)."""

    exhibition_id: int
    value: int
    event_at: datetime
    source: str
    source_partition: int
    source_offset: int

    @classmethod
    def of(cls, press: Rating | Request, source: str, partition: int,
           offset: int) -> Interaction:
        """The row for an accepted press, recording where it came from."""
        return cls(press.site, press.value, press.at, source, partition, offset)


class Rejected(NamedTuple):
    """One row for rejected_message: why and when, and where the message came from."""

    reason: str
    rejected_at: datetime
    source: str
    source_partition: int
    source_offset: int


def pg_micros(at: datetime) -> int:
    """A timestamptz as binary COPY sends it: microseconds since 2000-01-01 UTC."""
    return (at - PG_EPOCH) // MICROSECOND


InteractionPacker = Callable[[int, int, datetime, int, int], bytes]
RejectedPacker = Callable[[int, int, int], bytes]


def interaction_packer(source: str) -> InteractionPacker:
    """Encodes one interaction row of `source` from (exhibition_id, value, event_at, partition,
    offset): int2, int2, timestamptz, text, int4, int8."""
    name = source.encode()
    pack = struct.Struct(f">h ih ih iq i{len(name)}s ii iq").pack
    size = len(name)

    def encode(exhibition_id: int, value: int, event_at: datetime, partition: int,
               offset: int) -> bytes:
        return pack(6, 2, exhibition_id, 2, value, 8, (event_at - PG_EPOCH) // MICROSECOND,
                    size, name, 4, partition, 8, offset)

    return encode


def rejected_packer(reason: str, source: str) -> RejectedPacker:
    """Encodes one rejected_message row of `reason` and `source` from (rejected_at as
    pg_micros, partition, offset): text, timestamptz, text, int4, int8."""
    code, name = reason.encode(), source.encode()
    pack = struct.Struct(f">h i{len(code)}s iq i{len(name)}s ii iq").pack
    code_size, name_size = len(code), len(name)

    def encode(rejected_at: int, partition: int, offset: int) -> bytes:
        return pack(5, code_size, code, 8, rejected_at, name_size, name, 4, partition, 8, offset)

    return encode


@dataclass(frozen=True, slots=True)
class CopyRows:
    """A table's rows in binary COPY form, one after another, and the source of each.

    What a batch holds for the tables whose rows are only stored (ratings, rejected messages):
    cheap to pass between processes, sent to the server as they are, and filtered by source
    when some were stored before (a replay).
    """

    data: bytes = b""
    ends: Sequence[int] = ()  # where each row's encoding ends in `data`
    sources: Sequence[str] = ()
    partitions: Sequence[int] = ()
    offsets: Sequence[int] = ()

    @classmethod
    def of(cls, encoded: Sequence[bytes], sources: Sequence[str], partitions: Iterable[int],
           offsets: Iterable[int]) -> CopyRows:
        return cls(b"".join(encoded), array("q", accumulate(map(len, encoded))), sources,
                   array("i", partitions), array("q", offsets))

    def __len__(self) -> int:
        return len(self.ends)

    def origins(self) -> Iterator[Origin]:
        return zip(self.sources, self.partitions, self.offsets, strict=True)

    def payload(self) -> bytes:
        """The whole COPY: header, rows, trailer."""
        return b"".join((COPY_HEADER, self.data, COPY_TRAILER))

    def only(self, keep: Callable[[Origin], bool]) -> CopyRows:
        """The rows whose source `keep` accepts, in order."""
        kept = [index for index, key in enumerate(self.origins()) if keep(key)]
        if len(kept) == len(self):
            return self
        starts = [0, *self.ends]
        return CopyRows.of([self.data[starts[i]:self.ends[i]] for i in kept],
                           [self.sources[i] for i in kept], [self.partitions[i] for i in kept],
                           [self.offsets[i] for i in kept])


def interaction_rows(rows: Sequence[Interaction]) -> CopyRows:
    packers: dict[str, InteractionPacker] = {}
    encoded = []
    for exhibition_id, value, event_at, source, partition, offset in rows:
        pack = packers.get(source) or packers.setdefault(source, interaction_packer(source))
        encoded.append(pack(exhibition_id, value, event_at, partition, offset))
    return CopyRows.of(encoded, [row.source for row in rows],
                       [row.source_partition for row in rows],
                       [row.source_offset for row in rows])


def rejected_rows(rows: Sequence[Rejected]) -> CopyRows:
    packers: dict[tuple[str, str], RejectedPacker] = {}
    encoded = []
    for reason, rejected_at, source, partition, offset in rows:
        pack = packers.get((reason, source)) or packers.setdefault(
            (reason, source), rejected_packer(reason, source))
        encoded.append(pack(pg_micros(rejected_at), partition, offset))
    return CopyRows.of(encoded, [row.source for row in rows],
                       [row.source_partition for row in rows],
                       [row.source_offset for row in rows])
