"""``DistillationDataManager``: pseudo-label batches rendered by the teacher from novel camera poses.

Without a teacher it is nerfstudio's ``VanillaDataManager`` (training on images). With one attached,
training batches never contain real pixels (paper §4.1 "pseudo-labeling", data-free): each epoch draws
fresh poses from the training cameras' distribution (DESIGN §1), rays use the training intrinsics, and
``batch["image"]`` is the teacher's render of those rays on a random per-ray background. The eval split
keeps the real test images, so ``ns-eval`` measures the student against ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
from jaxtyping import Float
from scipy.spatial.transform import Rotation
from nerfstudio.cameras.camera_utils import viewmatrix
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from pvdal_ns.teacher import Teacher


@dataclass
class DistillationDataManagerConfig(VanillaDataManagerConfig):
    """Pseudo-label settings; the rest is nerfstudio's ``VanillaDataManagerConfig``."""

    _target: Type = field(default_factory=lambda: DistillationDataManager)
    poses_per_epoch: int = 100
    """Novel camera poses drawn per epoch; an epoch is as many rays as those poses have pixels."""
    elevation_percentiles: Tuple[float, float] = (5.0, 95.0)
    """Object-centric scenes: elevation range of the novel orbit poses, as percentiles of the training cameras'."""
    forward_facing_margin: float = 0.1
    """Forward-facing scenes: growth of the training centres' bounding box where new centres are drawn."""
    jitter_degrees: float = 9.0
    """Forward-facing scenes: rotation jitter of a training camera's orientation."""


