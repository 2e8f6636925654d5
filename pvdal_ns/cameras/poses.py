"""Novel camera poses like the training cameras (docs/design.md, "Method"), and random rotations to jitter them."""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float
from nerfstudio.cameras.camera_utils import viewmatrix
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3
from torch import Tensor


def random_rotations(n: int, max_degrees: float, generator: Optional[torch.Generator] = None) -> Float[Tensor, "n 3 3"]:
    """``n`` rotations about uniformly random axes by angles uniform in ±``max_degrees`` (the exponential map of
    nerfstudio's ``lie_groups.exp_map_SO3xR3``, in float64)."""
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    tangent = torch.cat([torch.zeros(n, 3), axis * angle[:, None]], dim=-1).double()  # no translation
    return exp_map_SO3xR3(tangent)[:, :, :3].float()


class PoseSampler:
    """Draws novel camera-to-world poses like the training cameras (docs/design.md, "Method" and "Scenes").

    Three kinds of capture, told apart from the training cameras (:attr:`kind`):

    - ``orbit`` (object-centric, cameras all around, looking at the centre: blender scenes, turntable
      captures): orbit poses around the scene-box centre with the training cameras' radius range and
      elevation percentiles, looking at the centre;
    - ``forward-facing`` (all cameras look one way, LLFF): centres in the training centres' box grown by a
      margin, orientations of a random training camera jittered by up to ``jitter_degrees``;
    - ``near training cameras`` (neither: a half orbit, a walk around a room): a random training camera
      moved by up to the median distance between neighbouring training cameras and turned by up to
      ``jitter_degrees``, so the poses stay where the capture has seen the scene from.

    Args:
        camera_to_worlds: Float[Tensor, "N 3 4"] training poses (OpenGL convention, as nerfstudio).
        centre: Float[Tensor, "3"] scene centre (world units).
        config: the settings ``elevation_percentiles``, ``forward_facing_margin`` and ``jitter_degrees``
            (a :class:`~pvdal_ns.data.pseudo_labels.PseudoLabelsConfig`).
    """

    ORBIT_GAP_DEGREES = 90.0
    """An orbit leaves no gap wider than this in the cameras' azimuths about the up axis."""
    LOOK_AT_DEGREES = 30.0
    """An orbit's cameras look within this angle of the centre (at least 80 % of them)."""

    def __init__(self, camera_to_worlds: Tensor, centre: Tensor, config) -> None:
        self.c2w = camera_to_worlds.float().cpu()
        self.centre = centre.float().cpu()
        self.config = config
        forward = -self.c2w[:, :, 2]
        self.up = torch.nn.functional.normalize(self.c2w[:, :, 1].mean(dim=0), dim=0)
        offsets = self.c2w[:, :, 3] - self.centre
        radius = offsets.norm(dim=-1)
        elevation = torch.asin((offsets @ self.up / radius).clamp(-1, 1))
        lo, hi = config.elevation_percentiles
        self.radius_range = (float(radius.min()), float(radius.max()))
        self.elevation_range = (float(torch.quantile(elevation, lo / 100)), float(torch.quantile(elevation, hi / 100)))
        self.kind = self._kind(forward, offsets)
        """"orbit", "forward-facing" or "near training cameras"."""
        centres = self.c2w[:, :, 3]
        distances = torch.cdist(centres, centres).fill_diagonal_(float("inf"))
        self.step = float(distances.min(dim=1).values.median()) if len(centres) > 1 else 0.0
        """Near training cameras: how far a novel pose moves from its training camera (world units)."""

    def _kind(self, forward: Tensor, offsets: Tensor) -> str:
        if forward.mean(dim=0).norm() >= 0.7:
            return "forward-facing"
        towards = torch.nn.functional.normalize(-offsets, dim=-1)
        looks_at_centre = (forward * towards).sum(dim=-1) >= math.cos(math.radians(self.LOOK_AT_DEGREES))
        flat = offsets - (offsets @ self.up)[:, None] * self.up
        e1 = torch.nn.functional.normalize(flat[0], dim=0)
        azimuth = torch.atan2(flat @ torch.linalg.cross(self.up, e1), flat @ e1).sort().values
        gaps = torch.diff(torch.cat([azimuth, azimuth[:1] + 2 * math.pi]))
        if looks_at_centre.float().mean() >= 0.8 and math.degrees(float(gaps.max())) <= self.ORBIT_GAP_DEGREES:
            return "orbit"
        return "near training cameras"

    @property
    def object_centric(self) -> bool:
        """True for orbit captures."""
        return self.kind == "orbit"

    @property
    def pivot(self) -> Optional[Tensor]:
        """Point that re-injected hard poses are rotated about: the scene centre for orbits, None
        (each camera's own centre) for forward-facing captures."""
        return self.centre if self.object_centric else None

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Float[Tensor, "n 3 4"]:
        """n novel camera-to-world matrices."""
        u = torch.rand(n, 3, generator=generator)
        if self.kind == "orbit":
            return self._orbit(u)
        if self.kind == "forward-facing":
            return self._forward_facing(u, generator)
        return self._near_cameras(n, generator)

    def _orbit(self, u: Tensor) -> Tensor:
        r = self.radius_range[0] + u[:, 0] * (self.radius_range[1] - self.radius_range[0])
        elev = self.elevation_range[0] + u[:, 1] * (self.elevation_range[1] - self.elevation_range[0])
        azim = u[:, 2] * 2 * math.pi
        helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(self.up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
        e1 = torch.nn.functional.normalize(torch.linalg.cross(self.up, helper), dim=0)
        e2 = torch.linalg.cross(self.up, e1)
        horizontal = azim.cos()[:, None] * e1 + azim.sin()[:, None] * e2
        direction = elev.cos()[:, None] * horizontal + elev.sin()[:, None] * self.up
        pos = self.centre + r[:, None] * direction
        return torch.stack([viewmatrix(p - self.centre, self.up, p) for p in pos])

    def _forward_facing(self, u: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        centres = self.c2w[:, :, 3]
        lo, hi = centres.min(dim=0).values, centres.max(dim=0).values
        grow = (hi - lo) * self.config.forward_facing_margin / 2
        pos = (lo - grow) + u * (hi - lo + 2 * grow)
        base = self.c2w[torch.randint(len(self.c2w), (len(u),), generator=generator), :, :3]
        jitter = random_rotations(len(u), self.config.jitter_degrees, generator)
        return torch.cat([jitter @ base, pos[:, :, None]], dim=-1)

    def _near_cameras(self, n: int, generator: Optional[torch.Generator]) -> Tensor:
        base = self.c2w[torch.randint(len(self.c2w), (n,), generator=generator)]
        move = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        move = move * self.step * torch.rand(n, 1, generator=generator)
        jitter = random_rotations(n, self.config.jitter_degrees, generator)
        return torch.cat([jitter @ base[:, :, :3], (base[:, :, 3] + move)[:, :, None]], dim=-1)
