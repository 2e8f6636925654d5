"""A student learns its teacher's scene, in its teacher's world frame: where the scene is found, and the checks that
refuse another one (docs/design.md, "Errors"). ``ns-distill`` runs them before it builds a student's config; the
pipeline runs them again at setup, so ``ns-train … --pipeline.teacher-config`` gets the same one-line refusals.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.trainer import TrainerConfig

from pvdal_ns.utils.errors import BadInputError


def dataparser_name(dataparser: DataParserConfig) -> str:
    """The dataparser's name on the ns-train command line (nerfstudio's registry: ``blender-data``, …)."""
    from nerfstudio.configs.dataparser_configs import all_dataparsers  # on use: it imports every dataparser

    return next((name for name, c in all_dataparsers.items() if type(c) is type(dataparser)), type(dataparser).__name__)


def resolve_data(teacher: TrainerConfig, teacher_path: Path, data: Optional[Path]) -> Path:
    """The scene a student uses (training cameras, test images): ``data`` or the teacher's, found
    relative to the working directory or to the teacher's output folders.

    Raises:
        BadInputError: ``data`` does not exist, or (``data`` None) the teacher's config names no scene or its scene
            is not found."""
    if data is not None:
        if not data.exists():
            raise BadInputError(f"--data {data} does not exist")
        return data
    datamanager = teacher.pipeline.datamanager
    named = getattr(datamanager, "data", None) or getattr(getattr(datamanager, "dataparser", None), "data", None)
    if named is None:
        raise BadInputError(f"the teacher's config {teacher_path} names no scene; pass --data <scene folder> (the "
                            "student needs the training cameras and the test images)")
    recorded = Path(named)
    candidates = ([recorded] if recorded.is_absolute()
                  else [Path.cwd() / recorded, *(p / recorded for p in teacher_path.parents)])
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise BadInputError(f"the teacher's scene {recorded} was not found; pass --data <scene folder> (the student needs "
                        "the training cameras and the test images)")


def check_scene_kind(teacher: TrainerConfig, dataparser: DataParserConfig, data: Path) -> None:
    """Refuse a student's scene of another kind than its teacher's (``dataparser`` of another type).

    Raises:
        BadInputError: one line naming both kinds."""
    theirs = teacher.pipeline.datamanager.dataparser
    if type(dataparser) is not type(theirs):
        raise BadInputError(f"--data {data} is a {dataparser_name(dataparser)} scene, but the teacher was trained on a "
                            f"{dataparser_name(theirs)} one: a student learns its teacher's scene; leave --data out or "
                            "pass the teacher's scene folder")


def check_same_scene(teacher: TrainerConfig, teacher_path: Path, dataparser: DataParserConfig, data: Path) -> None:
    """Refuse a student whose scene is not its teacher's, or is read in another world frame:

    - another kind of scene (:func:`check_scene_kind`);
    - another scene of the same kind: none of ``data``'s training cameras is one of the teacher's (both read with the
      teacher's dataparser settings, so in one world frame; two blender scenes share their box but not their
      cameras). A copy of the teacher's scene at another resolution keeps its cameras. Skipped when the teacher's
      scene folder is not on this machine or ``data`` is that folder;
    - the student's dataparser settings put ``data`` in another world frame than the teacher's settings do (its
      ``dataparser_transform`` or ``dataparser_scale`` differ): the shared sample points would not be the same points.

    Raises:
        BadInputError: one line naming which."""
    check_scene_kind(teacher, dataparser, data)
    theirs = teacher.pipeline.datamanager.dataparser

    def parsed(parser_config: DataParserConfig, folder: Path):
        parser = copy.deepcopy(parser_config)
        parser.data = folder
        return parser.setup().get_dataparser_outputs(split="train")

    differing = _differing_settings(theirs, dataparser)
    teacher_frame = None
    if differing:  # the same settings read one folder in one frame: nothing to parse
        teacher_frame, student_frame = parsed(theirs, data), parsed(dataparser, data)
        same = torch.allclose(teacher_frame.dataparser_transform, student_frame.dataparser_transform, atol=1e-5)
        if not same or abs(teacher_frame.dataparser_scale - student_frame.dataparser_scale) > 1e-6:
            raise BadInputError(f"the student's {dataparser_name(dataparser)} settings read {data} in another world "
                                f"frame than its teacher's (another dataparser_transform or scale: "
                                f"{', '.join(differing)}); train it with the teacher's dataparser settings")
    try:
        recorded = resolve_data(teacher, teacher_path, None)
    except BadInputError:
        return
    if recorded.resolve() == data.resolve():
        return
    ours = (teacher_frame or parsed(theirs, data)).cameras.camera_to_worlds[:, :3, 3]
    own = parsed(theirs, recorded)
    box = own.scene_box.aabb
    tolerance = 1e-4 * float((box[1] - box[0]).norm())
    if not bool((torch.cdist(ours, own.cameras.camera_to_worlds[:, :3, 3]).min(dim=1).values < tolerance).any()):
        raise BadInputError(f"--data {data} shares no training camera with the teacher's scene {recorded}: it is "
                            "another scene; a student learns its teacher's scene, so leave --data out or pass that "
                            "scene's folder")


IMAGE_SCALE_SETTINGS = ("downscale_factor",)
"""The dataparser settings of an image scale (nerfstudio-data's and others' ``downscale_factor``), which a student
takes from its teacher with the datamanager's ``camera_res_scale_factor`` (:func:`take_teacher_image_scale`)."""


