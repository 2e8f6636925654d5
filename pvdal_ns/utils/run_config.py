"""Reading a run's ``config.yml`` (nerfstudio's ``TrainerConfig`` as ``ns-train`` saved it) and finding its
checkpoints: one line for the user when it cannot be read, and the fields added since it was written filled in."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml
from nerfstudio.engine.trainer import TrainerConfig

from pvdal_ns.utils.errors import TeacherLoadError, first_line, not_a_run_config


def read_trainer_config(config_path: Path, role: str = "teacher") -> TrainerConfig:
    """Read a nerfstudio ``config.yml``; raises TeacherLoadError with a one-line reason that names the run's
    ``role`` ("teacher", "student")."""
    problem = not_a_run_config(role, config_path)
    if problem is not None:
        raise TeacherLoadError(problem)
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except yaml.constructor.ConstructorError as err:  # a class of a plugin that is not installed here
        named = re.search(r"'([^']+)'", err.problem or "")
        if named and named.group(1).split(".")[0] == "pvdal_ns":  # a run of pvdal-ns before its layers had folders
            raise TeacherLoadError(f"{role} config {config_path} names {named.group(1)}, a class path of pvdal-ns from "
                                   "before its modules moved into layer folders (0.1.0 at commit 03773f9): train "
                                   "the run again with this version") from None
        raise TeacherLoadError(f"{role} config {config_path} names {named.group(1) if named else 'a class'}, "
                               "which cannot be imported here: install the nerfstudio plugin that trained it") from None
    except Exception as err:  # yaml errors, unreadable files
        raise TeacherLoadError(f"{role} config {config_path} is not a readable nerfstudio config: "
                               f"{first_line(err)}") from None
    if not isinstance(config, TrainerConfig):
        raise TeacherLoadError(f"{role} config {config_path} is not a nerfstudio training config (config.yml)")
    return fill_missing_defaults(config)


def newest_checkpoint(config_path: Path, config: TrainerConfig) -> Path:
    """The newest ``step-*.ckpt`` of the run whose ``config.yml`` is ``config_path`` (the one a teacher loads).

    Raises:
        TeacherLoadError: the run has no checkpoint."""
    ckpt_dir = config_path.parent / config.relative_model_dir
    ckpts = sorted(ckpt_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not ckpts:
        raise TeacherLoadError(f"teacher {config_path} has no checkpoint (no step-*.ckpt in {ckpt_dir})")
    return ckpts[-1]


def fill_missing_defaults(config: Any) -> Any:
    """Give a config read from an older ``config.yml`` the fields added since, with their defaults.

    YAML-loaded dataclasses skip ``__init__``, so a field the file does not name would be missing. A field whose
    value for such files differs from its default for new configs names it in its metadata, ``"when_missing"``
    (e.g. ``HashFieldConfig.implementation``: "torch"). Recurses into nested dataclass configs; returns ``config``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    for f in dataclasses.fields(config):
        if f.name not in vars(config):
            if "when_missing" in f.metadata:
                setattr(config, f.name, f.metadata["when_missing"])
            elif f.default is not dataclasses.MISSING:
                setattr(config, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(config, f.name, f.default_factory())  # type: ignore[misc]
        else:
            fill_missing_defaults(getattr(config, f.name))
    return config
