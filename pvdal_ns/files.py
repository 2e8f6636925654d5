"""Writing files so that an interrupted run never leaves one half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional


def write_atomic(path: Path, write: Callable[[Path], None], staging: Optional[Path] = None) -> None:
    """Write ``path`` through ``write(temporary path)`` and rename the result over it, so a reader sees the
    old file or the new one, never a part (an interrupted write leaves the old file as it was). A write that
    fails (a full disk) removes its temporary file.

    Args:
        staging: the folder of the temporary file (same file system as ``path``); default: ``path``'s own.
            Give another where a reader lists the folder (nerfstudio's ``--load-dir`` parses every name in it).

    Raises:
        OSError: the folder cannot be made or the file written; whatever ``write`` raises, unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (staging or path.parent) / f".{path.name}.tmp{path.suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
