"""The shared PVD field interface: every architecture is ϕ = ϕ² ∘ ϕ¹ (paper Eq. 5, Table 1).

``phi1`` maps a normalised position to ``h = [raw density, features]``; ``phi2`` maps the features and a
view direction to colour. The 16-d ``h`` of hash, VM and MLP is the *volume feature* aligned by the
volume-aligned loss (Eq. 6); the dense SH grid ("tensors", Plenoxels) has none, its ϕ² is the SH
evaluation. Density is always ``trunc_exp(raw)`` so that raw (log-space) densities can be clipped and
compared across architectures (Eq. 8). Layout follows nerfstudio's ``NerfactoField``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import NeRFEncoding, SHEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

from pvdal_ns.field_components.scene_space import SpaceBuffers

VOLUME_FEATURE_DIM = 16
"""Width of the aligned ϕ¹ output: 1 raw density + 15 geometry features (docs/design.md, "Method")."""


@dataclass
class PointOutputs:
    """What a field (student or teacher) says about a set of sample points.

    Attributes:
        raw_density: Float[Tensor, "*bs 1"], log-space density; σ = exp(raw_density) (1/scene units).
        rgb: Float[Tensor, "*bs 3"] colour in [0, 1] after the sigmoid, or None when ϕ² was not run.
        phi1: Float[Tensor, "*bs 16"] volume feature, or None for fields without one.
    """

    raw_density: Tensor
    rgb: Optional[Tensor] = None
    phi1: Optional[Tensor] = None

    @property
    def density(self) -> Tensor:
        """Float32[Tensor, "*bs 1"]: σ = trunc_exp(raw density), in 1/scene units; computed in float32 whatever
        the raw density's dtype (exp overflows float16 above a raw density of 11)."""
        return trunc_exp(self.raw_density.float())

    def select(self, keep: Tensor) -> "PointOutputs":
        """The outputs at the points where ``keep`` (Bool[Tensor, " M"]) is True."""
        pick = lambda t: None if t is None else t[keep]  # noqa: E731
        return PointOutputs(raw_density=self.raw_density[keep], rgb=pick(self.rgb), phi1=pick(self.phi1))


@dataclass
class PVDFieldConfig(InstantiateConfig):
    """Base configuration of a PVD field; subclasses set ``_target`` and their sizes."""

    _target: Type = field(default_factory=lambda: PVDField)
    density_bias: float = -2.0
    """Added to the raw density: the volume starts nearly transparent (σ ≈ 0.14), so occupancy
    grids prune empty space within the first hundred steps instead of rendering it densely."""


