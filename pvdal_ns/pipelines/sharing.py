"""What several students trained together share (docs/design.md, "Several students, one teacher"): the key of what
a pseudo-label batch depends on, and, while :func:`sharing` is active, one loaded teacher and one source of batches
per key."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from nerfstudio.cameras.cameras import Cameras

from pvdal_ns.data.datamanager import DistillationDataManagerConfig
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.run_config import newest_checkpoint, read_trainer_config

TEACHER_KEYS = ("teacher", "checkpoint", "scene_box", "grid_resolution", "num_samples", "grid_threshold", "contracted",
                "early_stop_eps", "alpha_thre", "edit")
"""The entries of :func:`batch_key` a loaded teacher depends on (its sample points included)."""


def batch_key(teacher_config: Optional[Path], datamanager: DistillationDataManagerConfig, sampling: Sampling,
              cameras: Cameras, renders_only: bool, serial: bool,
              edit: Optional[SceneEditConfig] = None) -> Dict[str, Any]:
    """What a pseudo-label batch depends on: the teacher (config.yml and its newest checkpoint), where the
    shared samples lie (scene box, contraction, grid, samples per ray, threshold, early stop, alpha threshold, proposal
    sampling), the rays
    per batch, the novel poses (per epoch, steps per epoch, elevation range, forward-facing margin and jitter), the
    training cameras (digest), renders-only distillation, whether they come from a teacher cache (serial mode), and
    the edits the teacher goes through (``edit``; None or empty: none).
    The arguments are the pipeline's settings of those names (``DistillationPipelineConfig``).

    A teacher cache stores it (``written_for`` in meta.json) and refuses a run whose key differs; during
    :func:`sharing`, students with equal keys train on one source of batches, and those with equal
    :data:`TEACHER_KEYS` entries load one teacher.

    Raises:
        TeacherLoadError: the teacher's config.yml is unreadable or the run has no checkpoint.
    """
    teacher = checkpoint = None
    if teacher_config is not None:
        path = Path(teacher_config).expanduser().resolve()
        ckpt = newest_checkpoint(path, read_trainer_config(path))
        teacher, checkpoint = str(path), f"{ckpt.name} ({ckpt.stat().st_size} bytes)"
    camera_values = [cameras.camera_to_worlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width,
                     cameras.height]
    digest = hashlib.sha1(torch.cat([v.flatten().double() for v in camera_values]).cpu().numpy().tobytes())
    return {
        "teacher": teacher, "checkpoint": checkpoint,
        "scene_box": sampling.scene_box.aabb.flatten().tolist(), "grid_resolution": sampling.grid_resolution,
        "num_samples": sampling.num_samples, "grid_threshold": sampling.grid_threshold,
        "contracted": sampling.contracted, "early_stop_eps": sampling.early_stop_eps, "alpha_thre": sampling.alpha_thre,
        "proposal": None if sampling.proposal is None else sampling.proposal.key(),
        "rays_per_batch": datamanager.train_num_rays_per_batch, "poses_per_epoch": datamanager.poses_per_epoch,
        "steps_per_epoch": datamanager.steps_per_epoch,
        "elevation_percentiles": list(datamanager.elevation_percentiles),
        "forward_facing_margin": datamanager.forward_facing_margin, "jitter_degrees": datamanager.jitter_degrees,
        "cameras": digest.hexdigest(), "renders_only": renders_only, "serial": serial,
        "edit": None if edit is None or edit.empty else edit.key(),
    }


_SHARED: Optional[Dict[str, Any]] = None


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """While active, pipelines set up share what their :func:`batch_key` says they can: one loaded teacher
    for equal teacher entries, one source of pseudo-labels (:mod:`pvdal_ns.data.pseudo_labels`) for equal keys
    (several students, one teacher pass per batch). The first pipeline to make a source of batches leads it: its
    errors drive active learning."""
    global _SHARED
    _SHARED = {}
    try:
        yield
    finally:
        _SHARED = None


def shared(kind: str, key: Dict[str, Any], build: Callable[[], Any]) -> Tuple[Any, bool]:
    """The object ``build`` makes for ``key``, made once while :func:`sharing` is active; and whether this
    call made it."""
    if _SHARED is None:
        return build(), True
    name = kind + json.dumps(key, sort_keys=True)
    made = name not in _SHARED
    if made:
        _SHARED[name] = build()
    return _SHARED[name], made
