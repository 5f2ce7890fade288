"""db.open_connection's TCP user timeout (issue 21, fault 10): a COPY whose link stops carrying
anything fails within seconds, so a SIGTERM during it is answered within the unit's 10 s, not
after the kernel's minutes of retransmissions."""

from __future__ import annotations

import contextlib
import io
import select
import socket
import threading
import time
from collections.abc import Iterator
from datetime import time as dt_time

import psycopg2
import pytest
from conftest import Database, wait_until

import db


def settings_for(database: Database, host: str, port: int, **extra: int) -> db.DatabaseSettings:
    server = database.server
    return db.DatabaseSettings(host, port, database.name, server.user, server.password,
                               sslmode="disable", **extra)


def test_connections_carry_a_tcp_user_timeout(database: Database) -> None:
    server = database.server
    conn = db.connect(settings_for(database, server.host, server.port))
    try:
        assert conn.get_dsn_parameters().get("tcp_user_timeout") == "10000"
    finally:
        conn.close()
    conn = db.open_connection(settings_for(database, server.host, server.port,
                                           tcp_user_timeout_ms=2500), "probe")
    try:
        assert conn.get_dsn_parameters().get("tcp_user_timeout") == "2500"
    finally:
        conn.close()


class Blackhole:
    """A TCP relay to the database that, once stopped, reads and sends nothing more: to a client
    sending, as a link that drops every packet, its data is acknowledged no further than a small
    receive buffer (then the window is closed). `stop_after(n)` stops it once n more bytes have
    gone from a client to the server, so the stop falls in the middle of a COPY's data."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        # Inherited by the accepted socket: the window closes after a few kilobytes.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.stopped_at = 0.0
        self.budget: int | None = None
        self.closing = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop_after(self, count: int) -> None:
        self.budget = count

    def _stop(self) -> None:
        self.stopped_at = time.monotonic()
        self.stopped.set()

    def close(self) -> None:
        self.closing.set()
        self.thread.join(10)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        peers: dict[socket.socket, socket.socket] = {}
        while not self.closing.is_set():
            if self.stopped.is_set():
                time.sleep(0.05)
                continue
            ready, _, _ = select.select([self.listener, *peers], [], [], 0.05)
            for sock in ready:
                if self.stopped.is_set():
                    break
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    self.sockets += [client, upstream]
                    peers[client], peers[upstream] = upstream, client
                    continue
                data = sock.recv(65536)
                if data:
                    peers[sock].sendall(data)
                if self.budget is not None and sock in self.sockets[1::2]:  # a client's
                    self.budget -= len(data)
                    if self.budget <= 0:
                        self._stop()


@pytest.fixture
def blackhole(database: Database) -> Iterator[Blackhole]:
    relay = Blackhole((database.server.host, database.server.port))
    yield relay
    relay.close()


def test_a_copy_through_a_link_that_stops_fails_within_seconds(
        database: Database, blackhole: Blackhole) -> None:
    conn = db.connect(settings_for(database, "127.0.0.1", blackhole.port))
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE sink (n int)")
    conn.commit()
    payload = b"1\n" * 25_000_000  # 50 MB: far more than every buffer on the way
    outcome: list[BaseException | None] = []

    def copy() -> None:
        try:
            with conn.cursor() as cur:
                cur.copy_expert("COPY sink FROM STDIN", io.BytesIO(payload), size=1 << 20)
            outcome.append(None)
        except BaseException as error:  # reported to the test
            outcome.append(error)

    blackhole.stop_after(1 << 20)
    worker = threading.Thread(target=copy, daemon=True)
    worker.start()
    assert blackhole.stopped.wait(20), "the COPY never sent its first megabyte"
    worker.join(20)
    elapsed = time.monotonic() - blackhole.stopped_at
    try:
        assert not worker.is_alive(), "the COPY still waits 20 s after the link stopped"
        assert isinstance(outcome[0], psycopg2.OperationalError), outcome
        assert elapsed < 15, elapsed
        print(f"the COPY failed {elapsed:.1f} s after the link stopped")
    finally:
        blackhole.close()  # an old client's COPY ends too: its link is closed
        worker.join(10)
        conn.close()


def test_connect_raises_schema_mismatch_for_the_clock_and_a_missing_clock_row(
        database: Database) -> None:
    server = database.server
    settings = settings_for(database, server.host, server.port)
    london = db.MuseumClock("Europe/London", dt_time(8, 45), dt_time(18, 15))
    db.connect(settings, clock=london).close()
    with pytest.raises(db.SchemaMismatch, match="differs from the database's"):
        db.connect(settings, clock=db.MuseumClock("Asia/Kolkata", dt_time(8, 45),
                                                  dt_time(18, 15)))
    database.execute("DELETE FROM museum_settings")
    with pytest.raises(db.SchemaMismatch, match="no museum clock"):
        db.connect(settings, clock=london)
    admin = psycopg2.connect(database.url)
    try:
        assert db.migrate(admin, london) == (db.latest_version(), [])  # writes the row back
    finally:
        admin.close()
    db.connect(settings, clock=london).close()
    # Every refused connection was closed (a backend ends a moment after its client left).
    wait_until(lambda: database.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND application_name = 'lmnh-pipeline'", (database.name,)) == 0, 10,
        "the refused connections closed")
