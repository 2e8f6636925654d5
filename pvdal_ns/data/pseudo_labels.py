"""Pseudo-label batches: what a student distils from instead of images (paper §4.1 "pseudo-labeling", data-free).

Two sources, one per kind of teacher, with the batch dict :class:`~pvdal_ns.data.datamanager.DistillationDataManager`
gives the pipeline:

* :class:`RenderedLabels`: each epoch's novel poses (drawn like the training cameras, a fraction from the hard-pose
  pool), each step's rays (a fraction from the hard-ray pool) and the teacher's targets for them, rendered per ray
  or, for a teacher that renders images only, cut from its renders of the epoch's poses.
* :class:`RecordedLabels`: the batches of a teacher cache (serial mode), written first from a
  :class:`RenderedLabels` when the cache does not exist yet.

Students whose batches agree share one source (several students, one teacher pass per batch: the first batch asked
for at a step is made, the others get the same; docs/design.md, "Several students, one teacher").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from torch import Tensor

from pvdal_ns.active_learning.active_learning import ActiveLearning, EpochEnd
from pvdal_ns.cameras.poses import PoseSampler
from pvdal_ns.cameras.rays import ray_generator
from pvdal_ns.model_components.proposal_sampling import Sampler
from pvdal_ns.model_components.stages import StageSchedule
from pvdal_ns.model_components.teacher_batch import TeacherImages
from pvdal_ns.teachers import Teacher, TeacherCache, write_cache


@dataclass
class PseudoLabelsConfig:
    """How novel poses are drawn for pseudo-labels (paper §4.1); the datamanager's config holds these settings
    (``--pipeline.datamanager.*``) beside nerfstudio's, rays per batch among them."""

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


Batch = Dict[str, Any]
"""A pseudo-label batch: ``teacher`` (:class:`TeacherBatch`: the teacher's targets, its render ``rgb`` on its
``background`` from stage 3), ``indices`` Int[Tensor, "R 3"] (pose id, row, column; pose id −1 for rays of the
hard-ray pool or of a cache), and when it has them ``pool_slots`` Int[Tensor, " n"] (the hard-ray pool's slots of
its last n rays) and ``epoch_end`` (:class:`EpochEnd`: the batch is its epoch's last)."""


class _Stages:
    """What the most advanced student served at a step needs of the teacher (shared by both sources)."""

    def __init__(self) -> None:
        self._schedules: List[StageSchedule] = []
        self._made: Optional[Tuple[int, RayBundle, Batch]] = None

    def serve(self, stages: StageSchedule) -> None:
        """Make batches for a student with these stages too: each batch holds what the most advanced stage at
        its step needs of the teacher (stage 1: ϕ¹ and density at the points, stage 2: + colour, stage 3: +
        the render; :class:`~pvdal_ns.model_components.teacher_batch.TeacherBatch`). Without any, batches are
        complete."""
        self._schedules.append(stages)

    def stage_at(self, step: int) -> int:
        """The most advanced stage (1–3) of the students served at ``step``: what its batch must hold."""
        return max((s.stage_at(step) for s in self._schedules), default=3)

    def batch(self, step: int) -> Tuple[RayBundle, Batch]:
        """The batch of ``step``: RayBundle [R] and the :data:`Batch` dict; made once, whoever asks first."""
        if self._made is None or self._made[0] != step:
            self._made = (step, *self._make(step, self.stage_at(step)))
        return self._made[1], self._made[2]

    def _make(self, step: int, stage: int) -> Tuple[RayBundle, Batch]:
        raise NotImplementedError


