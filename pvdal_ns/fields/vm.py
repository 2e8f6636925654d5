"""VM-decomposed tensor field (TensoRF): ϕ¹ = vector-matrix planes/lines → [σ-feature, 15 colour
features], ϕ² = MLP decoder (paper Eq. 3, Table 1; docs/design.md, "Method", for the 16-d split). The planes are
nerfstudio's ``TensorVMEncoding``; L_reg is L1 on the density components + TV on the planes (Eq. 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import TensorVMEncoding
from nerfstudio.model_components.losses import tv_loss
from torch import Tensor, nn

from pvdal_ns.fields.base import VOLUME_FEATURE_DIM, ColourHead, PVDField, PVDFieldConfig


@dataclass
class VMFieldConfig(PVDFieldConfig):
    """Sizes of the VM field; defaults are the authors' (rank 16 density / 48 colour, grid 300)."""

    _target: Type = field(default_factory=lambda: VMField)
    resolution: int = 300
    density_rank: int = 16
    colour_rank: int = 48
    hidden_dim: int = 128
    colour_layers: int = 3
    l1_weight: float = 5e-4
    """Weight of the L1 sparsity term on the density components."""
    tv_weight: float = 1e-4
    """Weight of the total-variation term on the density and colour planes."""


class VMField(PVDField):
    """VM PVD field. ``phi1``: Float[Tensor, "*bs 3"] in [0, 1] → Float[Tensor, "*bs 16"]."""

    config: VMFieldConfig

    def __init__(self, config: VMFieldConfig, aabb: Tensor) -> None:
        super().__init__(config, aabb)
        self.density_encoding = TensorVMEncoding(config.resolution, config.density_rank, init_scale=0.1)
        self.colour_encoding = TensorVMEncoding(config.resolution, config.colour_rank, init_scale=0.1)
        self.basis = nn.Linear(self.colour_encoding.get_out_dim(), VOLUME_FEATURE_DIM - 1, bias=False)
        self.colour = ColourHead(VOLUME_FEATURE_DIM - 1, config.colour_layers, config.hidden_dim, "pe")

    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 16"]:
        x = x * 2.0 - 1.0  # grid_sample coordinates
        sigma_feature = self.density_encoding(x).sum(dim=-1, keepdim=True)
        return torch.cat([sigma_feature, self.basis(self.colour_encoding(x))], dim=-1)

    def phi2(self, h: Float[Tensor, "*bs 16"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        return self.colour(h[..., 1:], directions)

    def regularization_loss(self) -> Tensor:
        enc_d, enc_c = self.density_encoding, self.colour_encoding
        l1 = enc_d.plane_coef.abs().mean() + enc_d.line_coef.abs().mean()
        tv = tv_loss(enc_d.plane_coef) + tv_loss(enc_c.plane_coef)
        return self.config.l1_weight * l1 + self.config.tv_weight * tv

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {
            "grids": list(self.density_encoding.parameters()) + list(self.colour_encoding.parameters()),
            "networks": list(self.basis.parameters()) + list(self.colour.parameters()),
        }
