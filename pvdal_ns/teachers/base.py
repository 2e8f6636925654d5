"""The teacher interface: what any source of distillation targets declares and gives (docs/design.md,
"Teachers").

A :class:`Teacher` declares its :class:`Capability` flags and gives, for a batch of rays, a
:class:`TeacherBatch`: the shared sample points, and what it knows at them. :class:`ModelTeacher` is a
frozen nerfstudio model behind the shared samples' sampler (``OccupancySampler``); the pvdal-* and stock families
(:mod:`.pvd`, :mod:`.stock`) say what their model is at points, and the teacher cache (:mod:`.cache`)
replays recorded batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.renderers import RGBRenderer
from torch import Tensor

from pvdal_ns.fields import VOLUME_FEATURE_DIM, PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.proposal_sampling import ProposalSampler, Sampler
from pvdal_ns.model_components.sampling import OccupancySampler, PackedSamples, Sampling
from pvdal_ns.model_components.teacher_batch import Capability, TeacherBatch, TeacherImages, points_batch
from pvdal_ns.teachers.edits import SceneEdit
from pvdal_ns.utils.errors import TeacherLoadError


class Teacher:
    """The interface every teacher implements. A method belongs to a capability; a teacher without it
    raises ``NotImplementedError`` there (the pipeline never calls it, see :class:`Capability`).

    Attributes:
        capabilities: what this teacher gives.
        source: the config.yml (or cache folder) it came from, for messages and reports.
        occupancy_grid: the grid whose occupied cells decide the shared sample points; the student's grid is
            set to it.
        proposal_sampler: where the teacher places samples with proposal fields of its own (a pvdal-* teacher trained
            with proposals, nerfacto): its sampler, which places the shared samples of a student sampling with
            proposals; None: it has none (a student sampling with proposals lends it its own).
    """

    capabilities: Capability
    source: Path
    occupancy_grid: OccupancyGrid
    proposal_sampler: Optional[ProposalSampler] = None
    scene_box: Optional[SceneBox] = None
    """The scene box its student takes instead of its scene's (a composed teacher's holds both scenes,
    :class:`~pvdal_ns.teachers.composed.ComposedTeacher`); None: the scene's own."""

    @property
    def name(self) -> str:
        """Short name of the teacher's model family (e.g. "VMField", "nerfacto", "cache of tensorf")."""
        raise NotImplementedError

    def render(self, ray_bundle: RayBundle, background: Float[Tensor, "R 3"], stage: int = 3,
               sampler: Optional[Sampler] = None) -> TeacherBatch:
        """RAYS: sample R rays (with ``sampler``, or the teacher's own: through its occupancy grid, or its proposal
        fields) and evaluate them as far as distillation ``stage`` (1–3) needs (:class:`TeacherBatch`); stage 3
        renders them on ``background``."""
        raise NotImplementedError(f"{self.name} does not render rays")

    def render_rays(self, ray_bundle: RayBundle, chunk: int = 1 << 14) -> Dict[str, Tensor]:
        """RAYS: R rays rendered whole for display (the viewer, figures), ``chunk`` at a time, drawing no random
        numbers: ``rgb`` Float[Tensor, "R 3"] on black (premultiplied by opacity), ``accumulation`` and
        ``depth`` (scene units) Float[Tensor, "R 1"]."""
        raise NotImplementedError(f"{self.name} does not render rays")

    def render_images(self, cameras: Cameras) -> TeacherImages:
        """IMAGES: whole images of ``cameras`` (N of them, one size)."""
        raise NotImplementedError(f"{self.name} does not render images")

    def image_batch(self, images: TeacherImages, pixels: Int[Tensor, "R 3"], ray_bundle: RayBundle,
                    background: Float[Tensor, "R 3"], sampler: Optional[Sampler] = None) -> TeacherBatch:
        """IMAGES: a batch whose colours come from ``images`` at ``pixels`` (camera, row, column; the rays of
        ``ray_bundle``), at the samples the student is evaluated at (``sampler``'s, or the teacher's own); no points,
        no weights."""
        raise NotImplementedError(f"{self.name} does not render images")

    def render_camera(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """IMAGES: the teacher's image of one camera on a white background (CPU), for figures."""
        images = self.render_images(camera)
        return (images.rgb + 1.0 - images.accumulation)[0].cpu()

    def warm_start_state(self) -> Optional[Dict[str, Tensor]]:
        """The teacher field's weights for a warm start (``PVDModel.warm_start``), or None where its field is
        not a PVD field (stock models: another activation and parametrisation under the same names)."""
        return None

    def recorded_batch(self, index: int, background: Float[Tensor, "R 3"],
                       device: torch.device, stage: int = 3) -> Tuple[RayBundle, TeacherBatch]:
        """RECORDED: recorded batch ``index`` (0 ≤ index < ``len``), as far as ``stage`` needs it (rendered on
        ``background`` in stage 3)."""
        raise NotImplementedError(f"{self.name} holds no recorded batches")

    def apply_edit(self, edit: SceneEdit) -> None:
        """Make this teacher the edited scene (:mod:`pvdal_ns.teachers.edits`): whatever it gives from now on (points,
        renders, its occupancy grid, its proposal fields) is of the edited scene.

        Raises:
            TeacherLoadError: this kind of teacher cannot be edited (the message says what to do instead)."""
        raise TeacherLoadError(f"{self.name} teachers cannot be edited yet: convert it into a pvdal-* run first "
                               "(ns-distill run --student tensors) and edit that run as the teacher")


class ModelTeacher(Teacher):
    """A frozen nerfstudio model as teacher. Not an ``nn.Module`` on purpose: it stays out of the student's
    checkpoints, parameter groups and ``train()``/``eval()`` switches.

    Rays are sampled by an :class:`~pvdal_ns.model_components.sampling.OccupancySampler` of ``sampling`` and
    ``occupancy_grid`` (jittered), or by the teacher's own proposal fields (``proposal_sampler``), or by the sampler
    a call is given (a student's proposals); the samples the teacher's own density hides or leaves transparent are
    dropped where the occupancy sampling culls. Subclasses say what the model is at points (:meth:`query_points`).
    No subclass is ever asked about zero points: an empty query is answered here, and so is an edit
    (:meth:`apply_edit`): every query goes through it.

    Args:
        model: the trained nerfstudio model (set to eval mode, gradients off).
        source: the config path it came from.
        occupancy_grid: the grid whose occupied cells decide the shared sample points.
        sampling: the collider, sampler and early stop of the shared samples (grid settings unused here).
        capabilities: what the model gives.
        proposal_sampler: the teacher's own proposal sampling (placed in training mode here: jittered), which then
            places its samples; None: its occupancy grid does.
    """

    def __init__(self, model: torch.nn.Module, source: Path, occupancy_grid: OccupancyGrid, sampling: Sampling,
                 capabilities: Capability, proposal_sampler: Optional[ProposalSampler] = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.occupancy_grid = occupancy_grid
        self.capabilities = capabilities
        self.sampling = sampling
        self.proposal_sampler = None if proposal_sampler is None else proposal_sampler.train()
        # Jittered sample positions along each ray, independent of the frozen model's eval mode.
        self.sampler: Sampler = (self.proposal_sampler
                                 or OccupancySampler(sampling, occupancy_grid, stratified=True).train())
        # Whole images (renders-only targets, figures): evenly spaced samples, so rendering one draws no
        # random numbers from the training stream.
        self.image_sampler: Sampler = (proposal_sampler.twin().eval() if proposal_sampler is not None
                                       else OccupancySampler(sampling, occupancy_grid, stratified=False).eval())
        self.renderer_rgb = RGBRenderer(background_color="white")
        self.edit: Optional[SceneEdit] = None
        """The edit every query goes through (:meth:`apply_edit`); None: the teacher as trained."""

    @property
    def name(self) -> str:
        return type(self.model).__name__

    def _query_points(
        self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]]
    ) -> PointOutputs:
        """The model at N ≥ 1 world positions (colour only with ``directions``); subclasses implement it."""
        raise NotImplementedError(f"{self.name} has no field to query at points")

    @torch.no_grad()
    def query_points(self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]] = None
                     ) -> PointOutputs:
        """POINTS: raw (log) density, colour (with ``directions``) and, with VOLUME_FEATURE, ϕ¹ at world
        positions; N = 0 gives empty outputs without asking the model."""
        if len(positions) == 0:
            empty = positions.new_zeros
            phi1 = empty(0, VOLUME_FEATURE_DIM) if Capability.VOLUME_FEATURE in self.capabilities else None
            return PointOutputs(empty(0, 1), None if directions is None else empty(0, 3), phi1)
        outputs = self._query_points(positions, directions)
        return outputs if self.edit is None else self.edit.apply(positions, outputs)

    def apply_edit(self, edit: SceneEdit) -> None:
        """Every query goes through ``edit`` from now on (:meth:`query_points`: points, renders, images); the occupancy
        grid's cells wholly emptied by it are unoccupied; the proposal fields' densities are emptied where it empties
        (so samples go to the surfaces behind an erased part); a recolouring edit takes ϕ¹ away (``VOLUME_FEATURE``:
        its features hold the old colours).

        Raises:
            BadInputError: a box that holds no occupied cell of the teacher's grid (it touches nothing the teacher
                renders; a keep box so would erase everything)."""
        centres = self.occupancy_grid.occupied_centres()
        if len(centres):
            edit.check_touches(centres, "nothing the teacher renders (no occupied cell of its grid)")
        self.edit = edit
        edit.empty_cells(self.occupancy_grid)
        if edit.changes_colour:
            self.capabilities &= ~Capability.VOLUME_FEATURE
        for sampler in (self.proposal_sampler, self.image_sampler):
            if isinstance(sampler, ProposalSampler):
                sampler.density_fns = [edit.density_fn(fn) for fn in sampler.density_fns]

    def query(self, samples: PackedSamples, with_rgb: bool = True) -> PointOutputs:
        """POINTS: :meth:`query_points` at the C slots of ``samples``, with their view directions (colour)
        unless ``with_rgb`` is False."""
        return self.query_points(samples.positions, samples.directions if with_rgb else None)

    @torch.no_grad()
    def render(self, ray_bundle: RayBundle, background: Float[Tensor, "R 3"], stage: int = 3,
               sampler: Optional[Sampler] = None) -> TeacherBatch:
        return self._render(ray_bundle, background, stage, sampler or self.sampler, packed=True)

    def _render(self, ray_bundle: RayBundle, background: Float[Tensor, "R 3"], stage: int,
                sampler: Sampler, packed: bool) -> TeacherBatch:
        return points_batch(*self._points(ray_bundle, stage, sampler, packed), background, stage, self.renderer_rgb)

    def _points(self, ray_bundle: RayBundle, stage: int, sampler: Sampler, packed: bool
                ) -> Tuple[PackedSamples, PointOutputs]:
        """Sample (``packed``: into :class:`~pvdal_ns.model_components.sampling.SampleCapacity`'s fixed slots on a
        GPU; False: exactly), query as far as ``stage`` needs, and cull where the occupancy sampling says."""
        samples = sampler(ray_bundle, packed)
        points = self.query(samples, with_rgb=stage >= 2)
        if sampler.culls:  # samples hidden behind the teacher's surfaces, or transparent to it, are left out
            assert isinstance(sampler, OccupancySampler)
            samples, kept = sampler.cull(samples, points.density, self.sampling.early_stop_eps,
                                         self.sampling.alpha_thre, packed)
            points = points.select(kept)
        return samples, points

    @torch.no_grad()
    def render_rays(self, ray_bundle: RayBundle, chunk: int = 1 << 14) -> Dict[str, Tensor]:
        """RAYS, for display: evenly spaced samples, so rendering draws no random numbers from the training
        stream (a figure of active learning, a viewer's render request)."""
        parts = []
        for start in range(0, len(ray_bundle), chunk):
            rays = ray_bundle[start : start + chunk]
            samples, points = self._points(rays, 3, self.image_sampler, packed=False)
            black = torch.zeros(len(rays), 3, device=rays.origins.device)
            parts.append(samples.composite(points, self.renderer_rgb, black))
        return {key: torch.cat([part[key] for part in parts]) for key in ("rgb", "accumulation", "depth")}

    @torch.no_grad()
    def render_images(self, cameras: Cameras) -> TeacherImages:
        """Whole images of ``cameras``: their pixel-centre rays (:meth:`render_rays`)."""
        height, width = int(cameras.height[0]), int(cameras.width[0])
        renders = [self.render_rays(cameras[i : i + 1].generate_rays(camera_indices=0).flatten())
                   for i in range(len(cameras))]
        return TeacherImages(torch.stack([r["rgb"] for r in renders]).view(-1, height, width, 3),
                             torch.stack([r["accumulation"] for r in renders]).view(-1, height, width, 1))

    @torch.no_grad()
    def image_batch(self, images: TeacherImages, pixels: Int[Tensor, "R 3"], ray_bundle: RayBundle,
                    background: Float[Tensor, "R 3"], sampler: Optional[Sampler] = None) -> TeacherBatch:
        rgb, accumulation = images.composite(pixels, background)
        return TeacherBatch((sampler or self.sampler)(ray_bundle), None, None, rgb, accumulation, background)
