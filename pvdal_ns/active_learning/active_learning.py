"""Three-level active learning of PVD-AL (paper §3.2.4, Eq. 9–11, Algorithm 1).

* **Hard poses (TCP)**: :class:`HardPosePool` — the per-pose student-vs-teacher RGB error of each epoch,
  the worst fraction kept in a bounded pool (with explicit pose ids, not paired by loader order as in
  the authors' code), pool poses re-injected into later epochs with a rotation jitter.
* **Hard rays (TSR)**: :class:`HardRayPool` — the hardest fraction of every batch by RGB error enters a
  bounded pool; once the pool is full, that fraction of every batch is drawn from it and the drawn slots
  are overwritten in place by the batch's new hardest rays.
* **Hard points (TSP)**: :class:`~pvdal_ns.model_components.hard_points.HardPoints` — the σ and colour losses use
  only the top fraction of each ray's sample weights (teacher ∪ student), leaving out rays of low opacity; the model
  applies it (it holds the weights), :meth:`ActiveLearning.hard_points_at` says when.

:class:`ActiveLearning` is the one owner of all three: which levels are on (from the config and the
teacher's capabilities, once), from which step, the pools, and the per-epoch statistics the figures are
drawn from. It is changed in one place, once a step: the pipeline feeds it the step's errors
(:meth:`ActiveLearning.feed`). The datamanager only reads it: how many of an epoch's poses and a batch's rays
come from the pools, and which (the drawn ray slots ride in the batch, ``batch["pool_slots"]``; the last
batch of an epoch carries :class:`EpochEnd`). Nothing here depends on the architectures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
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
        """Add per-ray squared errors to their poses; ids < 0 (rays from the ray pool) are ignored. The sums live
        on the errors' device and nothing is read back (no synchronisation): pool rays add zero to pose 0."""
        counted = (pose_ids >= 0).double()
        ids = pose_ids.clamp(min=0)
        self.error_sum = self.error_sum.to(errors.device)
        self.ray_count = self.ray_count.to(errors.device)
        self.error_sum.index_add_(0, ids, errors.detach().double() * counted)
        self.ray_count.index_add_(0, ids, counted)

    def pose_errors(self) -> Float[Tensor, " N"]:
        """Mean squared error of each pose of the epoch (CPU); NaN where none of its rays was measured."""
        return (self.error_sum / self.ray_count).float().cpu()

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
        self.error_sum, self.ray_count = state["error_sum"].cpu(), state["ray_count"].cpu()


RAY_FIELDS = ("origins", "directions", "pixel_area", "pixels")


class HardRayPool(nn.Module):
    """TSR (Eq. 10): a bounded pool of the rays with the largest RGB error.

    Filling: the hardest ``fraction`` of every batch is appended until the pool holds ``capacity`` rays.
    Once full ("warm"), :meth:`draw` gives that many pool rays for the next batch with their slots, and
    :meth:`update`, handed those slots back, overwrites exactly them with the new batch's hardest rays. Rays
    are stored in world coordinates with their pixel (row, column) for the heat maps. Saved in the checkpoint.

    Args:
        capacity: rays the pool holds.
        fraction: fraction of each batch that enters (and, once warm, comes from) the pool.
    """

    def __init__(self, capacity: int, fraction: float) -> None:
        super().__init__()
        self.capacity, self.fraction = capacity, fraction
        self.rays: Dict[str, Tensor] = {}
        """origins, directions Float[Tensor, "P 3"]; pixel_area Float[Tensor, "P 1"]; pixels Int[Tensor, "P 2"]."""

    def __len__(self) -> int:
        return len(self.rays["origins"]) if self.rays else 0

    def per_batch(self, batch_size: int) -> int:
        """Rays of a batch of ``batch_size`` that enter the pool (and come from it once warm)."""
        return min(self.capacity, max(1, round(self.fraction * batch_size)))

    @property
    def warm(self) -> bool:
        """True once the pool is full."""
        return len(self) >= self.capacity

    def draw(self, n: int, generator: Optional[torch.Generator] = None) -> Optional[Tuple[Dict[str, Tensor], Tensor]]:
        """``n`` random pool rays and their slots (Int[Tensor, " n"], for :meth:`update`: they ride in the batch),
        or None while the pool is filling. Reads the pool only."""
        if not self.warm or n <= 0:
            return None
        slots = torch.randperm(len(self), generator=generator, device=self.rays["origins"].device)[:n]
        return {k: v[slots] for k, v in self.rays.items()}, slots

    def update(self, errors: Float[Tensor, " R"], rays: Dict[str, Tensor],
               slots: Optional[Int[Tensor, " n"]] = None) -> Int[Tensor, " K"]:
        """Put the hardest rays of a batch into the pool.

        Args:
            errors: per-ray squared RGB error (student vs teacher).
            rays: the batch's rays, same keys as the pool, first dimension R.
            slots: the pool slots the batch drew (:meth:`draw`); once the pool is warm, the hardest rays
                overwrite exactly these, in place.

        Returns:
            the batch positions of the rays that entered.
        """
        k = self.per_batch(len(errors))
        if slots is not None:
            k = min(k, len(slots))
        hardest = torch.topk(errors.detach(), k).indices
        new = {key: rays[key][hardest].detach() for key in RAY_FIELDS}
        if slots is not None:  # warm: replace the rays just drawn, in place
            for key in RAY_FIELDS:
                self.rays[key][slots[:k]] = new[key].to(self.rays[key])
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


