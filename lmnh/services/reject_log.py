"""erroneous_data.log: the lines of lmnh/core/reject_lines.py appended, flushed and synced
before the offsets of their batch are committed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class RejectLog:
    """Appended, flushed and synced per batch; reopened when rotated away.

    `max_value_bytes`: how much of each raw value its callers' lines keep.
    """

    def __init__(self, path: Path, max_value_bytes: int) -> None:
        self.path = path
        self.max_value_bytes = max_value_bytes
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
