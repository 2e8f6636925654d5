"""``DistillationPipeline``: teacher + pseudo-label datamanager + student, stage by stage.

With no ``teacher_config`` it is nerfstudio's ``VanillaPipeline`` (the student trains on images: these
are the teachers and the from-scratch baselines). With one, every training step evaluates the student
at the teacher's sample points and applies the PVD losses of the current stage (paper §3.2, Eq. 6–8).
The teacher is loaded only for training (``test_mode="val"``), so ``ns-eval``, ``ns-render`` and
``ns-viewer`` work on a student checkpoint alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Type, Union

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler

from pvdal_ns.active_learning import ActiveLearning, ActiveLearningConfig, hard_point_mask
from pvdal_ns.checkpoints import fill_missing_defaults
from pvdal_ns.datamanager import DistillationDataManager, DistillationDataManagerConfig
from pvdal_ns.losses import PVDLossConfig, StageSchedule, point_losses, ray_rgb_errors
from pvdal_ns.model import PVDModel, PVDModelConfig
from pvdal_ns.teacher import Sampling, Teacher, TeacherLoadError, load_teacher, newest_checkpoint, read_trainer_config
from pvdal_ns.teacher_cache import TeacherCache, write_cache


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
    """config.yml of a trained run to distil from (pvdal-*, nerfacto, instant-ngp, tensorf, vanilla-nerf, splatfacto);
    None (and no teacher_cache) trains on the images."""
    teacher_cache: Optional[Path] = None
    """Serial mode: a teacher-cache folder. Missing: the teacher renders the run's batches into it before
    the first step and is then released. Present: the student distils from it with no teacher loaded."""
    teacher_cache_gib: float = 4.0
    """Bound on the size of a cache this run writes (GiB); a run with more steps cycles through its batches."""
    teacher_renders_only: bool = False
    """Distil from the teacher's rendered images only (L_rgb on random backgrounds): no ϕ¹, σ or colour at
    points, no stages 1–2, no hard rays or hard points. Always so for teachers without a field (splatfacto);
    for the others, the plain pseudo-label baseline that the point losses are measured against."""
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
        self.teacher: Optional[Union[Teacher, TeacherCache]] = None
        """The live teacher, or the teacher cache standing in for it (serial mode)."""
        self._stage = 0
        self._run_steps: Optional[int] = None
        self._cache_to_write: Optional[Path] = None
        if test_mode == "val" and config.teacher_cache is not None:
            cache = Path(config.teacher_cache)
            if cache.exists():
                self.attach_teacher(TeacherCache(cache, self.cache_key()))
            elif config.teacher_config is None:
                raise TeacherLoadError(f"teacher cache {cache} does not exist and no --pipeline.teacher-config is "
                                       "given to write it")
            else:
                self._cache_to_write = cache
        if test_mode == "val" and config.teacher_config is not None and self.teacher is None:
            self.attach_teacher(_teacher_for(config.teacher_config, device, Sampling.of(self.model)))

    def cache_key(self) -> Dict:
        """What a teacher cache of this run depends on (stored as ``written_for`` in its meta.json, compared
        on reuse): teacher config and checkpoint, sampling, rays per batch, pose settings, training cameras."""
        teacher = checkpoint = None
        if self.config.teacher_config is not None:
            path = Path(self.config.teacher_config).expanduser().resolve()
            ckpt = newest_checkpoint(path, read_trainer_config(path))
            teacher, checkpoint = str(path), f"{ckpt.name} ({ckpt.stat().st_size} bytes)"
        dm, model = self.datamanager.config, self.model.config
        cams = self.datamanager.train_dataset.cameras
        camera_values = [cams.camera_to_worlds, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height]
        digest = hashlib.sha1(torch.cat([v.flatten().double() for v in camera_values]).cpu().numpy().tobytes())
        return {
            "teacher": teacher, "checkpoint": checkpoint,
            "scene_box": self.model.scene_box.aabb.flatten().tolist(), "grid_resolution": model.grid_resolution,
            "num_samples": model.num_samples, "grid_threshold": model.grid_threshold,
            "rays_per_batch": dm.train_num_rays_per_batch, "poses_per_epoch": dm.poses_per_epoch,
            "steps_per_epoch": dm.steps_per_epoch, "elevation_percentiles": list(dm.elevation_percentiles),
            "forward_facing_margin": dm.forward_facing_margin, "jitter_degrees": dm.jitter_degrees,
            "cameras": digest.hexdigest(),
        }

    def attach_teacher(self, teacher: Union[Teacher, TeacherCache]) -> None:
        """Start distilling from ``teacher`` (live, or its cache): its occupancy grid becomes the student's
        (frozen). With a cache (or one to be written), hard poses and hard rays are off: they need new
        teacher renders.

        Raises:
            TeacherLoadError: the teacher's occupancy grid has another resolution than the student's."""
        student = self.model
        if teacher.occupancy_grid.binaries.shape != student.occupancy_grid.binaries.shape:
            raise TeacherLoadError(
                f"teacher occupancy grid {tuple(teacher.occupancy_grid.binaries.shape[1:])} differs from the "
                f"student's {tuple(student.occupancy_grid.binaries.shape[1:])}: set --pipeline.model.grid-resolution"
            )
        student.occupancy_grid.load_state_dict(teacher.occupancy_grid.state_dict())
        student.occupancy_frozen = True
        self.teacher = teacher
        al = self.config.al
        cached = isinstance(teacher, TeacherCache) or self._cache_to_write is not None
        self.renders_only = self.config.teacher_renders_only or getattr(teacher, "renders_only", False)
        """Distilling from the teacher's images alone (L_rgb only)."""
        if self.renders_only and cached:
            raise TeacherLoadError("a teacher cache holds the teacher at sample points, which distillation from renders "
                                   "only does not use: leave out --pipeline.teacher-cache (or renders-only)")
        if cached:
            if al.poses or al.rays:
                CONSOLE.log("Teacher cache: hard poses and hard rays are off (they need new teacher renders)")
            al = dataclasses.replace(al, poses=False, rays=False)
        if self.renders_only:
            CONSOLE.log(f"Distilling from the renders of {teacher.name} only: L_rgb alone, from stage 3; L_v, L_σ, L_c, "
                        "hard rays and hard points are off (they need the teacher at points or at any ray)")
            al = dataclasses.replace(al, rays=False, points=False)
        self.active_learning.config = al  # what the datamanager's samplers and feedback consult too
        if isinstance(teacher, TeacherCache):
            self.datamanager.attach_cache(teacher)
        else:
            self.datamanager.attach_teacher(teacher, self.active_learning if al.any and not cached else None,
                                            renders_only=self.renders_only)
        self.align_volume = student.field.has_volume_feature and teacher.has_volume_feature and not self.renders_only
        if not self.align_volume and not self.renders_only:
            who = f"student ({type(student.field).__name__})" if not student.field.has_volume_feature else f"teacher ({teacher.name})"
            CONSOLE.log(f"Stage 1 and L_v skipped: the {who} has no ϕ¹ volume feature")
        elif self.config.loss.volume_weight <= 0:
            self.align_volume = False
            CONSOLE.log("Stage 1 skipped: the volume-aligned loss is switched off (loss.volume_weight = 0)")
        self.stages = StageSchedule(self.config.stage1_steps, self.config.stage2_steps,
                                    self.config.blockwise and not self.renders_only, has_stage1=self.align_volume)
        self.al_start = self.stages.stage3_start if al.start_step is None else al.start_step
        if al.any:
            levels = ", ".join(n for n, on in (("hard poses", al.poses), ("hard rays", al.rays), ("hard points", al.points)) if on)
            CONSOLE.log(f"Active learning ({levels}) from step {self.al_start}")

    @property
    def al_config(self) -> ActiveLearningConfig:
        """The active-learning levels in use: ``config.al`` less what a teacher cache or renders-only
        distillation cannot serve (set when the teacher is attached)."""
        return self.active_learning.config

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None:  # a teacher cache holds one batch per step of the run
            self._run_steps = trainer.config.max_num_iterations
        return super().get_training_callbacks(training_callback_attributes)

    def write_teacher_cache(self, num_batches: int) -> TeacherCache:
        """Serial mode: render ``num_batches`` pseudo-label batches with the live teacher into
        ``config.teacher_cache`` (bounded by ``teacher_cache_gib``), then release the teacher and
        distil from the cache.

        Raises:
            TeacherLoadError: the cache path exists already, or the bound is below one batch."""
        from pvdal_ns.runner import progress_bar

        teacher = self.teacher
        assert isinstance(teacher, Teacher) and self._cache_to_write is not None
        with progress_bar() as progress:
            task = progress.add_task("teacher cache: rendering", total=num_batches)
            cache = write_cache(self._cache_to_write, teacher, self.datamanager.pseudo_label_batches(num_batches),
                                self.cache_key(), int(self.config.teacher_cache_gib * 2**30),
                                lambda: progress.advance(task))
        CONSOLE.log(f"Teacher cache: {len(cache)} batches, {cache.nbytes / 2**30:.2f} GiB in {cache.path}")
        self._cache_to_write = None
        self.teacher = cache
        self.datamanager.attach_cache(cache)
        return cache

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
        if self._cache_to_write is not None:
            if self.datamanager.batch_source is None:
                self.write_teacher_cache(self._run_steps or step + 1)
            else:  # a follower trains on the leader's batches: the leader writes and reads the cache
                self._cache_to_write = None
        stage = self.stages.stage_at(step)
        al = self.active_learning
        al.active = self.al_config.any and stage == 3 and step >= self.al_start  # it needs the student's render
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
            if al.active and self.al_config.points:
                started = time.perf_counter()
                hard_points = hard_point_mask(
                    teacher.weights, outputs["weights"], teacher.mask, teacher.accumulation,
                    self.al_config.point_fraction, self.al_config.point_min_opacity,
                )
                metrics_dict["al_hard_point_fraction"] = hard_points.float().mean()
                al_seconds += time.perf_counter() - started
        loss_dict = {} if teacher.points is None else point_losses(
            student, teacher.points, stage, self.config.loss, self.align_volume, hard_points, step)
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
