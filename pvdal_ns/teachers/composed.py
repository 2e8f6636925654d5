"""Two teachers in one scene (issue #34; paper §4.5, Fig. 8(b)), and the one place a conversion's teacher is opened
with its edits (:func:`open_edited_teacher`): composed first, then the boxes (:mod:`.edits`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Bool, Float
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor, nn

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.occupancy import DensityFn, OccupancyGrid
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers.base import ModelTeacher, Teacher
from pvdal_ns.teachers.edits import SceneEdit
from pvdal_ns.teachers.registry import load_teacher
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError


def _rendered(teacher: ModelTeacher, positions: Float[Tensor, "N 3"]) -> Bool[Tensor, "N 1"]:
    """Where ``teacher`` renders density: inside its box, and, sampling with its occupancy grid, in an occupied cell
    (its renders never sample the rest, where a field may hold a faint haze that its grid left out)."""
    if teacher.proposal_sampler is None:
        return teacher.occupancy_grid.occupied(positions)[:, None]
    aabb = teacher.sampling.scene_box.aabb.to(positions)
    return ((positions >= aabb[0]) & (positions <= aabb[1])).all(-1, keepdim=True)


def _cell_sizes(grid: OccupancyGrid) -> Float[Tensor, "3"]:
    box = grid.space.aabb
    return (box[1] - box[0]) / grid.binaries.shape[-1]


def _cell_points(teacher: ModelTeacher, scale: float, composed: OccupancyGrid) -> Float[Tensor, "N 3"]:
    """Points spanning each occupied cell of ``teacher``'s grid, scaled by ``scale``, close enough together that
    marking them occupies every cell of the ``composed`` grid that such a cell overlaps."""
    grid = teacher.occupancy_grid
    ratio = _cell_sizes(grid) * scale / _cell_sizes(composed).to(grid.binaries.device)
    return grid.occupied_cell_points(int(torch.ceil(ratio.max())) + 1) * scale


def _density_of(teacher: ModelTeacher, scale: float, offset: Float[Tensor, "3"]) -> DensityFn:
    """σ (1/scene units) of ``teacher`` scaled by ``scale`` and moved by ``offset``, at world positions."""

    def density(x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 1"]:
        local = (x - offset.to(x)) / scale
        return teacher.query_points(local).density / scale * _rendered(teacher, local)

    return density


class ComposedTeacher(ModelTeacher):
    """The ``first`` teacher's scene with the ``second`` put into it at ``offset`` and uniform ``scale``: at a world
    point x, σ = σ₁(x) + σ₂((x − offset) / scale) / scale, the colour the density-weighted mean of theirs. Each
    teacher's density counts only where its own renders sample: inside its scene box (a field clamps positions
    beyond it onto its faces) and in its occupancy grid's occupied cells (a teacher sampling with proposal fields:
    its box). The composed grid's cells do not line up with theirs; without this its renders would show the haze
    a teacher's grid hid.

    Its scene box holds both (the student's grows to it); its occupancy grid marks the cells that overlap an occupied
    cell of either teacher's grid (the second's moved and scaled), or, for a teacher sampling with proposal fields,
    where its density is above the grid threshold. It gives points and renders, and ϕ¹ where both
    teachers' ϕ¹ means one thing (:func:`one_colour_head`: a scene composed with a copy of itself, or two runs
    sharing ϕ²): the composed raw density, log σ, then the 15 features of whichever teacher is denser there (the
    colour ϕ² gives from them is that teacher's; the density-weighted mean of the colours differs only where both
    are dense). Two other teachers' features do not add up: then no ϕ¹, and their students have no stage 1 and no
    L_v. Both must be bounded field teachers (pvdal-*, tensorf, vanilla-nerf, a bounded nerfacto).

    Raises (at construction):
        BadInputError: either teacher renders no points, or contracts space."""

    def __init__(self, first: Teacher, second: Teacher, offset: Sequence[float], scale: float) -> None:
        for which, teacher in (("teacher", first), ("--compose teacher", second)):
            if not isinstance(teacher, ModelTeacher) or Capability.POINTS not in teacher.capabilities:
                raise BadInputError(f"the {which} {teacher.source} ({teacher.name}) gives no density at points, which "
                                    "composing adds: compose field teachers (pvdal-*, tensorf, vanilla-nerf, nerfacto)")
            if teacher.sampling.contracted:
                raise BadInputError(f"the {which} {teacher.source} contracts space (an unbounded scene): compose "
                                    "bounded scenes, or crop it first with --keep and convert it bounded")
        assert isinstance(first, ModelTeacher) and isinstance(second, ModelTeacher)
        self.first, self.second = first, second
        device = first.occupancy_grid.binaries.device
        self.offset = torch.tensor([float(v) for v in offset], device=device)
        self.scale = float(scale)
        first_box, second_box = first.sampling.scene_box.aabb, second.sampling.scene_box.aabb
        moved = second_box.to(self.offset) * self.scale + self.offset
        self.second_box = moved
        box = torch.stack([torch.minimum(first_box.to(moved)[0], moved[0]), torch.maximum(first_box.to(moved)[1],
                                                                                            moved[1])])
        sampling = dataclasses.replace(first.sampling, scene_box=SceneBox(aabb=box.cpu()), proposal=None)
        grid = OccupancyGrid(sampling.space, first.sampling.grid_resolution).to(device)
        placed = ((first, 1.0, torch.zeros_like(self.offset)), (second, self.scale, self.offset))
        points = [_cell_points(t, s, grid) + o for t, s, o in placed if t.proposal_sampler is None]
        grid.mark(torch.cat(points) if points else self.offset.new_zeros(0, 3), dilation=0)
        for teacher, s, o in placed:
            if teacher.proposal_sampler is not None:  # its grid is not what it samples (a pvdal-* run's is empty)
                grid.fill(_density_of(teacher, s, o), sampling.step_size, sampling.grid_threshold)
        capabilities = (first.capabilities & second.capabilities) & (Capability.RAYS | Capability.IMAGES
                                                                     | Capability.POINTS | Capability.VOLUME_FEATURE)
        if not one_colour_head(first, second):
            capabilities &= ~Capability.VOLUME_FEATURE
        super().__init__(nn.ModuleList([first.model, second.model]), first.source, grid, sampling, capabilities)
        self.scene_box = sampling.scene_box

    @property
    def name(self) -> str:
        return f"{self.first.name} + {self.second.name}"

    def _query_points(self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]]
                      ) -> PointOutputs:
        a = self.first.query_points(positions, directions)
        local = (positions - self.offset.to(positions)) / self.scale
        b = self.second.query_points(local, directions)
        sigma_a = a.density * _rendered(self.first, positions)
        sigma_b = b.density / self.scale * _rendered(self.second, local)
        sigma = sigma_a + sigma_b
        raw = torch.log(sigma.clamp_min(1e-9))
        rgb = phi1 = None
        if directions is not None:
            assert a.rgb is not None and b.rgb is not None
            rgb = (sigma_a * a.rgb + sigma_b * b.rgb) / sigma.clamp_min(1e-9)
            rgb = torch.where(sigma > 1e-9, rgb, (a.rgb + b.rgb) / 2)
        if Capability.VOLUME_FEATURE in self.capabilities:
            assert a.phi1 is not None and b.phi1 is not None
            features = torch.where(sigma_b > sigma_a, b.phi1[:, 1:], a.phi1[:, 1:])
            phi1 = torch.cat([raw.to(features), features], dim=-1)
        return PointOutputs(raw, rgb, phi1)


def one_colour_head(first: ModelTeacher, second: ModelTeacher) -> bool:
    """Whether the two teachers' ϕ¹ features mean the same colours: the same field class with equal ϕ² weights
    (pvdal-* runs: the field's colour head), or, for stock models, equal weights throughout (one run composed with
    itself). Only then can one student ϕ² decode a composed ϕ¹ (:class:`ComposedTeacher`; docs/design.md, "Editing",
    composing). Compares weights on either device; raises nothing."""
    heads = [getattr(getattr(t.model, "field", None), "colour", None) for t in (first, second)]
    if any(head is None for head in heads):
        heads = [first.model, second.model]
    fields = [type(getattr(t.model, "field", t.model)) for t in (first, second)]
    a, b = (head.state_dict() for head in heads)  # type: ignore[union-attr]
    return (fields[0] is fields[1] and a.keys() == b.keys()
            and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a))


def open_edited_teacher(teacher_config: Union[str, Path], edit: SceneEditConfig, device: Union[str, torch.device],
                        sampling: Optional[Sampling] = None) -> Teacher:
    """The teacher of a conversion with its edits: loaded (:func:`~pvdal_ns.teachers.registry.load_teacher`), the
    ``edit.compose`` teacher put into it (:class:`ComposedTeacher`; loaded with the same ``sampling``), then its boxes
    applied (:meth:`~pvdal_ns.teachers.base.Teacher.apply_edit`). ``sampling``: the student's, for stock teachers.

    Raises:
        TeacherLoadError: a teacher cannot be loaded.
        BadInputError: an edit that cannot be carried out on it."""
    teacher = load_teacher(teacher_config, device, sampling)
    if edit.compose is not None:
        second = load_teacher(edit.compose, device, sampling)
        teacher = ComposedTeacher(teacher, second, edit.offset, edit.scale)
    if edit.has_boxes:
        teacher.apply_edit(SceneEdit(edit, device))
    return teacher
