"""erroneous_data.log: one line per rejected message, made durable before offsets are committed.

Shared by the daemon and the backfill, so both write the same line format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path


def format_reject_line(logged_at: datetime, reason: str, location: str, detail: str,
                       value: bytes | None) -> str:
    """One line, whatever the bytes: a UTF-8 value as a JSON string, other bytes as b'...'."""
    if value is None:
        shown = "null"
    else:
        try:
            shown = json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            shown = repr(value)
    return (f"{logged_at.isoformat(timespec='milliseconds')}\t{reason}\t{location}\t"
            f"{detail!r}\t{shown}\n")


class RejectLog:
    """Appended, flushed and synced per batch; reopened when rotated away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the process's life

    def _reopen_if_rotated(self) -> None:
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:
            self.file.close()
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, lines: Sequence[str]) -> None:
        """Raises OSError if the lines could not be made durable: then nothing may be committed."""
        if not lines:
            return
        self._reopen_if_rotated()
        self.file.write("".join(lines))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
