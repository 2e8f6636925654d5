"""Reading nerfstudio checkpoints safely with torch ≥ 2.6 (``weights_only=True``).

nerfstudio's checkpoints hold scheduler states with NumPy scalars, which the weights-only unpickler
rejects. Rather than disabling it (a checkpoint is a pickle), the few NumPy types involved are
allow-listed — also for nerfstudio's own ``torch.load`` calls in ``ns-eval``/``ns-render``/
``ns-viewer``, because importing this package registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

NUMPY_SCALAR_NAMES = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
"""The names a pickled NumPy scalar's reconstructor goes by: numpy < 2 writes the first, numpy ≥ 2 the second
(its ``numpy.core`` became ``numpy._core``)."""


def allow_numpy_scalars() -> None:
    """Allow-list the NumPy scalar reconstructors that nerfstudio checkpoints contain, under both names
    (:data:`NUMPY_SCALAR_NAMES`), so that a checkpoint written with numpy 1 loads with numpy 2 and the reverse.

    torch's weights-only unpickler matches a pickled global by its ``module.name`` string; the
    ``(callable, "module.name")`` form of ``add_safe_globals`` (torch ≥ 2.6) binds both names to the one function.
    Each name is resolved here from ``numpy._core`` (numpy ≥ 1.26 ships it; numpy 2 warns on ``numpy.core``).
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import scalar
    safe = [(scalar, name) for name in NUMPY_SCALAR_NAMES]
    torch.serialization.add_safe_globals(safe + [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.int64))])


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """``torch.load`` a nerfstudio checkpoint on the CPU with ``weights_only=True``.

    Raises:
        pickle.UnpicklingError / RuntimeError / OSError from torch for unreadable files.
    """
    allow_numpy_scalars()
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(loaded: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model's state dict out of a pipeline checkpoint (``_model.`` prefix and DDP ``module.`` removed).

    Raises:
        ValueError: ``loaded`` is not a nerfstudio checkpoint: not a dict, no ``pipeline`` state (a dict of tensors
            and modules' extra states), or a ``step`` that is not an integer (the message says which)."""
    state = loaded.get("pipeline") if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError("it holds no pipeline state (not a nerfstudio checkpoint, or damaged)")
    if not isinstance(loaded.get("step", 0), int):
        raise ValueError(f"its step is {loaded['step']!r:.40}, not an integer (damaged)")
    out = {}
    for key, value in state.items():
        if key.startswith("_model."):
            key = key[len("_model.") :]
            out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out
