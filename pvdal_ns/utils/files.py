"""Writing files so that an interrupted run never leaves one half-written: any file, JSON, torch objects, figures;
and one writer at a time per folder (:func:`exclusive`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type, Union

import torch

from pvdal_ns.utils.errors import BadInputError, PVDError, first_line


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` while the block runs, so two processes never write one output
    folder or one teacher cache at once; the second is refused at once. The kernel drops the lock when its process
    ends, so a killed run leaves none behind.

    Args:
        path: a folder (locked itself; made if missing, and removed again if the block leaves it empty: a refused
            command leaves no folder) or a lock file beside what it guards (made if missing; it stays, empty).
        what: what is guarded, for the message (e.g. "--output-dir outputs/distill").

    Raises:
        BadInputError: another process holds the lock (one line: wait for it, or choose another path).
        OSError: the folder or the lock file cannot be made."""
    made = None
    if path.suffix != ".lock":
        made = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)  # the first folder made
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(f"another process is writing {what} at this moment: wait for it to end, or choose "
                                "another path") from None
        yield
    finally:
        os.close(fd)  # releases the lock
        if made is not None:  # what this call made, if the block left it empty
            for folder in [path, *path.parents]:
                if not folder.exists() or any(folder.iterdir()):
                    break
                folder.rmdir()
                if folder == made:
                    break


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


Fields = Dict[str, Union[type, Tuple[type, ...]]]


def read_record(path: Path, fields: Fields, advice: str, items: Optional[Tuple[str, Fields]] = None,
                error: Type[PVDError] = BadInputError) -> Dict[str, Any]:
    """A JSON object this package wrote (``run.json``, the demo's ``teacher-*.json``, ``matrix.json``,
    ``ablation.json``), checked before any of it is used: an object with ``fields`` of those types and, with
    ``items`` = (name, fields), every entry of the list ``name`` an object with those fields. They are written
    atomically (:func:`write_json`), so only a hand or another program damages one.

    Raises:
        BadInputError (or ``error``, e.g. ``TeacherLoadError`` for a teacher cache): ``"{path} is damaged ({what}):
            {advice}"``, one line; the file is left as it is."""
    def damaged(what: str) -> PVDError:
        return error(f"{path} is damaged ({what}): {advice}")

    def check(record: Any, expected: Fields, where: str) -> None:
        if not isinstance(record, dict):
            raise damaged(f"{where}not a JSON object")
        for name, kind in expected.items():
            if name not in record:
                raise damaged(f"{where}no {name!r}")
            if not isinstance(record[name], kind) or isinstance(record[name], bool) and bool not in _types(kind):
                raise damaged(f"{where}{name!r} is a {type(record[name]).__name__}")

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as unreadable:
        raise damaged(first_line(unreadable)) from None
    check(record, fields, "")
    if items is not None:
        name, expected = items
        for i, item in enumerate(record[name]):
            check(item, expected, f"{name}[{i}]: ")
    return record


def _types(kind: Union[type, Tuple[type, ...]]) -> Tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON at ``path``, atomically (:func:`write_atomic`).

    Raises:
        OSError: the file cannot be written (the old one, if any, is left as it was)."""
    write_atomic(path, lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))


def pyplot():
    """matplotlib's ``pyplot`` on the non-interactive Agg backend (figures are only written to files; imported on
    first use, as matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path: Path, fig, dpi: int = 110) -> None:
    """Write the matplotlib figure ``fig`` as a PNG at ``path`` atomically (:func:`write_atomic`), then close it.

    Raises:
        OSError: the file cannot be written (the figure is closed all the same)."""
    try:
        write_atomic(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