class RenderedLabels(_Stages):
    """The teacher's targets for each step's rays from each epoch's novel poses, with the hard poses (TCP) and
    hard rays (TSR) of active learning: an epoch draws ``poses_per_epoch`` fresh poses and asks active learning
    for its pooled ones; a batch draws R rays of the epoch's poses and asks for its pooled ones (their slots ride in
    the batch); R stays ``rays_per_batch``. Active learning is only read here: the pipeline feeds it.

    Args:
        teacher: a teacher that renders rays, or images (``from_images``).
        active_learning: the levels and pools that draw the batches (those of the student that made this source).
        cameras: the training cameras; novel poses are drawn like them, with the first one's intrinsics.
        centre: Float[Tensor, "3"] the scene centre (world units).
        config: the pseudo-label settings (poses and steps per epoch, pose sampling).
        rays_per_batch: R, rays of every batch (the datamanager's ``train_num_rays_per_batch``).
        device: where batches are made.
        from_images: distil from the teacher's images only (renders-only distillation).
        sampler: what places the shared samples (a student's proposal sampling, lent to a teacher without proposal
            fields of its own); None: the teacher's own sampler.
    """

    def __init__(self, teacher: Teacher, active_learning: ActiveLearning, cameras: Cameras, centre: Tensor,
                 config: PseudoLabelsConfig, rays_per_batch: int, device: torch.device,
                 from_images: bool = False, sampler: Optional[Sampler] = None) -> None:
        super().__init__()
        self.teacher, self.active_learning, self.config, self.device = teacher, active_learning, config, device
        self.sampler = sampler
        self.from_images, self.rays_per_batch = from_images, rays_per_batch
        self.pose_sampler = PoseSampler(cameras.camera_to_worlds, centre, config)
        CONSOLE.log(f"Pseudo-labels: {config.poses_per_epoch} novel poses per epoch from {teacher.source}; the "
                    f"training cameras are a capture of kind '{self.pose_sampler.kind}' (docs/design.md, \"Scenes\")")
        self._intrinsics = cameras[0:1]
        self.image_size = (int(self._intrinsics.height), int(self._intrinsics.width))
        """(H, W) pixels of every novel pose (the training intrinsics)."""
        self.epoch = -1
        self._new_epoch(step=0)

    def render_batches(self, count: int) -> Iterator[Tuple[RayBundle, Batch]]:
        """``count`` batches as training draws them, rendered whole by the live teacher (what a teacher cache
        stores), active learning left out."""
        for step in range(count):
            yield self._make(step, stage=3, with_pools=False)

    # --- epochs of novel poses --------------------------------------------------------------------------
    def _new_epoch(self, step: int) -> None:
        """The next epoch's poses: fresh ones, then those active learning gives from its pool (their order of
        random draws is the one every run and resume keeps)."""
        self.epoch += 1
        n = self.config.poses_per_epoch
        pooled = self.active_learning.poses_from_pool(n, step)
        c2w = self.pose_sampler.sample(n - pooled)
        if pooled:
            c2w = torch.cat([c2w, self.active_learning.pooled_poses(pooled, self.pose_sampler.pivot)])
        self._use_poses(c2w, torch.arange(n) >= n - pooled)

    def _use_poses(self, c2w: Float[Tensor, "N 3 4"], from_pool: Tensor) -> None:
        """Make the epoch's cameras (the training intrinsics) at ``c2w`` (any device) on :attr:`device`, with the
        ray generator of their pixels there too, and start the epoch's steps."""
        n, cam = len(c2w), self._intrinsics
        self.cameras = Cameras(
            camera_to_worlds=c2w.to(cam.camera_to_worlds),  # built beside the (CPU) intrinsics, then moved whole
            fx=cam.fx.expand(n, 1),
            fy=cam.fy.expand(n, 1),
            cx=cam.cx.expand(n, 1),
            cy=cam.cy.expand(n, 1),
            width=cam.width.expand(n, 1),
            height=cam.height.expand(n, 1),
            distortion_params=None if cam.distortion_params is None else cam.distortion_params.expand(n, -1),
            camera_type=cam.camera_type.expand(n, 1),
        ).to(self.device)
        """The epoch's N cameras (the training intrinsics)."""
        self.from_pool = from_pool.cpu()
        """Bool[Tensor, " N"]: which of the epoch's poses came from the hard-pose pool."""
        # on the cameras' device (nerfstudio's RayGenerator, the fallback, makes its pixel grid on the CPU and is
        # moved: on CUDA "indices should be either on cpu or on the same device", issue #29)
        self.pseudo_ray_generator = ray_generator(self.cameras)
        self._epoch_steps = self.config.steps_per_epoch or n
        self._epoch_step = 0
        self.images: Optional[TeacherImages] = self.teacher.render_images(self.cameras) if self.from_images else None
        """Renders only: the teacher's images of this epoch's poses."""

    def epoch_state(self) -> Dict[str, Any]:
        """Where this epoch stands, for an exact resume (docs/design.md, "What a resume restores"): ``epoch`` and
        ``epoch_step`` (ints), ``poses`` Float[Tensor, "N 3 4"] (camera-to-world, world units, CPU) and
        ``from_pool`` Bool[Tensor, " N"]."""
        return {"epoch": self.epoch, "epoch_step": self._epoch_step, "poses": self.cameras.camera_to_worlds.cpu(),
                "from_pool": self.from_pool}

    def restore_epoch(self, state: Dict[str, Any]) -> None:
        """Go on with the epoch of :meth:`epoch_state` (its renders-only images rendered again)."""
        self.epoch = int(state["epoch"])
        self._use_poses(state["poses"], state["from_pool"])
        self._epoch_step = int(state["epoch_step"])

    # --- batches ----------------------------------------------------------------------------------------
    def _draw_ray_indices(self, num_rays: int) -> Tensor:
        """[num_rays, 3] (pose id, row, column) drawn uniformly from this epoch's poses, on the device (its random
        stream: nothing is copied from the host)."""
        height, width = self.image_size
        draw = lambda high: torch.randint(high, (num_rays,), device=self.device)  # noqa: E731
        return torch.stack([draw(len(self.cameras)), draw(height), draw(width)], dim=-1)

    def _make(self, step: int, stage: int, with_pools: bool = True) -> Tuple[RayBundle, Batch]:
        if self._epoch_step >= self._epoch_steps:
            self._new_epoch(step if with_pools else -1)
        self._epoch_step += 1
        num_rays = self.rays_per_batch
        pooled = self.active_learning.pooled_rays(num_rays, step) if with_pools else None
        num_pooled = 0 if pooled is None else len(pooled[1])
        indices = self._draw_ray_indices(num_rays - num_pooled)
        ray_bundle = self.pseudo_ray_generator(indices)
        if pooled is not None:
            rays = pooled[0]
            ray_bundle = RayBundle(
                origins=torch.cat([ray_bundle.origins, rays["origins"].to(ray_bundle.origins)]),
                directions=torch.cat([ray_bundle.directions, rays["directions"].to(ray_bundle.directions)]),
                pixel_area=torch.cat([ray_bundle.pixel_area, rays["pixel_area"].to(ray_bundle.pixel_area)]),
                camera_indices=torch.nn.functional.pad(ray_bundle.camera_indices, (0, 0, 0, num_pooled)),
            )
            indices = torch.cat([indices, torch.nn.functional.pad(rays["pixels"].to(indices), (1, 0), value=-1)])
        background = torch.rand(num_rays, 3, device=self.device)
        if self.images is not None:
            teacher_batch = self.teacher.image_batch(self.images, indices, ray_bundle, background, self.sampler)
        else:
            teacher_batch = self.teacher.render(ray_bundle, background, stage, self.sampler)
        batch: Batch = {"teacher": teacher_batch, "indices": indices}
        if pooled is not None:
            batch["pool_slots"] = pooled[1]
        if self._epoch_step >= self._epoch_steps:
            batch["epoch_end"] = EpochEnd(self.epoch, self.cameras, self.from_pool)
        return ray_bundle, batch


