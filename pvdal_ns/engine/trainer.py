"""nerfstudio's ``Trainer`` for the pvdal-* methods, keeping its promises under crashes (docs/design.md,
"A run's length, resuming, crashes and the machine"): checkpoints written whole or not at all, a checkpoint to resume
from read with ``weights_only=True`` and refused in one line when it cannot be, and steps whose gradients are
not finite skipped and counted, the run stopped after too many in a row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Type

import torch
import yaml
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.amp import GradScaler

from pvdal_ns.pipelines.distillation_pipeline import DistillationPipelineConfig
from pvdal_ns.pipelines.teacher_scene import take_teacher_image_scale, teacher_edits
from pvdal_ns.presets import PRESETS, checkpoint_interval, method_name
from pvdal_ns.utils.checkpoints import allow_numpy_scalars, load_checkpoint, model_state
from pvdal_ns.utils.errors import BadInputError, StorageError, TrainingStoppedError, first_line, install_refusal_hook
from pvdal_ns.utils.files import save_torch, write_atomic
from pvdal_ns.utils.library_internals import trainer_start_step
from pvdal_ns.utils.run_config import read_trainer_config

AMP_SCALE_FLOOR = 2.0**-24
"""Below this gradient scale a run under mixed precision is diverging (:class:`GuardedOptimizers`): float16's
smallest positive (subnormal) number."""


def _finite_flag(parameters: List[torch.nn.Parameter]) -> torch.Tensor:
    """Bool[Tensor, ""]: whether every gradient of ``parameters`` is finite (sparse ones: their values), on their
    device, without waiting for it."""
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([grad.isfinite().all() for grad in grads]).all()


def _finite(parameters: List[torch.nn.Parameter]) -> bool:
    """Whether every gradient of ``parameters`` is finite (sparse ones: their values)."""
    return bool(_finite_flag(parameters))


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """nerfstudio's ``AdamOptimizerConfig`` with torch's ``fused`` Adam (one kernel for every tensor of a group). Such
    an optimiser takes GradScaler's ``found_inf`` protocol, so :class:`GuardedOptimizers` skips its non-finite steps
    on the device, without waiting for it. The presets use it on CUDA."""

    _target: Type = torch.optim.Adam
    fused: bool = True
    """torch's ``fused=True`` (CUDA, and CPU since torch 2.4)."""


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can be told to skip a step by a device flag: torch's fused Adam / AdamW read
    ``found_inf`` (GradScaler's protocol) and leave parameters, moments and step count as they were."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))


class GuardedOptimizers(Optimizers):
    """nerfstudio's ``Optimizers`` that skip a step whose gradients hold a NaN or an Inf (the parameters and the
    optimiser state stay as they were, so any checkpoint holds a finite model) and stop the run, in one line
    naming the step and the last checkpoint, after ``max_in_a_row`` such steps in a row.

    Under mixed precision (an enabled ``GradScaler``) a step whose scaled gradients overflow is AMP's ordinary
    business: the scaler skips it and halves its scale. Such steps are not counted as non-finite ones; the run is
    stopped as diverging when the scale would fall below :data:`AMP_SCALE_FLOOR` (see
    :meth:`optimizer_scaler_step_some`).

    Attributes:
        step: the trainer's current step (set by :class:`PVDTrainer` before each).
        skipped: steps skipped so far in this run for non-finite gradients (the scaler's skips are not counted).
        overflowed: steps in which AMP's grad scaler skipped an optimiser so far in this run.
    """

    def __init__(self, config: Dict, param_groups: Dict, max_in_a_row: int, checkpoint_dir: Path) -> None:
        super().__init__(config, param_groups)
        self.max_in_a_row, self.checkpoint_dir = max_in_a_row, checkpoint_dir
        self.step, self.skipped, self._in_a_row = 0, 0, 0
        self.overflowed, self._overflowed_in_a_row = 0, 0
        self.read_every = max(1, max_in_a_row // 2)
        """Fused optimisers: steps between two reads of the device's counts (the one wait, every that many)."""
        self._device_counts: Optional[torch.Tensor] = None
        """Fused optimisers: Float[Tensor, "3"] on the device: skipped steps, the current run of them in a row, the
        longest run since the last read."""
        self._unread = 0

    def optimizer_scaler_step_some(self, grad_scaler: GradScaler, param_groups: List[str]) -> None:
        """nerfstudio's ``Optimizers.optimizer_scaler_step_some``: step the optimisers of ``param_groups`` that have
        gradients, through ``grad_scaler``, clipping the gradients of groups with an optimiser ``max_norm``.

        Without a grad scaler (disabled: no ``--mixed-precision`` nor ``--use-grad-scaler``, or no CUDA): when a
        gradient of these groups is NaN or Inf, no group is stepped; the step is logged and counted, and the
        ``max_in_a_row``-th such step in a row stops the run. When every optimiser of the groups is a fused Adam
        (:class:`FusedAdamOptimizerConfig`, the presets' on CUDA) the check and the skip happen on the device
        (GradScaler's ``found_inf`` protocol) and the counts are read every :attr:`read_every` steps: the skipped
        steps are then logged in one line, and a run of ``max_in_a_row`` stops the run at that read, up to
        ``read_every`` − 1 steps later (skipped ones too: the model is the one before the run).

        With an enabled grad scaler, every optimiser's gradients are unscaled first, once (``grad_scaler.unscale_``,
        which records the scaler's inf check; clipping then works on unscaled gradients, as nerfstudio's does), and
        the skipping is left to ``grad_scaler.step``: it skips an optimiser whose scaled gradients hold an Inf or a
        NaN, and the trainer's ``grad_scaler.update()`` then halves the scale. Such overflow steps are not counted.
        A step is counted only when the scaler would not skip it: finite scaled gradients that are not finite once
        unscaled (a scale below 1 can make them so); then no group is stepped, as without a scaler.

        A run diverging under AMP is one whose loss or gradients stay NaN or Inf: the scaler skips every step and
        the scale halves each time, towards 0, whereas a healthy run's scale stops falling as soon as its scaled
        gradients fit in float16. The run is stopped when an overflow would bring the scale below
        :data:`AMP_SCALE_FLOOR` = 2**-24, float16's smallest positive number: there every scaled gradient below 1
        underflows to zero, so no step can learn; from torch's initial scale, 2**16, that takes 40 overflowing
        steps in a row. A count of skipped steps in a row is not the test: a healthy run whose float16 gradients
        exceed 2**9 overflows in ten steps in a row at its start, as many as ``max_in_a_row`` (10 by default).

        Args:
            grad_scaler: the trainer's ``GradScaler`` (``torch.cuda.amp`` or ``torch.amp``, any device).
            param_groups: names of the groups to step (keys of ``parameters``).

        Raises:
            TrainingStoppedError: one line naming the step and the last checkpoint, at the
                ``max_in_a_row``-th counted skipped step in a row, or, with a scaler, when the scale would fall
                below :data:`AMP_SCALE_FLOOR`."""
        if not grad_scaler.is_enabled():
            if param_groups and all(_skips_on_device(self.optimizers[group]) for group in param_groups):
                self._step_or_skip_on_device(grad_scaler, param_groups)
            elif _finite([p for group in param_groups for p in self.parameters[group]]):
                self._in_a_row = 0
                super().optimizer_scaler_step_some(grad_scaler, param_groups)
            else:
                self._skip()
            return
        stepping = [group for group in param_groups
                    if any(p.grad is not None for g in self.optimizers[group].param_groups for p in g["params"])]
        checks = []
        for group in stepping:
            parameters = self.parameters[group]
            scaled = _finite_flag(parameters)  # what the scaler's own inf check finds
            grad_scaler.unscale_(self.optimizers[group])
            checks.append(torch.stack([scaled, _finite_flag(parameters)]))
            max_norm = self.config[group]["optimizer"].max_norm
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        flags = torch.stack(checks).tolist() if checks else []  # the one wait for the device
        if any(scaled and not unscaled for scaled, unscaled in flags):  # the scaler would step them
            self._skip()
            return
        self._in_a_row = 0
        for group in stepping:
            grad_scaler.step(self.optimizers[group])  # skips an optimiser whose scaled gradients overflowed
        if all(scaled for scaled, _ in flags):
            self._overflowed_in_a_row = 0
            return
        self.overflowed += 1
        self._overflowed_in_a_row += 1
        scale = grad_scaler.get_scale() * grad_scaler.get_backoff_factor()  # after the trainer's update()
        if scale < AMP_SCALE_FLOOR:
            raise TrainingStoppedError(f"{self._overflowed_in_a_row} steps in a row up to step {self.step} had NaN or "
                   "Inf gradients under "
                   f"mixed precision, bringing the gradient scale to {scale:.3g}, so training stopped; "
                   f"{self._last_checkpoint()}. Lower the learning rates, check the teacher or train without mixed "
                   "precision")

    def _step_or_skip_on_device(self, grad_scaler: GradScaler, param_groups: List[str]) -> None:
        """The step of fused optimisers, skipped by the device when a gradient is not finite; the counts stay on the
        device until every :attr:`read_every` steps (:meth:`_read_counts`)."""
        finite = _finite_flag([p for group in param_groups for p in self.parameters[group]])
        found_inf = (~finite).float()
        for group in param_groups:  # GradScaler's protocol for fused optimisers (torch/amp/grad_scaler.py)
            optimizer = self.optimizers[group]
            optimizer.grad_scale, optimizer.found_inf = None, found_inf  # type: ignore[attr-defined]
        try:
            super().optimizer_scaler_step_some(grad_scaler, param_groups)
        finally:
            for group in param_groups:
                del self.optimizers[group].grad_scale, self.optimizers[group].found_inf  # type: ignore[attr-defined]
        counts = self._device_counts
        if counts is None:
            counts = torch.zeros(3, device=found_inf.device)
        run = (counts[1] + 1) * found_inf
        self._device_counts = torch.stack([counts[0] + found_inf, run, torch.maximum(counts[2], run)])
        self._unread += 1
        if self._unread >= self.read_every:
            self._read_counts()

    def _read_counts(self) -> None:
        """Read the device's counts (one wait): log the steps skipped since the last read and stop the run when a
        run of ``max_in_a_row`` happened."""
        assert self._device_counts is not None
        total, _, longest = (int(v) for v in self._device_counts.tolist())
        self._device_counts[2] = self._device_counts[1]
        self._unread = 0
        new, self.skipped = total - self.skipped, total
        if new:
            CONSOLE.log(f"Steps up to {self.step}: {new} had a NaN or Inf gradient, each step skipped "
                        f"({self.skipped} so far)")
        if longest >= self.max_in_a_row:
            self._in_a_row = longest
            self._stop()

    def _skip(self) -> None:
        """Count and log a step skipped for non-finite gradients; stop the run at the ``max_in_a_row``-th in a row."""
        self.skipped += 1
        self._in_a_row += 1
        CONSOLE.log(f"Step {self.step}: a gradient is NaN or Inf, step skipped "
                    f"({self.skipped} so far, {self._in_a_row} in a row)")
        if self._in_a_row >= self.max_in_a_row:
            self._stop()

    def _stop(self) -> None:
        """Stop the run after :attr:`_in_a_row` non-finite steps in a row, in one line."""
        saved = sorted(self.checkpoint_dir.glob("step-*.ckpt"))
        last = (f"the last checkpoint, {saved[-1]}, holds the model before them" if saved
                else "no checkpoint was saved")
        raise TrainingStoppedError(f"{self._in_a_row} steps in a row up to step {self.step} had NaN or Inf "
               f"gradients, so training stopped; {last}. Lower the learning rates or check the teacher")

    def _last_checkpoint(self) -> str:
        """Where the last checkpoint of the run is, in words."""
        saved = sorted(self.checkpoint_dir.glob("step-*.ckpt"))
        return f"the last checkpoint is {saved[-1]}" if saved else "no checkpoint was saved"


@dataclass
class PVDTrainerConfig(TrainerConfig):
    """nerfstudio's ``TrainerConfig`` for the pvdal-* methods, where ``--max-num-iterations`` is the one setting of
    a run's length: the stage lengths and learning-rate schedules written for the preset's steps (those of the
    schedules) follow it, as :func:`set_steps` does for ``ns-distill`` (docs/design.md, "A run's length, resuming,
    crashes and the machine").
    Stage lengths given on the command line are kept; a run too short to reach stage 3 with them is refused when its
    trainer is set up (:meth:`check`). Runs when ``ns-train`` builds the config; a config read from config.yml is as
    saved.
    Its trainer is :class:`~pvdal_ns.engine.trainer.PVDTrainer` (atomic checkpoints, checked resume, non-finite guard);
    a checkpoint is saved at least every tenth of the run."""

    _target: Type = field(default_factory=lambda: PVDTrainer)
    max_nonfinite_steps: int = 10
    """Steps in a row whose gradients hold a NaN or an Inf (each skipped) after which the run stops."""
    tf32: bool = True
    """On CUDA, matrix products and convolutions in TF32 (Ampere and later: 10-bit mantissa products, float32
    sums), torch's ``allow_tf32`` switches; no effect on a CPU. Off: full float32 products."""

    def __post_init__(self) -> None:
        self.steps_per_save = checkpoint_interval(self.max_num_iterations, self.steps_per_save)
        planned = {group["scheduler"].max_steps for group in self.optimizers.values() if group.get("scheduler")}
        pipeline, steps = self.pipeline, self.max_num_iterations
        if len(planned) != 1 or not isinstance(pipeline, DistillationPipelineConfig):
            return
        written_for = planned.pop()
        preset = next((PRESETS[key] for key in PRESETS if method_name(*key) == self.method_name), None)
        if steps != written_for and preset is not None:
            defaults = tuple(round(f * written_for) for f in preset.stage_fractions)
            self.optimizers = copy.deepcopy(self.optimizers)  # tyro may share them with the registered method
            for group in self.optimizers.values():
                if group.get("scheduler") is not None:
                    group["scheduler"].max_steps = steps
            if (pipeline.stage1_steps, pipeline.stage2_steps) == defaults:
                pipeline.stage1_steps, pipeline.stage2_steps = (round(f * steps) for f in preset.stage_fractions)

    def check(self) -> None:
        """Refuse settings that cannot train as asked.

        Raises:
            BadInputError: the stage lengths leave no step of stage 3."""
        pipeline, steps = self.pipeline, self.max_num_iterations
        if not isinstance(pipeline, DistillationPipelineConfig):
            return
        if pipeline.distils and pipeline.blockwise and pipeline.stage1_steps + pipeline.stage2_steps >= steps:
            raise BadInputError(f"--pipeline.stage1-steps {pipeline.stage1_steps} and --pipeline.stage2-steps "
                                f"{pipeline.stage2_steps} leave no step of stage 3 in a run of {steps} steps: "
                                "shorten them, or leave them out to scale the preset's with --max-num-iterations")

    def take_teacher_image_scale(self) -> None:
        """A student set up by ``ns-train … --pipeline.teacher-config`` takes its teacher's image scale, as
        ``ns-distill``'s students do (:func:`~pvdal_ns.pipelines.teacher_scene.take_teacher_image_scale`), unless
        ``--pipeline.teacher-image-scale False``; one log line names what changed. It records the edits its
        teacher's scene went through (``pipeline.edits_before``, :func:`~pvdal_ns.pipelines.teacher_scene.
        teacher_edits`). The run's ``config.yml``, which ``ns-train`` wrote before the trainer was set up, is written
        again with them, so ``ns-eval`` and ``ns-render`` evaluate at the scale the run trained at.

        Raises:
            TeacherLoadError: the teacher's config.yml cannot be read."""
        pipeline = self.pipeline
        if not isinstance(pipeline, DistillationPipelineConfig) or pipeline.teacher_config is None:
            return
        teacher_path = Path(pipeline.teacher_config).expanduser().resolve()
        teacher = read_trainer_config(teacher_path)
        chain = teacher_edits(teacher, teacher_path)
        changed = take_teacher_image_scale(teacher, pipeline.datamanager) if pipeline.teacher_image_scale else []
        if not changed and chain == pipeline.edits_before:
            return
        if changed:
            CONSOLE.log(f"The teacher's image scale: {', '.join(changed)} (--pipeline.teacher-image-scale False "
                        "keeps this run's)")
        pipeline.edits_before = chain
        saved = self.get_base_dir() / "config.yml"
        if saved.is_file():
            dumped = yaml.dump(self)
            write_atomic(saved, lambda path: path.write_text(dumped, "utf8"))


class PVDTrainer(Trainer):
    """nerfstudio's ``Trainer`` with atomic checkpoints, a checked resume and the non-finite guard
    (``PVDTrainerConfig.max_nonfinite_steps``)."""

    def __init__(self, config: PVDTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        """nerfstudio's; first the command-line policy of a pvdal run (docs/design.md, "Errors"): a
        :class:`~pvdal_ns.utils.errors.PVDError` nobody catches is one line (:func:`install_refusal_hook`), checkpoints
        with NumPy scalars load with ``weights_only=True`` (:func:`allow_numpy_scalars`).

        Raises:
            BadInputError: the config cannot train as asked (:meth:`PVDTrainerConfig.check`)."""
        install_refusal_hook()
        allow_numpy_scalars()
        if isinstance(config, PVDTrainerConfig):
            config.check()
            config.take_teacher_image_scale()
        super().__init__(config, local_rank, world_size)
        if "cuda" in str(self.device):  # the process's setting: the run's device decides it
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = getattr(config, "tf32", True)

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
                raise BadInputError(f"--load-dir {folder} is not a folder: give the run's nerfstudio_models folder")
            if self.config.load_step is not None:
                return folder / f"step-{self.config.load_step:09d}.ckpt"
            saved = sorted(folder.glob("step-*.ckpt"))
            if not saved:
                raise BadInputError(f"--load-dir {folder} holds no step-*.ckpt checkpoint: give the run's "
                                    "nerfstudio_models folder")
            return saved[-1]
        return None if self.config.load_checkpoint is None else Path(self.config.load_checkpoint)

    def _load_checkpoint(self) -> None:
        """nerfstudio's, after reading the checkpoint once with ``weights_only=True`` (an unreadable one is refused in
        one line; nerfstudio then reads it again). A resumed run ends at the step it was planned to end at:
        nerfstudio would run ``max_num_iterations`` more, so the run is shortened to the steps left."""
        path = self._resume_path()
        advice = "resume from another one (--load-step) or start again"
        if path is not None:
            try:
                loaded = load_checkpoint(path)
            except Exception as error:  # noqa: BLE001 — every unreadable file gets the same one line
                reason = ("is not there" if not path.exists()
                          else f"cannot be read as a checkpoint ({type(error).__name__})")
                raise BadInputError(f"checkpoint {path} {reason}: {advice}") from None
            try:
                model_state(loaded)
                missing = [key for key in ("optimizers", "scalers") if key not in loaded]
                if missing:
                    raise ValueError(f"it holds no {missing[0]} (damaged)")
            except ValueError as error:
                raise BadInputError(f"checkpoint {path} cannot be resumed from: {error}; {advice}") from None
        try:
            super()._load_checkpoint()
        except (RuntimeError, KeyError, ValueError, TypeError) as error:  # a state unlike the model or optimisers
            if path is None:
                raise
            raise BadInputError(f"checkpoint {path} does not fit this run ({first_line(error)}): {advice}") from None
        start = trainer_start_step(self)
        if start > 0:
            # the checkpoint's step, what a run with no step left saves again at its end
            self.step = start - 1
            planned = self.config.max_num_iterations
            self.config.max_num_iterations = max(0, planned - start)
            CONSOLE.log(f"Resuming at step {start}: {self.config.max_num_iterations} more, "
                        f"to step {planned}")

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
            raise StorageError(f"checkpoint {path} could not be written ({error.strerror or error}): {then}") from None
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()
