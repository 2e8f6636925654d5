"""pvdal-* models as teachers: their own occupancy grid (or proposal fields), scene box and samples per ray, and the
ϕ¹ volume feature where their field has one (any student, converted again, can teach the next conversion)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
from jaxtyping import Float
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

from pvdal_ns.fields import HashFieldConfig, PointOutputs
from pvdal_ns.fields.hash import TCNN_EXISTS, hash_layout, layout_mismatch
from pvdal_ns.model_components.proposal_sampling import ProposalSampler
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.models.pvd_model import PVDModel
from pvdal_ns.teachers.base import ModelTeacher
from pvdal_ns.utils.errors import TeacherLoadError, first_line


class PVDTeacher(ModelTeacher):
    """A trained :class:`~pvdal_ns.models.pvd_model.PVDModel` as teacher.

    Args:
        model: the model (frozen here).
        source: its config.yml.
    """

    model: PVDModel

    def __init__(self, model: PVDModel, source: Path) -> None:
        capabilities = Capability.RAYS | Capability.IMAGES | Capability.POINTS
        if model.field.has_volume_feature:
            capabilities |= Capability.VOLUME_FEATURE
        proposals = model.sampler.twin() if isinstance(model.sampler, ProposalSampler) else None
        super().__init__(model, source, model.occupancy_grid, model.sampling, capabilities, proposals)

    @property
    def name(self) -> str:
        return type(self.model.field).__name__

    def warm_start_state(self) -> Dict[str, Tensor]:
        return self.model.field.state_dict()

    def _query_points(
        self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]]
    ) -> PointOutputs:
        return self.model.field.query(positions, directions)


def load_pvd_teacher(config, state: Dict[str, Tensor], step: int, device: Union[str, torch.device], source: Path,
                     sampling: Optional[Sampling]) -> PVDTeacher:
    """The pvdal-* model of ``config`` filled from its checkpoint ``state`` (its own scene box and grid: the
    student's ``sampling`` is not used).

    A pvdal-hash teacher is built with the hash grid its checkpoint holds (tiny-cuda-nn's or torch's: the state's
    keys say, whatever its config.yml says, which may predate the field recording it; ``pvdal_ns.fields.hash``).

    Raises:
        TeacherLoadError: the checkpoint has no field box, holds tiny-cuda-nn's hash grid where tinycudann is not
            importable, or does not match its config.yml."""
    aabb = state.get("field.aabb")
    if aabb is None:
        raise TeacherLoadError(f"checkpoint of {source} has no field.aabb: it was not written by a pvdal-* model")
    field = config.pipeline.model.field
    if isinstance(field, HashFieldConfig):
        field.implementation = hash_layout(state, "field.") or field.implementation
        if field.implementation == "tcnn" and not TCNN_EXISTS:
            raise TeacherLoadError(f"checkpoint of {source}: {layout_mismatch('tcnn', 'torch')}")
    model = config.pipeline.model.setup(scene_box=SceneBox(aabb=aabb), num_train_data=1, metadata={})
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = first_line(err)
        raise TeacherLoadError(f"checkpoint of {source} does not match its config.yml ({first})") from None
    model.update_to_step(step)
    return PVDTeacher(model.to(device), source)
