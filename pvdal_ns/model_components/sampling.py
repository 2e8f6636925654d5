"""The shared sample points of teacher and student (docs/design.md, "Method" and "Scenes"): where they lie
and how they are rendered.

A bounded scene: nerfstudio's ``UniformSampler`` places ``S`` samples on every ray's segment inside the scene
box. An unbounded one (contracted, :mod:`pvdal_ns.field_components.scene_space`): nerfstudio's
``UniformLinDispPiecewiseSampler`` (nerfacto's initial sampler) places half of them in the first world unit and half
linearly in disparity out to the far plane. The samples in empty cells of the occupancy grid are masked out, and, where
the sampling says so, so are the samples behind an opaque surface (transmittance below ``early_stop_eps``; on by default
in contracted scenes) and the nearly transparent ones (opacity below ``alpha_thre``; off by default), with
nerfacc's ``render_visibility_from_density``: fields are evaluated only where they add to the image (a
batched torch stand-in for nerfacc's packed ray marching, which needs CUDA). The same ``(RaySamples, mask)`` pair is
what the teacher is queried at and the student is trained at; both are rendered by :func:`composite` with
nerfstudio's renderers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from jaxtyping import Bool, Float
from nerfacc import render_visibility_from_density
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import SpacedSampler, UniformLinDispPiecewiseSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider, NearFarCollider, SceneCollider
from torch import Tensor

from pvdal_ns.field_components.scene_space import SceneSpace
from pvdal_ns.fields import PointOutputs
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
    """

    scene_box: SceneBox
    grid_resolution: int = 128
    num_samples: int = 192
    grid_threshold: float = 0.01
    contracted: bool = False
    early_stop_eps: float = 0.0
    alpha_thre: float = 0.0

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


def sample_occupied(
    ray_bundle: RayBundle, sampler: SpacedSampler, grid: OccupancyGrid
) -> Tuple[RaySamples, Bool[Tensor, "R S"]]:
    """Samples on each ray's [near, far] segment, masked by the occupancy grid.

    Args:
        ray_bundle: R rays with ``nears``/``fars`` set (:meth:`Sampling.collider`).
        sampler: :meth:`Sampling.sampler`; it jitters the samples when in training mode.
        grid: the occupancy grid whose cells decide which samples are evaluated.

    Returns:
        RaySamples of shape [R, S] and the Bool[Tensor, "R S"] mask of samples in occupied cells.
    """
    ray_samples = sampler(ray_bundle)
    mask = grid.occupied(ray_samples.frustums.get_positions())
    return ray_samples, mask


def visible(ray_samples: RaySamples, mask: Bool[Tensor, "R S"], density: Float[Tensor, "M 1"],
            early_stop_eps: float, alpha_thre: float = 0.0) -> Bool[Tensor, "R S"]:
    """``mask`` less the samples that add nothing to a render: hidden ones, where the transmittance has fallen
    below ``early_stop_eps``, and nearly transparent ones, whose opacity is below ``alpha_thre`` (nerfacc's
    ``render_visibility_from_density``, batched: its early stop and alpha threshold).

    Args:
        ray_samples: RaySamples [R, S]; mask: the M samples ``density`` (σ, 1/scene units) is given at.
        density: Float[Tensor, "M 1"] of any floating dtype (16 bits under mixed precision); the transmittance is
            computed in float32.

    Returns:
        Bool[Tensor, "R S"], a subset of ``mask``.
    """
    sigmas = torch.zeros(mask.shape, device=mask.device, dtype=torch.float32)
    sigmas[mask] = density.detach().squeeze(-1).float()
    frustums = ray_samples.frustums
    seen = render_visibility_from_density(frustums.starts.squeeze(-1), frustums.ends.squeeze(-1), sigmas,
                                          early_stop_eps=early_stop_eps, alpha_thre=alpha_thre)
    return mask & seen


_ACCUMULATION, _DEPTH = AccumulationRenderer(), DepthRenderer(method="expected")


def composite(
    ray_samples: RaySamples,
    mask: Bool[Tensor, "R S"],
    points: PointOutputs,
    renderer_rgb: RGBRenderer,
    background: Optional[Union[str, Float[Tensor, "R 3"]]] = None,
) -> Dict[str, Tensor]:
    """Volume rendering (paper Eq. 1) of point outputs given at the masked samples, with nerfstudio's renderers.

    Shared by students and every teacher, so both render the same samples the same way. The compositing is done
    in float32 whatever dtype the points come in (float16 or bfloat16 from a field under ``torch.autocast``, i.e.
    ``--mixed-precision``): their values are cast when scattered into the dense [R, S] arrays, and
    ``RaySamples.get_weights`` and the renderers then work in float32, as in nerfstudio's models (a cumulative sum
    of densities and its exponential lose too much in 16 bits).

    Args:
        ray_samples: RaySamples [R, S]; mask: which of them ``points`` holds (M = mask.sum()).
        points: density and colour at the M samples (``rgb`` required), Float[Tensor, "M 1"] and
            Float[Tensor, "M 3"] of any floating dtype.
        renderer_rgb: nerfstudio ``RGBRenderer``; ``background`` overrides its background colour.

    Returns:
        float32 tensors: rgb Float[Tensor, "R 3"], accumulation and depth Float[Tensor, "R 1"] (depth in scene
        units), weights Float[Tensor, "R S 1"] (Eq. 12 terms).

    Raises:
        AssertionError: ``points.rgb`` is None.
    """
    assert points.rgb is not None
    density = torch.zeros((*mask.shape, 1), device=mask.device, dtype=torch.float32)
    density[mask] = points.density.float()
    weights = ray_samples.get_weights(density)
    rgb_samples = torch.zeros((*mask.shape, 3), device=mask.device, dtype=torch.float32)
    rgb_samples[mask] = points.rgb.float()
    return {
        "rgb": renderer_rgb(rgb_samples, weights, background_color=background),
        "accumulation": _ACCUMULATION(weights),
        "depth": _DEPTH(weights, ray_samples),
        "weights": weights,
    }
