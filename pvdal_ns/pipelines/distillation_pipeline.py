"""``DistillationPipeline``: teacher + pseudo-label datamanager + student, stage by stage.

With no ``teacher_config`` (and no ``teacher_cache``) it is nerfstudio's ``VanillaPipeline``: the student
trains on images (these are the teachers and the from-scratch baselines). With one, setup opens the teacher,
decides once from its capabilities what the distillation has (stages, losses, active-learning levels),
hands the student a :class:`~pvdal_ns.models.pvd_model.DistillationPlan` and the datamanager its pseudo-labels
(:mod:`pvdal_ns.data.pseudo_labels`); a training step is then plumbing, as ``VanillaPipeline``'s, and feeds
active learning once (docs/design.md, "One distillation step"). The teacher is loaded only for training
(``test_mode="val"``), so ``ns-eval``, ``ns-render`` and ``ns-viewer`` work on a student checkpoint alone.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import torch
import torch.distributed as dist
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from pvdal_ns.active_learning.active_learning import ActiveLearning, ActiveLearningConfig
from pvdal_ns.active_learning.images import write_epoch_images
from pvdal_ns.data.datamanager import DistillationDataManager, DistillationDataManagerConfig
from pvdal_ns.data.pseudo_labels import PseudoLabels, RecordedLabels, RenderedLabels
from pvdal_ns.field_components.scene_space import cameras_inside_box
from pvdal_ns.model_components.losses import PVDLossConfig
from pvdal_ns.model_components.proposal_sampling import ProposalSampler
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.stages import StageSchedule
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.models.pvd_model import DistillationPlan, PVDModel, PVDModelConfig
from pvdal_ns.pipelines.sharing import TEACHER_KEYS, batch_key, shared
from pvdal_ns.pipelines.teacher_scene import check_same_scene
from pvdal_ns.presets import finetune_start
from pvdal_ns.teachers import Teacher, TeacherCache, teacher_contraction
from pvdal_ns.teachers.composed import open_edited_teacher
from pvdal_ns.teachers.edits import check_edit
from pvdal_ns.utils.checkpoints import allow_numpy_scalars
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError, TeacherLoadError, install_refusal_hook
from pvdal_ns.utils.library_internals import trainer_start_step
from pvdal_ns.utils.run_config import fill_missing_defaults, read_trainer_config
from pvdal_ns.viewer.conversion_panel import ConversionPanel, edit_boxes


@dataclass
class DistillationPipelineConfig(VanillaPipelineConfig):
    """Distillation settings; ``teacher_config`` switches distillation on."""

    _target: Type = field(default_factory=lambda: DistillationPipeline)
    datamanager: DistillationDataManagerConfig = field(default_factory=DistillationDataManagerConfig)
    model: PVDModelConfig = field(default_factory=PVDModelConfig)
    teacher_config: Optional[Path] = None
    """config.yml of a trained run to distil from (pvdal-*, nerfacto, instant-ngp, tensorf, vanilla-nerf, splatfacto);
    None (and no teacher_cache) trains on the images."""
    teacher_image_scale: bool = True
    """Train and evaluate at the teacher's image scale: its datamanager's ``camera_res_scale_factor`` and its
    dataparser's ``downscale_factor`` replace this run's (ns-train; ``ns-distill`` always does so). False: keep
    this run's own (:func:`~pvdal_ns.pipelines.teacher_scene.take_teacher_image_scale`)."""
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
    warm_start: bool = True
    """Start the student from a pvdal-* teacher's field weights wherever name and shape match (authors'
    ``strict=False`` load): a student of the teacher's architecture and sizes starts as the teacher."""
    blockwise: bool = True
    """False: all losses (stage 3) from the first step (Table 3 "w/o block-wise")."""
    al: ActiveLearningConfig = field(default_factory=ActiveLearningConfig)
    """Active learning: hard poses, rays and points (§3.2.4); e.g. ``--pipeline.al.poses False``."""
    finetune_steps: int = 0
    """Fine-tuning after distillation (paper Table 6): the run's last N steps train on the real training
    images with the image loss, as training from images does; 0: distil to the end."""
    edit: SceneEditConfig = field(default_factory=SceneEditConfig)
    """Edits the teacher goes through before the student learns it (issue #34; :mod:`pvdal_ns.teachers.edits`):
    ``--pipeline.edit.erase X0 Y0 Z0 X1 Y1 Z1`` (repeatable), ``--pipeline.edit.keep …``, ``--pipeline.edit.recolor …
    R G B``, in the viewer's world frame. Not with fine-tuning (the images would bring the erased part back)."""
    edits_before: List[Dict[str, Any]] = field(default_factory=list)
    """The edits the teacher's scene had gone through before this run, in order (its ``edit`` and the ones before;
    filled from the teacher's config.yml: :func:`~pvdal_ns.pipelines.teacher_scene.teacher_edits`); with ``edit``, the
    whole chain of edits this run's scene holds. Each: the boxes and how it was applied."""

    @property
    def distils(self) -> bool:
        """True when the run distils (a teacher config or a teacher cache is given)."""
        return self.teacher_config is not None or self.teacher_cache is not None


