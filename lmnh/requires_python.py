"""Imported first by every entry point: on an older Python, one line saying what is needed.

Kept to syntax Python 3.6 and newer parse, and imported before any module that needs 3.11, so an
operator who runs `python3 pipeline.py` with the system's Python 3.9 (Amazon Linux 2023) reads
what to do instead of a traceback.
"""

import sys

NEEDED = (3, 11)

if sys.version_info < NEEDED:
    sys.exit(f"this program needs Python {NEEDED[0]}.{NEEDED[1]} or newer, and"
             f" {sys.executable or 'python'} is Python {sys.version_info[0]}.{sys.version_info[1]}:"
             " install python3.11 (docs/operating.md \"Python\") and run it with the virtual"
             " environment's python")
