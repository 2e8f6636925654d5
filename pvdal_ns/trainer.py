"""nerfstudio's ``Trainer`` for the pvdal-* methods, keeping its promises under crashes (docs/design.md,
"A run's length, resuming, crashes and the machine"): checkpoints written whole or not at all, a checkpoint to resume
from read with ``weights_only=True`` and refused in one line when it cannot be, and steps whose gradients are
not finite skipped and counted, the run stopped after too many in a row.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.checkpoints import load_checkpoint
from pvdal_ns.files import save_torch, write_atomic
from pvdal_ns.teachers import TeacherLoadError


def _say_error(message: object) -> None:
    """``message`` as one ``error:`` line on nerfstudio's console, however narrow the terminal."""
    CONSOLE.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def refuse(message: str) -> None:
    """Print ``message`` as one ``error:`` line on nerfstudio's console (not wrapped) and exit.

    Raises:
        SystemExit: always, with code 2 (bad input; docs/design.md, "A run's length, resuming, crashes and the
            machine")."""
    _say_error(message)
    sys.exit(2)


def install_refusal_hook() -> None:
    """Make a :class:`~pvdal_ns.teachers.TeacherLoadError` that no caller catches (``ns-train`` with a teacher it
    cannot load) one ``error:`` line and exit code 2 instead of a traceback; every other exception goes to the
    previous ``sys.excepthook``. Callers that catch it (``ns-distill``, tests) are unaffected."""
    if getattr(sys.excepthook, "pvdal_refusal", False):
        return
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        if not issubclass(kind, TeacherLoadError):
            previous(kind, error, traceback)
            return
        _say_error(error)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)  # an exception hook cannot set the exit code otherwise

    hook.pvdal_refusal = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _finite(parameters: List[torch.nn.Parameter]) -> bool:
    """Whether every gradient of ``parameters`` is finite (sparse ones: their values)."""
    flags = [(p.grad._values() if p.grad.is_sparse else p.grad).isfinite().all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


class GuardedOptimizers(Optimizers):
    """nerfstudio's ``Optimizers`` that skip a step whose gradients hold a NaN or an Inf (the parameters and the
    optimiser state stay as they were, so any checkpoint holds a finite model) and stop the run, in one line
    naming the step and the last checkpoint, after ``max_in_a_row`` such steps in a row.

    Attributes:
        step: the trainer's current step (set by :class:`PVDTrainer` before each).
        skipped: steps skipped so far in this run.
    """

    def __init__(self, config: Dict, param_groups: Dict, max_in_a_row: int, checkpoint_dir: Path) -> None:
        super().__init__(config, param_groups)
        self.max_in_a_row, self.checkpoint_dir = max_in_a_row, checkpoint_dir
        self.step, self.skipped, self._in_a_row = 0, 0, 0

    def optimizer_scaler_step_some(self, grad_scaler, param_groups: List[str]) -> None:
        """nerfstudio's step of ``param_groups`` when all their gradients are finite; else skip it and log it.

        Raises:
            SystemExit: code 2, at the ``max_in_a_row``-th skipped step in a row (:func:`refuse`)."""
        if _finite([p for group in param_groups for p in self.parameters[group]]):
            self._in_a_row = 0
            super().optimizer_scaler_step_some(grad_scaler, param_groups)
            return
        self.skipped += 1
        self._in_a_row += 1
        CONSOLE.log(f"Step {self.step}: a gradient is NaN or Inf, step skipped ({self.skipped} so far, {self._in_a_row} in a row)")
        if self._in_a_row >= self.max_in_a_row:
            saved = sorted(self.checkpoint_dir.glob("step-*.ckpt"))
            last = f"the last checkpoint, {saved[-1]}, holds the model before them" if saved else "no checkpoint was saved"
            refuse(f"{self._in_a_row} steps in a row up to step {self.step} had NaN or Inf gradients, so training stopped; "
                   f"{last}. Lower the learning rates or check the teacher")


class PVDTrainer(Trainer):
    """nerfstudio's ``Trainer`` with atomic checkpoints, a checked resume and the non-finite guard
    (``PVDTrainerConfig.max_nonfinite_steps``)."""

    def setup_optimizers(self) -> Optimizers:
        """nerfstudio's optimisers and schedulers, as :class:`GuardedOptimizers`."""
        return GuardedOptimizers(self.config.optimizers.copy(), self.pipeline.get_param_groups(),
                                 getattr(self.config, "max_nonfinite_steps", 10), self.checkpoint_dir)

    def train_iteration(self, step: int):
        """nerfstudio's training step; the optimisers learn its number for their log lines."""
        self.optimizers.step = step  # type: ignore[attr-defined]  # GuardedOptimizers names it when it stops
        return super().train_iteration(step)

    def _resume_path(self) -> Optional[Path]:
        """The checkpoint nerfstudio's ``_load_checkpoint`` will read (``--load-dir`` / ``--load-checkpoint``)."""
        if self.config.load_dir is not None:
            folder = Path(self.config.load_dir)
            if not folder.is_dir():
                refuse(f"--load-dir {folder} is not a folder: give the run's nerfstudio_models folder")
            if self.config.load_step is not None:
                return folder / f"step-{self.config.load_step:09d}.ckpt"
            saved = sorted(folder.glob("step-*.ckpt"))
            if not saved:
                refuse(f"--load-dir {folder} holds no step-*.ckpt checkpoint: give the run's nerfstudio_models folder")
            return saved[-1]
        return None if self.config.load_checkpoint is None else Path(self.config.load_checkpoint)

    def _load_checkpoint(self) -> None:
        """nerfstudio's, after reading the checkpoint once with ``weights_only=True`` (an unreadable one is refused in
        one line; nerfstudio then reads it again). A resumed run ends at the step it was planned to end at:
        nerfstudio would run ``max_num_iterations`` more, so the run is shortened to the steps left."""
        path = self._resume_path()
        if path is not None:
            try:
                load_checkpoint(path)
            except Exception as error:  # noqa: BLE001 — every unreadable file gets the same one line
                reason = "is not there" if not path.exists() else f"cannot be read as a checkpoint ({type(error).__name__})"
                refuse(f"checkpoint {path} {reason}: resume from another one (--load-step) or start again")
        super()._load_checkpoint()
        if self._start_step > 0:
            self.step = self._start_step - 1  # the checkpoint's step, what a run with no step left saves again at its end
            planned = self.config.max_num_iterations
            self.config.max_num_iterations = max(0, planned - self._start_step)
            CONSOLE.log(f"Resuming at step {self._start_step}: {self.config.max_num_iterations} more, to step {planned}")

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint (the same keys), written to a hidden name beside the folder and renamed into it:
        a kill leaves the previous checkpoints and no part of this one in ``nerfstudio_models``; a full disk stops
        the run in one line (exit code 2) with the earlier checkpoints intact."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        try:
            write_atomic(path, lambda tmp: save_torch(state, tmp), staging=self.checkpoint_dir.parent)
        except OSError as error:  # a full disk: the earlier checkpoints stay as they were
            saved = sorted(self.checkpoint_dir.glob("step-*.ckpt"))
            then = (f"{saved[-1].name} is kept; free space and resume with --load-dir {self.checkpoint_dir}" if saved
                    else "no checkpoint was saved before; free space and start again")
            refuse(f"checkpoint {path} could not be written ({error.strerror or error}): {then}")
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()
