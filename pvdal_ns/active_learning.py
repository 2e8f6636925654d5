"""Three-level active learning of PVD-AL (paper §3.2.4, Eq. 9–11, Algorithm 1).

* **Hard poses (TCP)**: :class:`HardPosePool` — the per-pose student-vs-teacher RGB error of each epoch,
  the worst fraction kept in a bounded pool (with explicit pose ids, not paired by loader order as in
  the authors' code), pool poses re-injected into later epochs with a rotation jitter.
* **Hard rays (TSR)**: :class:`HardRayPool` — the hardest fraction of every batch by RGB error enters a
  bounded pool; once the pool is full, that fraction of every batch is drawn from it and the drawn slots
  are overwritten in place by the batch's new hardest rays.
* **Hard points (TSP)**: :func:`hard_point_mask` — the σ and colour losses use only the top fraction of
  each ray's sample weights (teacher ∪ student), leaving out rays of low opacity.

Each level switches on and off on its own, and nothing here depends on the architectures: any
distillation with per-ray errors, camera poses and sample weights can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from pvdal_ns.poses import random_rotations


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
    """Rays whose teacher opacity is below this are left out of the σ and colour losses."""
    images_every_epochs: int = 10
    """Write the hard-pose and hard-ray images every this many epochs (0: never); each set costs a
    teacher render of one view and two matplotlib figures (about 2 s on a 2-core CPU)."""

    @property
    def any(self) -> bool:
        """True when at least one level is on."""
        return self.poses or self.rays or self.points


def top_fraction_per_ray(weights: Float[Tensor, "M"], ray_ids: Int[Tensor, "M"], fraction: float) -> Bool[Tensor, "M"]:
    """The ``ceil(fraction · n)`` largest of each ray's n weights, on packed samples (the per-ray
    selection f_sp of Eq. 11; Algorithm 1's ``sortedPW[:Nsp]``).

    Args:
        weights: weights in [0, 1] of M samples, grouped by ray (as ``weights[mask]`` gives them).
        ray_ids: the ray of each sample, non-decreasing.
        fraction: in [0, 1]; a ray with n ≥ 1 samples keeps at least one.

    Returns:
        Bool[Tensor, "M"], True for the kept samples.
    """
    if len(weights) == 0:
        return torch.zeros(0, dtype=torch.bool, device=weights.device)
    counts = torch.bincount(ray_ids)
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.ceil(fraction * counts.float()).long()
    key = ray_ids.double() * 2 + (1 - weights.double().clamp(0, 1))  # by ray, then by weight descending
    order = torch.argsort(key)
    ray_sorted = ray_ids[order]
    rank = torch.arange(len(order), device=order.device) - starts[ray_sorted]
    selected = torch.empty_like(ray_ids, dtype=torch.bool)
    selected[order] = rank < keep[ray_sorted]
    return selected


def hard_point_mask(
    teacher_weights: Float[Tensor, "R S 1"],
    student_weights: Float[Tensor, "R S 1"],
    mask: Bool[Tensor, "R S"],
    teacher_accumulation: Float[Tensor, "R 1"],
    fraction: float = 0.3,
    min_opacity: float = 0.5,
) -> Bool[Tensor, "M"]:
    """TSP (Eq. 11): which of the M = mask.sum() occupied samples carry the σ and colour losses.

    A sample is kept when it is among the top ``fraction`` of its ray's occupied samples by the teacher's
    weight or by the student's (the union of Algorithm 1's ``cat(tea_out[PW], stu_out[PW])``), and its
    ray's teacher opacity is at least ``min_opacity``.

    Returns:
        Bool[Tensor, "M"] in the order of ``positions[mask]``.
    """
    ray_ids = torch.nonzero(mask)[:, 0]
    teacher = top_fraction_per_ray(teacher_weights.detach()[mask][:, 0], ray_ids, fraction)
    student = top_fraction_per_ray(student_weights.detach()[mask][:, 0], ray_ids, fraction)
    opaque = (teacher_accumulation.detach()[:, 0] >= min_opacity)[ray_ids]
    return (teacher | student) & opaque


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
        """Float[Tensor, "P"] mean squared RGB error of each pool pose when it entered."""
        self.next_slot = 0
        self.reset_epoch(0)

    def reset_epoch(self, num_poses: int) -> None:
        """Start measuring a new epoch of ``num_poses`` poses."""
        self.error_sum = torch.zeros(num_poses, dtype=torch.float64)
        self.ray_count = torch.zeros(num_poses, dtype=torch.float64)

    def record(self, pose_ids: Int[Tensor, "R"], errors: Float[Tensor, "R"]) -> None:
        """Add per-ray squared errors to their poses; ids < 0 (rays from the ray pool) are ignored."""
        valid = pose_ids >= 0
        ids = pose_ids[valid].cpu()
        self.error_sum.index_add_(0, ids, errors.detach()[valid].double().cpu())
        self.ray_count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))

    def pose_errors(self) -> Float[Tensor, "N"]:
        """Mean squared error of each pose of the epoch; NaN where none of its rays was measured."""
        return (self.error_sum / self.ray_count).float()

    def end_epoch(self, camera_to_worlds: Float[Tensor, "N 3 4"]) -> Int[Tensor, "K"]:
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
        return {"poses": self.poses, "errors": self.errors, "next_slot": self.next_slot}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.poses, self.errors, self.next_slot = state["poses"].cpu(), state["errors"].cpu(), int(state["next_slot"])


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

    def update(self, errors: Float[Tensor, "R"], rays: Dict[str, Tensor]) -> Int[Tensor, "K"]:
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


class ActiveLearning(nn.Module):
    """The three levels together, as the pipeline and datamanager use them.

    ``active`` is set by the pipeline each step (from ``start_step``). Besides the pools it keeps this
    epoch's hard-ray pixels for the heat maps (Fig. 7b): ``heat`` Float[Tensor, "H W"] counts every ray
    that entered the pool by pixel, ``hard_ray_ids`` the flat (pose, row, column) ids of the fresh ones.
    """

    def __init__(self, config: ActiveLearningConfig) -> None:
        super().__init__()
        self.config = config
        self.hard_poses = HardPosePool(config.pose_pool_size, config.pose_fraction)
        self.hard_rays = HardRayPool(config.ray_pool_size, config.ray_fraction)
        self.active = False
        self.start_epoch(0, (1, 1))

    def start_epoch(self, num_poses: int, image_size) -> None:
        """Reset the per-epoch statistics for ``num_poses`` poses of ``image_size`` (H, W) pixels."""
        self.hard_poses.reset_epoch(num_poses)
        self.image_size = tuple(image_size)
        self.heat = torch.zeros(self.image_size)
        self.hard_ray_ids: list = []

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
