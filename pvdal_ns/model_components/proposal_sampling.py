"""Proposal sampling, the second sampler of the shared samples (docs/design.md, "Proposal sampling"): for captures
that fill the view, where an occupancy grid prunes little and every ray would evaluate its samples through the whole
room, small proposal density fields place a few dozen samples a ray where the surfaces are (nerfacto's
``ProposalNetworkSampler``, Mip-NeRF 360's proposal MLP).

:class:`ProposalSampler` gives the same :class:`~pvdal_ns.model_components.sampling.PackedSamples` as
:class:`~pvdal_ns.model_components.sampling.OccupancySampler`, with every ray holding exactly S samples (no padding,
no count: nothing on a GPU waits), and the chain of proposal samples that made them (:class:`ProposalChain`), for
nerfstudio's ``interlevel_loss``. The proposal fields are trained by that loss, as nerfacto trains them: against the
model's own weights when it trains from images, against the teacher's weights at the shared samples when it distils
(:func:`interlevel_loss_against`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.model_components.losses import interlevel_loss
from nerfstudio.model_components.ray_samplers import (
    ProposalNetworkSampler,
    SpacedSampler,
    UniformLinDispPiecewiseSampler,
    UniformSampler,
)
from nerfstudio.model_components.scene_colliders import SceneCollider
from torch import Tensor, nn

from pvdal_ns.model_components.sampling import OccupancySampler, PackedSamples, ProposalSampling

DensityFn = Callable[[Tensor], Tensor]


@dataclass
class ProposalChain:
    """The proposal levels that placed a batch's samples: each level's RaySamples [R, S_i] (no gradient: the
    positions are detached by nerfstudio's ``PDFSampler``) and its weights [R, S_i, 1] (with gradients to the proposal
    fields where nerfstudio's update schedule says, else without)."""

    ray_samples: List[RaySamples]
    weights: List[Tensor]


class ProposalSampler(nn.Module):
    """The second sampler of the shared samples: each ray clipped by ``collider``, then nerfstudio's
    ``ProposalNetworkSampler`` with ``density_fns`` (one per level). Its :class:`PackedSamples` hold every ray's S
    samples in order (R·S slots, all valid, every ray complete) and carry their :class:`ProposalChain`
    (:attr:`PackedSamples.proposals`). Holds no parameters: the fields are its owner's (a model's
    ``proposal_networks``, or a nerfacto teacher's).

    Args:
        collider: sets each ray's near and far (the model's, or the teacher's own).
        settings: sample counts, schedules and jitter.
        density_fns: one per proposal level: world positions [..., 3] → σ [..., 1].
        contracted: the initial samples are nerfacto's linear-then-disparity ones (unbounded scenes); False: uniform.
        source: a twin's original (:meth:`twin`): the annealing is read from it.
    """

    culls = False
    """Samples are never left out after proposal sampling: every ray keeps S (:class:`OccupancySampler` may cull)."""

    def __init__(self, collider: SceneCollider, settings: ProposalSampling, density_fns: Sequence[DensityFn],
                 contracted: bool = True, source: Optional["ProposalSampler"] = None) -> None:
        super().__init__()
        self.collider, self.settings, self.contracted = collider, settings, contracted
        self.density_fns = list(density_fns)
        jitter = settings.single_jitter
        initial: SpacedSampler = (UniformLinDispPiecewiseSampler(single_jitter=jitter) if contracted
                                  else UniformSampler(single_jitter=jitter))
        self.proposal = ProposalNetworkSampler(
            num_proposal_samples_per_ray=tuple(settings.num_proposal_samples_per_ray),
            num_nerf_samples_per_ray=settings.num_samples,
            num_proposal_network_iterations=len(settings.num_proposal_samples_per_ray),
            single_jitter=jitter, update_sched=settings.update_schedule, initial_sampler=initial)
        """nerfstudio's proposal sampler (its update schedule and annealing are per instance)."""
        self._source = [source] if source is not None else []  # a list: not a submodule
        self.anneal = 1.0

    def set_anneal(self, anneal: float) -> None:
        """The exponent of the proposal weights before each PDF sampling (a training callback sets it)."""
        self.anneal = anneal
        self.proposal.set_anneal(anneal)

    def step_cb(self, step: int) -> None:
        """After a training step: nerfstudio's update schedule counts it."""
        self.proposal.step_cb(step)

    def twin(self) -> "ProposalSampler":
        """A sampler of the same fields with its own update schedule, annealed as this one: what a teacher without
        proposal fields of its own samples the shared samples with (the student's fields, under ``no_grad``), so that
        the student's own sampling keeps its schedule."""
        return ProposalSampler(self.collider, self.settings, self.density_fns, self.contracted, source=self)

    def forward(self, ray_bundle: RayBundle, packed: bool = True) -> PackedSamples:
        """The S samples of each of R rays (``nears``/``fars`` set here), packed, with their :class:`ProposalChain`.
        ``packed`` is accepted for the samplers' common call and changes nothing: the slots are always R·S."""
        if self._source:
            self.proposal.set_anneal(self._source[0].anneal)
        bundle = self.collider(ray_bundle)
        final, weights, levels = self.proposal(bundle, density_fns=self.density_fns)
        samples = PackedSamples.every(final)
        samples.proposals = ProposalChain(levels, weights)
        return samples

    def spacing(self, samples: PackedSamples, ray_bundle: RayBundle) -> Float[Tensor, "R S1"]:
        """The edges of each ray's S contiguous samples in this sampler's normalised spacing (nerfstudio's
        ``ray_samples_to_sdist``), from their distances along the ray: samples of another sampler (a teacher's own
        proposals, a teacher cache) are compared with this one's proposal levels in one space. ``ray_bundle``: the rays,
        their near and far set (:meth:`forward` sets them)."""
        frustums = samples.ray_samples.frustums
        num_rays = samples.num_rays
        starts = frustums.starts.view(num_rays, -1)
        edges = torch.cat([starts, frustums.ends.view(num_rays, -1)[:, -1:]], dim=-1)
        initial: SpacedSampler = self.proposal.initial_sampler  # type: ignore[assignment]
        fn = initial.spacing_fn
        assert fn is not None and ray_bundle.nears is not None and ray_bundle.fars is not None
        s_near, s_far = fn(ray_bundle.nears), fn(ray_bundle.fars)
        return (fn(edges.clamp(ray_bundle.nears, ray_bundle.fars)) - s_near) / (s_far - s_near)


Sampler = Union[OccupancySampler, ProposalSampler]
"""The two samplers of the shared samples."""


def interlevel_loss_against(chain: ProposalChain, target: PackedSamples, weights: Float[Tensor, "C 1"],
                            sdist: Float[Tensor, "R S1"]) -> Tensor:
    """nerfstudio's ``interlevel_loss`` (Mip-NeRF 360) of a proposal ``chain`` against ``weights`` at the S samples of
    each of ``target``'s rays (its R·S slots, all valid), whose edges in the chain's spacing are ``sdist``: the
    student's proposal fields against the teacher's weights at the shared samples, or a model's against its own.

    Raises:
        ValueError: ``target`` does not hold S samples on every ray (occupancy-sampled samples)."""
    num_rays = target.num_rays
    if not target.holds_every_sample:
        raise ValueError(f"interlevel loss needs {target.samples_per_ray} samples on each of {num_rays} rays, "
                         f"the batch has {len(target)} slots: proposal-sampled samples only")
    ends = sdist[:, 1:, None]
    last = RaySamples(frustums=_no_frustums(ends), spacing_starts=sdist[:, :-1, None], spacing_ends=ends)
    return interlevel_loss(chain.weights + [weights.view(num_rays, -1, 1)], chain.ray_samples + [last])


def _no_frustums(like: Tensor) -> Frustums:
    """Placeholder frustums of the shape of ``like`` [R, S, 1]: ``interlevel_loss`` reads only the spacing."""
    zeros = like.new_zeros(*like.shape[:-1], 3)
    return Frustums(origins=zeros, directions=zeros, starts=like, ends=like, pixel_area=like)


def build_proposal_networks(settings: ProposalSampling, space) -> nn.ModuleList:
    """One proposal density field per level (:class:`~pvdal_ns.fields.proposal.ProposalFieldConfig`) in ``space``."""
    return nn.ModuleList([config.setup(space) for config in settings.field_configs()])
