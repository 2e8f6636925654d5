"""The package's one error policy (docs/design.md, "Errors"): the library raises a :class:`PVDError` whose message is
one line saying what is wrong and what to do; only the command line turns it into that line on the console and exit
code 2 — ``ns-distill`` (:mod:`pvdal_ns.scripts.distill`) by catching it, ``ns-train`` / ``ns-eval`` / ``ns-render``
/ ``ns-viewer`` through :func:`install_refusal_hook`, which a pvdal trainer or pipeline installs when it is set up.
Nothing below the command line exits the process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from nerfstudio.utils.rich_utils import CONSOLE


class PVDError(Exception):
    """Bad input or a run that cannot go on; the message is one line for the user (what is wrong, what to do)."""


class BadInputError(PVDError):
    """An option, a scene folder or a setting that contradicts another or the teacher."""


class TeacherLoadError(PVDError):
    """A run (teacher, student) or teacher cache that cannot be read or used."""


class StorageError(PVDError):
    """A checkpoint, a report or a teacher cache that cannot be written (a full disk); what was written before is
    kept."""


class TrainingStoppedError(PVDError):
    """Training that cannot usefully go on (gradients NaN or Inf step after step); the checkpoints are kept."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (a library's error can run to pages), or its type's name when it has
    none: what a one-line refusal quotes."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def not_a_run_config(role: str, path: Path) -> Optional[str]:
    """Why ``path`` cannot be the ``config.yml`` of a run (``role``: "teacher", "student"), in one line with what
    to pass instead; None when it is a file."""
    if path.is_file():
        return None
    what = "is a directory" if path.is_dir() else "does not exist"
    return (f"{role} config {path} {what}: pass the config.yml that ns-train wrote "
            "(outputs/<experiment>/<method>/<timestamp>/config.yml)")


def say_error(message: object) -> None:
    """``message`` as one ``error:`` line on nerfstudio's console, however narrow the terminal."""
    CONSOLE.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def install_refusal_hook() -> None:
    """Make a :class:`PVDError` that no caller catches (``ns-train`` with a teacher it cannot load, a run that
    diverged) one ``error:`` line and exit code 2 instead of a traceback; every other exception goes to the previous
    ``sys.excepthook``. Callers that catch it (``ns-distill``, tests) are unaffected. Installed by
    :class:`~pvdal_ns.engine.trainer.PVDTrainer` and :class:`~pvdal_ns.pipelines.distillation_pipeline.
    DistillationPipeline` when they are set up, never at import (nerfstudio imports every plugin's method configs
    whenever ``ns-train`` starts, whatever the method). Idempotent."""
    if getattr(sys.excepthook, "pvdal_refusal", False):
        return
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        if not issubclass(kind, PVDError):
            previous(kind, error, traceback)
            return
        say_error(error)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)  # an exception hook cannot set the exit code otherwise

    hook.pvdal_refusal = True  # type: ignore[attr-defined]
    sys.excepthook = hook
