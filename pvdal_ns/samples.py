"""The shared sample points of teacher and student (docs/design.md, "Method"): where they lie and how they
are rendered.

nerfstudio's ``UniformSampler`` places ``S`` samples on every ray's segment inside the scene box, and the
samples in empty cells of the occupancy grid are masked out, so fields are evaluated only where the grid is
occupied (a batched torch stand-in for nerfacc's packed ray marching, which needs CUDA). The same
``(RaySamples, mask)`` pair is what the teacher is queried at and the student is trained at; both are
rendered by :func:`composite` with nerfstudio's renderers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from jaxtyping import Bool, Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from torch import Tensor

from pvdal_ns.fields import PointOutputs
from pvdal_ns.occupancy import OccupancyGrid


@dataclass
class Sampling:
    """Where the shared sample points lie: the student's scene box, occupancy-grid resolution and threshold,
    and uniform samples per ray (``PVDModelConfig.sampling`` builds it from the fields of the same names).
    Teachers without a grid of their own build theirs with it.

    Attributes:
        scene_box: nerfstudio ``SceneBox``; rays are clipped to it, the grid covers it.
        grid_resolution: cells per axis of the occupancy grid.
        num_samples: uniform samples per ray before masking.
        grid_threshold: occupancy threshold on σ·Δt.
    """

    scene_box: SceneBox
    grid_resolution: int = 128
    num_samples: int = 192
    grid_threshold: float = 0.01

    @property
    def step_size(self) -> float:
        """Distance between uniform samples (scene units): the box diagonal over ``num_samples``."""
        aabb = self.scene_box.aabb
        return float((aabb[1] - aabb[0]).norm() / self.num_samples)


def sample_occupied(
    ray_bundle: RayBundle, sampler: UniformSampler, grid: OccupancyGrid
) -> Tuple[RaySamples, Bool[Tensor, "R S"]]:
    """Uniform samples on each ray's [near, far] segment, masked by the occupancy grid.

    Args:
        ray_bundle: R rays with ``nears``/``fars`` set (nerfstudio ``AABBBoxCollider``).
        sampler: nerfstudio's ``UniformSampler``; it jitters the samples when in training mode.
        grid: the occupancy grid whose cells decide which samples are evaluated.

    Returns:
        RaySamples of shape [R, S] and the Bool[Tensor, "R S"] mask of samples in occupied cells.
    """
    ray_samples = sampler(ray_bundle)
    mask = grid.occupied(ray_samples.frustums.get_positions())
    return ray_samples, mask


_ACCUMULATION, _DEPTH = AccumulationRenderer(), DepthRenderer(method="expected")


def composite(
    ray_samples: RaySamples,
    mask: Bool[Tensor, "R S"],
    points: PointOutputs,
    renderer_rgb: RGBRenderer,
    background: Optional[Union[str, Float[Tensor, "R 3"]]] = None,
) -> Dict[str, Tensor]:
    """Volume rendering (paper Eq. 1) of point outputs given at the masked samples, with nerfstudio's renderers.

    Shared by students and every teacher, so both render the same samples the same way.

    Args:
        ray_samples: RaySamples [R, S]; mask: which of them ``points`` holds (M = mask.sum()).
        points: density and colour at the M samples (``rgb`` required).
        renderer_rgb: nerfstudio ``RGBRenderer``; ``background`` overrides its background colour.

    Returns:
        rgb Float[Tensor, "R 3"], accumulation and depth Float[Tensor, "R 1"] (depth in scene units),
        weights Float[Tensor, "R S 1"] (Eq. 12 terms).
    """
    density = torch.zeros((*mask.shape, 1), device=mask.device, dtype=points.raw_density.dtype)
    density[mask] = points.density
    weights = ray_samples.get_weights(density)
    rgb_samples = torch.zeros((*mask.shape, 3), device=mask.device, dtype=density.dtype)
    assert points.rgb is not None
    rgb_samples[mask] = points.rgb.to(density.dtype)
    return {
        "rgb": renderer_rgb(rgb_samples, weights, background_color=background),
        "accumulation": _ACCUMULATION(weights),
        "depth": _DEPTH(weights, ray_samples),
        "weights": weights,
    }
