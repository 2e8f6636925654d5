"""Three-level active learning of PVD-AL (paper §3.2.4, Eq. 9–11, Algorithm 1).

* **Hard poses (TCP)**: :class:`HardPosePool` — the per-pose student-vs-teacher RGB error of each epoch,
  the worst fraction kept in a bounded pool (with explicit pose ids, not paired by loader order as in
  the authors' code), pool poses re-injected into later epochs with a rotation jitter.
* **Hard rays (TSR)**: :class:`HardRayPool` — the hardest fraction of every batch by RGB error enters a
  bounded pool; once the pool is full, that fraction of every batch is drawn from it and the drawn slots
  are overwritten in place by the batch's new hardest rays.
* **Hard points (TSP)**: :class:`~pvdal_ns.model_components.hard_points.HardPoints` — the σ and colour losses use
  only the top fraction of each ray's sample weights (teacher ∪ student), leaving out rays of low opacity; the model
  applies it (it holds the weights), :attr:`ActiveLearning.hard_points` says when.

:class:`ActiveLearning` is the one owner of all three: which levels are on (from the config and the
teacher's capabilities, once), from which step, the pools, and the per-epoch statistics the figures are
drawn from. The datamanager asks it for an epoch's poses and a batch's pool rays and hands it the errors.
Nothing here depends on the architectures.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from pvdal_ns.cameras.poses import random_rotations
from pvdal_ns.model_components.hard_points import HardPoints
from pvdal_ns.model_components.teacher_batch import Capability


@dataclass
class ActiveLearningConfig:
    """Switches and sizes of the three levels; defaults are the paper's (§4.1) and the authors' code's."""

    poses: bool = True
    """Hard poses (TCP, Eq. 9)."""
    rays: bool = True
    """Hard rays (TSR, Eq. 10)."""
    points: bool = True
    """Hard points (TSP, Eq. 11)."""
    start_step: Optional[int] = None
    """First step with active learning; None: the first step of stage 3 (paper §4.1). It needs the
    student's render, so it never acts before stage 3."""
    pose_fraction: float = 0.1
    """Worst fraction of an epoch's poses that enters the pool; also the fraction of each later epoch's
    poses drawn from the pool (paper: 10 %)."""
    pose_pool_size: int = 100
    """Poses the pool holds; the oldest are replaced first."""
    pose_jitter_degrees: float = 9.0
    """Rotation jitter of a re-injected pose, about the scene centre (object-centric) or the camera."""
    ray_fraction: float = 0.1
    """Fraction of each batch that enters the ray pool and, once it is full, comes from it (paper: 10 %)."""
    ray_pool_size: int = 4096 * 150
    """Rays the pool holds (authors' code: 4096 × 150)."""
    point_fraction: float = 0.3
    """Fraction of each ray's occupied samples, by weight, that carries the σ and colour losses (paper: 30 %)."""
    point_min_opacity: float = 0.5
    """Each model's hard points are taken only on rays it renders at least this opaque (its own opacity)."""
    images_every_epochs: int = 10
    """Write the hard-pose and hard-ray images every this many epochs (0: never); each set costs a
    teacher render of one view and two matplotlib figures (about 2 s on a 2-core CPU)."""

    @property
    def any(self) -> bool:
        """True when at least one level is on."""
        return self.poses or self.rays or self.points


