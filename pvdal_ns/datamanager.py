"""``DistillationDataManager``: pseudo-label batches rendered by the teacher from novel camera poses.

Without a teacher it is nerfstudio's ``VanillaDataManager`` (training on images). With one attached,
training batches never contain real pixels (paper §4.1 "pseudo-labeling", data-free): each epoch draws
fresh poses from the training cameras' distribution (DESIGN §1), rays use the training intrinsics, and
``batch["image"]`` is the teacher's render of those rays on a random per-ray background. The eval split
keeps the real test images, so ``ns-eval`` measures the student against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple, Type

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from pvdal_ns.active_learning import ActiveLearning
from pvdal_ns.poses import PoseSampler
from pvdal_ns.teacher import Teacher, TeacherBatch, TeacherImages

if TYPE_CHECKING:
    from pvdal_ns.teacher_cache import TeacherCache

__all__ = ["DistillationDataManager", "DistillationDataManagerConfig", "PoseSampler"]


@dataclass
class DistillationDataManagerConfig(VanillaDataManagerConfig):
    """Pseudo-label settings; the rest is nerfstudio's ``VanillaDataManagerConfig``."""

    _target: Type = field(default_factory=lambda: DistillationDataManager)
    poses_per_epoch: int = 100
    """Novel camera poses drawn per epoch (hard poses are measured and re-injected per epoch)."""
    steps_per_epoch: Optional[int] = None
    """Steps before the next epoch's poses; None: one per pose (the authors' loader gives each pose one batch)."""
    elevation_percentiles: Tuple[float, float] = (5.0, 95.0)
    """Object-centric scenes: elevation range of the novel orbit poses, as percentiles of the training cameras'."""
    forward_facing_margin: float = 0.1
    """Forward-facing scenes: growth of the training centres' bounding box where new centres are drawn."""
    jitter_degrees: float = 9.0
    """Forward-facing scenes: rotation jitter of a training camera's orientation."""


def _float32_intrinsics(dataset):
    """nerfstudio's blender dataparser gives float64 fx/fy (a numpy float into ``torch.tensor``), which
    breaks ``ns-render spiral`` (``torch.cross`` of float32 and float64); cast them to float32."""
    cameras = dataset.cameras
    for name in ("fx", "fy", "cx", "cy"):
        setattr(cameras, name, getattr(cameras, name).float())
    return dataset


def _pseudo_label_dict(teacher_batch: TeacherBatch, background: Tensor, indices: Tensor) -> Dict:
    """The batch dict of a pseudo-label batch (see :meth:`DistillationDataManager.next_train`)."""
    return {"image": teacher_batch.rgb, "background": background, "indices": indices, "teacher": teacher_batch}


