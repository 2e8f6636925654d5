"""``DistillationDataManager``: pseudo-label batches rendered by the teacher from novel camera poses.

Without a teacher it is nerfstudio's ``VanillaDataManager`` (training on images). Distilling, training
batches never contain real pixels (paper §4.1 "pseudo-labeling", data-free): they come from the
:class:`PseudoLabels` the pipeline hands it at setup. Each epoch draws fresh poses from the training
cameras' distribution (docs/design.md, "Method"), rays use the training intrinsics, and ``batch["image"]``
is the teacher's render of those rays on a random per-ray background (from stage 3). The eval split keeps the real
images, so ``ns-eval`` measures the student against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from torch import Tensor

from pvdal_ns.active_learning.active_learning import ActiveLearning
from pvdal_ns.active_learning.images import write_epoch_images
from pvdal_ns.cameras.poses import PoseSampler
from pvdal_ns.model_components.stages import StageSchedule
from pvdal_ns.model_components.teacher_batch import Capability, TeacherBatch, TeacherImages
from pvdal_ns.teachers import Teacher, TeacherCache, write_cache
from pvdal_ns.utils.metrics import synchronized_clock

__all__ = ["DistillationDataManager", "DistillationDataManagerConfig", "PseudoLabels", "float32_intrinsics"]


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


def float32_intrinsics(dataset):
    """nerfstudio's blender dataparser gives float64 fx/fy (a numpy float into ``torch.tensor``), which
    breaks ``ns-render spiral`` (``torch.cross`` of float32 and float64); cast them to float32."""
    cameras = dataset.cameras
    for name in ("fx", "fy", "cx", "cy"):
        setattr(cameras, name, getattr(cameras, name).float())
    return dataset


class PseudoLabels:
    """The pseudo-label batches of one distillation: each epoch's novel poses, each step's rays and the
    teacher's targets for them, with the hard poses (TCP) and hard rays (TSR) of active learning. Students
    whose batches agree share one (several students, one teacher pass per batch: the first batch asked
    for at a step is made, the others get the same).

    Where the targets come from follows the teacher: recorded batches (a teacher cache, ``RECORDED``), the
    teacher's renders of each epoch's poses (``from_images``: renders only), or its render of each batch's
    rays. Serial mode: :meth:`record` renders the run's batches into a cache once and serves them from it.

    Args:
        teacher: the teacher.
        active_learning: its levels, pools and statistics (the ones of the student that made this source).
        cameras: the training cameras; novel poses are drawn like them, with the first one's intrinsics.
        centre: Float[Tensor, "3"] the scene centre (world units).
        config: the datamanager's pseudo-label settings (rays per batch, poses and steps per epoch, pose
            sampling).
        device: where batches are made.
        from_images: distil from the teacher's images only (renders-only distillation).
    """

    def __init__(self, teacher: Teacher, active_learning: ActiveLearning, cameras: Cameras, centre: Tensor,
                 config: DistillationDataManagerConfig, device: torch.device, from_images: bool = False) -> None:
        self.teacher, self.active_learning, self.config, self.device = teacher, active_learning, config, device
        self.from_images = from_images
        self.image_dir: Optional[Path] = None
        """Where the active-learning figures go (``<run>/active_learning``), set by the first datamanager."""
        self._made: Optional[Tuple[int, RayBundle, Dict]] = None
        self._schedules: List[StageSchedule] = []
        if Capability.RECORDED in teacher.capabilities:
            self._log_recorded()
            return
        self.pose_sampler = PoseSampler(cameras.camera_to_worlds, centre, config)
        CONSOLE.log(f"Pseudo-labels: {config.poses_per_epoch} novel poses per epoch from {teacher.source}; the "
                    f"training cameras are a capture of kind '{self.pose_sampler.kind}' (docs/design.md, \"Scenes\")")
        self._intrinsics = cameras[0:1]
        self.epoch = -1
        self._new_epoch()

    def _log_recorded(self) -> None:
        cache = self.teacher
        assert isinstance(cache, TeacherCache)
        CONSOLE.log(f"Pseudo-labels: {len(cache)} cached batches of {cache.rays_per_batch} rays from {cache.path}")

    def serve(self, stages: StageSchedule) -> None:
        """Make batches for a student with these stages too: each batch holds what the most advanced stage at
        its step needs of the teacher (stage 1: ϕ¹ and density at the points, stage 2: + colour, stage 3: +
        the render; :class:`~pvdal_ns.teachers.TeacherBatch`). Without any, batches are complete."""
        self._schedules.append(stages)

    def stage_at(self, step: int) -> int:
        """The most advanced stage (1–3) of the students served at ``step``: what its batch must hold."""
        return max((s.stage_at(step) for s in self._schedules), default=3)

    def batch(self, step: int) -> Tuple[RayBundle, Dict]:
        """The batch of ``step``: RayBundle [R] and ``image`` Float[Tensor, "R 3"] (the teacher's render on
        ``background`` Float[Tensor, "R 3"]), ``indices`` Int[Tensor, "R 3"] (pose id, row, column; pose id
        −1 for rays of the hard-ray pool or of a cache) and ``teacher`` (:class:`TeacherBatch`). Once the
        hard-ray pool is full, a fraction of the R rays comes from it; R stays ``train_num_rays_per_batch``."""
        if self._made is None or self._made[0] != step:
            recorded = Capability.RECORDED in self.teacher.capabilities
            stage = self.stage_at(step)
            self._made = (step, *(self._recorded_batch(step, stage) if recorded else self._rendered_batch(step, stage)))
        return self._made[1], self._made[2]

    def render_batches(self, count: int) -> Iterator[Tuple[RayBundle, Dict]]:
        """``count`` batches as training draws them, rendered whole by the live teacher (what a teacher cache
        stores): (RayBundle [R], batch dict) pairs as :meth:`batch` gives them; active learning is not
        consulted."""
        for step in range(count):
            yield self._rendered_batch(step, stage=3)

    def record(self, path: Path, count: int, written_for: Dict, max_bytes: int) -> TeacherCache:
        """Serial mode: render ``count`` batches into a new teacher cache at ``path`` (at most ``max_bytes``),
        release the live teacher and serve the batches from the cache from now on. Once recorded (by any of
        the students sharing these batches), the cache is returned as it is.

        Raises:
            TeacherLoadError: ``path`` exists already, or ``max_bytes`` is below one batch."""
        if isinstance(self.teacher, TeacherCache):
            return self.teacher
        with get_progress("teacher cache: rendering") as progress:
            task = progress.add_task("", total=count)
            cache = write_cache(path, self.teacher, self.render_batches(count), written_for, max_bytes,
                                lambda: progress.advance(task))
        CONSOLE.log(f"Teacher cache: {len(cache)} batches, {cache.nbytes / 2**30:.2f} GiB in {cache.path}")
        self.teacher, self._made = cache, None
        self._log_recorded()
        return cache

    def feedback(self, ray_bundle: RayBundle, batch: Dict, errors: Float[Tensor, " R"]) -> Dict[str, Tensor]:
        """Hand one step's per-ray squared RGB errors of the student against the teacher (the batch's R rays)
        to active learning (TCP statistics, TSR pool); returns its metrics (pool fill, ``al_overhead_ms``: the
        milliseconds of that hand-over, between two :func:`synchronized_clock` readings, so on CUDA the step's
        queued work is waited for first and not counted; active learning copies its statistics to the CPU and
        waits for the GPU anyway)."""
        al = self.active_learning
        if not al.active:
            return {}
        started = synchronized_clock(self.device)
        errors = errors.detach()
        rays = {"origins": ray_bundle.origins, "directions": ray_bundle.directions, "pixel_area": ray_bundle.pixel_area}
        al.feedback(batch["indices"], rays, errors)
        return {**al.metrics(), "al_overhead_ms": torch.tensor(1000.0 * (synchronized_clock(self.device) - started))}

    # --- epochs of novel poses --------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        self.epoch += 1
        n, cam = self.config.poses_per_epoch, self._intrinsics
        self._image_size = (int(cam.height), int(cam.width))
        self._use_poses(self.active_learning.epoch_poses(n, self._image_size, self.pose_sampler.sample,
                                                         self.pose_sampler.pivot))

    def _use_poses(self, c2w: Float[Tensor, "N 3 4"]) -> None:
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
        # RayGenerator is an nn.Module whose pixel grid (``image_coords``, a buffer) Cameras.get_image_coords makes
        # on the CPU whatever the cameras' device: it indexes that grid with the batch's pixels, so it goes where
        # they are (on CUDA: "indices should be either on cpu or on the same device", issue #29).
        self.pseudo_ray_generator = RayGenerator(self.cameras).to(self.device)
        self._epoch_steps = self.config.steps_per_epoch or n
        self._epoch_step = 0
        self.images: Optional[TeacherImages] = self.teacher.render_images(self.cameras) if self.from_images else None
        """Renders only: the teacher's images of this epoch's poses."""

    def epoch_state(self) -> Dict[str, Any]:
        """Where this epoch stands, for an exact resume (docs/design.md, "What a resume restores"): ``epoch`` and
        ``epoch_step`` (ints) and ``poses`` Float[Tensor, "N 3 4"] (camera-to-world, world units, CPU); empty for
        recorded batches, which have no epochs."""
        if Capability.RECORDED in self.teacher.capabilities:
            return {}
        return {"epoch": self.epoch, "epoch_step": self._epoch_step, "poses": self.cameras.camera_to_worlds.cpu()}

    def restore_epoch(self, state: Dict[str, Any]) -> None:
        """Go on with the epoch of :meth:`epoch_state` (its renders-only images rendered again); an empty ``state``
        (an older checkpoint, a teacher cache) leaves the epoch drawn at setup."""
        if not state or Capability.RECORDED in self.teacher.capabilities:
            return
        self.epoch = int(state["epoch"])
        self._use_poses(state["poses"])
        self._epoch_step = int(state["epoch_step"])

    def _end_epoch(self, step: int) -> None:
        """Hard poses of the finished epoch into the pool; images of the hard poses and rays."""
        al = self.active_learning
        if not al.active:
            return
        hardest = al.end_epoch(self.cameras.camera_to_worlds)
        every = al.config.images_every_epochs
        if self.image_dir is not None and every > 0 and self.epoch % every == 0:
            write_epoch_images(self.image_dir, self.epoch, step, al, self.cameras, self.pose_sampler.centre, hardest,
                               lambda i: self.teacher.render_camera(self.cameras[i : i + 1]))

    # --- batches ----------------------------------------------------------------------------------------
    def _draw_ray_indices(self, num_rays: int) -> Tensor:
        """[num_rays, 3] (pose id, row, column) drawn uniformly from this epoch's poses."""
        height, width = self._image_size  # every novel pose has the training intrinsics
        pose = torch.randint(len(self.cameras), (num_rays,))
        return torch.stack([pose, torch.randint(height, (num_rays,)), torch.randint(width, (num_rays,))], dim=-1)

    def _recorded_batch(self, step: int, stage: int) -> Tuple[RayBundle, Dict]:
        cache = self.teacher
        assert isinstance(cache, TeacherCache)
        background = torch.rand(cache.rays_per_batch, 3, device=self.device)
        ray_bundle, teacher_batch = cache.recorded_batch(
            step % len(cache), background, torch.device(self.device), stage
        )
        indices = torch.full((len(background), 3), -1, dtype=torch.long)  # not tied to this run's poses
        return ray_bundle, _batch_dict(teacher_batch, indices)

    def _rendered_batch(self, step: int, stage: int) -> Tuple[RayBundle, Dict]:
        if self._epoch_step >= self._epoch_steps:
            self._end_epoch(step)
            self._new_epoch()
        self._epoch_step += 1
        num_rays = self.config.train_num_rays_per_batch
        pooled = self.active_learning.pool_rays(num_rays)
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
        if self.images is not None:
            teacher_batch = self.teacher.image_batch(self.images, indices, ray_bundle, background)
        else:
            teacher_batch = self.teacher.render(ray_bundle, background, stage)
        return ray_bundle, _batch_dict(teacher_batch, indices)


