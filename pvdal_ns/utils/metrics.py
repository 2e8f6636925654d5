"""Image metrics through torchmetrics: PSNR, SSIM and, only where its weights are on disk, LPIPS; and the clock
that timed spans are read with (:func:`synchronized_clock`).

LPIPS is built on first use and only when torchvision's AlexNet checkpoint is already in the torch hub cache;
otherwise it is reported as missing (``None``) and nothing is downloaded. (Stock nerfstudio models build it eagerly,
which downloads AlexNet and crashes offline: :func:`pvdal_ns.utils.library_internals.offline_lpips`.)
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
"""File name torchvision gives the AlexNet weights LPIPS (net_type="alex") is built on."""


def lpips_weights_path() -> Path:
    """Where torchvision looks for the AlexNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


@functools.lru_cache(maxsize=1)
def _lpips_module():
    if not lpips_weights_path().is_file():
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()


def image_metrics(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Dict[str, Optional[float]]:
    """PSNR (dB, data range 1), SSIM and LPIPS-alex (None when its weights are not on disk), computed on ``pred``'s
    device (a GPU's SSIM of an 800×800 image takes milliseconds, a CPU's about a second).

    Args:
        pred: rendered image in [0, 1].
        gt: ground-truth image in [0, 1], same shape.
    """
    p = pred.clamp(0, 1).permute(2, 0, 1)[None].float()
    g = gt.permute(2, 0, 1)[None].float().to(p.device)
    out: Dict[str, Optional[float]] = {
        "psnr": float(peak_signal_noise_ratio(p, g, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(p, g, data_range=1.0)),
        "lpips": None,
    }
    lpips = _lpips_module()
    if lpips is not None:
        with torch.no_grad():
            out["lpips"] = float(lpips.to(p.device)(p, g))
    return out


def synchronized_clock(device: Union[str, torch.device, None] = None) -> float:
    """``time.perf_counter()`` (seconds, arbitrary origin) once the work queued on ``device`` is done.

    CUDA runs kernels asynchronously: without a synchronisation a clock reading after a step measures how long the
    step took to *launch*, not to run. So on a CUDA ``device`` (``"cuda"``, ``"cuda:0"``, a ``torch.device``) this
    first calls ``torch.cuda.synchronize(device)``; on the CPU (or ``None`` without CUDA in use) it reads the clock
    at once. Read it at the two ends of a timed span (a run's training, a budget's steps). Timing *each* step (the
    runner's ``step_seconds``, a budget checked after every step) therefore synchronises once a step, at the point
    the step ends: the GPU's queue drains there and the next step's launches no longer overlap the last one's
    kernels, which costs a little throughput and is what a per-step time needs. ``None`` means the current CUDA
    device when CUDA has been initialised in this process, else the CPU.
    """
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
