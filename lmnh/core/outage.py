"""A fault that lasts, logged as an operator wants it: one line when it starts, a reminder a
minute while it lasts (with how long so far), one line when it ends. Every retry in between is
silent, so an hour's outage is some 60 lines, not tens of thousands."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class Outage:
    """Templates: `started` takes {detail}; `lasting` {seconds} and {detail}; `ended` {seconds}."""

    log: logging.Logger
    started: str
    lasting: str
    ended: str
    remind_s: float = 60.0
    since: float | None = field(default=None, init=False)
    _next_reminder: float = field(default=0.0, init=False)
    _detail: str = field(default="", init=False)

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, detail: str) -> None:
        """Another failed attempt: a line if it is the first, else at most a reminder."""
        self._detail = detail
        now = time.monotonic()
        if self.since is None:
            self.since, self._next_reminder = now, now + self.remind_s
            self.log.warning(self.started.format(detail=detail))
        else:
            self.remind(now)

    def remind(self, now: float | None = None) -> None:
        """The minute's reminder, if one is due; cheap enough to call on every loop turn."""
        now = time.monotonic() if now is None else now
        if self.since is not None and now >= self._next_reminder:
            self._next_reminder = now + self.remind_s
            self.log.warning(self.lasting.format(seconds=round(now - self.since),
                                                 detail=self._detail))

    def recovered(self) -> None:
        if self.since is not None:
            seconds = round(time.monotonic() - self.since)
            self.since = None
            self.log.info(self.ended.format(seconds=seconds))
