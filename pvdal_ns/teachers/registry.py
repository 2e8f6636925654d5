"""Load any trained run as a frozen teacher: the explicit table of teacher families, and the loader.

The loader reads ``config.yml`` and the newest checkpoint beside it, and hands them to the family whose
model config the run has: it builds the model from the checkpoint alone (no images, no dataset,
independent of the working directory). Importing this module registers nothing anywhere: the table below
is the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.instant_ngp import InstantNGPModelConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.models.tensorf import TensoRFModelConfig
from nerfstudio.models.vanilla_nerf import VanillaModelConfig

from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.models.pvd_model import PVDModelConfig
from pvdal_ns.teachers.base import Teacher
from pvdal_ns.teachers.pvd import load_pvd_teacher
from pvdal_ns.teachers.stock import load_field_teacher, load_splatfacto_teacher
from pvdal_ns.utils.checkpoints import load_checkpoint, model_state
from pvdal_ns.utils.errors import TeacherLoadError, first_line
from pvdal_ns.utils.run_config import newest_checkpoint, read_trainer_config

Loader = Callable[..., Teacher]
"""(trainer config, model state, step, device, source path, student Sampling or None) → Teacher."""


@dataclass(frozen=True)
class TeacherFamily:
    """One kind of trained run that can teach.

    Attributes:
        name: the family as users know it (the ``ns-train`` method).
        model_config: the model-config class of its runs (subclasses included).
        load: builds the teacher from the run's config and checkpoint.
    """

    name: str
    model_config: Type
    load: Loader


TEACHER_FAMILIES: Tuple[TeacherFamily, ...] = (
    TeacherFamily("pvdal-*", PVDModelConfig, load_pvd_teacher),
    TeacherFamily("nerfacto", NerfactoModelConfig, partial(load_field_teacher, "nerfacto", "field")),
    TeacherFamily("instant-ngp", InstantNGPModelConfig, partial(load_field_teacher, "instant-ngp", "field")),
    TeacherFamily("tensorf", TensoRFModelConfig, partial(load_field_teacher, "tensorf", "field")),
    TeacherFamily("vanilla-nerf", VanillaModelConfig, partial(load_field_teacher, "vanilla-nerf", "field_fine")),
    TeacherFamily("splatfacto", SplatfactoModelConfig, load_splatfacto_teacher),
)
"""Every teacher family, in the order a run's model config is matched against them."""


def load_teacher(config_path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 sampling: Optional[Sampling] = None) -> Teacher:
    """Load the newest checkpoint of a training run as a frozen :class:`Teacher`.

    Args:
        config_path: the run's ``config.yml``; its checkpoints are found beside it, whatever the
            working directory.
        device: where the teacher runs ("cpu", "cuda", "cuda:0"): the checkpoint is read onto the CPU, the model
            built there and moved, with its occupancy grid, to ``device``. Stock field families (instant-ngp
            included) need no compiled CUDA extension; splatfacto needs CUDA and gsplat's kernels.
        sampling: the student's scene box and occupancy-grid settings; stock teachers (which have no
            compatible occupancy grid) build theirs with them. Required for stock teachers.

    Raises:
        TeacherLoadError: missing or unreadable config, no checkpoint, an unsupported model family,
            a checkpoint that does not match the config, or a splatfacto teacher where CUDA or gsplat's kernels
            are missing.
    """
    config_path = Path(config_path).expanduser().resolve()
    config, family, checkpoint = _teacher_run(config_path)
    loaded = _read_checkpoint(checkpoint)
    return family.load(config, model_state(loaded), int(loaded.get("step", 0)), device, config_path, sampling)


def _read_checkpoint(checkpoint: Path) -> Dict[str, Any]:
    """A teacher's checkpoint, read (``weights_only``) and checked to hold a pipeline state of tensors.

    Raises:
        TeacherLoadError: it cannot be read, or holds no such state (torch's or ``model_state``'s reason)."""
    try:
        loaded = load_checkpoint(checkpoint)
        model_state(loaded)
    except Exception as err:  # noqa: BLE001 — torch's and model_state's reasons, each one line
        raise TeacherLoadError(f"teacher checkpoint {checkpoint} cannot be read: {first_line(err)}") from None
    return loaded


def _teacher_run(config_path: Path) -> Tuple[TrainerConfig, TeacherFamily, Path]:
    """The run's config, its teacher family and its newest checkpoint, without loading it.

    Raises:
        TeacherLoadError: missing or unreadable config, an unsupported model family (nerfstudio's default pipeline
            of an interrupted ``ns-train`` included), no checkpoint."""
    config = read_trainer_config(config_path)
    model = getattr(config.pipeline, "model", None)
    family = next((f for f in TEACHER_FAMILIES if isinstance(model, f.model_config)), None)
    if family is None:
        supported = ", ".join(f.name for f in TEACHER_FAMILIES)
        raise TeacherLoadError(
            f"teacher {config_path} is a '{config.method_name}' model ({type(model).__name__}); "
            f"supported teacher families: {supported}"
        )
    return config, family, newest_checkpoint(config_path, config)


def check_teacher_run(config_path: Union[str, Path], read_checkpoint: bool = False) -> TrainerConfig:
    """What :func:`load_teacher` checks before building the model: a readable config of a supported family with a
    checkpoint, and with ``read_checkpoint`` that checkpoint readable and holding a pipeline state; for the command
    line to refuse a bad teacher before anything runs (no model is built).

    Raises:
        TeacherLoadError: as :func:`load_teacher`, whether the state fits the model apart."""
    config, _, checkpoint = _teacher_run(Path(config_path).expanduser().resolve())
    if read_checkpoint:
        _read_checkpoint(checkpoint)
    return config


def teacher_contraction(config_path: Union[str, Path]) -> Optional[bool]:
    """Whether a teacher's run contracts space, as far as its config.yml says: nerfacto and instant-ngp do
    unless ``disable_scene_contraction``; None where the config does not say (a pvdal-* run's own setting is
    in its checkpoint, and its grid brings it; tensorf, vanilla-nerf and splatfacto have none).

    Raises:
        TeacherLoadError: the config is missing or unreadable."""
    model = read_trainer_config(Path(config_path).expanduser().resolve()).pipeline.model
    if isinstance(model, (NerfactoModelConfig, InstantNGPModelConfig)):
        return not model.disable_scene_contraction
    return None
