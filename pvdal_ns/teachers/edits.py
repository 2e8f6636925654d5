"""Scene edits applied to a teacher while it is converted (issue #34; paper §4.5, "characteristic migration"): erase a
box, keep a box, recolour a box. The student learns the edited scene, so every architecture inherits the edit
(docs/design.md, "Editing").

Boxes are in nerfstudio's world frame (after the dataparser's transform: the frame the viewer shows) and oriented, as
nerfstudio's crop box and ``ns-export``'s ``--obb-center --obb-rotation --obb-scale`` (nerfstudio's ``OrientedBox``);
a box is given as 6 numbers, the axis-aligned corners ``X0 Y0 Z0 X1 Y1 Z1``, or as 9, ``CX CY CZ ROLL PITCH YAW SX SY
SZ`` (centre, rotation in radians, full side lengths). A box may reach outside the scene box.

What an edit does at a point (:meth:`SceneEdit.apply`), in this order:

- ``keep`` boxes: outside all of them, raw density :data:`ERASED_RAW_DENSITY` (σ ≈ 0);
- ``erase`` boxes: inside any of them, raw density :data:`ERASED_RAW_DENSITY`;
- ``recolor`` boxes: inside, the colour replaced by the box's RGB (``recolor_mode`` "replace") or multiplied by it
  ("multiply"); later boxes win where boxes overlap.

The ϕ¹ volume feature (Eq. 6) of an edited teacher: its density channel follows the raw density (erased points at
:data:`ERASED_RAW_DENSITY`, below the density clip's floor, so L_v and L_σ see them as empty as far as Eq. 8 tells
empty apart); its other channels are the teacher's. A recoloured teacher gives no ϕ¹: its features hold the old
colours, which L_v would teach the student beside the new ones; its student distils σ and colour at points and
renders (no stage 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence, Tuple

import torch
from jaxtyping import Bool, Float
from nerfstudio.data.scene_box import OrientedBox
from torch import Tensor

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError, not_a_run_config

ERASED_RAW_DENSITY = -20.0
"""Raw (log) density of erased points: σ = 2e-9 per scene unit, empty for any ray; below every density clip's floor
(``PVDLossConfig.density_clip``, -2 by default)."""

SH_C0 = 0.28209479177387814
"""Y₀₀ = 1 / (2√π), the constant spherical harmonic (the first component of nerfstudio's
``components_from_spherical_harmonics``; its ``SH2RGB``: colour = 0.5 + Y₀₀ · DC term): what a colour edit of SH
coefficients writes (a pvdal-tensors run's voxels, splatfacto's Gaussians)."""


def oriented_box(numbers: Sequence[float], what: str) -> OrientedBox:
    """nerfstudio's ``OrientedBox`` of a box's numbers (:data:`BoxNumbers`).

    Raises:
        BadInputError: not 6 or 9 finite numbers, or a side that is not positive (an empty box); ``what`` names the
            option in the message (``--erase``)."""
    values = [float(v) for v in numbers]
    if len(values) not in (6, 9) or not all(torch.isfinite(torch.tensor(values))):
        raise BadInputError(f"{what} takes 6 numbers (X0 Y0 Z0 X1 Y1 Z1) or 9 (CX CY CZ ROLL PITCH YAW SX SY SZ), "
                            f"got {' '.join(str(v) for v in numbers) or 'none'}")
    if len(values) == 6:
        low, high = torch.tensor(values[:3]), torch.tensor(values[3:])
        centre, rpy, sides = ((low + high) / 2).tolist(), (0.0, 0.0, 0.0), (high - low).tolist()
    else:
        centre, rpy, sides = values[:3], values[3:6], values[6:]
    if min(sides) <= 0:
        raise BadInputError(f"{what} {' '.join(f'{v:g}' for v in values)} is an empty box (a side of "
                            f"{min(sides):g}): give the low corner first, X0 < X1, Y0 < Y1, Z0 < Z1")
    box = OrientedBox.from_params(tuple(centre), tuple(rpy), tuple(sides))
    return OrientedBox(R=box.R.float(), T=box.T.float(), S=box.S.float())


def recolor_box(numbers: Sequence[float]) -> Tuple[OrientedBox, Tensor]:
    """A recolour box's box and RGB (the last three numbers, each in [0, 1]).

    Raises:
        BadInputError: not 9 or 12 numbers, an empty box, or an RGB outside [0, 1]."""
    if len(numbers) not in (9, 12):
        raise BadInputError(f"--recolor takes a box and an RGB: X0 Y0 Z0 X1 Y1 Z1 R G B, or CX CY CZ ROLL PITCH YAW "
                            f"SX SY SZ R G B; got {len(numbers)} numbers")
    rgb = torch.tensor([float(v) for v in numbers[-3:]])
    if not bool(((rgb >= 0) & (rgb <= 1)).all()):
        raise BadInputError(f"--recolor's RGB {' '.join(f'{v:g}' for v in rgb.tolist())} is not in [0, 1]: give "
                            "each channel as a fraction (0.5, not 128)")
    return oriented_box(numbers[:-3], "--recolor's box"), rgb


def _local(box: OrientedBox, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
    """Positions in the box's frame (its centre at 0, its axes the coordinate axes; world units)."""
    return (positions - box.T.to(positions)) @ box.R.to(positions)


