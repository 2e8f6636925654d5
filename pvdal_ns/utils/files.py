"""Writing files so that an interrupted run never leaves one half-written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch


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


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, with a write that fails part-way (torch's zip writer raises ``RuntimeError``
    "unexpected pos" when the disk fills) raised as an ``OSError`` that says how much space is left.

    Raises:
        OSError: the file could not be written whole (a part may remain: write through :func:`write_atomic`)."""
    try:
        torch.save(obj, path)
    except RuntimeError as error:
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(f"{free / 2**20:.1f} MiB free on its disk; torch.save: {str(error).splitlines()[0]}") from error
