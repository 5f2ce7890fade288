"""The database writer (lmnh/services/writer.py) on a real connection: judged batches that wait
behind the write in hand join into one transaction, in order, and the loop's back-pressure
bounds what waits."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
from conftest import Database

import db
from lmnh.services.metrics import Health
from lmnh.services.writer import Task, Writer


def test_batches_waiting_behind_the_write_in_hand_join_into_one_transaction(
        database: Database) -> None:
    transactions: list[tuple[tuple[Any, ...], int]] = []  # each write's parts and its xid
    delivered: list[tuple[tuple[Any, ...], int]] = []

    def write_batches(conn: db.Connection, parts: tuple[Any, ...]) -> int:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()::text::bigint")
            (xid,) = cur.fetchone()
        transactions.append((parts, xid))
        return xid

    writer = Writer(lambda: psycopg2.connect(database.url), Health(60), write_batches,
                    lambda parts, xid: delivered.append((parts, xid)), join_messages=10)
    in_hand, release = threading.Event(), threading.Event()

    def slow(conn: db.Connection) -> None:
        in_hand.set()
        release.wait(10)

    try:
        writer.submit(Task(slow, lambda _: None))
        assert in_hand.wait(10), "the writer never started the first task"
        for part in "abc":
            writer.submit_batch(part, 5)
        assert writer.backlog == 15
        assert not writer.wait_room(5, 0), "20 messages would wait behind the task in hand"
        release.set()
        assert writer.wait_idle(10)
        writer.deliver()
    finally:
        release.set()
        writer.close(5)

    assert [parts for parts, _ in transactions] == [("a", "b"), ("c",)]
    assert len({xid for _, xid in transactions}) == 2, "each join is its own transaction"
    assert delivered == transactions
    assert writer.backlog == 0
    assert writer.wait_room(10, 0)


def test_a_batch_given_while_the_writer_keeps_up_is_written_alone(database: Database) -> None:
    written: list[tuple[Any, ...]] = []
    writer = Writer(lambda: psycopg2.connect(database.url), Health(60),
                    lambda conn, parts: written.append(parts), lambda parts, _: None,
                    join_messages=10)
    try:
        for part in "ab":
            assert writer.wait_room(5, 10)
            writer.submit_batch(part, 5)
            assert writer.wait_idle(10)
    finally:
        writer.close(5)
    assert written == [("a",), ("b",)]
