"""Two teachers in one scene (issue #34; paper §4.5, Fig. 8(b)), and the one place a conversion's teacher is opened
with its edits (:func:`open_edited_teacher`): composed first, then the boxes (:mod:`.edits`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor, nn

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers.base import ModelTeacher, Teacher
from pvdal_ns.teachers.edits import SceneEdit
from pvdal_ns.teachers.registry import load_teacher
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError


def _inside(aabb: Tensor, positions: Tensor) -> Tensor:
    aabb = aabb.to(positions)
    return ((positions >= aabb[0]) & (positions <= aabb[1])).all(-1, keepdim=True)


class ComposedTeacher(ModelTeacher):
    """The ``first`` teacher's scene with the ``second`` put into it at ``offset`` and uniform ``scale``: at a world
    point x, σ = σ₁(x) + σ₂((x − offset) / scale) / scale, the colour the density-weighted mean of theirs (each
    teacher's density is 0 outside its own scene box: a field clamps positions beyond its box onto its faces).

    Its scene box holds both (the student's grows to it); its occupancy grid marks both teachers' occupied cells,
    the second's moved and scaled, grown by one cell. It gives points and renders, not ϕ¹ (two architectures' volume
    features do not add up). Both must be bounded field teachers (pvdal-*, tensorf, vanilla-nerf, a bounded nerfacto).

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
        grid.mark(torch.cat([first.occupancy_grid.occupied_centres(),
                             second.occupancy_grid.occupied_centres() * self.scale + self.offset]), dilation=1)
        capabilities = (first.capabilities & second.capabilities) & (Capability.RAYS | Capability.IMAGES
                                                                     | Capability.POINTS)
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
        sigma_a = a.density * _inside(self.first.sampling.scene_box.aabb, positions)
        sigma_b = b.density / self.scale * _inside(self.second.sampling.scene_box.aabb, local)
        sigma = sigma_a + sigma_b
        raw = torch.log(sigma.clamp_min(1e-9))
        rgb = None
        if directions is not None:
            assert a.rgb is not None and b.rgb is not None
            rgb = (sigma_a * a.rgb + sigma_b * b.rgb) / sigma.clamp_min(1e-9)
            rgb = torch.where(sigma > 1e-9, rgb, (a.rgb + b.rgb) / 2)
        return PointOutputs(raw, rgb, None)


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
