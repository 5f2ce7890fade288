"""A Kafka topic's incarnations: the source name its messages are stored under (issue 21, fault 8).

A topic deleted and created again starts its offsets at 0 while the progress marks of its old
messages stay high: read under the old source, every new press at a reused offset would count as
judged before and be neither stored nor alerted. So each incarnation of a topic has a source
name of its own: the topic's name for the first (the rows stored before this release keep
theirs), `topic~n` for the n-th. Kafka topic names hold only [a-zA-Z0-9._-], so `~` never
occurs in one and a source names its topic unambiguously.

Functional core: given a source's marks and the broker's watermarks, `recreated` says whether
the topic holds fewer messages than were judged from it, and why, in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

SEPARATOR = "~"

Partition = tuple[str, int]
T = TypeVar("T")


def source_name(topic: str, incarnation: int) -> str:
    """The source a topic's `incarnation`-th life (1, 2, ...) is stored under."""
    if incarnation < 1:
        raise ValueError(f"incarnation {incarnation}: they count from 1")
    return topic if incarnation == 1 else f"{topic}{SEPARATOR}{incarnation}"


def topic_of(source: str) -> str:
    """The topic a source name was made from (a topic's name is its own first source)."""
    return source.split(SEPARATOR, 1)[0]


def by_topic(offsets: Mapping[Partition, T]) -> dict[Partition, T]:
    """(source, partition) keys made (topic, partition) keys: what Kafka commits and seeks."""
    return {(topic_of(source), partition): offset
            for (source, partition), offset in offsets.items()}


def recreated(marks: Mapping[int, int], ends: Mapping[int, int]) -> str | None:
    """Why the topic must have been recreated, or None if nothing says so.

    `marks`: each partition's stored mark for the topic's current source (every offset below it
    was judged); `ends`: each partition's high watermark as the broker reports it now (absent:
    unknown). A partition that ends below its mark holds fewer messages than were judged from
    it: offsets restarted. The detail names the lowest such partition, and how many more.
    """
    shrunk = sorted(p for p, end in ends.items() if end < marks.get(p, 0))
    if not shrunk:
        return None
    first = shrunk[0]
    more = len(shrunk) - 1
    return (f"partition {first} ends at {ends[first]}, {marks[first]} were judged from it"
            + (f"; {more} more partition{'s' if more > 1 else ''} likewise" if more else ""))


def recreated_line(topic: str, detail: str, source: str) -> str:
    """The one warning line a recreation gets."""
    return (f"topic {topic} was recreated ({detail}): its messages are stored as source"
            f" {source} from now on")


def sources_of(topics: list[str], sources: Mapping[str, str]) -> list[str]:
    """Each message's source, from its topic: the topic's current source (its own name if
    none is known). No per-message look-up while every topic is in its first incarnation."""
    if all(topic == source for topic, source in sources.items()):
        return topics
    return [sources.get(name, name) for name in topics]
