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
from itertools import chain
from typing import NamedTuple

from validation import Rating, Request

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz is microseconds since this
MICROSECOND = timedelta(microseconds=1)

Origin = tuple[str, int, int]  # where a message came from: (source, partition, offset)
Partition = tuple[str, int]  # (source, source_partition)


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


def _interaction_layout(source: str) -> tuple[Callable[..., bytes], int, bytes]:
    """int2 exhibition_id, int2 value, timestamptz event_at, text source, int4 partition,
    int8 offset: the struct's pack, and the source's length and bytes."""
    name = source.encode()
    return struct.Struct(f">h ih ih iq i{len(name)}s ii iq").pack, len(name), name


def _rejected_layout(reason: str,
                     source: str) -> tuple[Callable[..., bytes], int, bytes, int, bytes]:
    """text reason, timestamptz rejected_at, text source, int4 partition, int8 offset."""
    code, name = reason.encode(), source.encode()
    return (struct.Struct(f">h i{len(code)}s iq i{len(name)}s ii iq").pack, len(code), code,
            len(name), name)


@dataclass(frozen=True, slots=True)
class CopyRows:
    """A table's rows in binary COPY form, one after another, and the source of each.

    What a batch holds for the tables whose rows are only stored (ratings, rejected messages):
    cheap to pass between processes, sent to the server as they are, and filtered by source
    when some were stored before (a replay).
    """

    data: bytes = b""
    sources: Sequence[str] = ()
    partitions: Sequence[int] = ()
    offsets: Sequence[int] = ()

    @classmethod
    def of(cls, encoded: Sequence[bytes], sources: Sequence[str], partitions: Iterable[int],
           offsets: Iterable[int]) -> CopyRows:
        return cls(b"".join(encoded), list(sources), array("i", partitions), array("q", offsets))

    @classmethod
    def joined(cls, parts: Sequence[CopyRows]) -> CopyRows:
        """The rows of `parts`, one after another."""
        return cls.of([part.data for part in parts],
                      list(chain.from_iterable(part.sources for part in parts)),
                      chain.from_iterable(part.partitions for part in parts),
                      chain.from_iterable(part.offsets for part in parts))

    def __len__(self) -> int:
        return len(self.offsets)

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
        encoded = list(_split(self.data))
        return CopyRows.of([encoded[i] for i in kept], [self.sources[i] for i in kept],
                           [self.partitions[i] for i in kept], [self.offsets[i] for i in kept])


_FIELD_COUNT, _FIELD_LENGTH = struct.Struct(">h"), struct.Struct(">i")


def _split(data: bytes) -> Iterator[bytes]:
    """Each row's encoding in `data`: its field count, then each field's length (-1 for a
    NULL, which has no bytes) and bytes."""
    start = 0
    while start < len(data):
        (fields,) = _FIELD_COUNT.unpack_from(data, start)
        end = start + _FIELD_COUNT.size
        for _ in range(fields):
            (length,) = _FIELD_LENGTH.unpack_from(data, end)
            end += _FIELD_LENGTH.size + max(length, 0)
        yield data[start:end]
        start = end


def press_rows(presses: Sequence[Sequence], sources: Sequence[str], partitions: Sequence[int],
               offsets: Sequence[int]) -> CopyRows:
    """Interaction rows for presses (each starting exhibition_id, value, event_at: a Rating,
    a Request or an Interaction) and where each came from. One struct per source (a batch has
    one or a few), then one pack a row, in a comprehension: the judging process's hot loop."""
    layouts = {source: _interaction_layout(source) for source in set(sources)}
    encoded = [pack(6, 2, press[0], 2, press[1], 8, (press[2] - PG_EPOCH) // MICROSECOND,
                    size, name, 4, partition, 8, offset)
               for press, (pack, size, name), partition, offset in zip(
                   presses, map(layouts.__getitem__, sources), partitions, offsets, strict=True)]
    return CopyRows(b"".join(encoded), list(sources), array("i", partitions), array("q", offsets))


def rejected_at_once(reasons: Sequence[str], rejected_at: datetime, sources: Sequence[str],
                     partitions: Sequence[int], offsets: Sequence[int]) -> CopyRows:
    """rejected_rows for rejects all judged at `rejected_at` (a batch's), given as columns: the
    judging process's form, without a Rejected tuple a row."""
    return _rejected_columns(reasons, [pg_micros(rejected_at)] * len(reasons), sources,
                             partitions, offsets)


def _rejected_columns(reasons: Sequence[str], micros: Sequence[int], sources: Sequence[str],
                      partitions: Sequence[int], offsets: Sequence[int]) -> CopyRows:
    """Rejected-message rows from their columns, rejected_at as pg_micros."""
    layouts = {key: _rejected_layout(*key) for key in set(zip(reasons, sources, strict=True))}
    encoded = [pack(5, code_size, code, 8, at, name_size, name, 4, partition, 8, offset)
               for (pack, code_size, code, name_size, name), at, partition, offset in zip(
                   map(layouts.__getitem__, zip(reasons, sources, strict=True)), micros,
                   partitions, offsets, strict=True)]
    return CopyRows(b"".join(encoded), list(sources), array("i", partitions), array("q", offsets))


def interaction_rows(rows: Sequence[Interaction]) -> CopyRows:
    return press_rows(rows, [row.source for row in rows], [row.source_partition for row in rows],
                      [row.source_offset for row in rows])


def rejected_rows(rows: Sequence[Rejected]) -> CopyRows:
    reasons, times, sources, partitions, offsets = zip(*rows, strict=True) if rows else ((),) * 5
    micros = {at: pg_micros(at) for at in set(times)}  # often one time
    return _rejected_columns(reasons, [micros[at] for at in times], sources, partitions,
                             offsets)
