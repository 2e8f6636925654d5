"""The PVD model: any of the four fields behind occupancy-masked volume rendering, and the PVD losses.

A normal nerfstudio ``Model`` (trains on images, evaluates, renders in the viewer). Distilling, it is
evaluated at the teacher's sample points of each batch's rays (``batch["teacher"]``, a
:class:`pvdal_ns.teachers.TeacherBatch`) and :meth:`PVDModel.get_loss_dict` computes the PVD losses of the
current stage (paper §3.2, Eq. 6–8), as LERF's model adds its CLIP loss. The stage is set by a training
callback (:meth:`PVDModel.set_step`), as nerfacto's ``set_anneal``. Config-beside-model layout follows
nerfstudio's ``models/nerfacto.py`` and ``models/instant_ngp.py``; docs/design.md tells one step whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.losses import MSELoss, lossfun_distortion
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from pvdal_ns.fields import PointOutputs, PVDField, PVDFieldConfig, VMFieldConfig
from pvdal_ns.model_components.hard_points import HardPoints
from pvdal_ns.model_components.losses import PVDLossConfig, clamp_density, point_losses, ray_rgb_errors, rgb_loss
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.proposal_sampling import (
    ProposalSampler,
    Sampler,
    build_proposal_networks,
    interlevel_loss_against,
)
from pvdal_ns.model_components.sampling import OccupancySampler, PackedSamples, ProposalSampling, Sampling
from pvdal_ns.model_components.stages import StageSchedule
from pvdal_ns.model_components.teacher_batch import TeacherBatch
from pvdal_ns.utils.metrics import image_metrics


@dataclass
class PVDModelConfig(ModelConfig):
    """Configuration of a PVD model (field, sampling, occupancy grid, background)."""

    _target: Type = field(default_factory=lambda: PVDModel)
    field: PVDFieldConfig = field(default_factory=VMFieldConfig)
    """The architecture (hash, VM, MLP or tensors) and its sizes."""
    num_samples: int = 192
    """Uniform samples per ray across the scene box before occupancy masking."""
    grid_resolution: int = 128
    """Cells per axis of the occupancy grid (the authors use 128³)."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates when training from images."""
    grid_warmup_steps: int = 256
    """Steps during which every cell is re-evaluated at each update (nerfacc's warm-up)."""
    grid_threshold: float = 0.01
    """Occupancy threshold on σ·Δt."""
    grid_ema_decay: float = 0.95
    """Decay of the cells' running occupancy (nerfacc); lower prunes empty space sooner."""
    background_color: Literal["white", "black", "random"] = "white"
    """Background for training from images and for evaluation (blender scenes are composited on white). On a
    real capture "random" makes the model render every pixel as a surface; on the axe capture it made it put
    the backdrop in front of each training camera instead (docs/benchmarks.md, "Real captures")."""
    regularization_weight: float = 1.0
    """ω₅ of Eq. 7: scales the field's own L1 + TV terms."""
    enable_collider: bool = False
    """nerfstudio's near/far collider (which ``Model.forward`` applies) stays off: :meth:`PVDModel.sample` clips
    each ray once, to the scene box or to the near and far planes of a contracted scene
    (:meth:`~pvdal_ns.model_components.sampling.Sampling.collider`, in :attr:`PVDModel.sampler`)."""
    scene_contraction: Literal["auto", "on", "off"] = "auto"
    """Unbounded scenes: "on" maps all of space into the fields and the grid with nerfstudio's
    ``SceneContraction`` (L∞, as nerfacto); "off" keeps the scene box; "auto": as the teacher does (a
    contracted teacher, or a nerfacto / instant-ngp one with contraction), else "on" when most training
    cameras stand inside the scene box (real captures), "off" otherwise (blender scenes)."""
    early_stop_eps: Optional[float] = None
    """Samples behind opaque surfaces (transmittance below this) are not evaluated; None: 1e-4 in contracted
    scenes (nerfacc's early stop), 0 (all are) in bounded ones (today's figures)."""
    alpha_thre: float = 0.0
    """Nor are nearly transparent samples (opacity below this; by the teacher's density when distilling, not
    while training from images); 0: all are. nerfacc's examples of unbounded scenes use 1e-2, with models
    trained under it: a model trained without it can spread a surface over many faint samples, which it would
    leave out (docs/design.md, "Scenes")."""

    sampler: Literal["auto", "occupancy", "proposal"] = "auto"
    """Which sampler places the samples (docs/design.md, "Proposal sampling"): "occupancy" (the occupancy grid's
    occupied cells, ``num_samples`` spaced samples a ray before masking), "proposal" (nerfacto's proposal sampling,
    ``proposal``'s settings), or "auto": proposal where space is contracted (captures that fill the view), occupancy
    in a bounded scene. A checkpoint keeps the sampler it was trained with."""
    proposal: ProposalSampling = dataclasses.field(default_factory=ProposalSampling)
    """Proposal sampling: samples per ray at each proposal level and for the field, the proposal density fields,
    nerfacto's schedules and the interlevel loss's weight (e.g. ``--pipeline.model.proposal.num-samples 32``)."""

    def uses_proposals(self, contracted: bool) -> bool:
        """Whether a model of this config, contracted or not, samples with proposals (:attr:`sampler`)."""
        return self.sampler == "proposal" or (self.sampler == "auto" and contracted)

    def sampling(self, scene_box: SceneBox, contracted: bool = False, proposals: Optional[bool] = None) -> Sampling:
        """Where this model's samples lie in ``scene_box``, contracted or not (what a teacher without a grid
        samples with); ``proposals`` overrides :meth:`uses_proposals` (a checkpoint's own sampler)."""
        eps = self.early_stop_eps if self.early_stop_eps is not None else (1e-4 if contracted else 0.0)
        proposals = self.uses_proposals(contracted) if proposals is None else proposals
        return Sampling(scene_box, self.grid_resolution, self.num_samples, self.grid_threshold, contracted, eps,
                        self.alpha_thre, self.proposal if proposals else None)


