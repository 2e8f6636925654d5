"""Reading nerfstudio checkpoints safely with torch ≥ 2.6 (``weights_only=True``).

nerfstudio's checkpoints hold scheduler states with NumPy scalars, which the weights-only unpickler
rejects. Rather than disabling it (a checkpoint is a pickle), the few NumPy types involved are
allow-listed — also for nerfstudio's own ``torch.load`` calls in ``ns-eval``/``ns-render``/
``ns-viewer``, because importing this package registers them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch


def allow_numpy_scalars() -> None:
    """Allow-list the NumPy scalar reconstructors that nerfstudio checkpoints contain."""
    from numpy.core.multiarray import scalar  # the name nerfstudio checkpoints pickle (numpy < 2)

    safe = [scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.int64))]
    torch.serialization.add_safe_globals(safe)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """``torch.load`` a nerfstudio checkpoint on the CPU with ``weights_only=True``.

    Raises:
        pickle.UnpicklingError / RuntimeError / OSError from torch for unreadable files.
    """
    allow_numpy_scalars()
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(loaded: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model's state dict out of a pipeline checkpoint (``_model.`` prefix and DDP ``module.`` removed)."""
    state = loaded["pipeline"]
    out = {}
    for key, value in state.items():
        if key.startswith("_model."):
            key = key[len("_model.") :]
            out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def fill_missing_defaults(config: Any) -> Any:
    """Give a config read from an older ``config.yml`` the fields added since, with their defaults.

    YAML-loaded dataclasses skip ``__init__``, so a field the file does not name would be missing.
    Recurses into nested dataclass configs; returns ``config``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    for f in dataclasses.fields(config):
        if f.name not in vars(config):
            if f.default is not dataclasses.MISSING:
                setattr(config, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(config, f.name, f.default_factory())  # type: ignore[misc]
        else:
            fill_missing_defaults(getattr(config, f.name))
    return config