LEVEL_NEEDS = {
    "poses": (Capability.RAYS | Capability.IMAGES, "new renders of novel poses"),
    "rays": (Capability.RAYS, "a teacher that renders any ray"),
    "points": (Capability.POINTS, "the teacher at the sample points"),
}
"""Level → (capabilities of which the teacher needs one, what that is in words)."""
LEVEL_NAMES = {"poses": "hard poses", "rays": "hard rays", "points": "hard points"}


@dataclass
class EpochEnd:
    """What the last batch of an epoch of novel poses carries (``batch["epoch_end"]``), for active learning to
    close the epoch: its number, its N cameras (poses and the training intrinsics) and which of them were
    re-injected from the hard-pose pool (``from_pool`` Bool[Tensor, " N"])."""

    epoch: int
    cameras: Cameras
    from_pool: Tensor


@dataclass
class EndedEpoch:
    """An epoch as active learning closed it (:attr:`ActiveLearning.ended`), what its figures are drawn from
    (Fig. 7, :mod:`pvdal_ns.active_learning.images`).

    Attributes:
        step: the training step whose batch ended it.
        epoch, cameras, from_pool: as :class:`EpochEnd`.
        hardest: Int[Tensor, " K"] epoch pose ids that entered the hard-pose pool, hardest first; None with
            hard poses off.
        pose_errors: Float[Tensor, " N"] mean squared RGB error of each pose (NaN: not measured).
        heat: Float[Tensor, "H W"] every ray that entered the hard-ray pool, counted by pixel.
        hard_ray_ids: Int[Tensor, " M"] flat (pose, row, column) ids of the fresh rays that entered it.
    """

    step: int
    epoch: int
    cameras: Cameras
    from_pool: Tensor
    hardest: Optional[Tensor]
    pose_errors: Tensor
    heat: Tensor
    hard_ray_ids: Tensor

    def pose_heat(self, pose_id: int) -> Float[Tensor, "H W"]:
        """Hard rays of one pose of the epoch, counted per pixel."""
        height, width = self.heat.shape
        mine = self.hard_ray_ids[self.hard_ray_ids // (height * width) == pose_id] % (height * width)
        return torch.bincount(mine, minlength=height * width).float().view(height, width)


class ActiveLearning(nn.Module):
    """The three levels of one distillation, and the one place that decides about them.

    The levels on are those of ``config`` that the teacher can feed (:data:`LEVEL_NEEDS`; each one switched
    off is logged once); they act from :attr:`start` on (:meth:`active_at`). The pipeline feeds it once a step
    (:meth:`feed`): the step's errors go to the pose statistics and the ray pool, and the last batch of an
    epoch closes the epoch (its hardest poses into the pool, :attr:`ended` for the figures). The datamanager
    reads how many poses and rays come from the pools (:meth:`poses_from_pool`, :meth:`pooled_poses`,
    :meth:`pooled_rays`). The pools are saved in the pipeline's checkpoint and restored on resume, with this
    epoch's statistics: the pose errors of :attr:`hard_poses`, ``heat`` Float[Tensor, "H W"] (every ray that
    entered the ray pool, by pixel) and ``hard_ray_ids`` (the flat (pose, row, column) ids of the fresh ones).

    Args:
        config: the levels asked for and their sizes.
        capabilities: what the run's teacher gives; None (no teacher): the levels as asked.
        stage3_start: the first step of stage 3; the levels need the student's render, so they never act
            before it.
        num_poses: the poses of an epoch (``--pipeline.datamanager.poses-per-epoch``).
        image_size: (H, W) pixels of the novel poses (the training intrinsics).
    """

    def __init__(self, config: ActiveLearningConfig, capabilities: Optional[Capability] = None,
                 stage3_start: int = 0, num_poses: int = 0, image_size: Tuple[int, int] = (1, 1)) -> None:
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
        self.num_poses, self.image_size = num_poses, tuple(image_size)
        self.ended: Optional[EndedEpoch] = None
        """The last epoch closed (not saved: the figures of an epoch are drawn at the step that closed it)."""
        self._start_epoch()
        if capabilities is not None and config.any:
            levels = ", ".join(LEVEL_NAMES[level] for level in LEVEL_NAMES if getattr(config, level))
            CONSOLE.log(f"Active learning ({levels}) from step {self.start}")

    def follow(self, leader: str) -> None:
        """This student trains on batches another student makes (students trained together): their poses and rays
        come from the leader's pools, fed by the leader's errors; this one keeps only its own hard points (its
        saved pools stay empty)."""
        if self.config.poses or self.config.rays:
            CONSOLE.log(f"Active learning: hard poses and hard rays are {leader}'s, whose batches this student shares")
        self.config = dataclasses.replace(self.config, poses=False, rays=False)

    def active_at(self, step: int) -> bool:
        """Whether active learning acts at ``step`` (a level is on and ``step`` ≥ :attr:`start`)."""
        return self.config.any and step >= self.start

    def _on(self, level: str, step: int) -> bool:
        return self.active_at(step) and getattr(self.config, level)

    def hard_points_at(self, step: int) -> Optional[HardPoints]:
        """The hard-point rule (TSP) the model applies at ``step``; None while the level is off."""
        return self._hard_points if self._on("points", step) else None

    # --- what the datamanager reads ---------------------------------------------------------------------
    def poses_from_pool(self, num_poses: int, step: int) -> int:
        """How many of an epoch's ``num_poses`` poses starting at ``step`` come from the hard-pose pool (TCP):
        ``pose_fraction`` of them (at least one fresh pose) with hard poses on and a pool to draw from, else 0."""
        if not self._on("poses", step) or len(self.hard_poses.poses) == 0:
            return 0
        return min(num_poses - 1, round(self.config.pose_fraction * num_poses))

    def pooled_poses(self, n: int, pivot: Optional[Tensor]) -> Float[Tensor, "n 3 4"]:
        """``n`` poses of the hard-pose pool, each jittered by up to ``pose_jitter_degrees`` about ``pivot``
        (world point; None: about its own centre); camera-to-world, world units."""
        return self.hard_poses.draw(n, self.config.pose_jitter_degrees, pivot)

    def pooled_rays(self, num_rays: int, step: int) -> Optional[Tuple[Dict[str, Tensor], Tensor]]:
        """Rays of the hard-ray pool for a batch of ``num_rays`` at ``step`` (TSR), with the keys of
        :data:`RAY_FIELDS`, and their pool slots (Int[Tensor, " n"], to ride in the batch as
        ``pool_slots``); None while the level is off or the pool is still filling."""
        if not self._on("rays", step):
            return None
        return self.hard_rays.draw(self.hard_rays.per_batch(num_rays))

    # --- what the pipeline feeds ------------------------------------------------------------------------
    def feed(self, step: int, ray_bundle: RayBundle, batch: Dict[str, Any],
             errors: Float[Tensor, " R"]) -> Dict[str, Tensor]:
        """One step's per-ray squared RGB errors of the student against the teacher: to the pose statistics (TCP)
        and the ray pool (TSR, overwriting the slots ``batch["pool_slots"]`` drew); a batch that carries
        ``epoch_end`` (:class:`EpochEnd`) then closes its epoch (:meth:`end_epoch`).

        Args:
            ray_bundle: the batch's R rays (origins, directions, pixel_area go to the ray pool).
            batch: the datamanager's batch: ``indices`` Int[Tensor, "R 3"] (pose id, row, column; pose id −1
                for pool rays), and ``pool_slots``, ``epoch_end`` when it has them.
            errors: Float[Tensor, " R"], from the model (``rgb_errors``).

        Returns:
            metrics to log: the pools' fill (:meth:`metrics`) and, on a CPU, ``al_overhead_ms``, the milliseconds of
            this call (on a GPU timing it would wait for the device twice a step: compare step times with active
            learning on and off instead, ``benchmarks/step_time.py``); empty before :attr:`start`.
        """
        if not self.active_at(step):
            return {}
        timed = errors.device.type == "cpu"
        started = time.perf_counter()
        errors, pixels = errors.detach(), batch["indices"].to(errors.device)
        if self.config.poses:
            self.hard_poses.record(pixels[:, 0], errors)
        if self.config.rays:
            rays = {"origins": ray_bundle.origins, "directions": ray_bundle.directions,
                    "pixel_area": ray_bundle.pixel_area, "pixels": pixels[:, 1:].to(errors.device)}
            entered = self.hard_rays.update(errors, rays, batch.get("pool_slots"))
            self._record_hard_rays(pixels[entered])
        if batch.get("epoch_end") is not None:
            self.end_epoch(step, batch["epoch_end"])
        if not timed:
            return self.metrics()
        return {**self.metrics(), "al_overhead_ms": torch.tensor(1000.0 * (time.perf_counter() - started))}

    def end_epoch(self, step: int, epoch: EpochEnd) -> EndedEpoch:
        """Close ``epoch``: its hardest poses into the pool (hard poses on), its statistics kept in :attr:`ended`
        for the figures, and fresh statistics for the next epoch."""
        hardest = self.hard_poses.end_epoch(epoch.cameras.camera_to_worlds.cpu()) if self.config.poses else None
        self.ended = EndedEpoch(step, epoch.epoch, epoch.cameras, epoch.from_pool.cpu(), hardest,
                                self.hard_poses.pose_errors(), self.heat.cpu(), self._hard_ray_ids())
        self._start_epoch()
        return self.ended

    def metrics(self) -> Dict[str, Tensor]:
        """How full the pools are: ``al_ray_pool_fill`` (fraction) and ``al_pose_pool_size`` (poses)."""
        return {"al_ray_pool_fill": torch.tensor(len(self.hard_rays) / max(self.hard_rays.capacity, 1)),
                "al_pose_pool_size": torch.tensor(float(len(self.hard_poses.poses)))}

    # --- the epoch's statistics, for the figures --------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        """This epoch's figure statistics (the pools save their own state), for an exact resume."""
        return {"heat": self.heat.cpu(), "hard_ray_ids": self._hard_ray_ids()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.heat = state["heat"].cpu()
        height, width = self.image_size
        ids = state["hard_ray_ids"].cpu()
        self.hard_ray_pixels = [torch.stack([ids // (height * width), ids // width % height, ids % width], -1)]

    def _start_epoch(self) -> None:
        """Fresh per-epoch statistics."""
        self.hard_poses.reset_epoch(self.num_poses)
        self.heat = torch.zeros(self.image_size)
        self.hard_ray_pixels: List[Tensor] = []
        """Int[Tensor, "K 3"] per step: (pose id, row, column) of the rays that entered the pool (pose id −1: a
        pool ray), on the step's device until the epoch ends."""

    def _hard_ray_ids(self) -> Tensor:
        """The epoch's fresh rays that entered the pool, as pixel ids (pose · H + row) · W + column (CPU)."""
        if not self.hard_ray_pixels:
            return torch.zeros(0, dtype=torch.long)
        height, width = self.image_size
        indices = torch.cat(self.hard_ray_pixels).cpu()
        fresh = indices[indices[:, 0] >= 0]
        return (fresh[:, 0] * height + fresh[:, 1]) * width + fresh[:, 2]

    def _record_hard_rays(self, indices: Int[Tensor, "K 3"]) -> None:
        """Note the (pose id, row, column) of rays that entered the pool, on their device (nothing is read back);
        pose id −1 = a pool ray."""
        self.heat = self.heat.to(indices.device)
        self.heat.index_put_((indices[:, 1], indices[:, 2]), torch.ones(len(indices), device=indices.device),
                             accumulate=True)
        self.hard_ray_pixels.append(indices)