def _batch_dict(teacher_batch: TeacherBatch, indices: Tensor) -> Dict:
    """The batch dict of a pseudo-label batch (see :meth:`PseudoLabels.batch`)."""
    return {"image": teacher_batch.rgb, "background": teacher_batch.background, "indices": indices,
            "teacher": teacher_batch}


class DistillationDataManager(VanillaDataManager):
    """nerfstudio's ``VanillaDataManager``, or, once the pipeline has handed it :class:`PseudoLabels` at
    setup (:meth:`use_pseudo_labels`), their batches. Training images are only read when training from
    images (no teacher) or fine-tuning after distillation.
    """

    config: DistillationDataManagerConfig

    def create_train_dataset(self):
        return float32_intrinsics(super().create_train_dataset())

    def create_eval_dataset(self):
        return float32_intrinsics(super().create_eval_dataset())

    def setup_train(self) -> None:
        # Deferred: VanillaDataManager.setup_train reads every training image, which distillation never uses.
        self.pseudo_labels: Optional[PseudoLabels] = None
        """The batch source when distilling."""
        self.leads = False
        """True when this datamanager's student made its pseudo-labels: its errors drive active learning."""
        self._image_training_ready = False
        self.finetune_from: Optional[int] = None
        """First step that trains on the real images after distilling (``--pipeline.finetune-steps``); None: never."""

    def use_pseudo_labels(self, pseudo_labels: PseudoLabels, leads: bool = True) -> None:
        """Train on ``pseudo_labels`` instead of the images: called once, by the pipeline at setup, right
        after the scene is parsed (the teacher samples in its scene box) and before any batch.

        Args:
            leads: this datamanager's student made them; a student sharing another's (``leads`` False)
                trains on the same batches and its errors are not fed back (hard points stay its own).

        Raises:
            RuntimeError: pseudo-labels were set already."""
        if self.pseudo_labels is not None:
            raise RuntimeError("the pseudo-labels of a datamanager are set once, at setup")
        self.pseudo_labels, self.leads = pseudo_labels, leads

    def get_extra_state(self) -> Dict[str, Any]:
        """What an exact resume needs beyond the pools (docs/design.md, "What a resume restores"): torch's random
        streams at the checkpoint and, for the student that leads its pseudo-labels, where their epoch stands."""
        state: Dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        labels = getattr(self, "pseudo_labels", None)
        if labels is not None and self.leads:
            state["epoch"] = labels.epoch_state()
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        labels = getattr(self, "pseudo_labels", None)
        if labels is None:  # evaluation and the viewer: the training stream is not theirs to set
            return
        if self.leads:
            labels.restore_epoch(state.get("epoch", {}))
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None and self.pseudo_labels is not None and self.leads:  # figures beside the checkpoints
            self.pseudo_labels.image_dir = Path(trainer.base_dir) / "active_learning"
        return []

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """Next batch: real pixels without a teacher or while fine-tuning, otherwise :meth:`PseudoLabels.batch`."""
        if self.pseudo_labels is None or (self.finetune_from is not None and step >= self.finetune_from):
            if not self._image_training_ready:
                super().setup_train()
                # nerfstudio sets this up in __init__, before the pipeline's ``datamanager.to(device)`` moves the
                # ray generator's pixel grid (a CPU buffer) to the device; set up here, after it, it is moved here
                # (training from images or fine-tuning on CUDA otherwise indexes a CPU grid with CUDA pixels).
                self.train_ray_generator.to(self.device)
                self._image_training_ready = True
            return super().next_train(step)
        self.train_count += 1
        return self.pseudo_labels.batch(step)

    def feedback(self, ray_bundle: RayBundle, batch: Dict, model_outputs: Dict) -> Dict[str, Tensor]:
        """Active learning's share of a step: once the student renders (stage 3), its per-ray errors go to the
        pseudo-labels it leads (:meth:`PseudoLabels.feedback`). Returns metrics to log (may be empty)."""
        if self.pseudo_labels is None or not self.leads or "rgb_errors" not in model_outputs:
            return {}
        return self.pseudo_labels.feedback(ray_bundle, batch, model_outputs["rgb_errors"])

    def get_train_rays_per_batch(self) -> int:
        return self.config.train_num_rays_per_batch
