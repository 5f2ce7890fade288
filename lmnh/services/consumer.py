"""The Kafka side of the daemon: polls batches, commits offsets, hears the broker and the group.

It never pauses: while the database is away and the write buffer is full, the loop goes on
judging what it reads, for the alerts, and `rewind`s each partition to the first message it
did not keep; `read_again` seeks back there once the database has caught up, so those messages
are read again and written. Commits never wait for the broker (a vanished broker may hold a
commit for minutes); their outcome reaches `on_commit` for each partition.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from lmnh.core.outage import Outage
from lmnh.core.rows import Partition
from lmnh.services import metrics

log = logging.getLogger("pipeline")
# librdkafka's own log: critical lines only. Its per-reconnect lines (hundreds a minute while a
# broker is away) are replaced by the error callback's one line per outage and minute.
KAFKA_LOG_LEVEL = 2
# At assignment, how long reading the partitions' high watermarks may take in all.
WATERMARK_TIMEOUT_S = 3.0
# Told the partitions assigned and each topic's partitions' high watermarks; answers which
# topics were recreated, to be read from their first message.
Assigned = Callable[[set[Partition], dict[str, dict[int, int]]], set[str]]


class KafkaFatal(Exception):
    """librdkafka cannot go on (authentication, a fenced static member, ...)."""


class KafkaStage:
    def __init__(self, config: dict[str, Any], topic: str, on_assign: Assigned,
                 on_revoke: Callable[[set[Partition]], None],
                 on_commit: Callable[[Partition, int, bool], None],
                 health: metrics.Health) -> None:
        self.topic = topic
        self.health = health
        self.lag: int | None = None
        self.fatal: KafkaError | None = None
        self.rewinds: dict[Partition, int] = {}  # the first offset not kept, per partition
        self._on_assign, self._on_revoke, self._on_commit_result = on_assign, on_revoke, on_commit
        self.outage = Outage(
            log, "kafka unreachable: {detail}; consuming pauses and resumes by itself",
            "kafka still unreachable after {seconds} s: {detail}",
            "kafka reachable again after {seconds} s")
        self.consumer = Consumer(config | {
            "error_cb": self._on_error, "stats_cb": self._on_stats, "on_commit": self._on_commit,
            "logger": logging.getLogger("kafka"), "log_level": KAFKA_LOG_LEVEL})

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._assigned,
                                on_revoke=self._revoked, on_lost=self._revoked)

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """The next batch's messages (errors logged, not returned)."""
        self.outage.remind()
        messages = self.consumer.consume(max_messages, timeout=timeout_s)
        if self.fatal is not None:
            raise KafkaFatal(f"kafka fatal error: {self.fatal.str()}")
        live = []
        for message in messages:
            error = message.error()
            if error is None:
                live.append(message)
            elif error.fatal():
                raise KafkaFatal(f"kafka fatal error: {error.str()}")
            else:
                log.warning("kafka: %s", error.str())
        if messages:
            self._answered()
        return live

    def commit(self, offsets: dict[Partition, int]) -> None:
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in
                                          offsets.items()], asynchronous=True)
        except KafkaException as error:
            metrics.COMMIT_FAILURES.inc()
            self.outage.failed(f"offset commit failed, will retry: {error.args[0].str()}")
            for key, offset in offsets.items():
                self._on_commit_result(key, offset, False)

    def rewind(self, spans: dict[Partition, tuple[int, int]]) -> None:
        """Messages from each span's start were not kept: read them again later."""
        for key, (first, _) in spans.items():
            if key in self.health.assigned:
                self.rewinds[key] = min(first, self.rewinds.get(key, first))

    def read_again(self) -> None:
        """Seek each rewound partition back to its first message not kept."""
        for (topic, partition), offset in sorted(self.rewinds.items()):
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as error:  # revoked meanwhile: its new owner reads it
                log.warning("cannot read %s[%d] again from offset %d: %s", topic, partition,
                            offset, error.args[0].str())
        log.info("reading again what was judged for alerts only: %s", ", ".join(
            f"{t}[{p}] from {o}" for (t, p), o in sorted(self.rewinds.items())))
        self.rewinds.clear()

    def close(self, offsets: dict[Partition, int], bound_s: float) -> bool:
        """The last commit, then the close, within `bound_s`; False if they did not finish
        (their messages are read again after the restart and stored once)."""
        def close() -> None:
            self.commit(offsets)
            self.consumer.close()
        closing = threading.Thread(target=close, name="kafka-close", daemon=True)
        closing.start()
        closing.join(bound_s)
        return not closing.is_alive()

    # ---- librdkafka's callbacks, run inside poll()
    def _assigned(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self._answered()
        keys = {(p.topic, p.partition) for p in partitions}
        self.health.assigned |= keys
        log.info("assigned partitions %s", _partition_list(partitions))
        recreated = self._on_assign(keys, self._ends(partitions))
        if recreated:  # read from its first message, whatever an old committed offset says
            self.consumer.assign([
                TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) if p.topic in recreated
                else p for p in partitions])

    def _ends(self, partitions: list[TopicPartition]) -> dict[str, dict[int, int]]:
        """Each topic's partitions' high watermarks as the broker reports them now."""
        ends: dict[str, dict[int, int]] = {}
        unread: list[str] = []
        deadline = time.monotonic() + WATERMARK_TIMEOUT_S
        for p in partitions:
            ends.setdefault(p.topic, {})
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(p.topic, p.partition),
                    timeout=max(0.1, deadline - time.monotonic()), cached=False)
            except KafkaException as error:
                unread.append(f"{p.topic}[{p.partition}] ({error.args[0].str()})")
                continue
            ends[p.topic][p.partition] = high
        if unread:
            log.warning("cannot read the end of %s; a recreated topic is not detected there",
                        ", ".join(unread))
        return ends

    def _revoked(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked partitions %s", _partition_list(partitions))
        keys = {(p.topic, p.partition) for p in partitions}
        self.health.assigned -= keys
        for topic, partition in keys:
            self.rewinds.pop((topic, partition), None)  # its new owner reads from the commit
            with contextlib.suppress(KeyError):  # no lag was reported for it yet
                metrics.LAG.remove(topic, str(partition))
        self._on_revoke(keys)

    def _on_error(self, error: KafkaError) -> None:
        """Every broker gone, or a lasting fault (authentication, TLS): one line when it starts,
        a reminder a minute. A lone connection dropping while others answer is routine."""
        if error.fatal():
            self.fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            metrics.KAFKA_UP.set(0)
            self.outage.failed("no broker answers")
        elif error.code() != KafkaError._TRANSPORT or self.outage.ongoing:
            self.outage.failed(error.str())

    def _answered(self) -> None:
        metrics.KAFKA_UP.set(1)
        self.outage.recovered()

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        if any(broker.get("nodeid", -1) >= 0 and broker.get("state") == "UP"
               for broker in stats.get("brokers", {}).values()):
            self._answered()
        lags = {
            (name, p["partition"]): p["consumer_lag"]
            for name, topic in stats.get("topics", {}).items()
            for p in topic.get("partitions", {}).values()
            if p.get("partition", -1) >= 0 and p.get("consumer_lag", -1) >= 0
        }
        for (topic, partition), lag in lags.items():
            if (topic, partition) in self.health.assigned:
                metrics.LAG.labels(topic, str(partition)).set(lag)
        self.lag = sum(lags.values()) if lags else None

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is None and not failed:
            metrics.COMMITS.inc()
        else:
            metrics.COMMIT_FAILURES.inc()
            reason = error if error is not None else failed[0].error
            self.outage.failed(f"offset commit failed, will retry: {reason.str()}")
        bad = {(p.topic, p.partition) for p in (partitions if error is not None else failed)}
        for p in partitions:
            key = (p.topic, p.partition)
            self._on_commit_result(key, p.offset, key not in bad)


def _partition_list(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none"


def describe_topic(config: dict[str, Any], topic: str) -> str:
    """Reach the brokers once and say how many partitions `topic` has (for --check);
    KafkaException naming librdkafka's first complaint if they cannot be reached."""
    errors: list[KafkaError] = []
    consumer = Consumer(config | {"logger": logging.getLogger("kafka"),
                                  "log_level": KAFKA_LOG_LEVEL, "error_cb": errors.append})
    try:
        found = consumer.list_topics(topic, timeout=15).topics[topic]
    except KafkaException as error:
        consumer.poll(0)  # serves the error callback: not subscribed, so no message
        cause = f" ({errors[0].str()})" if errors else ""
        raise KafkaException(f"{error.args[0].str()}{cause}") from None
    finally:
        consumer.close()
    if found.error is not None:
        raise KafkaException(found.error)
    return f"topic {topic} has {len(found.partitions)} partitions"
