"""Proposal density fields: the small density-only fields whose weights place a ray's samples where its surfaces are
(nerfacto's proposal networks, Mip-NeRF 360's proposal MLP; docs/design.md, "Proposal sampling").

Two kinds, one :class:`ProposalFieldConfig`:

- ``hash``: nerfstudio's ``HashMLPDensityField`` (what nerfacto uses), tiny-cuda-nn's hash grid where it is importable,
  nerfstudio's torch one otherwise; the kind of the paper-sized presets, run on a GPU.
- ``grid``: :class:`GridDensityField`, a dense grid of log densities read trilinearly. On two CPU cores nerfstudio's
  torch hash grid costs about 300 ms forward and backward at 2048 rays × 64 samples, a 64³ dense grid 12 ms
  (docs/benchmarks.md, "Captures that fill the view"): the kind of the CPU-sized presets.

Both take positions in the field coordinates of the model's :class:`~pvdal_ns.field_components.scene_space.SceneSpace`
(contracted or the box), and give σ = ``trunc_exp(raw)`` (1/scene units), 0 outside the unit cube.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.fields.base_field import Field
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor, nn

from pvdal_ns.field_components.scene_space import LInfSceneContraction, SceneSpace, SpaceBuffers


@dataclass
class ProposalFieldConfig:
    """One proposal density field.

    Attributes:
        kind: "hash" (nerfstudio's ``HashMLPDensityField``, nerfacto's) or "grid" (:class:`GridDensityField`).
        resolution: the finest hash level's resolution, or the grid's cells per axis.
        num_levels: hash levels (hash only).
        log2_hashmap_size: log2 of each hash table's entries (hash only).
        hidden_dim: width of the hash field's density MLP (hash only).
    """

    kind: Literal["hash", "grid"] = "hash"
    resolution: int = 128
    num_levels: int = 5
    log2_hashmap_size: int = 17
    hidden_dim: int = 16

    def setup(self, space: SceneSpace) -> Field:
        """The field in ``space`` (its box, contracted or not)."""
        if self.kind == "grid":
            return GridDensityField(space, self.resolution)
        return HashMLPDensityField(
            space.aabb, spatial_distortion=LInfSceneContraction() if space.contracted else None,
            hidden_dim=self.hidden_dim, log2_hashmap_size=self.log2_hashmap_size, num_levels=self.num_levels,
            max_res=self.resolution, use_linear=False, implementation="tcnn" if TCNN_EXISTS else "torch")


NERFACTO_PROPOSAL_FIELDS: Tuple[ProposalFieldConfig, ...] = (ProposalFieldConfig("hash", 128),
                                                              ProposalFieldConfig("hash", 256))
"""nerfacto's two proposal networks (``NerfactoModelConfig.proposal_net_args_list``)."""


class GridDensityField(SpaceBuffers, Field):
    """A dense grid of raw (log) densities over the unit cube of field coordinates, read trilinearly; σ =
    ``trunc_exp(raw)`` (nerfstudio's activation of its density fields), 0 outside the cube. Starts at σ = 1
    everywhere, as nerfacto's proposal fields (``average_init_density``).

    Args:
        space: the scene box and whether space is contracted (buffers ``aabb`` and ``contracted``).
        resolution: cells per axis.
    """

    def __init__(self, space: SceneSpace, resolution: int) -> None:
        super().__init__()
        self.register_space("aabb", space.aabb, space.contracted)
        self.raw_density = nn.Parameter(torch.zeros(1, 1, resolution, resolution, resolution))

    def density_at(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """σ (1/scene units) at world positions."""
        unit = self.space.to_unit(positions)
        inside = ((unit > 0.0) & (unit < 1.0)).all(dim=-1, keepdim=True)
        grid = (unit.reshape(1, -1, 1, 1, 3) * 2.0 - 1.0).to(self.raw_density)
        raw = nn.functional.grid_sample(self.raw_density, grid, align_corners=True).reshape(*unit.shape[:-1], 1)
        return torch.where(inside, trunc_exp(raw), torch.zeros_like(raw))

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Optional[Tensor]]:
        """nerfstudio's ``Field.get_density``: σ at the samples' positions, no embedding."""
        return self.density_at(ray_samples.frustums.get_positions()), None

    def density_fn(self, positions: Float[Tensor, "*bs 3"], times: Optional[Tensor] = None) -> Float[Tensor, "*bs 1"]:
        """nerfstudio's ``Field.density_fn`` (what ``ProposalNetworkSampler`` calls), without its RaySamples."""
        return self.density_at(positions)

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> dict:
        """A density field has no other outputs (nerfstudio's ``HashMLPDensityField`` gives none either)."""
        return {}
