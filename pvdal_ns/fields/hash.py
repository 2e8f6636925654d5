"""Hash-grid field (Instant-NGP): ϕ¹ = multiresolution hash tables + small density MLP → 16-d volume
feature, ϕ² = colour MLP (paper Table 1, §4.1; nerfstudio ``NerfactoField`` layout).

The hash grid is tiny-cuda-nn's (``implementation="tcnn"``) or nerfstudio's torch one (``"torch"``); a new run takes
tiny-cuda-nn where it is importable (``nerfstudio.utils.external.TCNN_EXISTS``), torch otherwise, and its config.yml
records which. The two store different tensors, so a checkpoint loads only into the implementation that wrote it
(:func:`hash_layout`, :func:`layout_mismatch`):

* torch: ``encoding.hash_table``, Float[Tensor, "num_levels·2^log2_hashmap_size features_per_level"]; level ``l``
  samples a grid of ``floor(min_res·b^l)`` cells per unit at ``x·floor(min_res·b^l)`` and always hashes
  (nerfstudio ``HashEncoding.pytorch_fwd``);
* tcnn: ``encoding.tcnn_encoding.params``, one flat vector; level ``l`` samples at ``x·(min_res·b^l − 1) + 0.5``,
  indexes its vertices densely (no hash) while the level's grid fits its table, and its table holds
  ``min(next_multiple(res³, 8), 2^log2_hashmap_size)`` entries (tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h``,
  ``GridEncodingTemplated`` and ``kernel_grid``).

No conversion between them is offered: besides the table layout, the two sample their levels at different grid
positions, so no rearrangement of tcnn's tables makes the torch encoding compute the same feature (and there is
neither tinycudann nor a GPU here to test one). A run of one layout is refused, in one line naming the layout, where
it cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Type

from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.mlp import MLP
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor, nn

from pvdal_ns.fields.base import VOLUME_FEATURE_DIM, ColourHead, PVDField, PVDFieldConfig

HashImplementation = Literal["tcnn", "torch"]

DEFAULT_IMPLEMENTATION: HashImplementation = "tcnn" if TCNN_EXISTS else "torch"
"""The hash grid a new run uses (and records in its config.yml): tiny-cuda-nn where it is importable, else torch."""

LAYOUT_KEYS: Dict[HashImplementation, str] = {"tcnn": "encoding.tcnn_encoding.params", "torch": "encoding.hash_table"}
"""The hash field's state-dict key (below the field's prefix) that each implementation writes."""

LAYOUT_NAMES: Dict[HashImplementation, str] = {"tcnn": "tiny-cuda-nn's", "torch": "nerfstudio's torch"}


def hash_layout(state: Mapping[str, Any], prefix: str = "") -> Optional[HashImplementation]:
    """Which implementation wrote a hash field's state: "tcnn", "torch", or None where ``state`` holds no hash grid
    under ``prefix`` (e.g. ``"field."`` in a model's state dict; a warm start's partial state)."""
    for implementation, key in LAYOUT_KEYS.items():
        if prefix + key in state:
            return implementation
    return None


def layout_mismatch(found: HashImplementation, built: HashImplementation) -> Optional[str]:
    """The one-line refusal for a checkpoint whose hash grid is ``found``'s layout loaded into a field built as
    ``built`` (None where they agree); says what to do."""
    if found == built:
        return None
    if found == "tcnn" and not TCNN_EXISTS:
        return ("this pvdal-hash run's hash grid is tiny-cuda-nn's layout and tinycudann is not importable here: "
                "install tinycudann, or distil or evaluate it on a machine that has it")
    return (f"this pvdal-hash run's hash grid is {LAYOUT_NAMES[found]} layout but its config.yml builds "
            f"{LAYOUT_NAMES[built]} (a config.yml written before the field recorded its implementation): "
            f"set `implementation: {found}` under the field in config.yml")


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
    implementation: HashImplementation = field(default=DEFAULT_IMPLEMENTATION, metadata={"when_missing": "torch"})
    """The hash grid: "tcnn" (tiny-cuda-nn, fp16, CUDA only) or "torch" (nerfstudio's); default: tcnn where
    tinycudann is importable. Their checkpoints differ (module docstring). A config.yml written before this was
    recorded reads as torch (``checkpoints.fill_missing_defaults``)."""


class HashField(PVDField):
    """Hash-grid PVD field. ``phi1``: Float[Tensor, "*bs 3"] in [0, 1] → Float[Tensor, "*bs 16"].

    Raises:
        RuntimeError: (construction) ``implementation`` is "tcnn" and tinycudann is not importable (nerfstudio would
            fall back to torch silently, writing checkpoints its config.yml does not describe); (``load_state_dict``)
            the state's hash grid is the other implementation's layout (:func:`layout_mismatch`).
    """

    config: HashFieldConfig

    def __init__(self, config: HashFieldConfig, aabb: Tensor) -> None:
        super().__init__(config, aabb)
        if config.implementation == "tcnn" and not TCNN_EXISTS:
            raise RuntimeError("this pvdal-hash field is configured with tiny-cuda-nn's hash grid (implementation: "
                               "tcnn) and tinycudann is not importable here: install tinycudann, use a machine that "
                               "has it, or (a new run) pass --pipeline.model.field.implementation torch")
        self.encoding = HashEncoding(
            num_levels=config.num_levels,
            min_res=config.min_res,
            max_res=config.max_res,
            log2_hashmap_size=config.log2_hashmap_size,
            features_per_level=config.features_per_level,
            implementation=config.implementation,
        )
        self.density_mlp = MLP(
            in_dim=self.encoding.get_out_dim(),
            num_layers=2,
            layer_width=config.hidden_dim,
            out_dim=VOLUME_FEATURE_DIM,
            activation=nn.ReLU(),
        )
        self.colour = ColourHead(VOLUME_FEATURE_DIM - 1, config.colour_layers, config.hidden_dim, "sh")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Refuse a hash grid of the other implementation in one line (torch's own message would list the missing
        and unexpected keys after "Error(s) in loading state_dict")."""
        found = hash_layout(state_dict, prefix)
        message = None if found is None else layout_mismatch(found, self.config.implementation)
        if message is not None:
            raise RuntimeError(message)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 16"]:
        # tiny-cuda-nn's encoding returns fp16; the density MLP is an fp32 torch MLP
        return self.density_mlp(self.encoding(x).float()).float()

    def phi2(self, h: Float[Tensor, "*bs 16"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        return self.colour(h[..., 1:], directions).float()

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {
            "grids": list(self.encoding.parameters()),
            "networks": list(self.density_mlp.parameters()) + list(self.colour.parameters()),
        }
