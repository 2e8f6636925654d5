"""The occupancy grid: nerfacc's ``OccGridEstimator`` over the field coordinates of a :class:`SceneSpace` (the
scene box, or all of space contracted; its EMA update runs on the CPU).

Its occupied cells decide the shared sample points of teacher and student (:mod:`pvdal_ns.model_components.sampling`).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from jaxtyping import Bool, Float, Int
from nerfacc import OccGridEstimator
from torch import Tensor

from pvdal_ns.field_components.scene_space import SceneSpace, SpaceBuffers
from pvdal_ns.utils.library_internals import keep_buffers_out_of_checkpoints, update_occupancy

DensityFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 1"]]

_UNIT_CUBE = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])


class OccupancyGrid(SpaceBuffers, OccGridEstimator):
    """A single-level nerfacc occupancy grid over the unit cube of field coordinates
    (:meth:`SceneSpace.to_unit`): the scene box, or, contracted, all of space with the box in its middle half.

    The space (scene box and contraction) is stored with the grid, so a teacher's grid loaded into a student
    brings its space along. The derivable cell-coordinate buffers are kept out of checkpoints (they would add
    ~66 MB at 128³).

    Args:
        space: where the grid lies (:class:`~pvdal_ns.field_components.scene_space.SceneSpace`).
        resolution: cells per axis.
    """

    def __init__(self, space: SceneSpace, resolution: int = 128) -> None:
        super().__init__(roi_aabb=_UNIT_CUBE, resolution=resolution, levels=1)
        self.register_space("scene_aabb", space.aabb, space.contracted)
        keep_buffers_out_of_checkpoints(self, ("grid_coords", "grid_indices"))

    def _cells(self, positions: Float[Tensor, "*bs 3"]) -> Tuple[Bool[Tensor, "*bs"], Int[Tensor, "*bs 3"]]:
        """Whether each world position lies inside the grid, and its cell index (clamped into the grid)."""
        u = self.space.to_unit(positions)
        inside = ((u >= 0) & (u < 1)).all(dim=-1)
        return inside, (u.clamp(0.0, 1.0 - 1e-6) * self.resolution).long()

    def occupied(self, positions: Float[Tensor, "*bs 3"]) -> Bool[Tensor, "*bs"]:
        """True where a world position lies inside the grid and in an occupied cell."""
        inside, idx = self._cells(positions)
        return inside & self.binaries[0, idx[..., 0], idx[..., 1], idx[..., 2]]

    def occupancy_fn(self, density_fn: DensityFn, step_size: float, chunk: int = 1 << 18) -> DensityFn:
        """Wrap σ(x) of world positions into nerfacc's occupancy function σ·Δt of field coordinates, in chunks to
        bound memory. Δt is ``step_size`` everywhere, in the contracted shell too (as nerfacc's examples of
        unbounded scenes: what is never seen keeps its initial, unoccupied density)."""
        space = self.space

        def fn(unit: Tensor) -> Tensor:
            parts = [density_fn(space.from_unit(unit[i : i + chunk])) for i in range(0, len(unit), chunk)]
            return torch.cat(parts) * step_size

        return fn

    @torch.no_grad()
    def mark(self, positions: Float[Tensor, "N 3"], dilation: int = 1) -> None:
        """Occupy exactly the cells holding ``positions`` (Float[Tensor, "N 3"], world units; those outside
        the grid are ignored), grown by ``dilation`` cells in every direction: a grid for a model known by
        its primitives (splatfacto's Gaussians), not by a density field. Replaces the grid's contents."""
        inside, idx = self._cells(positions)
        idx = idx[inside]
        cells = torch.zeros_like(self.binaries[0], dtype=torch.float32)
        cells[idx[:, 0], idx[:, 1], idx[:, 2]] = 1.0
        if dilation > 0:
            cells = torch.nn.functional.max_pool3d(cells[None, None], 2 * dilation + 1, stride=1,
                                                   padding=dilation)[0, 0]
        self.binaries[0] = cells > 0
        self.occs[:] = cells.flatten()  # nerfacc's running occupancy; only ``binaries`` decides sampling

    def occupied_centres(self) -> Float[Tensor, "N 3"]:
        """Float[Tensor, "N 3"]: the world positions (world units) of the centres of the N occupied cells of
        ``binaries`` (nerfacc's ``OccGridEstimator`` layout, one level), mapped through the grid's :class:`SceneSpace`
        (:meth:`~pvdal_ns.field_components.scene_space.SceneSpace.from_unit`); N is 0 for an empty grid. Raises
        nothing. Data-dependent shape (``nonzero``): for set-up, edits and the viewer, not the step path."""
        return self.occupied_cell_points(1)

    def occupied_cell_points(self, per_axis: int = 2) -> Float[Tensor, "N 3"]:
        """Float[Tensor, "N 3"]: world positions (world units) of a ``per_axis``³ lattice in each occupied cell, N =
        ``per_axis``³ × the occupied cells: its centre for 1, else spanning it from corner to corner (inset by a
        thousandth of a cell, so each point lies in its own cell). Marking them (:meth:`mark`, no dilation) in a grid
        whose cells are at least 1/(``per_axis`` − 1) of these wide occupies exactly the cells they overlap: a composed
        teacher's grid (docs/design.md, "Editing", composing). Raises nothing; like :meth:`occupied_centres`, not for
        the step path."""
        device = self.binaries.device
        steps = (torch.linspace(1e-3, 1 - 1e-3, per_axis, device=device) if per_axis > 1
                 else torch.full((1,), 0.5, device=device))
        offsets = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        unit = (self.binaries[0].nonzero().float()[:, None] + offsets) / self.binaries.shape[-1]
        return self.space.from_unit(unit.reshape(-1, 3))

    @torch.no_grad()
    def fill(self, density_fn: DensityFn, step_size: float, threshold: float, passes: int = 3,
             chunk: int = 1 << 18) -> None:
        """Also occupy the cells where σ·``step_size`` (σ from ``density_fn`` of world positions, 1/scene units;
        ``step_size`` in scene units) exceeds ``threshold`` at a jittered point, the maximum over ``passes`` passes
        of every cell (nerfacc's warm-up update, :func:`~pvdal_ns.utils.library_internals.update_occupancy`), ``chunk``
        points per call of ``density_fn``: the grid of a model that has none of its own. Cells already occupied stay
        so. Raises nothing."""
        occupancy = self.occupancy_fn(density_fn, step_size, chunk)
        for _ in range(passes):
            update_occupancy(self, occupancy, threshold)

    @property
    def occupied_fraction(self) -> float:
        """Fraction of occupied cells."""
        return float(self.binaries.float().mean())
