"""Reports of a conversion: a rich table, ``report.json`` and ``comparison.png``.

Files are written to a temporary name and renamed, so an interrupted run never leaves a half-written
report over an earlier one.
"""

from __future__ import annotations

import math
import os
import platform
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from rich import box
from rich.table import Table

from pvdal_ns import __version__
from pvdal_ns.engine.runner import EvalResult
from pvdal_ns.utils.files import pyplot, save_figure, write_json


@dataclass
class ModelReport:
    """One evaluated model (teacher or student) of a report."""

    name: str
    role: str
    architecture: str
    method: str
    psnr: float
    ssim: Optional[float]
    lpips: Optional[float]
    train_seconds: float
    parameters: int
    steps: int
    config: str
    per_view_psnr: List[float] = field(default_factory=list)
    cached: bool = False
    resumed_at: int = 0
    """The step a killed run continued from (0: trained in one go); ``train_seconds`` cover the steps from it."""


def model_report(name: str, role: str, method: str, result: EvalResult, seconds: float, parameters: int, steps: int,
                 config: Path, cached: bool = False, resumed_at: int = 0) -> ModelReport:
    """Collect one model's numbers (``method`` like "pvdal-vm-small" gives the architecture)."""
    architecture = method.removeprefix("pvdal-").removesuffix("-small").removesuffix("-compressed")
    per_view = [round(float(v["psnr"]), 3) for v in result.per_view]  # type: ignore[arg-type]
    return ModelReport(name, role, architecture, method, result.psnr, result.ssim, result.lpips, round(seconds, 1),
                       parameters, steps, str(config), per_view, cached, resumed_at)


def device_description() -> str:
    """The device the run used, in words."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )


def versions() -> Dict[str, str]:
    """Versions of the packages that decide the numbers."""
    from importlib.metadata import version

    return {
        "pvdal_ns": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nerfstudio": version("nerfstudio"),
        "nerfacc": version("nerfacc"),
    }


def peak_memory_gib() -> float:
    """Peak resident memory of this process so far (GiB, Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cuda_used() -> bool:
    """Whether this process has used CUDA (torch initialised it): a run on a CPU of a machine with a GPU has not."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def peak_gpu_memory_gib() -> Optional[float]:
    """Peak GPU memory held by torch's tensors in this process so far (GiB, ``torch.cuda.max_memory_allocated`` of
    the current device: allocations, not the allocator's cache or the CUDA context that ``nvidia-smi`` also counts);
    None when CUDA was not used (:func:`cuda_used`)."""
    return torch.cuda.max_memory_allocated() / 2**30 if cuda_used() else None


def resources_utilization() -> Dict[str, Union[int, str]]:
    """This process's peak memory in nerfbaselines' terms (its ``resources_utilization`` of a results file):
    ``memory``, host peak resident memory (MiB, int, from ``ru_maxrss``: this process, not its children) and, when
    CUDA was used, ``gpu_memory`` (MiB, int, ``torch.cuda.max_memory_allocated``; nerfbaselines reads nvidia-smi's
    per-process figure, which adds torch's cache and the CUDA context) and ``gpu_name`` (the device's name)."""
    info: Dict[str, Union[int, str]] = {"memory": math.ceil(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if cuda_used():
        info["gpu_memory"] = math.ceil(torch.cuda.max_memory_allocated() / 2**20)
        info["gpu_name"] = torch.cuda.get_device_name()
    return info


def write_report(path: Path, models: List[ModelReport], extra: Dict) -> None:
    """Write ``report.json``: ``models`` (one :class:`ModelReport` each), ``device``, ``versions``, peak memory and
    ``extra`` (command, scene, ``total_seconds``…).

    Memory and time, also in nerfbaselines' names: ``peak_memory_gib`` (host, GiB), ``peak_gpu_memory_gib`` (GiB,
    only when CUDA was used, :func:`peak_gpu_memory_gib`), ``resources_utilization`` (:func:`resources_utilization`:
    MiB and the GPU's name) and ``total_train_time`` (s): the models' training seconds summed (each model's
    ``train_seconds``; those of a reused run as recorded when it trained, those of a resumed run from where it
    resumed), evaluation and setup not counted; ``total_seconds`` (when given in ``extra``) is the whole command's
    wall time.

    Raises:
        OSError: the file cannot be written (nothing of it is left, :func:`~pvdal_ns.utils.files.write_atomic`)."""
    payload = {
        "models": [asdict(m) for m in models],
        "device": device_description(),
        "versions": versions(),
        "peak_memory_gib": round(peak_memory_gib(), 2),
        "total_train_time": round(sum(m.train_seconds for m in models), 1),
        "resources_utilization": resources_utilization(),
        **extra,
    }
    gpu = peak_gpu_memory_gib()
    if gpu is not None:
        payload["peak_gpu_memory_gib"] = round(gpu, 3)
    write_json(path, payload)


def _short_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def print_table(models: List[ModelReport]) -> None:
    """Print the comparison table (Δ PSNR against the teacher); report.json has every digit."""
    teacher = next((m for m in models if m.role == "teacher"), None)
    table = Table(
        title="PVD-AL conversion on the test views (PSNR and Δ in dB, training time in s)", box=box.SIMPLE_HEAD
    )
    for col in ("model", "PSNR", "Δ", "SSIM", "LPIPS", "time", "params", "steps"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for m in models:
        delta = "" if teacher is None or m is teacher else f"{m.psnr - teacher.psnr:+.2f}"
        ssim, lpips = ("n/a" if value is None else f"{value:.3f}" for value in (m.ssim, m.lpips))
        seconds = (
            f"{m.train_seconds:.0f}"
            + (f" from step {m.resumed_at}" if m.resumed_at else "")
            + (" cached" if m.cached else "")
        )
        table.add_row(
            m.name, f"{m.psnr:.2f}", delta, ssim, lpips, seconds, _short_count(m.parameters), str(m.steps)
        )
    CONSOLE.print(table)


def save_comparison(path: Path, gt: torch.Tensor, renders: Dict[str, torch.Tensor], psnrs: Dict[str, float],
                    gt_title: str = "ground truth") -> None:
    """``comparison.png``: ground truth | each model (top) and its absolute error map (bottom).

    Args:
        gt: Float[Tensor, "H W 3"] ground truth of one view (an edited conversion's: the edited teacher's render,
            titled ``gt_title``).
        renders: model name → Float[Tensor, "H W 3"] render of that view.
        psnrs: model name → PSNR (dB) of that view.
    """
    plt = pyplot()

    n = 1 + len(renders)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    axes[0, 0].imshow(gt.clamp(0, 1).numpy())
    axes[0, 0].set_title(gt_title, fontsize=9)
    axes[1, 0].text(0.5, 0.5, "|render − truth|\n(0 … 0.25)", ha="center", va="center", fontsize=9)
    for i, (name, img) in enumerate(renders.items(), start=1):
        axes[0, i].imshow(img.clamp(0, 1).numpy())
        axes[0, i].set_title(f"{name}\n{psnrs[name]:.2f} dB", fontsize=9)
        axes[1, i].imshow((img - gt).abs().mean(dim=-1).numpy(), cmap="inferno", vmin=0.0, vmax=0.25)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(path, fig)