TEACHER_SEED = 0
"""Seed of the random numbers a teacher draws while it loads (the jittered points of a stock teacher's grid)."""

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
        install_refusal_hook()  # ns-train / ns-eval / ns-render / ns-viewer: a PVDError is one line, exit code 2
        allow_numpy_scalars()  # nerfstudio's own torch.load of a pvdal checkpoint (weights_only=True)
        Pipeline.__init__(self)  # VanillaPipeline.__init__'s steps, with the teacher between datamanager and model
        self.config, self.test_mode, self.world_size = config, test_mode, world_size
        self.datamanager = config.datamanager.setup(device=device, test_mode=test_mode, world_size=world_size,
                                                    local_rank=local_rank)
        self.datamanager.to(device)
        dataset = self.datamanager.train_dataset
        assert dataset is not None, "Missing input dataset"
        self._cache_to_write: Optional[Path] = None
        self._run_steps: Optional[int] = None
        distillation, capabilities = None, None
        if test_mode == "val" and torch.device(device).type == "cpu" and not torch.cuda.is_available():
            CONSOLE.log("No CUDA device on this machine: training on the CPU (--machine.device-type cpu)")
        distilling = test_mode == "val" and config.distils
        contracted = self._contraction(dataset, distilling)
        if distilling:
            check_edit(config.edit, config.finetune_steps)
            if config.teacher_config is not None:  # ns-distill checked it already; ns-train … --pipeline.teacher-config
                teacher_path = Path(config.teacher_config).expanduser().resolve()
                check_same_scene(read_trainer_config(teacher_path), teacher_path, config.datamanager.dataparser,
                                 Path(config.datamanager.data or config.datamanager.dataparser.data))
            sampling = config.model.sampling(dataset.scene_box, contracted)
            serial = config.teacher_cache is not None
            self.batch_key = batch_key(config.teacher_config, config.datamanager, sampling, dataset.cameras,
                                       renders_only=config.teacher_renders_only, serial=serial, edit=config.edit)
            """What this run's pseudo-label batches depend on (:func:`batch_key`)."""
            teacher = self._open_teacher(sampling, device)
            contracted = self._teacher_space(teacher, contracted)
            capabilities = self._capabilities(teacher)
            distillation = self._plan(teacher, capabilities)
        stage3_start = 0 if distillation is None else distillation.stages.stage3_start
        first = dataset.cameras[0]
        self.active_learning = ActiveLearning(config.al, capabilities, stage3_start, config.datamanager.poses_per_epoch,
                                              (int(first.height), int(first.width)))
        """The levels, pools and statistics of active learning; the pools are saved in the checkpoint."""
        self.last_step_logs: Tuple[Dict[str, Tensor], Dict[str, Tensor]] = ({}, {})
        """The last training step's losses and metrics, for the viewer panel's callback."""
        self.image_dir: Optional[Path] = None
        """Where the active-learning figures go (``<run>/active_learning``; the leading student's run only)."""
        scene_box = dataset.scene_box if distillation is None or teacher.scene_box is None else teacher.scene_box
        self._model = config.model.setup(scene_box=scene_box, num_train_data=len(dataset),
                                         metadata=dataset.metadata, device=device, grad_scaler=grad_scaler,
                                         contracted=contracted, distillation=distillation)
        self.model.to(device)
        if distillation is not None and config.warm_start:
            state = teacher.warm_start_state()
            if state is None:
                CONSOLE.log(f"Warm start: not available from {teacher.name} (not a pvdal-* field); the student starts "
                            "from scratch")
            else:
                self.model.warm_start(state, teacher.name)
        if distillation is not None:
            sampler = self._shared_sampler(teacher)
            labels, leads = shared("batches", self.batch_key, lambda: self._pseudo_labels(
                teacher, capabilities, dataset, torch.device(device), sampler))
            if not leads:
                self.active_learning.follow(f"the student of {labels.teacher.name} with the most steps")
            labels.serve(distillation.stages)
            self.datamanager.use_pseudo_labels(labels, leads)
        self.conversion = ConversionPanel(dataset.cameras, dataset.scene_box.get_center(), config.distils,
                                          edit_boxes(config.edits_before, config.edit))
        """The viewer's panel, hard-pose frustums and teacher comparison (docs/design.md, "The viewer")."""
        if distillation is not None and self._cache_to_write is None:  # serial mode releases its teacher
            self.conversion.compare_with(teacher, config.al.ray_fraction)
        if world_size > 1:
            self._model = typing.cast(Model, DDP(self._model, device_ids=[local_rank], find_unused_parameters=True))
            dist.barrier(device_ids=[local_rank])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None):
        """nerfstudio's ``Pipeline.load_state_dict``, strict unless told otherwise: nerfstudio's falls back to a
        non-strict load when the model's tensors do not all match (``strict=None``), so a checkpoint missing a tensor
        would load silently and render with that tensor as initialised (issue #33). The error (torch's "Error(s) in
        loading state_dict") is refused in one line where a checkpoint is read (``utils.run_config.open_run``,
        ``PVDTrainer._load_checkpoint``).

        Raises:
            RuntimeError: with ``strict`` None or True, a tensor of the model is missing, unexpected or of another
                shape."""
        return super().load_state_dict(state_dict, strict=True if strict is None else strict)

    @property
    def batch_pools(self) -> ActiveLearning:
        """The active learning whose pools draw this student's batches: its own, or, for a student sharing another's
        batches, the leader's (what the viewer shows)."""
        labels = getattr(self.datamanager, "pseudo_labels", None)  # set up for training only
        return labels.active_learning if isinstance(labels, RenderedLabels) else self.active_learning

    @property
    def teacher(self) -> Optional[Teacher]:
        """The teacher distilled from: the live one, or the teacher cache standing in for it (serial mode);
        None when training from images or evaluating."""
        labels = self.datamanager.pseudo_labels
        return None if labels is None else labels.teacher

    # --- setup ----------------------------------------------------------------------------------------
    def _contraction(self, dataset, distilling: bool) -> bool:
        """Whether the student contracts space (``--pipeline.model.scene-contraction``): "on" / "off" as
        given; "auto" as a teacher whose config says (nerfacto, instant-ngp), else when most training cameras
        stand inside the scene box (:func:`~pvdal_ns.field_components.scene_space.cameras_inside_box`). A teacher with a
        grid of its own decides again once it is open (:meth:`_teacher_space`). One log line says which and why."""
        option = self.config.model.scene_contraction
        if option != "auto":
            return option == "on"
        hint = None
        if distilling and self.config.teacher_config is not None:
            hint = teacher_contraction(self.config.teacher_config)
        if hint is not None:
            why = "as its teacher's" if hint else "as its teacher's (contraction disabled)"
            contracted = hint
        else:
            contracted = cameras_inside_box(dataset.cameras.camera_to_worlds[:, :, 3], dataset.scene_box.aabb)
            why = ("the training cameras stand inside the scene box" if contracted
                   else "the training cameras orbit outside the scene box")
        if self.test_mode == "val":
            CONSOLE.log(f"Scene contraction {'on' if contracted else 'off'}: {why} "
                        "(--pipeline.model.scene-contraction)")
        return contracted

    def _teacher_space(self, teacher: Teacher, contracted: bool) -> bool:
        """The student's contraction once the teacher is open: the teacher's grid's (the shared sample points
        lie in its cells; a pvdal-* teacher or a cache brings its own).

        Raises:
            BadInputError: ``scene_contraction`` was set against the teacher's."""
        own = bool(teacher.occupancy_grid.contracted)
        option = self.config.model.scene_contraction
        if option != "auto" and own != (option == "on"):
            raise BadInputError(f"teacher {teacher.name} ({teacher.source}) "
                                   f"{'contracts' if own else 'does not contract'} "
                                   f"space, and --pipeline.model.scene-contraction {option} asks the opposite: the "
                                   "student samples in its teacher's grid; leave the option at auto")
        if own != contracted:
            CONSOLE.log(f"Scene contraction {'on' if own else 'off'}: as its teacher {teacher.name}'s grid")
        return own

    def _open_teacher(self, sampling: Sampling, device: str) -> Teacher:
        """The teacher cache when it exists, else the live teacher (shared during :func:`sharing`). Loading
        draws its own random numbers (seed :data:`TEACHER_SEED`), not the training stream's: the same teacher
        gives the same grid to every student, and the student's initialisation does not depend on it.

        Raises:
            TeacherLoadError: no teacher to load, a cache of another run.
            BadInputError: renders only from a cache."""
        config = self.config
        cache = None if config.teacher_cache is None else Path(config.teacher_cache)
        if cache is not None and config.teacher_renders_only:
            raise BadInputError("a teacher cache holds the teacher at sample points, which distillation from renders "
                                   "only does not use: leave out --pipeline.teacher-cache (or renders-only)")
        if cache is not None and cache.exists():
            return TeacherCache(cache, self.batch_key)
        if config.teacher_config is None:
            raise TeacherLoadError(f"teacher cache {cache} does not exist and no --pipeline.teacher-config is "
                                   "given to write it")
        self._cache_to_write = cache
        key = {k: self.batch_key[k] for k in TEACHER_KEYS} | {"device": str(device)}

        def load() -> Teacher:
            with torch.random.fork_rng():  # a stock teacher's grid is filled from jittered points
                torch.manual_seed(TEACHER_SEED)
                teacher = open_edited_teacher(config.teacher_config, config.edit, device, sampling)  # type: ignore
            if not config.edit.empty:
                CONSOLE.log(f"Teacher edited: {config.edit.describe()}")
            return teacher

        return shared("teacher", key, load)[0]

    def _shared_sampler(self, teacher: Teacher) -> Optional[ProposalSampler]:
        """What places the shared samples when the student samples with proposals (docs/design.md, "Proposal
        sampling"): the teacher's own proposal fields when it has them (a nerfacto teacher, a pvdal-* one trained with
        proposals: returns None, its sampler), a cache's recorded samples (None), else the student's, lent to the
        teacher (a twin of its sampler, under the teacher's ``no_grad``). A student sampling with its occupancy grid
        takes the teacher's samples, whatever they are.

        Raises:
            BadInputError: a teacher cache would be written with the student's proposals, untrained before the first
                step."""
        model_sampler = self.model.sampler
        if not isinstance(model_sampler, ProposalSampler) or isinstance(teacher, TeacherCache):
            return None
        if teacher.proposal_sampler is not None:
            CONSOLE.log(f"Proposal sampling: the shared samples are placed by {teacher.name}'s own proposal fields")
            return None
        if self._cache_to_write is not None:
            raise BadInputError(f"teacher {teacher.name} has no proposal fields of its own, and a teacher cache "
                                "written before the first step would hold the student's untrained proposals' samples: "
                                "leave out --pipeline.teacher-cache, or give --pipeline.model.sampler occupancy")
        CONSOLE.log(f"Proposal sampling: {teacher.name} has no proposal fields; the student's place the shared "
                    "samples")
        return model_sampler.twin()

    def _pseudo_labels(self, teacher: Teacher, capabilities: Capability, dataset, device: torch.device,
                       sampler: Optional[ProposalSampler] = None) -> PseudoLabels:
        """The source of this run's batches: a teacher cache's (serial mode; one to write is rendered from the live
        teacher before the first step), or the teacher's renders of novel poses (at the samples ``sampler`` places,
        or the teacher's own)."""
        if isinstance(teacher, TeacherCache):
            return RecordedLabels(device, cache=teacher)
        rendered = RenderedLabels(teacher, self.active_learning, dataset.cameras, dataset.scene_box.get_center(),
                                  self.config.datamanager, self.config.datamanager.train_num_rays_per_batch, device,
                                  from_images=capabilities == Capability.IMAGES, sampler=sampler)
        if self._cache_to_write is None:
            return rendered
        return RecordedLabels(device, path=self._cache_to_write, written_for=self.batch_key, writer=rendered)

    def _capabilities(self, teacher: Teacher) -> Capability:
        """What of the teacher this run uses: all it gives, less the rays and images of a cache to be written
        (it will replay its batches), or only its images when distilling from renders."""
        capabilities = teacher.capabilities
        if self._cache_to_write is not None:
            capabilities = capabilities & (Capability.POINTS | Capability.VOLUME_FEATURE) | Capability.RECORDED
        if self.config.teacher_renders_only or not capabilities & (Capability.POINTS | Capability.RECORDED):
            if Capability.IMAGES not in capabilities:
                raise TeacherLoadError(f"teacher {teacher.name} renders no images to distil from")
            CONSOLE.log(f"Distilling from the renders of {teacher.name} only: L_rgb alone, from stage 3 (L_v, L_σ and "
                        "L_c need the teacher at points)")
            capabilities = Capability.IMAGES
        return capabilities

    def _plan(self, teacher: Teacher, capabilities: Capability) -> DistillationPlan:
        """What the student distils with: the teacher's grid, the stages, the losses and whether ϕ¹ is aligned.

        Raises:
            BadInputError: the teacher's occupancy grid has another resolution than the student's."""
        config, field_class = self.config, self.config.model.field._target
        grid, resolution = teacher.occupancy_grid, config.model.grid_resolution
        if tuple(grid.binaries.shape[1:]) != (resolution,) * 3:
            raise BadInputError(f"teacher occupancy grid {tuple(grid.binaries.shape[1:])} differs from the student's "
                                   f"{(resolution,) * 3}: set --pipeline.model.grid-resolution")
        points = Capability.POINTS in capabilities
        align = field_class.has_volume_feature and Capability.VOLUME_FEATURE in capabilities
        if points and not align:
            who = (f"student ({field_class.__name__})" if not field_class.has_volume_feature
                   else f"teacher ({teacher.name})")
            CONSOLE.log(f"Stage 1 and L_v skipped: the {who} has no ϕ¹ volume feature")
        elif align and config.loss.volume_weight <= 0:
            align = False
            CONSOLE.log("Stage 1 skipped: the volume-aligned loss is switched off (loss.volume_weight = 0)")
        stages = StageSchedule(config.stage1_steps, config.stage2_steps, config.blockwise and points, has_stage1=align)
        return DistillationPlan(grid, stages, config.loss, align)

    # --- training -------------------------------------------------------------------------------------
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        """nerfstudio's (datamanager's and model's), and when distilling: before every step, the teacher cache
        written on the first (serial mode), then :meth:`set_step`; after every step, the figures of an epoch active
        learning closed (the leading student's) and the viewer's panel. The run's last step is where the trainer
        stops (a resumed run: its start plus the steps left; :class:`~pvdal_ns.engine.trainer.PVDTrainer`)."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        planned = None if trainer is None else trainer_start_step(trainer) + trainer.config.max_num_iterations
        if self.model.distillation is not None:
            if trainer is not None:  # a teacher cache holds one batch per step of the run
                self._run_steps = planned
            before = [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION]
            after = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
            callbacks += [TrainingCallback(before, self.write_teacher_cache), TrainingCallback(before, self.set_step),
                          TrainingCallback(after, self.show_step)]
            if trainer is not None and self.datamanager.leads:
                self.image_dir = Path(trainer.base_dir) / "active_learning"
                callbacks.append(TrainingCallback(after, self.write_epoch_images))
            if self.config.finetune_steps > 0 and trainer is not None:
                self.datamanager.finetune_from = self._finetune_start(planned)
        return callbacks

    def _finetune_start(self, steps: int) -> int:
        """The first fine-tuning step of a run of ``steps`` steps.

        Raises:
            BadInputError: ``finetune_steps`` leaves no step to distil."""
        try:
            start = finetune_start(steps, self.config.finetune_steps, "--max-num-iterations")
        except ValueError as error:
            raise BadInputError(f"--pipeline.finetune-steps {error}") from None
        CONSOLE.log(f"Fine-tuning on the training images from step {start} ({self.config.finetune_steps} steps)")
        return start

    def write_teacher_cache(self, step: int) -> None:
        """Serial mode, before the first step: the teacher renders the run's batches (one per step, within
        ``teacher_cache_gib``) into ``teacher_cache``, is released, and the student distils from the cache.
        A student sharing the batches of another finds the cache written already.

        Raises:
            BadInputError: the cache path exists already, or ``teacher_cache_gib`` is below one batch.
            StorageError: the disk filled up while writing it."""
        labels = self.datamanager.pseudo_labels
        if self._cache_to_write is None or not isinstance(labels, RecordedLabels):
            return
        labels.write(self._run_steps or step + 1, int(self.config.teacher_cache_gib * 2**30))
        self._cache_to_write = None

    def set_step(self, step: int) -> None:
        """The step-dependent state of distillation, before every step (as nerfacto's ``set_anneal``): the
        model's stage and the hard-point rule active learning applies at ``step``."""
        self.model.set_step(step, self.active_learning.hard_points_at(step))

    def get_train_loss_dict(self, step: int):
        """One training step, as ``VanillaPipeline``'s: the datamanager's batch (the teacher's targets ride
        in ``batch["teacher"]`` when distilling), the model at it, the model's metrics and losses; then, once the
        student renders (stage 3), the one hand-over to active learning: the step's errors, when this student leads
        its batches (:meth:`ActiveLearning.feed`)."""
        ray_bundle, batch = self.datamanager.next_train(step)
        model_outputs = self._model(ray_bundle, batch.get("teacher"))
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch)
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        if self.datamanager.leads and "rgb_errors" in model_outputs:
            metrics_dict.update(self.active_learning.feed(step, ray_bundle, batch, model_outputs["rgb_errors"]))
        self.last_step_logs = (loss_dict, metrics_dict)
        return model_outputs, loss_dict, metrics_dict

    def write_epoch_images(self, step: int) -> None:
        """After a step that closed an epoch: its active-learning figures every ``images_every_epochs`` epochs
        (:func:`~pvdal_ns.active_learning.images.write_epoch_images`)."""
        ended, every = self.active_learning.ended, self.config.al.images_every_epochs
        labels = self.datamanager.pseudo_labels
        if ended is None or ended.step != step or every <= 0 or ended.epoch % every or self.image_dir is None:
            return
        assert isinstance(labels, RenderedLabels)
        write_epoch_images(self.image_dir, ended, labels.pose_sampler.centre, self.active_learning.config.rays,
                           lambda i: labels.teacher.render_camera(ended.cameras[i : i + 1]))

    def show_step(self, step: int) -> None:
        """After every step: an open viewer's panel (:meth:`ConversionPanel.show`)."""
        self.conversion.show(step, *self.last_step_logs, self.batch_pools)