class ColourHead(nn.Module):
    """ϕ² shared by hash, VM and MLP: features + encoded view direction → sigmoid colour.

    Args:
        in_dim: width of the geometry features (15 for a 16-d volume feature).
        num_layers: linear layers of the MLP (nerfstudio ``MLP`` convention, ≥ 1).
        width: hidden width.
        direction_encoding: "sh" (spherical harmonics, 4 levels, as instant-ngp) or "pe"
            (NeRF positional encoding, 4 frequencies, as NeRF).
    """

    def __init__(self, in_dim: int, num_layers: int, width: int, direction_encoding: str = "sh") -> None:
        super().__init__()
        if direction_encoding == "sh":
            self.direction_encoding: nn.Module = SHEncoding(levels=4, implementation="torch")
        elif direction_encoding == "pe":
            self.direction_encoding = NeRFEncoding(3, 4, 0.0, 3.0, include_input=True)
        else:
            raise ValueError(f"direction_encoding must be 'sh' or 'pe', got {direction_encoding!r}")
        self.mlp = MLP(
            in_dim=in_dim + self.direction_encoding.get_out_dim(),
            num_layers=num_layers,
            layer_width=width,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
        )

    def forward(self, features: Float[Tensor, "*bs F"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Colour in [0, 1] from features and unit view directions."""
        return self.mlp(torch.cat([features, self.direction_encoding(directions)], dim=-1))


class PVDField(SpaceBuffers, Field):
    """A radiance field split as ϕ² ∘ ϕ¹ (paper Eq. 5).

    Subclasses implement :meth:`phi1` and :meth:`phi2` and say whether ϕ¹ is a volume feature.

    Args:
        config: the field's configuration.
        aabb: Float[Tensor, "2 3"] scene box (world units); positions are mapped to field coordinates in
            [0, 1]^3 with it (:meth:`normalize`).

    Attributes:
        contracted: Bool[Tensor, ""] buffer, False at construction: whether positions go through the scene
            contraction (:class:`~pvdal_ns.field_components.scene_space.SceneSpace`); set by the model, kept in
            checkpoints.
    """

    has_volume_feature: bool = True
    """True when ``phi1`` returns the 16-d volume feature aligned by L_v (Eq. 6)."""

    def __init__(self, config: PVDFieldConfig, aabb: Float[Tensor, "2 3"]) -> None:
        super().__init__()
        self.config = config
        self.register_space("aabb", aabb, contracted=False)

    # --- the split ---------------------------------------------------------------------------------
    def encode(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs C"]:
        """The architecture's ϕ¹ before the density bias (subclasses implement this)."""
        raise NotImplementedError

    def phi1(self, x: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs C"]:
        """ϕ¹: normalised positions in [0, 1]^3 → ``[raw density, features…]``, float32 whatever the encoding
        computed in (under ``torch.autocast`` an MLP's output is float16 or bfloat16; the density bias is added
        in float32)."""
        h = self.encode(x).float()
        return torch.cat([h[..., :1] + self.config.density_bias, h[..., 1:]], dim=-1)

    def phi2(self, h: Float[Tensor, "*bs C"], directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """ϕ²: the output of :meth:`phi1` and unit view directions → colour in [0, 1]."""
        raise NotImplementedError

    def regularization_loss(self) -> Tensor:
        """L_reg of Eq. 7 (L1 sparsity + total variation for VM and tensors); zero otherwise."""
        return self.aabb.new_zeros(())

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Parameters split into "grids" (explicit tables) and "networks" (MLPs); empty groups omitted."""
        raise NotImplementedError

    # --- queries -----------------------------------------------------------------------------------
    def normalize(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """World positions → field coordinates in [0, 1]^3: the scene box (clamped outside), or all of space
        contracted (:class:`~pvdal_ns.field_components.scene_space.SceneSpace`)."""
        return self.space.to_unit(positions).clamp(0.0, 1.0)

    def query(
        self, positions: Float[Tensor, "*bs 3"], directions: Optional[Float[Tensor, "*bs 3"]] = None
    ) -> PointOutputs:
        """Evaluate the field at world positions; ϕ² runs only when ``directions`` is given.

        Every output is float32, also under ``torch.autocast`` (mixed precision), where the MLPs compute in
        float16 or bfloat16: losses and compositing (:func:`pvdal_ns.model_components.sampling.composite`) work in
        float32, as nerfstudio's renderers do (its ``NerfactoField`` casts its density and colour to the positions'
        dtype).

        Args:
            positions: Float[Tensor, "*bs 3"] world positions; directions: Float[Tensor, "*bs 3"] unit vectors.

        Returns:
            PointOutputs with raw density Float32[Tensor, "*bs 1"], colour Float32[Tensor, "*bs 3"] (or None)
            and the volume feature Float32[Tensor, "*bs 16"] (or None).
        """
        h = self.phi1(self.normalize(positions))
        rgb = None if directions is None else self.phi2(h, directions).float()
        return PointOutputs(raw_density=h[..., :1], rgb=rgb, phi1=h if self.has_volume_feature else None)

    def density_at(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """σ at world positions (1/scene units); used to update occupancy grids."""
        return self.query(positions).density

    # --- nerfstudio Field API ----------------------------------------------------------------------
    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        """nerfstudio ``Field`` API: σ Float32[Tensor, "*bs 1"] (1/scene units) and ϕ¹ output as embedding (float32,
        as :meth:`query`'s)."""
        h = self.phi1(self.normalize(ray_samples.frustums.get_positions()))
        return trunc_exp(h[..., :1]), h

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> Dict:
        """nerfstudio ``Field`` API: ``{FieldHeadNames.RGB: Float32[Tensor, "*bs 3"]}`` from ϕ² of the embedding."""
        assert density_embedding is not None
        return {FieldHeadNames.RGB: self.phi2(density_embedding, ray_samples.frustums.directions).float()}