class HardPosePool(nn.Module):
    """TCP (Eq. 9): per-pose errors of the current epoch and a bounded pool of the worst poses.

    The pool is saved in the pipeline's checkpoint (``get_extra_state``) and restored on resume.

    Args:
        capacity: poses the pool holds; when full, the oldest are replaced.
        fraction: worst fraction of an epoch's measured poses that enters the pool.
    """

    def __init__(self, capacity: int, fraction: float) -> None:
        super().__init__()
        self.capacity, self.fraction = capacity, fraction
        self.poses = torch.zeros(0, 3, 4)
        """Float[Tensor, "P 3 4"] camera-to-world matrices of the pool (world units)."""
        self.errors = torch.zeros(0)
        """Float[Tensor, " P"] mean squared RGB error of each pool pose when it entered."""
        self.next_slot = 0
        self.reset_epoch(0)

    def reset_epoch(self, num_poses: int) -> None:
        """Start measuring a new epoch of ``num_poses`` poses."""
        self.error_sum = torch.zeros(num_poses, dtype=torch.float64)
        self.ray_count = torch.zeros(num_poses, dtype=torch.float64)

    def record(self, pose_ids: Int[Tensor, " R"], errors: Float[Tensor, " R"]) -> None:
        """Add per-ray squared errors to their poses; ids < 0 (rays from the ray pool) are ignored."""
        valid = pose_ids >= 0
        ids = pose_ids[valid].cpu()
        self.error_sum.index_add_(0, ids, errors.detach()[valid].double().cpu())
        self.ray_count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))

    def pose_errors(self) -> Float[Tensor, " N"]:
        """Mean squared error of each pose of the epoch; NaN where none of its rays was measured."""
        return (self.error_sum / self.ray_count).float()

    def end_epoch(self, camera_to_worlds: Float[Tensor, "N 3 4"]) -> Int[Tensor, " K"]:
        """Move the worst ``fraction`` of the epoch's measured poses into the pool.

        Returns:
            the epoch ids of the poses that entered, hardest first.
        """
        errors = self.pose_errors()
        measured = torch.nonzero(~torch.isnan(errors))[:, 0]
        if len(measured) == 0:
            return measured
        k = max(1, math.ceil(self.fraction * len(measured)))
        hardest = measured[torch.argsort(errors[measured], descending=True)[:k]]
        for i in hardest.tolist():
            self._put(camera_to_worlds[i].detach().cpu(), float(errors[i]))
        return hardest

    def _put(self, pose: Tensor, error: float) -> None:
        if len(self.poses) < self.capacity:
            self.poses = torch.cat([self.poses, pose[None]])
            self.errors = torch.cat([self.errors, torch.tensor([error])])
        else:
            self.poses[self.next_slot], self.errors[self.next_slot] = pose, error
            self.next_slot = (self.next_slot + 1) % self.capacity

    def draw(self, n: int, jitter_degrees: float, pivot: Optional[Float[Tensor, "3"]],
             generator: Optional[torch.Generator] = None) -> Float[Tensor, "n 3 4"]:
        """``n`` pool poses (with repetition when the pool is smaller), each rotated by a random angle up
        to ``jitter_degrees`` about ``pivot`` (world point), or about its own centre when ``pivot`` is None."""
        if len(self.poses) == 0 or n <= 0:
            return torch.zeros(0, 3, 4)
        picked = self.poses[torch.randint(len(self.poses), (n,), generator=generator)]
        rotation = random_rotations(n, jitter_degrees, generator)
        centres = picked[:, :, 3]
        anchor = centres if pivot is None else pivot.expand_as(centres)
        new_centres = anchor + ((centres - anchor)[:, None, :] @ rotation.transpose(1, 2))[:, 0]
        return torch.cat([rotation @ picked[:, :, :3], new_centres[:, :, None]], dim=-1)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"poses": self.poses, "errors": self.errors, "next_slot": self.next_slot,
                "error_sum": self.error_sum, "ray_count": self.ray_count}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.poses, self.errors, self.next_slot = state["poses"].cpu(), state["errors"].cpu(), int(state["next_slot"])
        if "error_sum" in state:  # the epoch's measurements so far (checkpoints before 2026-12-03 lack them)
            self.error_sum, self.ray_count = state["error_sum"].cpu(), state["ray_count"].cpu()


RAY_FIELDS = ("origins", "directions", "pixel_area", "pixels")


class HardRayPool(nn.Module):
    """TSR (Eq. 10): a bounded pool of the rays with the largest RGB error.

    Filling: the hardest ``fraction`` of every batch is appended until the pool holds ``capacity`` rays.
    Once full ("warm"), :meth:`draw` gives that many pool rays for the next batch, and :meth:`update`
    overwrites exactly the drawn slots with the new batch's hardest rays. Rays are stored in world
    coordinates with their pixel (row, column) for the heat maps. Saved in the checkpoint.

    Args:
        capacity: rays the pool holds.
        fraction: fraction of each batch that enters (and, once warm, comes from) the pool.
    """

    def __init__(self, capacity: int, fraction: float) -> None:
        super().__init__()
        self.capacity, self.fraction = capacity, fraction
        self.rays: Dict[str, Tensor] = {}
        """origins, directions Float[Tensor, "P 3"]; pixel_area Float[Tensor, "P 1"]; pixels Int[Tensor, "P 2"]."""
        self._drawn: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.rays["origins"]) if self.rays else 0

    def per_batch(self, batch_size: int) -> int:
        """Rays of a batch of ``batch_size`` that enter the pool (and come from it once warm)."""
        return min(self.capacity, max(1, round(self.fraction * batch_size)))

    @property
    def warm(self) -> bool:
        """True once the pool is full."""
        return len(self) >= self.capacity

    def draw(self, n: int, generator: Optional[torch.Generator] = None) -> Optional[Dict[str, Tensor]]:
        """``n`` random pool rays (remembered for :meth:`update`), or None while the pool is filling."""
        if not self.warm or n <= 0:
            self._drawn = None
            return None
        self._drawn = torch.randperm(len(self), generator=generator, device="cpu")[:n].to(self.rays["origins"].device)
        return {k: v[self._drawn] for k, v in self.rays.items()}

    def update(self, errors: Float[Tensor, " R"], rays: Dict[str, Tensor]) -> Int[Tensor, " K"]:
        """Put the hardest rays of a batch into the pool.

        Args:
            errors: per-ray squared RGB error (student vs teacher).
            rays: the batch's rays, same keys as the pool, first dimension R.

        Returns:
            the batch positions of the rays that entered.
        """
        k = self.per_batch(len(errors))
        if self._drawn is not None:
            k = min(k, len(self._drawn))
        hardest = torch.topk(errors.detach(), k).indices
        new = {key: rays[key][hardest].detach() for key in RAY_FIELDS}
        if self._drawn is not None:  # warm: replace the rays just drawn, in place
            for key in RAY_FIELDS:
                self.rays[key][self._drawn[:k]] = new[key].to(self.rays[key])
            self._drawn = None
        elif not self.rays:
            self.rays = {key: value[: self.capacity].clone() for key, value in new.items()}
        else:
            room = self.capacity - len(self)
            self.rays = {key: torch.cat([self.rays[key], new[key][:room].to(self.rays[key])]) for key in RAY_FIELDS}
        return hardest

    def get_extra_state(self) -> Dict[str, Any]:
        return {"rays": {k: v.cpu() for k, v in self.rays.items()}}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.rays = dict(state["rays"])
        self._drawn = None