def within(box: OrientedBox, positions: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
    """nerfstudio's ``OrientedBox.within``: True at positions (world units) inside ``box``."""
    with warnings.catch_warnings():  # OrientedBox.within copies its side lengths with torch.tensor(tensor)
        warnings.simplefilter("ignore", UserWarning)
        return box.within(positions)


class SceneEdit:
    """The edits of a :class:`SceneEditConfig` as boxes on a device, applied to what a teacher says at points, to its
    occupancy grid and to density functions (a teacher's proposal fields).

    Raises (at construction):
        BadInputError: a box that is not 6 or 9 numbers, an empty box, an RGB outside [0, 1]."""

    def __init__(self, config: SceneEditConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        move = lambda box: OrientedBox(R=box.R.to(device), T=box.T.to(device), S=box.S.to(device))  # noqa: E731
        self.erase = [move(oriented_box(b, "--erase")) for b in config.erase]
        self.keep = [move(oriented_box(b, "--keep")) for b in config.keep]
        self.recolor = [(move(box), rgb.to(device)) for box, rgb in map(recolor_box, config.recolor)]

    def check_touches(self, positions: Float[Tensor, "N 3"], holds: str) -> None:
        """Refuse a box that holds none of ``positions`` (world units: where the teacher has something); ``holds``
        says what the box then holds, for the message ("no Gaussian of the teacher").

        Raises:
            BadInputError: one line naming the box's option and numbers."""
        named = [("--erase", b, box) for b, box in zip(self.config.erase, self.erase)]
        named += [("--keep", b, box) for b, box in zip(self.config.keep, self.keep)]
        named += [("--recolor", b, box) for b, (box, _) in zip(self.config.recolor, self.recolor)]
        for option, numbers, box in named:
            if not bool(within(box, positions).any()):
                raise BadInputError(f"{option} {' '.join(f'{v:g}' for v in numbers)} holds {holds}: give the box in "
                                    "the viewer's world frame; ns-distill view shows it (its crop box)")

    @property
    def changes_colour(self) -> bool:
        """True when colours change (recolour boxes): the teacher's ϕ¹ features no longer describe it."""
        return bool(self.recolor)

    def emptied(self, positions: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        """True at positions (world units) whose density the edit sets to zero: outside every keep box (when there
        are any) or inside an erase box."""
        out = torch.zeros(len(positions), dtype=torch.bool, device=positions.device)
        if self.keep:
            inside = torch.stack([within(box, positions) for box in self.keep]).any(0)
            out |= ~inside
        for box in self.erase:
            out |= within(box, positions)
        return out

    def apply(self, positions: Float[Tensor, "N 3"], outputs: PointOutputs) -> PointOutputs:
        """What the edited scene is at ``positions`` (world units), from what the teacher says there (``outputs``:
        raw density, colour where asked, ϕ¹ where the teacher has one; its ϕ¹ is dropped when colours change)."""
        raw, rgb, phi1 = outputs.raw_density, outputs.rgb, outputs.phi1
        if self.keep or self.erase:
            emptied = self.emptied(positions)[:, None]
            floor = torch.full_like(raw, ERASED_RAW_DENSITY)
            raw = torch.where(emptied, floor, raw)
            if phi1 is not None:
                phi1 = torch.cat([torch.where(emptied, floor.to(phi1), phi1[:, :1]), phi1[:, 1:]], dim=-1)
        if rgb is not None:
            for box, colour in self.recolor:
                inside = within(box, positions)[:, None]
                new = colour.to(rgb).expand_as(rgb) if self.config.recolor_mode == "replace" else rgb * colour.to(rgb)
                rgb = torch.where(inside, new, rgb)
        return PointOutputs(raw, rgb, None if self.changes_colour else phi1)

    def density_fn(self, density_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """``density_fn`` (world positions [..., 3] → σ [..., 1]; a proposal field) with the emptied parts at 0."""
        if not (self.keep or self.erase):
            return density_fn

        def edited(positions: Tensor) -> Tensor:
            density = density_fn(positions)
            emptied = self.emptied(positions.reshape(-1, 3)).reshape(*positions.shape[:-1], 1)
            return torch.where(emptied, torch.zeros_like(density), density)

        return edited

    @torch.no_grad()
    def empty_cells(self, grid: OccupancyGrid) -> int:
        """Mark unoccupied the cells of ``grid`` that lie wholly where the edit empties space: all 8 corners inside
        one erase box, or all 8 beyond one face of every keep box (a cell is convex in world units in the scene box;
        in a contracted shell the test is by its corners). Cells partly emptied stay as they were. Returns how many
        occupied cells were emptied."""
        if not (self.keep or self.erase):
            return 0
        resolution = grid.resolution
        if not isinstance(resolution, int):
            resolution = int(resolution[0])
        index = torch.arange(resolution + 1, device=grid.binaries.device, dtype=torch.float32) / resolution
        corners_unit = torch.stack(torch.meshgrid(index, index, index, indexing="ij"), -1)  # (r+1)³ corners
        corners = grid.space.from_unit(corners_unit.reshape(-1, 3)).reshape(*corners_unit.shape)
        emptied = torch.zeros_like(grid.binaries[0])
        for box in self.erase:
            inside = (_local(box, corners).abs() < box.S.to(corners) / 2).all(-1)
            emptied |= _all_corners(inside)
        if self.keep:
            outside_all = torch.ones_like(emptied)
            for box in self.keep:
                local, half = _local(box, corners), box.S.to(corners) / 2
                beyond = torch.zeros_like(emptied)
                for axis in range(3):
                    beyond |= _all_corners(local[..., axis] > half[axis]) | _all_corners(local[..., axis] < -half[axis])
                outside_all &= beyond
            emptied |= outside_all
        before = int(grid.binaries[0].sum())
        grid.binaries[0] &= ~emptied
        grid.occs.view(-1)[emptied.flatten()] = 0.0
        return before - int(grid.binaries[0].sum())


def _all_corners(at_corner: Bool[Tensor, "a b c"]) -> Bool[Tensor, "a-1 b-1 c-1"]:
    """For each cell of a grid of (r+1)³ corners, whether all of its 8 corners hold."""
    c = at_corner
    return (c[:-1, :-1, :-1] & c[1:, :-1, :-1] & c[:-1, 1:, :-1] & c[:-1, :-1, 1:]
            & c[1:, 1:, :-1] & c[1:, :-1, 1:] & c[:-1, 1:, 1:] & c[1:, 1:, 1:])


def check_edit(config: SceneEditConfig, finetune_steps: int = 0) -> None:
    """Refuse edits that cannot be carried out, before anything is loaded.

    Raises:
        BadInputError: a box that is not 6 or 9 numbers, an empty box, an RGB outside [0, 1]; an edit with
            fine-tuning on the training images (``finetune_steps`` > 0: they would bring the erased part back)."""
    SceneEdit(config)
    if config.compose is not None:
        problem = not_a_run_config("--compose teacher", Path(config.compose).expanduser())
        if problem is not None:
            raise BadInputError(problem)
        values = torch.tensor([*config.offset, config.scale], dtype=torch.float64)
        if not bool(values.isfinite().all()) or config.scale <= 0:
            raise BadInputError(f"--offset {' '.join(f'{v:g}' for v in config.offset)} --scale {config.scale:g}: the "
                                "offset must be finite and the scale positive")
    if not config.empty and finetune_steps > 0:
        raise BadInputError("an edited conversion cannot be fine-tuned on the training images (they would bring back "
                            "what the edit took away): leave out the fine-tuning steps, or the edit")
