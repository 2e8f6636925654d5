"""Dense SH voxel grid (Plenoxels, "tensors"): ϕ¹ = the grid itself (trilinear interpolation of
[raw density, SH coefficients]), ϕ² = SH evaluation + sigmoid (paper Eq. 2, Table 1). It has no
volume feature, so stage 1 and L_v do not apply (paper §3.2.1: "density, color, RGB and
regularization loss" only). L_reg: L1 sparsity on σ + total variation on randomly drawn voxels.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from nerfstudio.utils.math import components_from_spherical_harmonics
from torch import Tensor, nn

from pvdal_ns.fields.base import PVDField, PVDFieldConfig


@functools.lru_cache(maxsize=None)
def _corners(device: torch.device) -> Int[Tensor, "8 3"]:
    """The 8 corner offsets of a cell, made once per device (a copy from the host each call would stall a GPU)."""
    return torch.tensor(list(itertools.product((0, 1), repeat=3)), device=device)


@dataclass
class TensorsFieldConfig(PVDFieldConfig):
    """Sizes of the SH grid; defaults are the paper's (128³, SH degree 2 → 1 + 3·9 = 28 channels)."""

    _target: Type = field(default_factory=lambda: TensorsField)
    resolution: int = 128
    sh_degree: int = 2
    l1_weight: float = 1e-5
    """Weight of the L1 sparsity term on σ of the drawn voxels."""
    tv_weight: float = 1e-3
    """Weight of the total-variation term on the drawn voxels."""
    tv_voxels: int = 65536
    """Voxels drawn per step for the regularisers."""
    sparse_gradients: bool = True
    """The grid's gradient holds only the voxels a step touched (``SparseAdam`` then updates only those; ~10×
    faster on a CPU); False: a dense gradient, for a fused Adam over the whole grid (the presets' choice on CUDA,
    where a sparse gradient's coalescing costs more than updating every voxel)."""


def trilinear(table: Float[Tensor, "R3 C"], resolution: int, x: Float[Tensor, "*bs 3"],
              sparse: bool = True) -> Float[Tensor, "*bs C"]:
    """Trilinear interpolation of a dense R×R×R grid stored as an embedding table (row (i·R + j)·R + k),
    at normalised positions (corner-aligned, [0, 1]^3).

    The 8 corner rows are gathered with ``embedding``; with ``sparse`` its gradient holds only those rows: on a CPU
    this is ~10× faster than ``grid_sample`` on a 5-D tensor (docs/design.md, "nerfstudio 1.1.5"), and the optimiser
    (``SparseAdam``) updates only touched voxels.
    """
    p = x.reshape(-1, 3) * (resolution - 1)
    i0 = p.floor().clamp(0, resolution - 2)
    frac = p - i0
    offsets = _corners(x.device)
    corners = i0.long()[:, None, :] + offsets  # [N, 8, 3]
    idx = (corners[..., 0] * resolution + corners[..., 1]) * resolution + corners[..., 2]
    c = offsets.to(x.dtype)
    w = (frac[:, None, :] * c + (1 - frac[:, None, :]) * (1 - c)).prod(dim=-1)  # [N, 8]
    out = (F.embedding(idx, table, sparse=sparse) * w[..., None]).sum(dim=1)
    return out.view(*x.shape[:-1], table.shape[-1])


class TensorsField(PVDField):
    """SH-grid PVD field. ``phi1``: Float[Tensor, "*bs 3"] in [0, 1] → Float[Tensor, "*bs 28"]."""

    config: TensorsFieldConfig
    has_volume_feature = False

    def __init__(self, config: TensorsFieldConfig, aabb: Tensor) -> None:
        super().__init__(config, aabb)
        self.num_sh = (config.sh_degree + 1) ** 2
        r = config.resolution
        self.grid = nn.Parameter(torch.zeros(r**3, 1 + 3 * self.num_sh))
        """Float[Tensor, "R³ C"]: the voxels as embedding rows, C = 1 + 3·(degree + 1)²."""

    def voxel_positions(self) -> Float[Tensor, "R3 3"]:
        """The world position of each voxel, in the grid's row order (corner-aligned: voxel i of R at field
        coordinate i / (R − 1), through the field's space, :meth:`normalize`'s inverse); for editing the grid
        directly (docs/design.md, "Editing")."""
        r = self.config.resolution
        index = torch.arange(r, device=self.grid.device, dtype=torch.float32) / (r - 1)
        unit = torch.stack(torch.meshgrid(index, index, index, indexing="ij"), -1).reshape(-1, 3)
        return self.space.from_unit(unit)

    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs C"]:
        return trilinear(self.grid, self.config.resolution, x, self.config.sparse_gradients)

    def phi2(self, h: Float[Tensor, "*bs C"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        basis = components_from_spherical_harmonics(self.config.sh_degree + 1, directions)  # [*bs, K]
        coeffs = h[..., 1:].reshape(*h.shape[:-1], 3, self.num_sh)
        return torch.sigmoid((coeffs * basis[..., None, :]).sum(dim=-1))

    def regularization_loss(self) -> Tensor:
        r, n = self.config.resolution, self.config.tv_voxels
        ijk = torch.randint(0, r - 1, (n, 3), device=self.grid.device)
        row = (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]
        sparse = self.config.sparse_gradients
        v = F.embedding(row, self.grid, sparse=sparse)
        tv = sum(((F.embedding(row + step, self.grid, sparse=sparse) - v) ** 2).mean() for step in (r * r, r, 1))
        l1 = torch.exp(v[:, 0].clamp(max=7.0)).mean()
        return self.config.tv_weight * tv + self.config.l1_weight * l1

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """{"grids": [grid]}; with ``sparse_gradients`` its optimiser must be ``SparseAdam``."""
        return {"grids": [self.grid]}
