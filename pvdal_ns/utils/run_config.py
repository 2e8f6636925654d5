"""Reading a run's ``config.yml`` (nerfstudio's ``TrainerConfig`` as ``ns-train`` saved it) and finding its
checkpoints: one line for the user when it cannot be read, and the fields added since it was written filled in."""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import re
import sys
import types
import typing
from pathlib import Path, PurePath
from typing import Any, Callable, Dict, Optional, Tuple, Union

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from pvdal_ns.utils.checkpoints import load_checkpoint, model_state
from pvdal_ns.utils.errors import TeacherLoadError, first_line, not_a_run_config

ALWAYS_WRITTEN = ("method_name", "pipeline", "timestamp", "vis")
"""Fields of nerfstudio's ``TrainerConfig`` that every ``config.yml`` names (``ns-train`` writes every field; nerfstudio
1.x has all four), ``vis`` the last of all (YAML's keys are sorted): a file without one of them was cut short.
Fields added since a file was written are filled in instead (:func:`fill_missing_defaults`)."""


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
    missing = [name for name in ALWAYS_WRITTEN if name not in vars(config)]
    if missing:  # ns-train writes every field, keys sorted: a file without these was cut short (or never whole)
        raise TeacherLoadError(f"{role} config {config_path} is cut short: it does not name {', '.join(missing)}, "
                               "which ns-train writes; restore the file or train the run again")
    config = fill_missing_defaults(config)
    problem = wrong_field_type(config)
    if problem is not None:
        raise TeacherLoadError(f"{role} config {config_path} is damaged: {problem}; mend that line or train the run "
                               "again")
    return config


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


def open_run(config_path: Path, role: str, update_config_callback: Optional[Callable[[TrainerConfig], TrainerConfig]]
             = None) -> Tuple[TrainerConfig, Pipeline, Path, int]:
    """A finished or stopped run set up as nerfstudio's ``eval_setup`` does (test mode, the pipeline in eval mode, its
    newest checkpoint loaded), refused in one line where its config.yml, its scene or its newest checkpoint is
    damaged or missing (issue #33: they ended in tracebacks inside nerfstudio, or its ``sys.exit(1)``). Returns what
    ``eval_setup`` does: the config, the pipeline, the checkpoint's path, its step.

    It follows ``eval_setup`` but not in three places, each a way that function failed on runs it was given:

    - the config is the one :func:`read_trainer_config` checked (fields added since filled in), not a second, unchecked
      read of the file;
    - the checkpoint is the newest beside the config.yml (:func:`newest_checkpoint`), wherever the run was recorded
      (``eval_setup`` looks under the recorded ``output_dir``: a moved run, or a config.yml cut short, ended there);
    - the datamanager is the run's own (``eval_setup`` puts the method's registered one, and ``ns-distill`` trains
      stock methods with nerfstudio's ``VanillaDataManager`` where tensorf registers the parallel one).

    ``update_config_callback``: as ``eval_setup``'s, applied before the scene is checked and the pipeline set up.

    Raises:
        TeacherLoadError: the config.yml cannot be read (:func:`read_trainer_config`), the run's scene is not on this
            machine, the run has no checkpoint, or its newest checkpoint cannot be read or does not fit the model its
            config.yml builds (the message names the ``role``, the file and the first line of the reason)."""
    import torch

    config = read_trainer_config(config_path, role)
    if update_config_callback is not None:
        config = update_config_callback(config)
    datamanager = config.pipeline.datamanager
    scene = getattr(datamanager, "data", None) or getattr(getattr(datamanager, "dataparser", None), "data", None)
    if scene is not None and not Path(scene).exists():
        raise TeacherLoadError(f"{role} {config_path} was trained on the scene {scene}, which is not on this machine: "
                               "put the scene back there, or mend the data lines of its config.yml")
    checkpoint = newest_checkpoint(config_path, config)
    try:
        loaded = load_checkpoint(checkpoint)
        model_state(loaded)
    except Exception as err:  # noqa: BLE001 — torch's and model_state's reasons, each one line
        raise TeacherLoadError(f"{role} checkpoint {checkpoint} cannot be read: {first_line(err)}") from None
    config.load_dir = checkpoint.parent
    pipeline = config.pipeline.setup(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                                     test_mode="test")
    pipeline.eval()
    step = loaded.get("step", int(checkpoint.stem.split("-")[-1]))
    try:
        pipeline.load_pipeline(loaded["pipeline"], step)
    except RuntimeError as err:
        if not str(err).startswith("Error(s) in loading state_dict"):
            raise
        raise TeacherLoadError(f"{role} checkpoint {checkpoint} does not match its config.yml "
                               f"({first_line(err)})") from None
    return config, pipeline, checkpoint, step


def wrong_field_type(config: Any, where: str = "") -> Optional[str]:
    """The first field of a dataclass config, nested configs included (in dicts too: nerfstudio's optimizers), whose
    value is not of its annotated type, as ``pipeline.model.field.resolution is [1, 2], not int``; None when every
    field's is. YAML-loaded dataclasses skip ``__init__``, so nothing else checks a config.yml edited by hand or
    damaged; without this, such a value ends in a traceback deep inside nerfstudio or torch (issue #33).

    Lenient where a config's own defaults are: a float field takes an int, a tuple field a list, a path field a
    string; annotations that cannot be resolved, classes (``_target``) and callables are not checked."""
    if isinstance(config, dict):
        for key, value in config.items():
            problem = wrong_field_type(value, f"{where}{key}.")
            if problem is not None:
                return problem
        return None
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    hints = _field_hints(type(config))
    for f in dataclasses.fields(config):
        if f.name not in vars(config):
            continue
        value, hint = getattr(config, f.name), hints.get(f.name)
        if hint is not None and not _matches(value, hint):
            return f"{where}{f.name} is {value!r:.60}, not {_describe(hint)}"
        problem = wrong_field_type(value, f"{where}{f.name}.")
        if problem is not None:
            return problem
    return None


@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> Dict[str, Any]:
    """The resolved annotations of ``cls``'s fields, each evaluated in the module of the class that declares it;
    a field whose annotation cannot be resolved (a name imported for type checking only) is left out."""
    hints: Dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        module = vars(sys.modules.get(base.__module__, types.ModuleType("none")))
        for name, annotation in vars(base).get("__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, module, dict(vars(base))) if isinstance(annotation, str) else annotation
            except Exception:  # noqa: BLE001 — unresolvable: not checked
                hints.pop(name, None)
    return hints


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` (leniently: see :func:`wrong_field_type`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar) or origin is type or hint is type:
        return True
    if origin is Union or (sys.version_info >= (3, 10) and origin is types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    if origin is not None or not isinstance(hint, type):
        return True  # Callable, Annotated, other generics: not checked
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if issubclass(hint, PurePath):
        return isinstance(value, (PurePath, str))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """A type annotation as a user reads it: ``int``, ``Optional[pathlib.Path]``."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