LEVEL_NEEDS = {
    "poses": (Capability.RAYS | Capability.IMAGES, "new renders of novel poses"),
    "rays": (Capability.RAYS, "a teacher that renders any ray"),
    "points": (Capability.POINTS, "the teacher at the sample points"),
}
"""Level → (capabilities of which the teacher needs one, what that is in words)."""
LEVEL_NAMES = {"poses": "hard poses", "rays": "hard rays", "points": "hard points"}


class ActiveLearning(nn.Module):
    """The three levels of one distillation, and the one place that decides about them.

    The levels on are those of ``config`` that the teacher can feed (:data:`LEVEL_NEEDS`; each one switched
    off is logged once); they act from :attr:`start` on, and :meth:`set_step` (the pipeline's
    ``BEFORE_TRAIN_ITERATION`` callback) switches them on there. The pools are saved in the pipeline's
    checkpoint and restored on resume. Besides them it keeps this epoch's statistics for the figures
    (Fig. 7): ``from_pool`` Bool[Tensor, " N"] (which poses were re-injected), the pose errors of
    :attr:`hard_poses`, ``heat`` Float[Tensor, "H W"] (every ray that entered the ray pool, by pixel) and
    ``hard_ray_ids`` (the flat (pose, row, column) ids of the fresh ones).

    Args:
        config: the levels asked for and their sizes.
        capabilities: what the run's teacher gives; None (no teacher): the levels as asked.
        stage3_start: the first step of stage 3; the levels need the student's render, so they never act
            before it.
    """

    def __init__(self, config: ActiveLearningConfig, capabilities: Optional[Capability] = None,
                 stage3_start: int = 0) -> None:
        super().__init__()
        if capabilities is not None:
            for level, (needs, what) in LEVEL_NEEDS.items():
                if getattr(config, level) and not capabilities & needs:
                    CONSOLE.log(f"Active learning: {LEVEL_NAMES[level]} off (they need {what})")
                    config = dataclasses.replace(config, **{level: False})
        self.config = config
        """The levels in use: the asked-for ones less those the teacher cannot feed."""
        self.start = stage3_start if config.start_step is None else max(config.start_step, stage3_start)
        """First step with active learning."""
        self._hard_points = HardPoints(config.point_fraction, config.point_min_opacity)
        self.hard_poses = HardPosePool(config.pose_pool_size, config.pose_fraction)
        self.hard_rays = HardRayPool(config.ray_pool_size, config.ray_fraction)
        self.active = False
        self.from_pool = torch.zeros(0, dtype=torch.bool)
        self.start_epoch(0, (1, 1))
        if capabilities is not None and config.any:
            levels = ", ".join(LEVEL_NAMES[level] for level in LEVEL_NAMES if getattr(config, level))
            CONSOLE.log(f"Active learning ({levels}) from step {self.start}")

    def set_step(self, step: int) -> None:
        """Switch the levels on from :attr:`start` (called before every training step)."""
        self.active = self.config.any and step >= self.start

    def _on(self, level: str) -> bool:
        return self.active and getattr(self.config, level)

    @property
    def hard_points(self) -> Optional[HardPoints]:
        """The hard-point rule (TSP) the model applies at this step; None while the level is off."""
        return self._hard_points if self._on("points") else None

    # --- what the datamanager asks ----------------------------------------------------------------------
    def epoch_poses(self, num_poses: int, image_size: Tuple[int, int], fresh: Callable[[int], Tensor],
                    pivot: Optional[Tensor]) -> Float[Tensor, "N 3 4"]:
        """The poses of a new epoch: ``fresh(k)`` novel poses, then, with hard poses on and a pool to draw
        from, ``pose_fraction`` of ``num_poses`` from the pool, jittered about ``pivot`` (TCP). Starts the
        epoch's statistics for ``image_size`` (H, W) images.

        Returns:
            Float[Tensor, "N 3 4"] camera-to-world matrices (world units), N = ``num_poses``.
        """
        n_pool = 0
        if self._on("poses") and len(self.hard_poses.poses):
            n_pool = min(num_poses - 1, round(self.config.pose_fraction * num_poses))
        c2w = fresh(num_poses - n_pool)
        if n_pool:
            c2w = torch.cat([c2w, self.hard_poses.draw(n_pool, self.config.pose_jitter_degrees, pivot)])
        self.from_pool = torch.arange(num_poses) >= num_poses - n_pool
        self.start_epoch(num_poses, image_size)
        return c2w

    def pool_rays(self, num_rays: int) -> Optional[Dict[str, Tensor]]:
        """Rays of the hard-ray pool for a batch of ``num_rays`` (TSR), with the keys of :data:`RAY_FIELDS`;
        None while the level is off or the pool is still filling."""
        if not self._on("rays"):
            return None
        return self.hard_rays.draw(self.hard_rays.per_batch(num_rays))

    def feedback(self, pixels: Int[Tensor, "R 3"], rays: Dict[str, Tensor], errors: Float[Tensor, " R"]) -> None:
        """One step's per-ray squared RGB errors (student vs teacher) of the batch's rays: to the pose
        statistics (TCP) and the ray pool (TSR).

        Args:
            pixels: (pose id, row, column) of each ray; pose id −1 for rays from the pool.
            rays: origins, directions, pixel_area of the rays (first dimension R).
        """
        if not self.active:
            return
        if self.config.poses:
            self.hard_poses.record(pixels[:, 0], errors)
        if self.config.rays:
            entered = self.hard_rays.update(errors, {**rays, "pixels": pixels[:, 1:].to(errors.device)})
            self.record_hard_rays(pixels[entered.cpu()])

    def end_epoch(self, camera_to_worlds: Float[Tensor, "N 3 4"]) -> Optional[Int[Tensor, " K"]]:
        """The epoch's hardest poses into the pool (hard poses on); returns their epoch ids, hardest first,
        or None with hard poses off."""
        return self.hard_poses.end_epoch(camera_to_worlds.cpu()) if self._on("poses") else None

    def metrics(self) -> Dict[str, Tensor]:
        """How full the pools are: ``al_ray_pool_fill`` (fraction) and ``al_pose_pool_size`` (poses)."""
        return {"al_ray_pool_fill": torch.tensor(len(self.hard_rays) / max(self.hard_rays.capacity, 1)),
                "al_pose_pool_size": torch.tensor(float(len(self.hard_poses.poses)))}

    # --- the epoch's statistics, for the figures --------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        """This epoch's figure statistics (the pools save their own state), for an exact resume."""
        return {"from_pool": self.from_pool, "image_size": list(self.image_size), "heat": self.heat,
                "hard_ray_ids": torch.cat(self.hard_ray_ids) if self.hard_ray_ids else torch.zeros(0, dtype=torch.long)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.from_pool, self.image_size, self.heat = (state["from_pool"].cpu(), tuple(state["image_size"]),
                                                      state["heat"].cpu())
        self.hard_ray_ids = [state["hard_ray_ids"].cpu()]

    def start_epoch(self, num_poses: int, image_size) -> None:
        """Reset the per-epoch statistics for ``num_poses`` poses of ``image_size`` (H, W) pixels."""
        self.hard_poses.reset_epoch(num_poses)
        self.image_size = tuple(image_size)
        self.heat = torch.zeros(self.image_size)
        self.hard_ray_ids: List[Tensor] = []

    def record_hard_rays(self, indices: Int[Tensor, "K 3"]) -> None:
        """Note the (pose id, row, column) of rays that entered the pool; pose id −1 = a pool ray."""
        indices = indices.cpu()
        height, width = self.image_size
        self.heat.index_put_((indices[:, 1], indices[:, 2]), torch.ones(len(indices)), accumulate=True)
        fresh = indices[indices[:, 0] >= 0]
        self.hard_ray_ids.append((fresh[:, 0] * height + fresh[:, 1]) * width + fresh[:, 2])

    def pose_heat(self, pose_id: int) -> Float[Tensor, "H W"]:
        """Hard rays of one pose of this epoch, counted per pixel."""
        height, width = self.image_size
        ids = torch.cat(self.hard_ray_ids) if self.hard_ray_ids else torch.zeros(0, dtype=torch.long)
        mine = ids[ids // (height * width) == pose_id] % (height * width)
        return torch.bincount(mine, minlength=height * width).float().view(height, width)
