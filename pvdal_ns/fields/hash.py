"""Hash-grid field (Instant-NGP): ϕ¹ = multiresolution hash tables + small density MLP → 16-d volume
feature, ϕ² = colour MLP (paper Table 1, §4.1; nerfstudio ``NerfactoField`` layout).

Uses tiny-cuda-nn when it is importable (``nerfstudio.utils.external.TCNN_EXISTS``), torch otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.mlp import MLP
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor, nn

from pvdal_ns.fields.base import VOLUME_FEATURE_DIM, ColourHead, PVDField, PVDFieldConfig


@dataclass
class HashFieldConfig(PVDFieldConfig):
    """Sizes of the hash field; defaults are the paper's (§4.1: 14 levels × 2 features, 2^19 table,
    resolution 16 → 2048 × scene scope; the authors' code uses 16 levels)."""

    _target: Type = field(default_factory=lambda: HashField)
    num_levels: int = 14
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    min_res: int = 16
    max_res: int = 2048
    hidden_dim: int = 64
    """Width of the density MLP and the colour MLP."""
    colour_layers: int = 3


class HashField(PVDField):
    """Hash-grid PVD field. ``phi1``: Float[Tensor, "*bs 3"] in [0, 1] → Float[Tensor, "*bs 16"]."""

    config: HashFieldConfig

    def __init__(self, config: HashFieldConfig, aabb: Tensor) -> None:
        super().__init__(config, aabb)
        self.encoding = HashEncoding(
            num_levels=config.num_levels,
            min_res=config.min_res,
            max_res=config.max_res,
            log2_hashmap_size=config.log2_hashmap_size,
            features_per_level=config.features_per_level,
            implementation="tcnn" if TCNN_EXISTS else "torch",
        )
        self.density_mlp = MLP(
            in_dim=self.encoding.get_out_dim(),
            num_layers=2,
            layer_width=config.hidden_dim,
            out_dim=VOLUME_FEATURE_DIM,
            activation=nn.ReLU(),
        )
        self.colour = ColourHead(VOLUME_FEATURE_DIM - 1, config.colour_layers, config.hidden_dim, "sh")

    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 16"]:
        return self.density_mlp(self.encoding(x)).float()

    def phi2(self, h: Float[Tensor, "*bs 16"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        return self.colour(h[..., 1:], directions).float()

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {
            "grids": list(self.encoding.parameters()),
            "networks": list(self.density_mlp.parameters()) + list(self.colour.parameters()),
        }
