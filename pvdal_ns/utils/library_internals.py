"""The private parts of other libraries this package relies on, each read or patched here and nowhere else, with
the version it was written against (nerfstudio 1.1.5, nerfacc 0.5.2, torch, torchmetrics 1.x). When one of them
changes, this module is the one to mend.

* nerfstudio's ``Trainer._start_step``: the first step a set-up trainer runs (:func:`trainer_start_step`).
* nerfacc's ``OccGridEstimator._update``: one pass of the occupancy update with a given threshold and decay
  (:func:`update_occupancy`).
* torch's ``Module._non_persistent_buffers_set``: buffers of a module built by another library kept out of its
  checkpoints (:func:`keep_buffers_out_of_checkpoints`).
* torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` as nerfstudio's stock models build it eagerly, replaced
  while they are set up without its weights on disk (:func:`offline_lpips`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn

from pvdal_ns.utils.metrics import lpips_weights_path


def trainer_start_step(trainer) -> int:
    """The first step a set-up nerfstudio ``Trainer`` runs: 0, or past the checkpoint it loaded (nerfstudio 1.1.5
    keeps it in the private ``_start_step``, set by ``Trainer._load_checkpoint``)."""
    return int(trainer._start_step)


def update_occupancy(grid, occupancy: Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 1"]], threshold: float,
                     ema_decay: float = 1.0) -> None:
    """One pass of nerfacc 0.5.2's occupancy update of the ``OccGridEstimator`` ``grid`` (its private ``_update``,
    which ``update_every_n_steps`` wraps with a step schedule): every cell's occupancy is ``occupancy`` at a jittered
    point in it, blended with its old value by ``ema_decay`` (1.0: a maximum over passes), and cells above
    ``threshold`` are marked occupied.

    Args:
        occupancy: Float[Tensor, "N 3"] points in the grid's coordinates → Float[Tensor, "N 1"] occupancy
            (σ·step, dimensionless).
    """
    grid._update(step=0, occ_eval_fn=occupancy, occ_thre=threshold, ema_decay=ema_decay, warmup_steps=1)


def keep_buffers_out_of_checkpoints(module: nn.Module, names: Iterable[str]) -> None:
    """Leave the buffers ``names`` of ``module`` (registered by another library as persistent) out of its
    ``state_dict``, as ``register_buffer(..., persistent=False)`` would have (torch's private
    ``_non_persistent_buffers_set``); they must be derivable, since a loaded module keeps its own."""
    module._non_persistent_buffers_set.update(names)


class UnavailableLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS when the AlexNet weights are not on disk: no download, NaN."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs) -> Tensor:
        """NaN, a 0-d tensor on the device of the first tensor given (the images), so arithmetic with them works."""
        device = next((a.device for a in args if isinstance(a, Tensor)), None)
        return torch.tensor(float("nan"), device=device)


@contextlib.contextmanager
def offline_lpips() -> Iterator[None]:
    """While active, stock nerfstudio models build :class:`UnavailableLPIPS` instead of torchmetrics'
    LPIPS when its weights are missing, so ``populate_modules`` does not try to download AlexNet and
    crash offline (docs/design.md, "nerfstudio 1.1.5"). With the weights on disk it changes nothing."""
    import torchmetrics.image.lpip as lpip

    if lpips_weights_path().is_file():
        yield
        return
    real = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = UnavailableLPIPS  # type: ignore[misc]
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = real  # type: ignore[misc]