class RecordedLabels(_Stages):
    """The batches of a teacher cache (serial mode), in the order they were recorded, on fresh random backgrounds;
    a run longer than the cache cycles through it. No epochs and no hard poses or rays: the cache holds fixed rays.

    Args:
        device: where batches are made.
        cache: the teacher cache, opened; or None, and then:
        path: the teacher-cache folder to write (:meth:`write`, before the first step),
        written_for: what its batches depend on (:func:`~pvdal_ns.pipelines.sharing.batch_key`, in ``meta.json``),
        writer: the source that renders the batches it will hold.
    """

    def __init__(self, device: torch.device, cache: Optional[TeacherCache] = None, path: Optional[Path] = None,
                 written_for: Optional[Dict[str, Any]] = None, writer: Optional[RenderedLabels] = None) -> None:
        super().__init__()
        assert (cache is None) == (writer is not None and path is not None), "an open cache, or one to write"
        self.device, self.cache, self.path, self.written_for, self.writer = device, cache, path, written_for, writer
        if cache is not None:
            self._log()

    @property
    def teacher(self) -> Teacher:
        """The cache, or the live teacher that will write it."""
        if self.cache is not None:
            return self.cache
        assert self.writer is not None
        return self.writer.teacher

    def write(self, count: int, max_bytes: int) -> TeacherCache:
        """Serial mode, before the first step: render ``count`` batches into the new cache (at most ``max_bytes``)
        and release the live teacher; once written (by any of the students sharing these batches) a no-op.

        Raises:
            BadInputError: the cache path exists already, or ``max_bytes`` is below one batch.
            StorageError: the disk filled up while writing it."""
        if self.cache is not None:
            return self.cache
        assert self.writer is not None
        with get_progress("teacher cache: rendering") as progress:
            task = progress.add_task("", total=count)
            self.cache = write_cache(Path(self.path), self.writer.teacher,  # type: ignore[arg-type]
                                     self.writer.render_batches(count), self.written_for or {}, max_bytes,
                                     lambda: progress.advance(task))
        CONSOLE.log(f"Teacher cache: {len(self.cache)} batches, {self.cache.nbytes / 2**30:.2f} GiB in {self.path}")
        self.writer, self._made = None, None
        self._log()
        return self.cache

    def _log(self) -> None:
        cache = self.cache
        assert cache is not None
        CONSOLE.log(f"Pseudo-labels: {len(cache)} cached batches of {cache.rays_per_batch} rays from {cache.path}")

    def _make(self, step: int, stage: int) -> Tuple[RayBundle, Batch]:
        cache = self.cache
        if cache is None:
            raise RuntimeError("the teacher cache is written before the first step (RecordedLabels.write)")
        background = torch.rand(cache.rays_per_batch, 3, device=self.device)
        ray_bundle, teacher_batch = cache.recorded_batch(step % len(cache), background, torch.device(self.device),
                                                         stage)
        indices = torch.full((len(background), 3), -1, dtype=torch.long)  # not tied to this run's poses
        return ray_bundle, {"teacher": teacher_batch, "indices": indices}


PseudoLabels = Union[RenderedLabels, RecordedLabels]
"""The two sources of pseudo-label batches."""
