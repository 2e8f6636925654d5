"""Writing files so that an interrupted run never leaves one half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` and rename the result over it, so a reader sees the
    old file or the new one, never a part (an interrupted write leaves the old file as it was).

    Raises:
        OSError: the folder cannot be made or the file written; whatever ``write`` raises, unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