class PoseSampler:
    """Draws novel camera-to-world poses like the training cameras (DESIGN §1).

    Object-centric captures (cameras looking from all around): orbit poses around the scene-box centre
    with the training cameras' radius range and elevation percentiles, looking at the centre.
    Forward-facing captures: centres in the training centres' box grown by a margin, orientations of a
    random training camera jittered by up to ``jitter_degrees``.

    Args:
        camera_to_worlds: Float[Tensor, "N 3 4"] training poses (OpenGL convention, as nerfstudio).
        centre: Float[Tensor, "3"] scene centre (world units).
        config: the datamanager config holding the ranges.
    """

    def __init__(self, camera_to_worlds: Tensor, centre: Tensor, config: DistillationDataManagerConfig) -> None:
        self.c2w = camera_to_worlds.float().cpu()
        self.centre = centre.float().cpu()
        self.config = config
        forward = -self.c2w[:, :, 2]
        self.object_centric = bool(forward.mean(dim=0).norm() < 0.7)
        self.up = torch.nn.functional.normalize(self.c2w[:, :, 1].mean(dim=0), dim=0)
        offsets = self.c2w[:, :, 3] - self.centre
        radius = offsets.norm(dim=-1)
        elevation = torch.asin((offsets @ self.up / radius).clamp(-1, 1))
        lo, hi = config.elevation_percentiles
        self.radius_range = (float(radius.min()), float(radius.max()))
        self.elevation_range = (float(torch.quantile(elevation, lo / 100)), float(torch.quantile(elevation, hi / 100)))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Float[Tensor, "n 3 4"]:
        """n novel camera-to-world matrices."""
        u = torch.rand(n, 3, generator=generator)
        if self.object_centric:
            return self._orbit(u)
        return self._forward_facing(u, generator)

    def _orbit(self, u: Tensor) -> Tensor:
        r = self.radius_range[0] + u[:, 0] * (self.radius_range[1] - self.radius_range[0])
        elev = self.elevation_range[0] + u[:, 1] * (self.elevation_range[1] - self.elevation_range[0])
        azim = u[:, 2] * 2 * math.pi
        helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(self.up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
        e1 = torch.nn.functional.normalize(torch.linalg.cross(self.up, helper), dim=0)
        e2 = torch.linalg.cross(self.up, e1)
        horizontal = azim.cos()[:, None] * e1 + azim.sin()[:, None] * e2
        direction = elev.cos()[:, None] * horizontal + elev.sin()[:, None] * self.up
        pos = self.centre + r[:, None] * direction
        return torch.stack([viewmatrix(p - self.centre, self.up, p) for p in pos])

    def _forward_facing(self, u: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        centres = self.c2w[:, :, 3]
        lo, hi = centres.min(dim=0).values, centres.max(dim=0).values
        grow = (hi - lo) * self.config.forward_facing_margin / 2
        pos = (lo - grow) + u * (hi - lo + 2 * grow)
        base = self.c2w[torch.randint(len(self.c2w), (len(u),), generator=generator), :, :3]
        axis = torch.nn.functional.normalize(torch.randn(len(u), 3, generator=generator), dim=-1)
        angle = (torch.rand(len(u), generator=generator) * 2 - 1) * math.radians(self.config.jitter_degrees)
        jitter = torch.from_numpy(Rotation.from_rotvec((axis * angle[:, None]).numpy()).as_matrix()).float()
        return torch.cat([jitter @ base, pos[:, :, None]], dim=-1)


class DistillationDataManager(VanillaDataManager):
    """nerfstudio's ``VanillaDataManager`` plus pseudo-label batches once a teacher is attached.

    Training images are only read when training from images (no teacher).
    """

    config: DistillationDataManagerConfig

    def setup_train(self) -> None:
        # Deferred: VanillaDataManager.setup_train reads every training image, which distillation never uses.
        self.teacher: Optional[Teacher] = None
        self._image_training_ready = False

    def attach_teacher(self, teacher: Teacher) -> None:
        """Switch training batches to pseudo-labels rendered by ``teacher``."""
        self.teacher = teacher
        cameras = self.train_dataset.cameras
        self.pose_sampler = PoseSampler(cameras.camera_to_worlds, self.train_dataset.scene_box.get_center(), self.config)
        kind = "object-centric orbit" if self.pose_sampler.object_centric else "forward-facing"
        CONSOLE.log(f"Pseudo-labels: {self.config.poses_per_epoch} novel {kind} poses per epoch from {teacher.source}")
        self._intrinsics = cameras[0:1]
        self.epoch = -1
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch += 1
        c2w = self.pose_sampler.sample(self.config.poses_per_epoch)
        cam = self._intrinsics
        n = len(c2w)
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
        self._epoch_steps = max(1, n * self._image_size[0] * self._image_size[1] // self.config.train_num_rays_per_batch)
        self._epoch_step = 0

    def _draw_ray_indices(self, num_rays: int) -> Tensor:
        """[num_rays, 3] (pose id, row, column) drawn uniformly from this epoch's poses."""
        height, width = self._image_size  # every novel pose has the training intrinsics
        pose = torch.randint(len(self.pseudo_cameras), (num_rays,))
        return torch.stack([pose, torch.randint(height, (num_rays,)), torch.randint(width, (num_rays,))], dim=-1)

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """Next batch: real pixels without a teacher, otherwise the teacher's pseudo-labels.

        With a teacher, ``batch`` holds ``image`` Float[Tensor, "R 3"] (teacher render on
        ``background``), ``background`` Float[Tensor, "R 3"], ``indices`` Int[Tensor, "R 3"]
        (pose id, row, column) and ``teacher`` (:class:`~pvdal_ns.teacher.TeacherBatch`).
        """
        if self.teacher is None:
            if not self._image_training_ready:
                super().setup_train()
                self._image_training_ready = True
            return super().next_train(step)
        if self._epoch_step >= self._epoch_steps:
            self._new_epoch()
        self._epoch_step += 1
        self.train_count += 1
        indices = self._draw_ray_indices(self.config.train_num_rays_per_batch)
        ray_bundle = self.pseudo_ray_generator(indices.to(self.device))
        background = torch.rand(len(indices), 3, device=self.device)
        teacher_batch = self.teacher.render(ray_bundle, background)
        batch = {"image": teacher_batch.rgb, "background": background, "indices": indices, "teacher": teacher_batch}
        return ray_bundle, batch

    def get_train_rays_per_batch(self) -> int:
        return self.config.train_num_rays_per_batch