class DistillationDataManager(VanillaDataManager):
    """nerfstudio's ``VanillaDataManager`` plus pseudo-label batches once a teacher is attached, with
    the hard-pose (TCP) and hard-ray (TSR) samplers of active learning.

    Training images are only read when training from images (no teacher).
    """

    config: DistillationDataManagerConfig

    def create_train_dataset(self):
        return _float32_intrinsics(super().create_train_dataset())

    def create_eval_dataset(self):
        return _float32_intrinsics(super().create_eval_dataset())

    def setup_train(self) -> None:
        # Deferred: VanillaDataManager.setup_train reads every training image, which distillation never uses.
        self.teacher: Optional[Teacher] = None
        self.active_learning: Optional[ActiveLearning] = None
        self.image_dir: Optional[Path] = None
        self._image_training_ready = False
        self.renders_only = False
        self.teacher_images: Optional[TeacherImages] = None
        """Renders-only distillation: the teacher's images of this epoch's poses."""
        self.batch_source: Optional[DistillationDataManager] = None
        """Set on the followers of a shared run: they train on this datamanager's batches."""
        self._shared: Optional[Tuple[int, RayBundle, Dict]] = None
        self.cache: Optional[TeacherCache] = None
        """Serial mode: batches come from this teacher cache instead of the live teacher."""

    def share_batches_from(self, leader: "DistillationDataManager") -> None:
        """Train on ``leader``'s pseudo-label batches (same poses, rays, samples and teacher outputs) instead of
        rendering the teacher again: several students from one teacher pass per batch. Active learning is
        then driven by the leader's student: its errors choose the hard poses and rays every student sees;
        this datamanager's own feedback is ignored (hard points stay per student, in the pipeline).

        Raises:
            ValueError: ``leader`` has no teacher attached (it cannot make pseudo-label batches)."""
        if leader.teacher is None:
            raise ValueError("the leader has no teacher attached")
        self.batch_source = leader

    def attach_teacher(self, teacher: Teacher, active_learning: Optional[ActiveLearning] = None,
                       renders_only: bool = False) -> None:
        """Switch training batches to pseudo-labels rendered by ``teacher``; ``active_learning`` holds
        the pools the samplers draw from (None: plain random poses and rays). ``renders_only``: the
        teacher renders each epoch's poses as whole images (:meth:`Teacher.render_images`) and batches
        take their pixels; it is never asked for rays it has not imaged (no hard-ray pool then)."""
        self.teacher = teacher
        self.active_learning = active_learning
        self.renders_only = renders_only
        cameras = self.train_dataset.cameras
        self.pose_sampler = PoseSampler(cameras.camera_to_worlds, self.train_dataset.scene_box.get_center(), self.config)
        kind = "object-centric orbit" if self.pose_sampler.object_centric else "forward-facing"
        CONSOLE.log(f"Pseudo-labels: {self.config.poses_per_epoch} novel {kind} poses per epoch from {teacher.source}")
        self._intrinsics = cameras[0:1]
        self.epoch = -1
        self._new_epoch()

    def attach_cache(self, cache: "TeacherCache") -> None:
        """Serve training batches from ``cache`` (serial mode), with no teacher in memory: batch ``step``
        is cached batch ``step mod len(cache)`` on a fresh random background. Hard poses and hard rays
        are off (they need new teacher renders); the live teacher, if any, is released."""
        self.cache = cache
        self.teacher = None
        self.active_learning = None
        self._shared = None
        self.pseudo_ray_generator = None
        CONSOLE.log(f"Pseudo-labels: {len(cache)} cached batches of {cache.rays_per_batch} rays from {cache.path}")

    def pseudo_label_batches(self, count: int) -> Iterator[Tuple[RayBundle, Dict]]:
        """``count`` pseudo-label batches as training draws them, rendered by the live teacher (what a
        teacher cache stores). Active learning is not consulted. Each batch is what :meth:`next_train`
        returns: RayBundle [R] and the batch dict (``teacher``: :class:`~pvdal_ns.teacher.TeacherBatch`).
        Requires an attached live teacher (:meth:`attach_teacher`)."""
        assert self.teacher is not None, "attach a teacher first"
        for step in range(count):
            yield self._pseudo_label_batch(step)

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None:  # active-learning images go beside the run's checkpoints
            self.image_dir = Path(trainer.base_dir) / "active_learning"
        return []

    # --- epochs of novel poses ------------------------------------------------------------------------
    def _al_level(self, level: str) -> bool:
        al = self.active_learning
        return al is not None and al.active and getattr(al.config, level)

    def _new_epoch(self) -> None:
        self.epoch += 1
        n = self.config.poses_per_epoch
        al = self.active_learning
        n_pool = 0
        if self._al_level("poses") and len(al.hard_poses.poses):
            n_pool = min(n - 1, round(al.config.pose_fraction * n))
        c2w = self.pose_sampler.sample(n - n_pool)
        if n_pool:
            c2w = torch.cat([c2w, al.hard_poses.draw(n_pool, al.config.pose_jitter_degrees, self.pose_sampler.pivot)])
        self.from_pool = torch.arange(n) >= n - n_pool
        """Bool[Tensor, "n"]: which of this epoch's poses are re-injected hard poses."""
        cam = self._intrinsics
        self.pseudo_cameras = Cameras(
            camera_to_worlds=c2w,
            fx=cam.fx.expand(n, 1),
            fy=cam.fy.expand(n, 1),
            cx=cam.cx.expand(n, 1),
            cy=cam.cy.expand(n, 1),
            width=cam.width.expand(n, 1),
            height=cam.height.expand(n, 1),
            distortion_params=None if cam.distortion_params is None else cam.distortion_params.expand(n, -1),
            camera_type=cam.camera_type.expand(n, 1),
        ).to(self.device)
        self.pseudo_ray_generator = RayGenerator(self.pseudo_cameras)
        self._image_size = (int(cam.height), int(cam.width))
        self._epoch_steps = self.config.steps_per_epoch or n
        self._epoch_step = 0
        self.teacher_images = self.teacher.render_images(self.pseudo_cameras) if self.renders_only else None
        if self.active_learning is not None:
            self.active_learning.start_epoch(n, self._image_size)

    def _end_epoch(self, step: int) -> None:
        """Hard poses of the finished epoch into the pool; images of the hard poses and rays."""
        al = self.active_learning
        if al is None or not al.active:
            return
        hardest = al.hard_poses.end_epoch(self.pseudo_cameras.camera_to_worlds.cpu()) if al.config.poses else None
        every = al.config.images_every_epochs
        if self.image_dir is not None and every > 0 and self.epoch % every == 0:
            from pvdal_ns.al_images import write_epoch_images

            write_epoch_images(self, hardest, step)

    # --- batches --------------------------------------------------------------------------------------
    def _draw_ray_indices(self, num_rays: int) -> Tensor:
        """[num_rays, 3] (pose id, row, column) drawn uniformly from this epoch's poses."""
        height, width = self._image_size  # every novel pose has the training intrinsics
        pose = torch.randint(len(self.pseudo_cameras), (num_rays,))
        return torch.stack([pose, torch.randint(height, (num_rays,)), torch.randint(width, (num_rays,))], dim=-1)

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """Next batch: real pixels without a teacher, otherwise the teacher's pseudo-labels.

        With a teacher, ``batch`` holds ``image`` Float[Tensor, "R 3"] (teacher render on
        ``background``), ``background`` Float[Tensor, "R 3"], ``indices`` Int[Tensor, "R 3"]
        (pose id, row, column; pose id −1 for rays from the hard-ray pool) and ``teacher``
        (:class:`~pvdal_ns.teacher.TeacherBatch`). Once the hard-ray pool is full, a fraction of the
        R rays comes from it (TSR); R stays ``train_num_rays_per_batch``.
        """
        if self.teacher is None and self.cache is None and self.batch_source is None:
            if not self._image_training_ready:
                super().setup_train()
                self._image_training_ready = True
            return super().next_train(step)
        source = self.batch_source or self
        if source._shared is None or source._shared[0] != step:  # the first of the students at this step
            source._shared = (step, *(source._cached_batch(step) if source.cache else source._pseudo_label_batch(step)))
        return source._shared[1], source._shared[2]

    def _cached_batch(self, step: int) -> Tuple[RayBundle, Dict]:
        assert self.cache is not None
        self.train_count += 1
        background = torch.rand(self.cache.rays_per_batch, 3, device=self.device)
        ray_bundle, teacher_batch = self.cache.batch(step % len(self.cache), background, torch.device(self.device))
        indices = torch.full((len(background), 3), -1, dtype=torch.long)  # not tied to this run's poses
        return ray_bundle, _pseudo_label_dict(teacher_batch, background, indices)

    def _pseudo_label_batch(self, step: int) -> Tuple[RayBundle, Dict]:
        if self._epoch_step >= self._epoch_steps:
            self._end_epoch(step)
            self._new_epoch()
        self._epoch_step += 1
        self.train_count += 1
        num_rays = self.config.train_num_rays_per_batch
        pooled = None
        if self._al_level("rays"):
            rays_pool = self.active_learning.hard_rays
            pooled = rays_pool.draw(rays_pool.per_batch(num_rays))
        num_pooled = 0 if pooled is None else len(pooled["origins"])
        indices = self._draw_ray_indices(num_rays - num_pooled)
        ray_bundle = self.pseudo_ray_generator(indices.to(self.device))
        if pooled is not None:
            ray_bundle = RayBundle(
                origins=torch.cat([ray_bundle.origins, pooled["origins"].to(ray_bundle.origins)]),
                directions=torch.cat([ray_bundle.directions, pooled["directions"].to(ray_bundle.directions)]),
                pixel_area=torch.cat([ray_bundle.pixel_area, pooled["pixel_area"].to(ray_bundle.pixel_area)]),
                camera_indices=torch.nn.functional.pad(ray_bundle.camera_indices, (0, 0, 0, num_pooled)),
            )
            indices = torch.cat([indices, torch.nn.functional.pad(pooled["pixels"].cpu(), (1, 0), value=-1)])
        background = torch.rand(num_rays, 3, device=self.device)
        if self.teacher_images is not None:
            teacher_batch = self.teacher.render_pixels(self.teacher_images, indices, ray_bundle, background)
        else:
            teacher_batch = self.teacher.render(ray_bundle, background)
        return ray_bundle, _pseudo_label_dict(teacher_batch, background, indices)

    def feedback(self, ray_bundle: RayBundle, batch: Dict, errors: Float[Tensor, "R"]) -> None:
        """Active-learning feedback of one step: per-ray squared RGB errors (student vs teacher) of the
        batch from :meth:`next_train` go to the hard-pose statistics (TCP) and the hard-ray pool (TSR)."""
        al = self.active_learning
        if al is None or not al.active or self.batch_source is not None:
            return
        if al.config.poses:
            al.hard_poses.record(batch["indices"][:, 0], errors)
        if al.config.rays:
            rays = {"origins": ray_bundle.origins, "directions": ray_bundle.directions,
                    "pixel_area": ray_bundle.pixel_area, "pixels": batch["indices"][:, 1:].to(errors.device)}
            entered = al.hard_rays.update(errors, rays)
            al.record_hard_rays(batch["indices"][entered.cpu()])

    def get_train_rays_per_batch(self) -> int:
        return self.config.train_num_rays_per_batch
