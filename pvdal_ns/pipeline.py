"""``DistillationPipeline``: teacher + pseudo-label datamanager + student, stage by stage.

With no ``teacher_config`` it is nerfstudio's ``VanillaPipeline`` (the student trains on images: these
are the teachers and the from-scratch baselines). With one, every training step evaluates the student
at the teacher's sample points and applies the PVD losses of the current stage (paper §3.2, Eq. 6–8).
The teacher is loaded only for training (``test_mode="val"``), so ``ns-eval``, ``ns-render`` and
``ns-viewer`` work on a student checkpoint alone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Type

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler

from pvdal_ns.active_learning import ActiveLearning, ActiveLearningConfig, hard_point_mask
from pvdal_ns.checkpoints import fill_missing_defaults
from pvdal_ns.datamanager import DistillationDataManager, DistillationDataManagerConfig
from pvdal_ns.losses import PVDLossConfig, StageSchedule, point_losses, ray_rgb_errors
from pvdal_ns.model import PVDModel, PVDModelConfig
from pvdal_ns.teacher import Sampling, Teacher, TeacherLoadError, load_teacher


_SHARED_TEACHERS: Optional[Dict[tuple, Teacher]] = None


@contextlib.contextmanager
def sharing_teachers() -> Iterator[None]:
    """While active, pipelines that distil from the same teacher run (same config.yml, device and sampling)
    share one loaded :class:`Teacher` instead of loading it once each (several students, one teacher)."""
    global _SHARED_TEACHERS
    _SHARED_TEACHERS = {}
    try:
        yield
    finally:
        _SHARED_TEACHERS = None


def _teacher_for(config_path: Path, device: str, sampling: Sampling) -> Teacher:
    if _SHARED_TEACHERS is None:
        return load_teacher(config_path, device, sampling)
    key = (str(Path(config_path).resolve()), str(device), tuple(sampling.scene_box.aabb.flatten().tolist()),
           sampling.grid_resolution, sampling.num_samples, sampling.grid_threshold)
    if key not in _SHARED_TEACHERS:
        _SHARED_TEACHERS[key] = load_teacher(config_path, device, sampling)
    return _SHARED_TEACHERS[key]


@dataclass
class DistillationPipelineConfig(VanillaPipelineConfig):
    """Distillation settings; ``teacher_config`` switches distillation on."""

    _target: Type = field(default_factory=lambda: DistillationPipeline)
    datamanager: DistillationDataManagerConfig = field(default_factory=DistillationDataManagerConfig)
    model: PVDModelConfig = field(default_factory=PVDModelConfig)
    teacher_config: Optional[Path] = None
    """config.yml of a trained pvdal-* run to distil from; None trains on the images."""
    loss: PVDLossConfig = field(default_factory=PVDLossConfig)
    """Weights of Eq. 7 and the density clip of Eq. 8."""
    stage1_steps: int = 3000
    """Steps of stage 1 (ϕ¹ only); skipped when either side has no volume feature (paper §4.1: 3k)."""
    stage2_steps: int = 5000
    """Steps of stage 2 (+ σ and colour at points, nothing rendered) (paper §4.1: 5k)."""
    blockwise: bool = True
    """False: all losses (stage 3) from the first step (Table 3 "w/o block-wise")."""
    al: ActiveLearningConfig = field(default_factory=ActiveLearningConfig)
    """Active learning: hard poses, rays and points (§3.2.4); e.g. ``--pipeline.al.poses False``."""


class DistillationPipeline(VanillaPipeline):
    """nerfstudio ``VanillaPipeline`` that distils a frozen teacher into the student model."""

    config: DistillationPipelineConfig
    datamanager: DistillationDataManager
    _model: PVDModel

    def __init__(
        self,
        config: DistillationPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        fill_missing_defaults(config)  # a config.yml written before a field was added
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.active_learning = ActiveLearning(config.al)
        """The pools of hard poses and rays; saved in the checkpoint, restored on resume."""
        self.teacher: Optional[Teacher] = None
        self._stage = 0
        if config.teacher_config is not None and test_mode == "val":
            self.attach_teacher(_teacher_for(config.teacher_config, device, Sampling.of(self.model)))

    def attach_teacher(self, teacher: Teacher) -> None:
        """Start distilling from ``teacher``: its occupancy grid becomes the student's (frozen)."""
        student = self.model
        if teacher.occupancy_grid.binaries.shape != student.occupancy_grid.binaries.shape:
            raise TeacherLoadError(
                f"teacher occupancy grid {tuple(teacher.occupancy_grid.binaries.shape[1:])} differs from the "
                f"student's {tuple(student.occupancy_grid.binaries.shape[1:])}: set --pipeline.model.grid-resolution"
            )
        student.occupancy_grid.load_state_dict(teacher.occupancy_grid.state_dict())
        student.occupancy_frozen = True
        self.teacher = teacher
        self.datamanager.attach_teacher(teacher, self.active_learning if self.config.al.any else None)
        self.align_volume = student.field.has_volume_feature and teacher.has_volume_feature
        if not self.align_volume:
            who = f"student ({type(student.field).__name__})" if not student.field.has_volume_feature else f"teacher ({teacher.name})"
            CONSOLE.log(f"Stage 1 and L_v skipped: the {who} has no ϕ¹ volume feature")
        elif self.config.loss.volume_weight <= 0:
            self.align_volume = False
            CONSOLE.log("Stage 1 skipped: the volume-aligned loss is switched off (loss.volume_weight = 0)")
        self.stages = StageSchedule(
            self.config.stage1_steps, self.config.stage2_steps, self.config.blockwise, has_stage1=self.align_volume
        )
        al = self.config.al
        self.al_start = self.stages.stage3_start if al.start_step is None else al.start_step
        if al.any:
            levels = ", ".join(n for n, on in (("hard poses", al.poses), ("hard rays", al.rays), ("hard points", al.points)) if on)
            CONSOLE.log(f"Active learning ({levels}) from step {self.al_start}")

    def get_train_loss_dict(self, step: int):
        """One training step's outputs, weighted losses and metrics.

        Without a teacher: nerfstudio's image loss. With one: the PVD losses of the stage at ``step``
        (Eq. 7) at the teacher's sample points; ``rgb_loss`` against the teacher's render from stage 3.
        Metrics: ``stage``, ``samples_per_ray`` and, from stage 3, ``psnr_vs_teacher`` (dB); with
        active learning on, ``al_overhead_ms`` (its bookkeeping, ms per step), the pools' fill and the
        fraction of hard points.
        """
        if self.teacher is None:
            return super().get_train_loss_dict(step)
        stage = self.stages.stage_at(step)
        al = self.active_learning
        al.active = self.config.al.any and stage == 3 and step >= self.al_start  # it needs the student's render
        ray_bundle, batch = self.datamanager.next_train(step)
        teacher = batch["teacher"]
        if stage != self._stage:
            CONSOLE.log(f"Step {step}: distillation stage {stage}")
            self._stage = stage
        student = self.model.query(teacher.ray_samples, teacher.mask, with_rgb=stage >= 2)
        metrics_dict: Dict[str, torch.Tensor] = {
            "stage": torch.tensor(float(stage)),
            "samples_per_ray": teacher.mask.sum(dim=-1).float().mean(),
        }
        outputs: Dict[str, torch.Tensor] = {}
        hard_points = None
        al_seconds = 0.0
        if stage == 3:
            outputs = self.model.composite(teacher.ray_samples, teacher.mask, student, batch["background"])
            if al.active and self.config.al.points:
                started = time.perf_counter()
                hard_points = hard_point_mask(
                    teacher.weights, outputs["weights"], teacher.mask, teacher.accumulation,
                    self.config.al.point_fraction, self.config.al.point_min_opacity,
                )
                metrics_dict["al_hard_point_fraction"] = hard_points.float().mean()
                al_seconds += time.perf_counter() - started
        loss_dict = point_losses(student, teacher.points, stage, self.config.loss, self.align_volume, hard_points, step)
        if stage >= 2:
            loss_dict["regularization"] = self.model.config.regularization_weight * self.model.field.regularization_loss()
        if stage == 3:
            errors = ray_rgb_errors(outputs["rgb"], teacher.rgb)
            mse = errors.mean()  # L_rgb
            if self.config.loss.rgb_weight > 0:
                loss_dict["rgb_loss"] = self.config.loss.rgb_weight * mse
            metrics_dict["psnr_vs_teacher"] = -10.0 * torch.log10(mse.detach().clamp(min=1e-10))
            if al.active:
                started = time.perf_counter()
                self.datamanager.feedback(ray_bundle, batch, errors.detach())
                al_seconds += time.perf_counter() - started
                metrics_dict["al_ray_pool_fill"] = torch.tensor(len(al.hard_rays) / max(al.hard_rays.capacity, 1))
                metrics_dict["al_pose_pool_size"] = torch.tensor(float(len(al.hard_poses.poses)))
        if al.active:
            metrics_dict["al_overhead_ms"] = torch.tensor(1000.0 * al_seconds)
        return outputs, loss_dict, metrics_dict
