"""The exhibition refresh, on a thread of its own: a slow or unreachable S3 never holds up the
consuming loop (its alerts, its polls, a stop). Every `period_s` it reads the bucket; the loop
takes the newest good set with `take()`. A failed read keeps the last good set, logged as an
outage: one line when it starts, a reminder a minute, one when it ends."""

from __future__ import annotations

import logging
import threading

from lmnh.core.outage import Outage
from lmnh.services import metrics
from s3_metadata import METADATA_ERRORS, Exhibition, load_exhibitions, s3_client

log = logging.getLogger("pipeline")


class ExhibitionRefresher:
    def __init__(self, bucket: str, period_s: float, loaded: dict[int, Exhibition]) -> None:
        self.bucket = bucket
        self.period_s = period_s
        self._loaded = loaded
        self._fresh: dict[int, Exhibition] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.outage = Outage(
            log, "exhibition refresh failed, keeping the {detail}",
            "exhibition refresh still failing after {seconds} s, keeping the {detail}",
            "exhibition refresh works again after {seconds} s")
        self._thread = threading.Thread(target=self._run, name="s3-refresh", daemon=True)
        self._thread.start()

    def take(self) -> dict[int, Exhibition] | None:
        """The set read since the last call, if any."""
        with self._lock:
            fresh, self._fresh = self._fresh, None
        return fresh

    def stop(self) -> None:
        """Stop at once; a read in progress is abandoned with the (daemon) thread."""
        self._stopping.set()

    def _run(self) -> None:
        client = s3_client()
        while not self._stopping.wait(self.period_s):
            try:
                exhibitions = load_exhibitions(client, self.bucket, self._loaded)
            except METADATA_ERRORS as error:
                self.outage.failed(f"{len(self._loaded)} loaded: {' '.join(str(error).split())}")
                continue
            self.outage.recovered()
            metrics.METADATA_REFRESHED.set_to_current_time()
            self._loaded = exhibitions
            with self._lock:
                self._fresh = exhibitions
