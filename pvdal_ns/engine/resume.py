"""Reruns of ``ns-distill`` (issue #19): a run of the same settings that finished is reused, one that was killed
continues from its last checkpoint in its own folder; anything else trains afresh.

A run is found under ``<output_dir>/<experiment>/<method>/<timestamp>/`` by its ``config.yml``: the newest one
whose every setting equals the new run's (nerfstudio's ``TrainerConfig`` dataclasses compared whole, timestamp,
``load_dir`` and the device aside: :func:`same_settings`). It finished when ``run.json`` (:func:`mark_finished`,
written once training ends) is beside it; it was killed when it has a checkpoint and no ``run.json``
(docs/design.md, "Reruns of `ns-distill`").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.utils.errors import BadInputError, TeacherLoadError
from pvdal_ns.utils.files import read_record, write_json
from pvdal_ns.utils.run_config import read_trainer_config

RECORD = "run.json"
"""Written beside ``config.yml`` once a run's training ends: its training seconds and steps."""


@dataclass
class FinishedRun:
    """A run that finished training (``run.json``).

    Attributes:
        config_path: its ``config.yml``.
        seconds: training wall time (s) of the process that ended it (from ``start_step``).
        steps: the run's planned steps (its last checkpoint is step ``steps - 1``).
        start_step: the first step that process trained (0 unless it was resumed)."""

    config_path: Path
    seconds: float
    steps: int
    start_step: int = 0


def same_settings(old: TrainerConfig, new: TrainerConfig) -> bool:
    """Whether two runs have every setting equal, their timestamp, ``load_dir`` (where a resume reads) and
    ``machine.device_type`` aside.

    The device is not a setting of the run: a run started on a CPU continues on a GPU and the reverse (``ns-distill``
    picks CUDA where torch sees it, :func:`~pvdal_ns.engine.runner.quiet`). That is sound because a checkpoint is read
    onto the CPU and moved to the run's device (nerfstudio's ``map_location="cpu"``, the pools' and epoch's extra state
    likewise), and what a resume promises is the same: the same steps, stages and schedules to the planned end, not
    the same weights. Weights are bit-equal to an uninterrupted run's only on the CPU with one thread; on CUDA
    scatter/``index_add_`` sums are in no fixed order, and a CPU run continued on CUDA also draws its CUDA random
    numbers (the per-ray backgrounds) from a fresh generator, since a CPU checkpoint holds no CUDA state
    (docs/design.md, "What a resume restores"). The continued run's config.yml records the device it ends on."""
    machine = dataclasses.replace(new.machine, device_type=old.machine.device_type)
    return dataclasses.replace(new, timestamp=old.timestamp, load_dir=old.load_dir, machine=machine) == old


def previous_run(config: TrainerConfig) -> Optional[Path]:
    """The folder of the newest run of ``config``'s settings under its output folder, or None. Folders whose
    ``config.yml`` cannot be read (another version, a plugin not installed) are passed over."""
    method_dir = Path(config.output_dir) / config.experiment_name / config.method_name
    for path in sorted(method_dir.glob("*/config.yml"), reverse=True):  # timestamps sort by time
        try:
            old = read_trainer_config(path, role="earlier run")
        except TeacherLoadError:
            continue
        if same_settings(old, config):
            return path.parent
    return None


def reuse_or_resume(config: TrainerConfig) -> Optional[FinishedRun]:
    """The finished run of ``config``'s settings, if there is one. Otherwise None, and ``config`` is set to continue
    a killed run of the same settings in its folder (``timestamp``, ``load_dir``; nerfstudio's resume, checked and
    ended at the planned step by :class:`~pvdal_ns.engine.trainer.PVDTrainer`), or left to start afresh. One log line
    says which.

    Raises:
        BadInputError: the run's ``run.json`` is damaged (:func:`read_finished`)."""
    folder = previous_run(config)
    if folder is None:
        return None
    finished = read_finished(folder / "config.yml")
    if finished is not None:
        CONSOLE.log(f"Reusing the finished run {folder} (delete it to train again)")
        return finished
    checkpoints = sorted((folder / "nerfstudio_models").glob("step-*.ckpt"))
    if not checkpoints:
        CONSOLE.log(f"{folder} stopped before its first checkpoint: training afresh")
        return None
    config.timestamp = folder.name
    config.load_dir = folder / "nerfstudio_models"
    CONSOLE.log(f"Resuming the killed run {folder} from {checkpoints[-1].name}")
    return None


def read_finished(config_path: Path) -> Optional[FinishedRun]:
    """The :class:`FinishedRun` of the run whose ``config.yml`` is ``config_path``, from its ``run.json``; None when it
    has none (it did not finish, or another program trained it).

    Raises:
        BadInputError: ``run.json`` is not JSON, or lacks its fields or has them of another type (it is written
            atomically, so only a hand or another program damages it): one line saying to delete it."""
    record = config_path.parent / RECORD
    if not record.is_file():
        return None
    advice = "delete it, and the run is trained again or, as a teacher, reported without its training time"
    info = read_record(record, {"seconds": (int, float), "steps": int}, advice)
    start = info.get("start_step", 0)  # written since runs could resume
    if not isinstance(start, int) or isinstance(start, bool):
        raise BadInputError(f"{record} is damaged ('start_step' is a {type(start).__name__}): {advice}")
    return FinishedRun(config_path, float(info["seconds"]), info["steps"], start)


def mark_finished(config_path: Path, seconds: float, steps: int, start_step: int) -> None:
    """Write ``run.json`` beside ``config_path``: the run's training ended (:class:`FinishedRun`'s fields; seconds in
    s), atomically (:func:`~pvdal_ns.utils.files.write_atomic`).

    Raises:
        OSError: the file cannot be written."""
    info = {"seconds": round(seconds, 1), "steps": steps, "start_step": start_step}
    write_json(config_path.parent / RECORD, info)
