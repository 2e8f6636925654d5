"""The shared samples of teacher and student (docs/design.md, "One sampler, packed samples"): where they lie,
how they are packed, and how they are rendered.

A bounded scene: nerfstudio's ``UniformSampler`` places ``S`` samples on every ray's segment inside the scene
box. An unbounded one (contracted, :mod:`pvdal_ns.field_components.scene_space`): nerfstudio's
``UniformLinDispPiecewiseSampler`` (nerfacto's initial sampler) places half of them in the first world unit and
half linearly in disparity out to the far plane. :class:`OccupancySampler` keeps those in occupied cells of the
occupancy grid, packed by ray (:class:`PackedSamples`, nerfstudio's packed layout as its instant-ngp model
renders it), and, where the sampling says so, leaves out the samples behind an opaque surface (transmittance
below ``early_stop_eps``; on by default in contracted scenes) and the nearly transparent ones (opacity below
``alpha_thre``; off by default), as nerfacc's ``render_visibility_from_density`` does: fields are evaluated only
where they add to the image. Everything is torch ops, on a CPU as on a GPU, where the slots are a fixed number
(:class:`SampleCapacity`) so that no step waits for a count. The same :class:`PackedSamples` is what the teacher
is queried at and the student is trained at; both are rendered by :meth:`PackedSamples.composite` with
nerfstudio's renderers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import SpacedSampler, UniformLinDispPiecewiseSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider, NearFarCollider, SceneCollider
from torch import Tensor, nn

from pvdal_ns.field_components.scene_space import SceneSpace
from pvdal_ns.fields import PointOutputs
from pvdal_ns.fields.proposal import NERFACTO_PROPOSAL_FIELDS, ProposalFieldConfig
from pvdal_ns.model_components.occupancy import OccupancyGrid

NEAR_PLANE, FAR_PLANE = 0.05, 1000.0
"""Contracted scenes: where rays start and end (world units; nerfacto's collider)."""


@dataclass
class Sampling:
    """Where the shared sample points lie: the student's scene box and whether space is contracted,
    occupancy-grid resolution and threshold, samples per ray and the early-stop transmittance
    (``PVDModelConfig.sampling`` builds it from the fields of the same names). Teachers without a grid of
    their own build theirs with it.

    Attributes:
        scene_box: nerfstudio ``SceneBox``; bounded: rays are clipped to it and the grid covers it.
        grid_resolution: cells per axis of the occupancy grid.
        num_samples: samples per ray before masking.
        grid_threshold: occupancy threshold on σ·Δt.
        contracted: all of space through ``SceneContraction`` (:mod:`pvdal_ns.field_components.scene_space`), rays from
            :data:`NEAR_PLANE` to :data:`FAR_PLANE`; False: the box only.
        early_stop_eps: samples where the transmittance has fallen below it are not evaluated; 0: all are.
        alpha_thre: nor are samples whose opacity is below it (:func:`visible`); 0: all are.
        proposal: the shared samples are placed by proposal sampling with these settings
            (:mod:`~pvdal_ns.model_components.proposal_sampling`; the grid, ``num_samples`` and the culling are then
            not used for them); None: by the occupancy grid (:class:`OccupancySampler`).
    """

    scene_box: SceneBox
    grid_resolution: int = 128
    num_samples: int = 192
    grid_threshold: float = 0.01
    contracted: bool = False
    early_stop_eps: float = 0.0
    alpha_thre: float = 0.0
    proposal: Optional["ProposalSampling"] = None

    @property
    def culls(self) -> bool:
        """Whether samples are left out by their density (:func:`visible`), beyond the occupancy grid's."""
        return self.early_stop_eps > 0 or self.alpha_thre > 0

    @property
    def space(self) -> SceneSpace:
        """The field coordinates of fields and grids of this sampling."""
        return SceneSpace(self.scene_box.aabb, self.contracted)

    def collider(self) -> SceneCollider:
        """nerfstudio's collider that sets each ray's near and far: the box's faces, or the near and far planes."""
        if self.contracted:
            return NearFarCollider(near_plane=NEAR_PLANE, far_plane=FAR_PLANE)
        return AABBBoxCollider(self.scene_box, near_plane=0.0)

    def sampler(self, stratified: bool = True) -> SpacedSampler:
        """nerfstudio's sampler of ``num_samples`` per ray (jittered in training mode when ``stratified``):
        uniform in the box, or nerfacto's linear-then-disparity spacing when contracted."""
        if self.contracted:
            return UniformLinDispPiecewiseSampler(num_samples=self.num_samples, train_stratified=stratified)
        return UniformSampler(num_samples=self.num_samples, train_stratified=stratified)

    @property
    def step_size(self) -> float:
        """Distance between uniform samples (scene units): the box diagonal over ``num_samples``."""
        aabb = self.scene_box.aabb
        return float((aabb[1] - aabb[0]).norm() / self.num_samples)



@dataclass
class ProposalSampling:
    """Proposal sampling settings (nerfacto's names and defaults; ``PVDModelConfig.proposal``).

    Attributes:
        num_proposal_samples_per_ray: samples per ray of each proposal level.
        num_samples: samples per ray the model (and a teacher) is evaluated at.
        fields: one proposal density field per level (the last one repeats if there are fewer).
        update_every: after the warm-up, the proposal fields take a gradient every this many steps (nerfacto's
            ``proposal_update_every``).
        warmup: steps over which that interval grows from 1 (``proposal_warmup``).
        anneal_slope: slope of the proposal weights' annealing (Mip-NeRF 360 Eq. 18; ``proposal_weights_anneal_slope``).
        anneal_steps: steps over which the annealing reaches 1 (``proposal_weights_anneal_max_num_iters``).
        single_jitter: one jitter for all samples of a ray (``use_single_jitter``).
        interlevel_loss_mult: weight of nerfstudio's ``interlevel_loss``.
        distortion_loss_mult: weight of Mip-NeRF 360's distortion loss (nerfstudio's ``lossfun_distortion``, as
            nerfacto's ``distortion_loss``) while training from images: it draws each ray's weights together, against
            floaters; not while distilling (the teacher's weights say where the surfaces are).
    """

    num_proposal_samples_per_ray: Tuple[int, ...] = (256, 96)
    num_samples: int = 48
    fields: Tuple[ProposalFieldConfig, ...] = field(default_factory=lambda: NERFACTO_PROPOSAL_FIELDS)
    update_every: int = 5
    warmup: int = 5000
    anneal_slope: float = 10.0
    anneal_steps: int = 1000
    single_jitter: bool = True
    interlevel_loss_mult: float = 1.0
    distortion_loss_mult: float = 0.002

    def field_configs(self) -> List[ProposalFieldConfig]:
        """The field of each level."""
        return [self.fields[min(i, len(self.fields) - 1)] for i in range(len(self.num_proposal_samples_per_ray))]

    def update_schedule(self, step: int) -> float:
        """Steps between the proposal fields' gradient steps at ``step`` (nerfacto's ``update_schedule``)."""
        return float(np.clip(np.interp(step, [0, self.warmup], [0, self.update_every]), 1, self.update_every))

    def anneal(self, step: int) -> float:
        """The exponent of the proposal weights before PDF sampling at ``step`` (nerfacto's ``set_anneal``)."""
        x, b = float(np.clip(step / max(self.anneal_steps, 1), 0, 1)), self.anneal_slope
        return b * x / ((b - 1) * x + 1)

    def key(self) -> dict:
        """What samples these settings give, for a batch key (``pipelines.sharing.batch_key``)."""
        return {"proposal_samples": list(self.num_proposal_samples_per_ray), "samples": self.num_samples,
                "fields": [f"{f.kind} {f.resolution}" for f in self.field_configs()]}



class SampleCapacity:
    """How many slots a set of packed samples takes (docs/design.md, "One sampler, packed samples").

    On a CPU the slots are exactly the samples (counting them costs nothing: there is no device to wait for).
    On a GPU counting them would stop the host until the device has caught up, so the samples go into a fixed
    number of slots, the unused ones padding: at first as many as the dense samples (nothing is ever dropped),
    then, every ``resize_every`` packings, the largest count seen since the last resize with ``margin`` to
    spare, rounded up to ``granule``. That read is the one synchronisation, once in ``resize_every`` steps. A
    batch with more samples than slots loses the last rays' samples; those rays are marked incomplete
    (:attr:`PackedSamples.complete`) and carry no loss, and the next resize makes room.

    Args:
        resize_every: packings between two resizes.
        margin: slots per sample seen at most (≥ 1).
        granule: slots are a multiple of it.
        fixed: fixed slots (True) or exactly the samples (False) on any device; None: fixed on a GPU only.
    """

    def __init__(self, resize_every: int = 64, margin: float = 1.25, granule: int = 4096,
                 fixed: Optional[bool] = None) -> None:
        self.resize_every, self.margin, self.granule, self.fixed = resize_every, margin, granule, fixed
        self.size: Optional[int] = None
        """The current number of slots; None until the first resize (as many as the dense samples)."""
        self.peak: Optional[Tensor] = None
        """Int[Tensor, ""] on the device: the largest count since the last resize."""
        self.packings = 0

    def slots(self, keep: Bool[Tensor, " N"]) -> Optional[int]:
        """The slots of a packing of ``keep``'s True entries: None (exactly as many) on a CPU, else the fixed
        size (at most N); resizes every ``resize_every`` calls."""
        if not (keep.device.type != "cpu" if self.fixed is None else self.fixed):
            return None
        self.packings += 1
        if self.packings % self.resize_every == 0 and self.peak is not None:
            peak = int(self.peak)  # the one synchronisation, every resize_every packings
            self.size = max(self.granule, -(-int(peak * self.margin) // self.granule) * self.granule)
            self.peak = None
        return len(keep) if self.size is None else min(self.size, len(keep))

    def observe(self, count: Int[Tensor, ""]) -> None:
        """Keep the largest sample count seen (on the device; no synchronisation)."""
        self.peak = count if self.peak is None else torch.maximum(self.peak, count)


def compact(keep: Bool[Tensor, " N"], ray_indices: Int[Tensor, " N"], num_rays: int,
            capacity: Optional[SampleCapacity] = None
            ) -> Tuple[Int[Tensor, " C"], Bool[Tensor, " C"], Int[Tensor, " R"], Bool[Tensor, " R"]]:
    """The ``keep`` entries of N samples grouped by ray, packed into C slots in order.

    Args:
        keep: which samples to keep.
        ray_indices: the ray of each sample, non-decreasing.
        num_rays: R.
        capacity: the :class:`SampleCapacity` that sizes the slots; None: exactly the kept samples.

    Returns:
        ``index`` (which sample fills each slot; padding slots hold sample 0), ``valid`` (the slot holds a kept
        sample), ``ray_starts`` (each ray's first slot; its kept samples follow) and ``complete`` (every kept
        sample of the ray has a slot).
    """
    counts = torch.zeros(num_rays, dtype=torch.long, device=keep.device).index_add_(0, ray_indices, keep.long())
    ray_ends = torch.cumsum(counts, 0)
    ray_starts = ray_ends - counts
    slots = None if capacity is None else capacity.slots(keep)
    if slots is None:
        index = torch.nonzero(keep).squeeze(-1)
        return (index, torch.ones_like(index, dtype=torch.bool), ray_starts,
                torch.ones(num_rays, dtype=torch.bool, device=keep.device))
    total = ray_ends[-1] if num_rays > 0 else keep.new_zeros((), dtype=torch.long)
    assert capacity is not None
    capacity.observe(total)
    slot = torch.cumsum(keep.long(), 0) - 1
    target = torch.where(keep & (slot < slots), slot, slots)  # the rest go to a dump slot, cut off below
    index = torch.zeros(slots + 1, dtype=torch.long, device=keep.device)
    index.scatter_(0, target, torch.arange(len(keep), device=keep.device))
    valid = torch.arange(slots, device=keep.device) < total
    return index[:slots], valid, ray_starts, ray_ends <= slots


@dataclass
class PackedSamples:
    """The samples of R rays packed into C slots, grouped by ray: nerfstudio's packed layout (``RaySamples``
    [C] with their ray indices, as ``models/instant_ngp.py`` renders them), plus which slots hold samples
    (:class:`SampleCapacity`: on a GPU some slots are padding). Teacher and student are evaluated at these
    same samples and render them with :meth:`composite`, never in a dense R×S array.

    Attributes:
        ray_samples: RaySamples [C] (frustums: origins, directions, starts and ends Float[Tensor, "C 1"]).
        ray_indices: Int[Tensor, " C"], the ray of each slot, non-decreasing (padding: the last ray).
        valid: Bool[Tensor, " C"], the slot holds a sample (padding: False; such a slot is evaluated by the
            fields and left out of every render and loss).
        ray_starts: Int[Tensor, " R"], each ray's first slot.
        complete: Bool[Tensor, " R"], every sample of the ray has a slot (False only on a GPU, after a batch
            with more samples than :class:`SampleCapacity` had slots for).
        sample_index: Int[Tensor, " C"], each slot's sample among the R·S the sampler spaced along the rays
            (ray · S + sample): the teacher cache stores it as bits.
        samples_per_ray: S.
        proposals: the proposal levels that placed the samples
            (:class:`~pvdal_ns.model_components.proposal_sampling.ProposalChain`), from a ``ProposalSampler`` only.
    """

    ray_samples: RaySamples
    ray_indices: Tensor
    valid: Tensor
    ray_starts: Tensor
    complete: Tensor
    sample_index: Tensor
    samples_per_ray: int
    proposals: Optional[Any] = None

    @classmethod
    def every(cls, dense: RaySamples) -> "PackedSamples":
        """All R·S samples of ``dense`` (RaySamples [R, S]), each a slot, in order (no count, no padding)."""
        num_rays, per_ray = dense.shape[:2]
        device = dense.frustums.starts.device
        flat = torch.arange(num_rays * per_ray, device=device)
        return cls(dense.flatten(), flat // per_ray, torch.ones_like(flat, dtype=torch.bool), flat[::per_ray],
                   torch.ones(num_rays, dtype=torch.bool, device=device), flat, per_ray)

    @classmethod
    def pack(cls, dense: RaySamples, mask: Bool[Tensor, "R S"],
             capacity: Optional[SampleCapacity] = None) -> "PackedSamples":
        """The samples of ``dense`` (RaySamples [R, S]) where ``mask`` is True, packed (:meth:`select` of
        :meth:`every` sample)."""
        return cls.every(dense).select(mask.flatten(), capacity)[0]

    @property
    def holds_every_sample(self) -> bool:
        """Every ray holds its S samples, in order, in R·S slots (a ``ProposalSampler``'s, or a mask all True on a
        CPU): the slots can be viewed as [R, S]."""
        return len(self) == self.num_rays * self.samples_per_ray

    def to(self, device: Union[str, torch.device]) -> "PackedSamples":
        """The same samples on ``device``."""
        return PackedSamples(self.ray_samples.to(device), self.ray_indices.to(device), self.valid.to(device),
                             self.ray_starts.to(device), self.complete.to(device), self.sample_index.to(device),
                             self.samples_per_ray)

    @property
    def num_rays(self) -> int:
        """R."""
        return len(self.ray_starts)

    def __len__(self) -> int:
        """C, the slots (valid or not)."""
        return len(self.valid)

    @property
    def positions(self) -> Float[Tensor, "C 3"]:
        """World positions of the slots' samples (their midpoints)."""
        return self.ray_samples.frustums.get_positions()

    @property
    def directions(self) -> Float[Tensor, "C 3"]:
        """Unit view directions of the slots' samples."""
        return self.ray_samples.frustums.directions

    def counts(self) -> Int[Tensor, " R"]:
        """The samples each ray holds."""
        return torch.zeros_like(self.ray_starts).index_add_(0, self.ray_indices, self.valid.long())

    def dense_mask(self) -> Bool[Tensor, "R S"]:
        """Which of the R·S spaced samples are held (the teacher cache's bits)."""
        mask = torch.zeros(self.num_rays * self.samples_per_ray, dtype=torch.bool, device=self.valid.device)
        mask[self.sample_index[self.valid]] = True
        return mask.view(self.num_rays, self.samples_per_ray)

    def select(self, keep: Bool[Tensor, " C"], capacity: Optional[SampleCapacity] = None
               ) -> Tuple["PackedSamples", Int[Tensor, " K"]]:
        """The slots where ``keep`` (and :attr:`valid`) is True, packed anew, and which slot each new one came
        from (to gather the outputs already computed there)."""
        index, valid, ray_starts, complete = compact(keep & self.valid, self.ray_indices, self.num_rays, capacity)
        ray_indices = torch.where(valid, self.ray_indices[index], max(self.num_rays - 1, 0))
        return PackedSamples(self.ray_samples[index], ray_indices, valid, ray_starts, complete & self.complete,
                             self.sample_index[index], self.samples_per_ray), index

    def optical_depths(self, density: Float[Tensor, "C 1"]) -> Float[Tensor, " C"]:
        """σ·Δt of every slot (float32; 0 in padding) from densities σ (1/scene units) of any floating dtype."""
        frustums = self.ray_samples.frustums
        optical = (density.float() * (frustums.ends - frustums.starts)).squeeze(-1)
        return torch.where(self.valid, optical, torch.zeros_like(optical))

    def transmittance(self, optical: Float[Tensor, " C"]) -> Float[Tensor, " C"]:
        """Each slot's transmittance before it, exp(−Σ σΔt over the ray's earlier samples), float32.

        The exclusive sum along each ray is a sum over all slots in float64 (so that subtracting the sum before
        the ray's first slot loses nothing) less that sum, gathered at :attr:`ray_starts`. Torch ops only:
        nerfacc's packed scans are compiled CUDA, which does not build with CUDA 13.
        """
        if len(optical) == 0:
            return optical
        before = torch.cumsum(optical.double(), 0) - optical.double()
        first = self.ray_starts.clamp(max=len(optical) - 1)
        return torch.exp(-(before - before[first][self.ray_indices])).float()

    def weights(self, density: Float[Tensor, "C 1"]) -> Float[Tensor, "C 1"]:
        """Volume-rendering weights T·(1 − exp(−σΔt)) (paper Eq. 1, 12) of every slot, float32, 0 in padding."""
        optical = self.optical_depths(density)
        return (self.transmittance(optical) * -torch.expm1(-optical))[:, None]

    def composite(self, points: PointOutputs, renderer_rgb: RGBRenderer,
                  background: Optional[Union[str, Float[Tensor, "R 3"]]] = None) -> Dict[str, Tensor]:
        """Volume rendering (paper Eq. 1) of point outputs given at the C slots, with nerfstudio's renderers in
        their packed form.

        Shared by students and every teacher, so both render the same samples the same way. Compositing is in
        float32 whatever dtype the points come in (float16 or bfloat16 from a field under ``torch.autocast``,
        i.e. ``--mixed-precision``), as nerfstudio's models do (a sum of densities and its exponential lose too
        much in 16 bits).

        Args:
            points: density and colour at the C slots (``rgb`` required), Float[Tensor, "C 1"] and
                Float[Tensor, "C 3"] of any floating dtype.
            renderer_rgb: nerfstudio ``RGBRenderer``; ``background`` overrides its background colour.

        Returns:
            float32 tensors: rgb Float[Tensor, "R 3"], accumulation and depth Float[Tensor, "R 1"] (depth in scene
            units), weights Float[Tensor, "C 1"] (Eq. 12 terms).

        Raises:
            AssertionError: ``points.rgb`` is None.
        """
        assert points.rgb is not None
        weights = self.weights(points.density)
        packed = {"ray_indices": self.ray_indices, "num_rays": self.num_rays}
        return {
            "rgb": renderer_rgb(points.rgb.float(), weights, background_color=background, **packed),
            "accumulation": _ACCUMULATION(weights, **packed),
            # nerfstudio's depth clips to the samples' range, which no sample leaves undefined
            "depth": _DEPTH(weights, self.ray_samples, **packed) if len(self) else weights.new_zeros(self.num_rays, 1),
            "weights": weights,
        }


_ACCUMULATION, _DEPTH = AccumulationRenderer(), DepthRenderer(method="expected")


class OccupancySampler(nn.Module):
    """The one sampler of the shared samples (docs/design.md, "One sampler, packed samples"): each ray clipped
    (:meth:`Sampling.collider`), spaced (:meth:`Sampling.sampler`: uniform in the box, or nerfacto's
    linear-then-disparity spacing when contracted), and the samples in the occupancy grid's occupied cells packed
    (:class:`PackedSamples`); :meth:`cull` then leaves out those a density hides or leaves transparent. A module
    only so that it follows its owner's ``train()`` / ``eval()`` (jitter in training); it holds no parameters.

    Args:
        sampling: where samples lie.
        grid: whose occupied cells are sampled (held, not owned: not a submodule).
        stratified: jitter the samples in training mode.
    """

    def __init__(self, sampling: Sampling, grid: OccupancyGrid, stratified: bool = True) -> None:
        super().__init__()
        self.sampling = sampling
        self.collider = sampling.collider()
        self.spaced = sampling.sampler(stratified)
        object.__setattr__(self, "grid", grid)  # the owner's grid, not a second copy in its state_dict
        self.capacity, self.culled_capacity = SampleCapacity(), SampleCapacity()

    @property
    def culls(self) -> bool:
        """Whether samples are left out by a density after the grid's (:meth:`cull`; :attr:`Sampling.culls`)."""
        return self.sampling.culls

    def forward(self, ray_bundle: RayBundle, packed: bool = True) -> PackedSamples:
        """The occupied samples of R rays (``nears``/``fars`` set here); ``packed`` False: exactly as many slots
        as samples whatever the device (renders outside a training step)."""
        dense = self.spaced(self.collider(ray_bundle))
        mask = self.grid.occupied(dense.frustums.get_positions())
        return PackedSamples.pack(dense, mask, self.capacity if packed else None)

    def cull(self, samples: PackedSamples, density: Float[Tensor, "C 1"], early_stop_eps: float,
             alpha_thre: float = 0.0, packed: bool = True) -> Tuple[PackedSamples, Int[Tensor, " K"]]:
        """``samples`` less those that add nothing to a render: hidden ones, where the transmittance has fallen
        below ``early_stop_eps``, and nearly transparent ones, whose opacity is below ``alpha_thre`` (nerfacc's
        ``render_visibility_from_density``: its early stop and alpha threshold), by ``density`` (σ, 1/scene
        units, of any floating dtype; the transmittance in float32 or better).

        Returns:
            the samples kept and the slot of ``samples`` each came from (:meth:`PackedSamples.select`).
        """
        return samples.select(visible(samples, density, early_stop_eps, alpha_thre),
                              self.culled_capacity if packed else None)


def visible(samples: PackedSamples, density: Float[Tensor, "C 1"], early_stop_eps: float,
            alpha_thre: float = 0.0) -> Bool[Tensor, " C"]:
    """Which slots add to a render (:meth:`OccupancySampler.cull`): the transmittance before them is at least
    ``early_stop_eps`` and their opacity at least ``alpha_thre``, by ``density`` (σ, 1/scene units, any floating
    dtype); padding never does."""
    optical = samples.optical_depths(density.detach())
    seen = samples.transmittance(optical) >= early_stop_eps
    return samples.valid & seen & (-torch.expm1(-optical) >= alpha_thre)
