"""Plain MLP field (NeRF): ϕ¹ = positional encoding + the first K layers → 16-d volume feature, ϕ² = the
remaining layers with the encoded view direction (paper Table 1, K = 4; Table 4 for other K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

from jaxtyping import Float
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from pvdal_ns.fields.base import VOLUME_FEATURE_DIM, ColourHead, PVDField, PVDFieldConfig


@dataclass
class MLPFieldConfig(PVDFieldConfig):
    """Sizes of the MLP field; defaults are NeRF's (8 × 256, 10 position frequencies), split at K = 4."""

    _target: Type = field(default_factory=lambda: MLPField)
    num_layers: int = 8
    split_layer: int = 4
    """K: hidden layers in ϕ¹; the other ``num_layers - K`` belong to ϕ²."""
    width: int = 256
    num_frequencies: int = 10


class MLPField(PVDField):
    """MLP PVD field. ``phi1``: Float[Tensor, "*bs 3"] in [0, 1] → Float[Tensor, "*bs 16"]."""

    config: MLPFieldConfig

    def __init__(self, config: MLPFieldConfig, aabb: Tensor) -> None:
        super().__init__(config, aabb)
        if not 1 <= config.split_layer < config.num_layers:
            raise ValueError(f"split_layer must be in [1, {config.num_layers - 1}], got {config.split_layer}")
        n = config.num_frequencies
        self.position_encoding = NeRFEncoding(3, n, 0.0, n - 1.0, include_input=True)
        self.trunk = MLP(
            in_dim=self.position_encoding.get_out_dim(),
            num_layers=config.split_layer + 1,
            layer_width=config.width,
            out_dim=VOLUME_FEATURE_DIM,
            activation=nn.ReLU(),
        )
        self.colour = ColourHead(VOLUME_FEATURE_DIM - 1, config.num_layers - config.split_layer, config.width, "pe")

    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 16"]:
        return self.trunk(self.position_encoding(x * 2.0 - 1.0))

    def phi2(self, h: Float[Tensor, "*bs 16"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        return self.colour(h[..., 1:], directions)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"networks": list(self.parameters())}
