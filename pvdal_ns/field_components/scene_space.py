"""Where fields and occupancy grids live: the unit cube ``[0, 1]^3`` of field coordinates, mapped from the
scene box (bounded scenes: blender objects) or from all of space by nerfstudio's ``SceneContraction``
(unbounded scenes: real captures with walls, floors and sky beyond the box; docs/design.md, "Scenes").

Contracted, the box (normalised to ``[-1, 1]^3``) is kept as it is and everything beyond is squeezed into
``[-2, 2]^3`` (L∞ norm, as nerfacto); field coordinates are ``(c + 2) / 4``, so the box fills the middle half
of every axis. Every field, every occupancy grid and every teacher without a grid of its own use one
:class:`SceneSpace`, so the student's and the teacher's cells are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.spatial_distortions import SceneContraction
from torch import Tensor


class LInfSceneContraction(SceneContraction):
    """nerfstudio's ``SceneContraction(order=inf)`` (nerfacto's), its L∞ norm taken as ``max_i |x_i|``: the same
    values (tested against nerfstudio's), but torch's ``linalg.norm(ord=inf)`` is about 80 times slower on a CPU
    than ``abs().amax()`` and took a quarter of a training step on a real capture (docs/benchmarks.md, issue #17).
    Gaussians (nerfstudio's cone-sample path, unused here) go through nerfstudio's own."""

    def __init__(self) -> None:
        super().__init__(order=float("inf"))

    def forward(self, positions):
        """Float[Tensor, "*bs 3"] positions (the box as [−1, 1]³) → contracted, in [−2, 2]³ (nerfstudio's
        ``SceneContraction.forward``; Gaussians go through it unchanged)."""
        if not isinstance(positions, Tensor):
            return super().forward(positions)
        mag = positions.abs().amax(dim=-1, keepdim=True)
        return torch.where(mag < 1, positions, (2 - (1 / mag)) * (positions / mag))


_CONTRACTION = LInfSceneContraction()
_MAX_NORM = 2.0 - 1e-4
"""Contracted L∞ norms are kept below 2 (infinitely far) so that :meth:`SceneSpace.from_unit` stays finite."""


@dataclass(frozen=True)
class SceneSpace:
    """The map between world positions and field coordinates.

    Attributes:
        aabb: Float[Tensor, "2 3"] scene box (world units).
        contracted: True: all of space, through ``SceneContraction`` (L∞); False: the box only (positions
            outside it are clamped to its faces by the fields and are outside every occupancy grid).
    """

    aabb: Tensor
    contracted: bool

    def to_unit(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """World positions → field coordinates; in ``[0, 1]^3`` for every position when contracted, for
        positions inside the box otherwise (not clamped here)."""
        normalized = SceneBox.get_normalized_positions(positions, self.aabb.to(positions))
        if not self.contracted:
            return normalized
        return (_CONTRACTION(normalized * 2.0 - 1.0) + 2.0) / 4.0

    def from_unit(self, unit: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Field coordinates → world positions (the inverse of :meth:`to_unit`; the contraction's outer shell
        ``|c|∞ → 2`` is capped just short of infinity)."""
        c = unit * 4.0 - 2.0 if self.contracted else unit * 2.0 - 1.0
        if self.contracted:
            norm = c.abs().amax(dim=-1, keepdim=True).clamp(max=_MAX_NORM)
            c = torch.where(norm < 1.0, c, c / norm / (2.0 - norm))  # |x|∞ = 1 / (2 − |c|∞)
        lo, hi = self.aabb.to(unit).unbind(0)
        return lo + (c + 1.0) / 2.0 * (hi - lo)


def cameras_inside_box(camera_origins: Float[Tensor, "N 3"], aabb: Float[Tensor, "2 3"]) -> bool:
    """True when most training cameras (over half) stand inside the scene box: the scene then goes on
    beyond the box (nerfstudio-data and colmap captures, whose poses are scaled into ``[-1, 1]^3``), and
    ``auto`` contracts it. Blender cameras orbit outside their box."""
    lo, hi = aabb.to(camera_origins).unbind(0)
    inside = ((camera_origins >= lo) & (camera_origins <= hi)).all(dim=-1)
    return bool(inside.float().mean() > 0.5)


class SpaceBuffers:
    """A mixin for an ``nn.Module`` that lives in a :class:`SceneSpace`: its scene box and ``contracted`` flag are
    buffers (so checkpoints and a teacher's grid carry them), and the flag is mirrored as a Python bool, so the
    space read on every query costs no device-to-host copy (``bool()`` of a CUDA tensor synchronises)."""

    def register_space(self, aabb_name: str, aabb: Float[Tensor, "2 3"], contracted: bool) -> None:
        """Register the box under ``aabb_name`` and the flag as ``contracted``; keep the mirror up to date on
        :meth:`set_contracted` and after ``load_state_dict``."""
        self._aabb_name = aabb_name
        self.register_buffer(aabb_name, aabb.clone().float())  # type: ignore[attr-defined]
        self.register_buffer("contracted", torch.tensor(bool(contracted)))  # type: ignore[attr-defined]
        self._contracted = bool(contracted)
        self.register_load_state_dict_post_hook(  # type: ignore[attr-defined]
            lambda module, keys: setattr(module, "_contracted", bool(module.contracted)))

    def set_contracted(self, contracted: bool) -> None:
        """Contract space or not."""
        self.contracted.fill_(bool(contracted))  # type: ignore[attr-defined]
        self._contracted = bool(contracted)

    @property
    def space(self) -> SceneSpace:
        """The space of this module (no device synchronisation)."""
        return SceneSpace(getattr(self, self._aabb_name), self._contracted)
