"""The daemon's Prometheus metrics and its health endpoints, served on one port.

GET /metrics  Prometheus text format (prometheus-client).
GET /healthz  200 while the consuming loop has turned within the bound, else 503: the process
              is alive (for systemd's watchdog, a container runtime's liveness probe).
GET /readyz   200 while partitions are assigned and the database answered its last call, else
              503 (for a load balancer or a readiness probe).

The counters are module-level, as prometheus-client intends; they start at zero with the
process, as Prometheus expects. The pipeline adds to them once per batch, not per message.
Served by the standard library's WSGI server on a daemon thread; by default on 127.0.0.1 only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONSUMED = Counter("lmnh_messages_consumed", "Messages consumed from the topic")
ACCEPTED = Counter("lmnh_messages_accepted", "Messages accepted, by kind", ["kind"])
REJECTED = Counter("lmnh_messages_rejected", "Messages rejected, by reason", ["reason"])
ROWS_WRITTEN = Counter("lmnh_rows_written", "Interaction rows newly inserted", ["table"])
BATCH_WRITE = Histogram("lmnh_batch_write_seconds",
                        "Time to write one batch in one transaction (its count: batches written)",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAST_BATCH = Gauge("lmnh_last_batch_written_timestamp_seconds",
                   "Unix time the last batch was written")
COMMITS = Counter("lmnh_offset_commits", "Offset commits that succeeded")
COMMIT_FAILURES = Counter("lmnh_offset_commit_failures", "Offset commits that failed")
LAG = Gauge("lmnh_consumer_lag", "Messages behind the end of the partition",
            ["topic", "partition"])
DATABASE_UP = Gauge("lmnh_database_up", "1 while the database answers, else 0")
KAFKA_UP = Gauge("lmnh_kafka_up", "1 while a broker answers, else 0")
EXHIBITIONS = Gauge("lmnh_exhibitions_loaded", "Exhibitions in the metadata in use")
METADATA_REFRESHED = Gauge("lmnh_metadata_refresh_timestamp_seconds",
                           "Unix time of the last good read of the exhibition metadata")


class Health:
    """What /healthz and /readyz answer from; set by the pipeline's loop."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.last_turn = time.monotonic()
        self.assigned: set[tuple[str, int]] = set()
        self.database_up = False

    def turned(self) -> None:
        self.last_turn = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_turn
        if idle > self.stall_s:
            return False, f"loop has not turned for {idle:.0f} s (bound {self.stall_s:.0f} s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.assigned:
            return False, "no partitions assigned"
        if not self.database_up:
            return False, "database unreachable"
        return True, f"ok: {len(self.assigned)} partitions assigned"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every 15 s is not an event for the operator's log."""


def _app(health: Health) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, text = health.alive() if path == "/healthz" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [text.encode() + b"\n"]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"/metrics, /healthz or /readyz\n"]

    return app


class AlertCounts(Protocol):
    """What the alert sender counts (alerts.AlertSender)."""

    @property
    def sent(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def failed_attempts(self) -> int: ...


class _AlertCollector:
    """The sender's own counts, read at each scrape: it keeps them for the stats line too."""

    def __init__(self, counts: AlertCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily("lmnh_alerts_sent", "Emergency alerts SNS accepted",
                                  value=self.counts.sent)
        yield GaugeMetricFamily("lmnh_alerts_pending", "Emergency alerts not yet accepted by SNS",
                                value=self.counts.pending)
        yield CounterMetricFamily("lmnh_alerts_failed", "Emergency alerts SNS refused for good:"
                                  " given up, kept in the outbox as failed",
                                  value=self.counts.failed)
        yield CounterMetricFamily("lmnh_alerts_attempts_failed", "Attempts to publish an alert"
                                  " that failed (retried unless SNS refused it for good)",
                                  value=self.counts.failed_attempts)


def watch_alerts(counts: AlertCounts) -> None:
    """Expose the alert counts as lmnh_alerts_sent_total, lmnh_alerts_pending,
    lmnh_alerts_failed_total and lmnh_alerts_attempts_failed_total (once per process)."""
    REGISTRY.register(_AlertCollector(counts))


def serve(address: str, port: int, health: Health) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread; OSError if the port is taken."""
    server = make_server(address, port, _app(health), server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