@dataclass
class DistillationPlan:
    """What the student needs to distil, decided once at setup by ``DistillationPipeline`` from its config and
    the teacher's capabilities, and handed to the model as LERF's pipeline hands it its image encoder.

    Attributes:
        occupancy_grid: the teacher's grid; the student's grid is loaded from it and frozen (the shared sample
            points).
        stages: the block-wise schedule (§3.2.3); without ``align_volume`` it has no stage 1.
        loss: the weights of Eq. 7 and the density clip of Eq. 8.
        align_volume: L_v on the ϕ¹ volume feature (Eq. 6): both sides have one and ω₁ > 0.
    """

    occupancy_grid: OccupancyGrid
    stages: StageSchedule
    loss: PVDLossConfig
    align_volume: bool


class PVDModel(Model):
    """Occupancy-masked volume rendering of a :class:`PVDField`, trained on images or distilled.

    Args:
        config: PVDModelConfig.
        scene_box: nerfstudio ``SceneBox``; its aabb bounds the field, the grid and the rays.
        num_train_data: number of training images (unused; nerfstudio's ``Model`` signature).
        contracted: (keyword) whether space is contracted (the pipeline resolves ``scene_contraction``); a
            checkpoint's own setting replaces it when loaded.
        distillation: (keyword) a :class:`DistillationPlan` to distil; absent: the model trains on images.
    """

    config: PVDModelConfig
    field: PVDField

    def populate_modules(self) -> None:
        super().populate_modules()
        self.field = self.config.field.setup(aabb=self.scene_box.aabb)
        self.distillation: Optional[DistillationPlan] = self.kwargs.get("distillation")
        """Set when distilling: the grid then comes from the teacher and is not updated."""
        self.occupancy_grid = OccupancyGrid(self.config.sampling(self.scene_box).space, self.config.grid_resolution)
        self.proposal_networks: Optional[nn.ModuleList] = None
        """The proposal density fields (one per level) where the model samples with proposals, else None."""
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.mse_loss = MSELoss()
        """Training from images: the image loss (nerfstudio's, as nerfacto's ``rgb_loss``)."""
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        """Training from images: the ``psnr`` metric (torchmetrics', as nerfacto's)."""
        self.set_space(bool(self.kwargs.get("contracted", False)))
        if self.distillation is not None:
            self.occupancy_grid.load_state_dict(self.distillation.occupancy_grid.state_dict())
        self.register_load_state_dict_pre_hook(PVDModel._sampler_of_checkpoint)
        self.register_load_state_dict_post_hook(lambda module, keys: module.set_space(
            bool(module.field.contracted), proposals=module.proposal_networks is not None))
        self.step, self.stage = 0, 0
        """The training step and its distillation stage (1–3; 0 until :meth:`set_step` runs)."""
        self.hard_points: Optional[HardPoints] = None
        """The hard-point rule (TSP) while active learning applies it; None: every point carries L_σ and L_c."""
        self.regularize_distillation = True
        """ω₅·L_reg in distillation; off once :meth:`warm_start` made the student its teacher."""
        self.comparison: Optional[Callable[[RayBundle, Dict[str, Tensor]], Dict[str, Tensor]]] = None
        """Set while a viewer holds a teacher (``pvdal_ns.viewer.conversion_panel.TeacherComparison``): the outputs it
        adds to each camera's render (:meth:`get_outputs_for_camera_ray_bundle`)."""

    def set_space(self, contracted: bool, proposals: Optional[bool] = None) -> None:
        """Contract space or not (:mod:`pvdal_ns.field_components.scene_space`): the field's and the grid's coordinates,
        the collider and the sampler (:class:`~pvdal_ns.model_components.sampling.Sampling`), and with it the proposal
        fields (built anew when the sampler or the space changes; ``proposals`` None: as the config says). Runs at setup
        and around a checkpoint's load, whose settings win. The new sampler jitters only if the model is in training
        mode: nerfstudio's ``eval_setup`` calls ``pipeline.eval()`` before it loads the checkpoint, so a sampler built
        by the load in training mode would jitter every render of ``ns-render`` and ``ns-eval``."""
        # the field's box (a checkpoint's wins: a student of a composed teacher has a larger one than its scene's)
        self.scene_box = SceneBox(aabb=self.field.aabb.detach().to(self.scene_box.aabb.device).clone())
        self.sampling = self.config.sampling(self.scene_box, contracted, proposals)
        self.field.set_contracted(contracted)
        self.occupancy_grid.set_contracted(contracted)
        settings = self.sampling.proposal
        if settings is None:
            self.proposal_networks = None
            self.sampler: Sampler = OccupancySampler(self.sampling, self.occupancy_grid)
            """Sets each ray's near and far (once; nerfstudio's ``collider`` stays None), and places the samples: in
            occupied cells (:class:`~pvdal_ns.model_components.sampling.OccupancySampler`) or by the proposal fields
            (:class:`~pvdal_ns.model_components.proposal_sampling.ProposalSampler`)."""
        elif self.proposal_networks is None or self._proposal_space != (contracted, settings):
            self.proposal_networks = build_proposal_networks(settings, self.sampling.space).to(self.field.aabb.device)
            self.sampler = ProposalSampler(self.sampling.collider(), settings,
                                           [network.density_fn for network in self.proposal_networks], contracted)
        # else: the same fields and sampler (a checkpoint of this model's own kind; a twin lent to a teacher still
        # follows the sampler's annealing)
        self._proposal_space = (contracted, settings)
        self.sampler.train(self.training)

    def _sampler_of_checkpoint(self, state: Dict[str, Tensor], prefix: str, *args: Any) -> None:
        """Before a checkpoint loads: its space and its sampler (proposal fields in it or not) replace the model's,
        so that its tensors find their modules (a load-state-dict pre-hook)."""
        contracted = state.get(prefix + "field.contracted")
        if contracted is None:
            return
        proposals = any(key.startswith(prefix + "proposal_networks.") for key in state)
        self.set_space(bool(contracted), proposals=proposals)

    def warm_start(self, state: Dict[str, Tensor], source: str) -> List[str]:
        """Start the field from a teacher's field weights (the authors load the teacher checkpoint into the
        student with ``strict=False``; docs/design.md "Method"): every tensor whose name and shape match is
        copied, so a student of the teacher's architecture and sizes starts as the teacher, and another takes
        what it shares (say the hidden layers of a colour MLP of the same width): each layer (sub-module) is
        copied whole, when all its tensors match, or not at all. One log line says what was copied.

        Args:
            state: the teacher field's ``state_dict`` (its ``aabb`` must be the student's scene box).
            source: the teacher's name, for the log line.

        A student that takes every tensor starts as its teacher, whose training applied the field's L_reg
        already: it distils without L_reg (:attr:`regularize_distillation`), which alone, under Adam's
        normalised steps, would move it off the teacher (docs/design.md, "Method").

        Returns:
            the names of the copied tensors (empty when the scene boxes differ or nothing matches).
        """
        own = self.field.state_dict()
        if "aabb" in state and not torch.allclose(state["aabb"].to(own["aabb"]), own["aabb"]):
            CONSOLE.log(f"Warm start skipped: the {source} teacher's scene box differs from the student's")
            return []
        if bool(state.get("contracted", False)) != bool(own["contracted"]):
            CONSOLE.log(f"Warm start skipped: the {source} teacher's space is contracted and the student's is not, "
                        "or the other way round")
            return []
        learned = [k for k in own if k not in ("aabb", "contracted")]
        modules: Dict[str, List[str]] = {}  # a layer is copied whole or not at all (no bias without its weight)
        for key in learned:
            modules.setdefault(key.rpartition(".")[0], []).append(key)
        copied = {k: state[k] for keys in modules.values()
                  if all(k in state and state[k].shape == own[k].shape for k in keys) for k in keys}
        if not copied:
            CONSOLE.log(f"Warm start: no tensor of the student matches the {source} teacher's by name and shape")
            return []
        self.field.load_state_dict(copied, strict=False)
        per_module: Dict[str, List[bool]] = {}  # top-level module → copied or not, per tensor
        for key in learned:
            per_module.setdefault(key.split(".")[0], []).append(key in copied)
        parts = [module if all(done) else f"{module} ({sum(done)}/{len(done)})"
                 for module, done in per_module.items() if any(done)]
        CONSOLE.log(f"Warm start from the {source} teacher: {len(copied)} of {len(learned)} tensors copied "
                    f"({', '.join(parts)})")
        if len(copied) == len(learned):
            self.regularize_distillation = False
            CONSOLE.log("The student starts as its teacher: no L_reg while distilling "
                        "(the teacher's training applied it)")
        return sorted(copied)

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The field's groups ("grids", "networks") and, sampling with proposals, "proposal_networks" (nerfacto's)."""
        groups = self.field.param_groups()
        if self.proposal_networks is not None:
            groups["proposal_networks"] = list(self.proposal_networks.parameters())
        return groups

    def set_step(self, step: int, hard_points: Optional[HardPoints] = None) -> None:
        """The step-dependent state of distillation, set before each training step by the pipeline's
        ``BEFORE_TRAIN_ITERATION`` callback: the stage of ``step`` (logged when it changes) and the hard-point
        rule active learning hands over (None while it is off)."""
        assert self.distillation is not None, "set_step is for distillation"
        stage = self.distillation.stages.stage_at(step)
        if stage != self.stage:
            CONSOLE.log(f"Step {step}: distillation stage {stage}")
        self.step, self.stage, self.hard_points = step, stage, hard_points

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        """Occupancy-grid updates from the field's own density (nerfacc EMA), unless distilling or sampling with
        proposals; with proposals, nerfacto's two: the proposal weights' annealing before a step, and nerfstudio's
        update schedule after it."""
        if self.proposal_networks is not None:
            settings = self.config.proposal
            return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                                     lambda step: self.sampler.set_anneal(settings.anneal(step))),  # type: ignore
                    TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                                     lambda step: self.sampler.step_cb(step))]  # type: ignore[union-attr]

        def update_grid(step: int) -> None:
            if self.distillation is not None:
                return
            self.occupancy_grid.update_every_n_steps(
                step=step,
                occ_eval_fn=self.occupancy_grid.occupancy_fn(self.field.density_at, self.sampling.step_size),
                occ_thre=self.config.grid_threshold,
                ema_decay=self.config.grid_ema_decay,
                warmup_steps=self.config.grid_warmup_steps,
                n=self.config.grid_update_every,
            )

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], update_grid)]

    # --- sampling and rendering ---------------------------------------------------------------------
    def sample(self, ray_bundle: RayBundle) -> PackedSamples:
        """The packed samples of the rays in occupied cells (:class:`~pvdal_ns.model_components.sampling.Sampling`),
        less those hidden or (except while training from images) nearly transparent where the sampling culls
        (:meth:`~pvdal_ns.model_components.sampling.OccupancySampler.cull`; a density pass without gradients). The
        model's sampler jitters, and packs into fixed slots on a GPU, in training mode only. Sampling with proposals:
        the proposal sampler's S samples a ray, none left out."""
        samples = self.sampler(ray_bundle, packed=self.training)
        if isinstance(self.sampler, ProposalSampler):
            return samples
        # no alpha threshold while training from images: at the start every sample is nearly transparent, and
        # left out, it would never become opaque (measured: 11.4 against 17.9 dB on the embedded capture)
        alpha_thre = 0.0 if self.training and self.distillation is None else self.sampling.alpha_thre
        if self.sampling.early_stop_eps > 0 or alpha_thre > 0:
            with torch.no_grad():
                density = self.field.query(samples.positions).density
            samples, _ = self.sampler.cull(samples, density, self.sampling.early_stop_eps, alpha_thre,
                                           packed=self.training)
        return samples

    def query(self, samples: PackedSamples, with_rgb: bool = True) -> PointOutputs:
        """Field outputs at the C slots of ``samples`` (``[C, …]``)."""
        return self.field.query(samples.positions, samples.directions if with_rgb else None)

    def composite(self, samples: PackedSamples, points: PointOutputs,
                  background: Optional[Union[str, Float[Tensor, "R 3"]]] = None) -> Dict[str, Tensor]:
        """:meth:`~pvdal_ns.model_components.sampling.PackedSamples.composite` with this model's RGB renderer (its
        background when None)."""
        return samples.composite(points, self.renderer_rgb, background)

    def forward(self, ray_bundle: RayBundle, teacher_batch: Optional[TeacherBatch] = None) -> Dict[str, Any]:
        """nerfstudio's ``Model.forward`` (render ``ray_bundle``), or, given the batch's
        :class:`~pvdal_ns.model_components.teacher_batch.TeacherBatch` of the same rays (``batch["teacher"]``), the
        student at the teacher's sample points (:meth:`get_distillation_outputs`)."""
        if teacher_batch is None:
            return super().forward(ray_bundle)
        return self.get_distillation_outputs(teacher_batch, ray_bundle)

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """Render R rays: ``rgb`` Float[Tensor, "R 3"], ``accumulation`` and ``depth`` (scene units)
        Float[Tensor, "R 1"], ``num_samples_per_ray`` (occupied samples evaluated) and, in training, ``complete``
        Bool[Tensor, " R"] (``PackedSamples.complete``: every sample of the ray had a slot)."""
        samples = self.sample(ray_bundle)
        outputs = self.composite(samples, self.query(samples))
        weights = outputs.pop("weights")
        outputs["num_samples_per_ray"] = samples.counts()[:, None].float()
        if self.training:  # fixed slots (a GPU) only in training; not an image for the viewer
            outputs["complete"] = samples.complete
            if samples.proposals is not None:  # the proposal fields learn this model's own weights (as nerfacto)
                sdist = self.sampler.spacing(samples, ray_bundle)  # type: ignore[union-attr]
                outputs["proposal_target"] = (samples.proposals, samples, weights.detach(), sdist)
                if self.config.proposal.distortion_loss_mult > 0:
                    outputs["distortion"] = lossfun_distortion(sdist, weights.view(samples.num_rays, -1)).mean()
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """nerfstudio's render of a camera's RayBundle [H, W] (outputs [H, W, C]), and, while the viewer holds a
        teacher, the :attr:`comparison` outputs (``teacher_rgb``, ``error``, ``split``, …; docs/design.md,
        "The viewer")."""
        outputs = super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        if self.comparison is not None:
            outputs.update(self.comparison(camera_ray_bundle, outputs))
        return outputs

    def get_distillation_outputs(self, teacher_batch: TeacherBatch,
                                 ray_bundle: Optional[RayBundle] = None) -> Dict[str, Any]:
        """The student at the teacher's sample points, as far as the current stage needs it.

        Args:
            teacher_batch: the batch's :class:`~pvdal_ns.model_components.teacher_batch.TeacherBatch` (sample
                points, mask, background).
            ray_bundle: the batch's rays: a student sampling with proposals runs its own proposal levels on them
                (``proposal_target``: its proposal fields learn the teacher's weights at the shared samples).

        Returns:
            ``points``: :class:`PointOutputs` at the C slots of the samples (colour from stage 2); ``teacher_points``,
            the teacher's as the losses see them (clamped in "forward" clip mode); from stage 3 also
            ``rgb`` Float[Tensor, "R 3"] on the batch's background, ``accumulation``, ``depth``, ``weights``
            Float[Tensor, "C 1"], ``rgb_errors`` Float[Tensor, " R"] (each ray's squared error against the
            teacher's render, 0 on a ray not held whole (:attr:`PackedSamples.complete`): L_rgb, the PSNR metric
            and active learning's feedback all read it) and, while active learning selects them, ``hard_points``
            Bool[Tensor, " C"]; sampling with proposals, ``proposal_target`` (the student's proposal levels, the
            shared samples, the teacher's weights there, and their edges in the student's spacing: the interlevel
            loss's arguments).
        """
        assert self.stage > 0 and self.distillation is not None, "no distillation stage: set_step sets it"
        samples = teacher_batch.samples
        points = self.query(samples, with_rgb=self.stage >= 2)
        loss = self.distillation.loss
        if loss.clip_mode == "forward" and loss.density_clip is not None and teacher_batch.points is not None:
            points = clamp_density(points, loss.density_clip)
            teacher_batch = self._clamped_teacher(teacher_batch, loss.density_clip)
        outputs: Dict[str, Any] = {"points": points, "teacher_points": teacher_batch.points}
        if self.stage == 3:
            outputs.update(self.composite(samples, points, teacher_batch.background))
            errors = ray_rgb_errors(outputs["rgb"], teacher_batch.rgb)
            outputs["rgb_errors"] = torch.where(samples.complete, errors, torch.zeros_like(errors))
            if self.hard_points is not None:
                outputs["hard_points"] = self.hard_points.select(
                    teacher_batch.weights, outputs["weights"], samples, teacher_batch.accumulation,
                    outputs["accumulation"])
        if isinstance(self.sampler, ProposalSampler) and self.training and ray_bundle is not None:
            outputs["proposal_target"] = self._proposal_target(ray_bundle, teacher_batch, outputs)
        return outputs

    def _proposal_target(self, ray_bundle: RayBundle, teacher: TeacherBatch, outputs: Dict[str, Any]) -> Tuple:
        """Distilling with proposals: the student's own proposal levels on the batch's rays (their last samples
        unused), and what they learn: the teacher's weights at the shared samples (from its render, or from its
        density at the points as the losses see it; from renders only, the student's own render)."""
        assert isinstance(self.sampler, ProposalSampler)
        chain = self.sampler(ray_bundle).proposals
        samples, teacher_points = teacher.samples, outputs["teacher_points"]
        if teacher.points is None:
            weights = outputs["weights"]
        elif teacher.weights is not None and teacher_points is teacher.points:
            weights = teacher.weights
        else:
            weights = samples.weights(teacher_points.density)
        return chain, samples, weights.detach(), self.sampler.spacing(samples, ray_bundle)

    def _clamped_teacher(self, teacher: TeacherBatch, clip: Tuple[float, float]) -> TeacherBatch:
        """The "forward" clip mode (authors' code, docs/design.md "Method"): the teacher's raw densities
        clamped to [a, b] as the student's are, and from stage 3 re-rendered with them (the teacher's render,
        weights and opacity are what a clamped teacher gives). The student's own renders outside distillation
        are not clamped: below a, σ·Δt < 0.003 a sample; above b, a sample is opaque either way."""
        points = clamp_density(teacher.points, clip)
        if teacher.rgb is None:
            return dataclasses.replace(teacher, points=points)
        out = self.composite(teacher.samples, points, teacher.background)
        return dataclasses.replace(teacher, points=points, rgb=out["rgb"], weights=out["weights"],
                                   accumulation=out["accumulation"])

    # --- losses and metrics -------------------------------------------------------------------------
    def _gt(self, batch: Dict, outputs: Dict) -> Tuple[Tensor, Tensor]:
        """The render and the ground truth blended for the image loss (nerfstudio's); a ray whose samples did not
        all fit the fixed slots (:class:`~pvdal_ns.model_components.sampling.PackedSamples`, on a GPU after a surge
        of samples) is given its ground truth: no error, no gradient."""
        image = batch["image"].to(self.device)
        pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=image
        )
        complete = outputs.get("complete")
        return (pred, gt) if complete is None else (torch.where(complete[:, None], pred, gt.detach()), gt)

    def get_metrics_dict(self, outputs: Dict, batch: Dict) -> Dict[str, Tensor]:
        """From images: ``psnr`` (dB) and, sampling with the occupancy grid, ``occupied_fraction``. Distilling:
        ``stage``, ``samples_per_ray``, from stage 3 ``psnr_vs_teacher`` (dB), and ``al_hard_point_fraction`` while hard
        points apply."""
        teacher = batch.get("teacher")
        if teacher is None:
            pred, gt = self._gt(batch, outputs)
            metrics = {"psnr": self.psnr(pred, gt)}
            if self.proposal_networks is None:  # with proposals the grid is neither sampled nor updated
                metrics["occupied_fraction"] = torch.tensor(self.occupancy_grid.occupied_fraction)
            return metrics
        samples = teacher.samples
        valid = samples.valid.float()
        metrics = {"stage": torch.tensor(float(self.stage)), "samples_per_ray": valid.sum() / samples.num_rays}
        if "rgb_errors" in outputs:
            mse = outputs["rgb_errors"].detach().sum() / samples.complete.sum().clamp(min=1)
            metrics["psnr_vs_teacher"] = -10.0 * torch.log10(mse.clamp(min=1e-10))
        if "hard_points" in outputs:
            metrics["al_hard_point_fraction"] = (outputs["hard_points"] * valid).sum() / valid.sum().clamp(min=1)
        return metrics

    def get_loss_dict(self, outputs: Dict, batch: Dict, metrics_dict: Optional[Dict] = None) -> Dict[str, Tensor]:
        """From images: MSE against ``batch["image"]``. Distilling (``batch["teacher"]``): the PVD losses of
        the current stage (Eq. 7): ``volume_loss`` (L_v) where ϕ¹ is aligned, ``density_loss`` and
        ``colour_loss`` (L_σ, L_c, at the hard points while they apply) from stage 2 unless the teacher gave
        renders only, ``rgb_loss`` (L_rgb against the teacher's render) from stage 3. Both: ``regularization``
        (ω₅·L_reg of the field, in training; distilling from stage 2 unless the student started as its teacher),
        added here only."""
        teacher, d = batch.get("teacher"), self.distillation
        distilling = teacher is not None
        loss: Dict[str, Tensor] = {}
        if not distilling:
            pred, gt = self._gt(batch, outputs)
            loss["rgb_loss"] = self.mse_loss(pred, gt)
        elif outputs["teacher_points"] is not None:
            assert d is not None
            loss.update(point_losses(outputs["points"], outputs["teacher_points"], self.stage, d.loss, d.align_volume,
                                     outputs.get("hard_points"), self.step, teacher.samples.valid))
        if self.training and (not distilling or (self.stage >= 2 and self.regularize_distillation)):
            loss["regularization"] = self.config.regularization_weight * self.field.regularization_loss()
        if distilling and self.stage == 3 and d.loss.rgb_weight > 0:  # type: ignore[union-attr]
            loss["rgb_loss"] = d.loss.rgb_weight * rgb_loss(  # type: ignore[union-attr]
                outputs["rgb_errors"], d.loss.form, teacher.samples.complete)  # type: ignore[union-attr]
        if "proposal_target" in outputs:
            loss["interlevel_loss"] = self.config.proposal.interlevel_loss_mult * interlevel_loss_against(
                *outputs["proposal_target"])
        if "distortion" in outputs:
            loss["distortion_loss"] = self.config.proposal.distortion_loss_mult * outputs["distortion"]
        return loss

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        pred = outputs["rgb"]
        metrics = {k: v for k, v in image_metrics(pred, gt).items() if v is not None}
        acc = outputs["accumulation"].expand_as(pred)
        return metrics, {"img": torch.cat([gt, pred], dim=1), "accumulation": acc}