def take_teacher_image_scale(teacher: TrainerConfig, datamanager: DataManagerConfig) -> List[str]:
    """Give a student's ``datamanager`` its teacher's image scale: the ``camera_res_scale_factor`` and the
    dataparser's :data:`IMAGE_SCALE_SETTINGS` that both have. A teacher trained at a reduced scale holds the
    detail of that scale only: distilled and evaluated at full size its student comes out blurred, against a teacher
    it was never compared with (issue #33). ``ns-distill`` does so for every student; ``ns-train …
    --pipeline.teacher-config`` unless ``--pipeline.teacher-image-scale False``
    (:class:`~pvdal_ns.engine.trainer.PVDTrainer`).

    Returns:
        the settings changed, as ``name student→teacher`` (empty: the scales were the same already)."""
    changed = []
    theirs = teacher.pipeline.datamanager
    pairs = [(theirs, datamanager, ("camera_res_scale_factor",)),
             (getattr(theirs, "dataparser", None), getattr(datamanager, "dataparser", None), IMAGE_SCALE_SETTINGS)]
    for source, target, names in pairs:
        for name in names:
            if not (hasattr(source, name) and hasattr(target, name)):  # hasattr(None, …) is False
                continue
            value = getattr(source, name)
            if value != getattr(target, name):
                changed.append(f"{name} {getattr(target, name)!r}→{value!r}")
                setattr(target, name, value)
    return changed


def _differing_settings(theirs: DataParserConfig, ours: DataParserConfig) -> List[str]:
    """The settings (but the folder) in which two dataparser configs of one type differ, as ``name teacher→student``."""
    names = [n for n in vars(theirs) if n not in ("data", "_target")]
    return [f"{n} {getattr(theirs, n)!r}→{getattr(ours, n, None)!r}" for n in names
            if getattr(theirs, n) != getattr(ours, n, None)]


def teacher_edits(teacher: TrainerConfig, teacher_path: Path) -> List[Dict[str, Any]]:
    """The edits the teacher's scene has gone through, in order (issue #34: chained conversions chain edits): the
    ``edits_before`` its own config records, then the edit it was distilled with, if any; [] for a stock run or a
    chain without edits. A student records them as its ``pipeline.edits_before``."""
    pipeline = teacher.pipeline
    chain = [dict(entry) for entry in getattr(pipeline, "edits_before", None) or []]
    edit = getattr(pipeline, "edit", None)
    if edit is not None and not edit.empty:
        chain.append({**edit.key(), "applied": f"distilled from {pipeline.teacher_config} into {teacher_path}"})
    return chain
