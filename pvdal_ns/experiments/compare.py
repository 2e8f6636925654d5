"""``ns-distill compare``: one architecture trained two ways under the same wall-clock budget — from the scene's
images (from scratch) and distilled from a teacher — and stock nerfstudio methods a user would train instead,
each evaluated on the test views at fixed training times (:func:`~pvdal_ns.engine.runner.train_timed`).

The distilled run's clock starts with the teacher already trained: what a user who has the model pays. On CUDA the
clock waits for the GPU at both ends of every step (:func:`~pvdal_ns.utils.metrics.synchronized_clock`), so seconds and
rays per second count the kernels run, not their launches.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.engine.runner import CurvePoint, train_timed
from pvdal_ns.experiments.convert import (
    STOCK_METHODS,
    count_parameters,
    distillation_config,
    stock_config,
    student_config,
)
from pvdal_ns.experiments.report import device_description, resources_utilization, versions
from pvdal_ns.presets import Size, method_name
from pvdal_ns.teachers.stock import nerfacc_cuda_problem
from pvdal_ns.utils.errors import BadInputError
from pvdal_ns.utils.files import pyplot, save_figure, write_atomic, write_json

CUDA_ONLY = {"instant-ngp": "its nerfacc sampling (packed ray marching) needs CUDA"}
"""Stock methods that cannot train without a GPU, and why."""


def unavailable(method: str) -> Optional[str]:
    """Why the stock ``method`` cannot train on this machine, or None: a :data:`CUDA_ONLY` method without CUDA, or
    instant-ngp where nerfacc's compiled CUDA ops cannot load (:func:`~pvdal_ns.teachers.stock.nerfacc_cuda_problem`:
    nerfacc 0.5.2 does not build with CUDA 13). Such a method is skipped with this reason, on a CPU as on a GPU."""
    if method not in CUDA_ONLY:
        return None
    if not torch.cuda.is_available():
        return f"{CUDA_ONLY[method]}, and this machine has none"
    problem = nerfacc_cuda_problem() if method == "instant-ngp" else None
    return None if problem is None else f"{CUDA_ONLY[method]}, and {problem}"


@dataclass(frozen=True)
class CompareSettings:
    """One comparison.

    Attributes:
        teacher: config.yml of the trained teacher.
        student: the architecture trained from scratch and distilled ("hash", "vm", "mlp", "tensors").
        data: the scene (training images for the from-scratch and stock runs, test views for all).
        size: the student's preset: "small" (pvdal-<student>-small), "paper" or "compressed" (fewer parameters,
            paper Table 7; mlp and tensors), for both the from-scratch and the distilled run.
        budget_seconds: training wall time each run gets (s); evaluation is not counted.
        steps: planned steps of the pvdal runs (their schedules), None for the preset's; a run stops at the
            budget or at its steps, whichever comes first.
        evaluations: evaluations per run, spaced evenly in log time up to the budget (the last at the end).
        stock: stock nerfstudio methods to train from the images too, with their own default steps.
    """

    teacher: str
    student: str
    data: str
    size: Size = "small"
    budget_seconds: float = 600.0
    steps: Optional[int] = None
    evaluations: int = 10
    stock: Tuple[str, ...] = ("tensorf",)

    def eval_seconds(self) -> List[float]:
        """Training times (s) of the evaluations before the last: budget × 2^(−k/2), k = 1 … evaluations − 1."""
        return sorted(self.budget_seconds * 2 ** (-k / 2) for k in range(1, self.evaluations))


def time_to_reach(curve: Sequence[CurvePoint], psnr: float) -> Optional[float]:
    """Training seconds at which ``curve`` first reaches ``psnr`` (dB), interpolated linearly between the two
    evaluations around it (the first evaluation's time when that one already reaches it); None if never."""
    previous = None
    for point in curve:
        if point.psnr >= psnr:
            if previous is None:
                return point.seconds
            fraction = (psnr - previous.psnr) / (point.psnr - previous.psnr)
            return previous.seconds + fraction * (point.seconds - previous.seconds)
        previous = point
    return None


def _configs(settings: CompareSettings, output_dir: Path) -> Tuple[Dict[str, TrainerConfig], Dict[str, str]]:
    """The runs to train (name → config) and the stock methods skipped (name → why)."""
    teacher_path, data = Path(settings.teacher), Path(settings.data)
    distilled = distillation_config(teacher_path, settings.student, settings.size, data, output_dir, "distilled",
                                    settings.steps)
    scratch = student_config(settings.student, settings.size, data, output_dir, "from-scratch", settings.steps, None)
    scratch.pipeline.datamanager.dataparser = copy.deepcopy(
        distilled.pipeline.datamanager.dataparser
    )  # same world frame
    arch = method_name(settings.student, settings.size)
    runs = {f"{arch} from scratch": scratch, f"{arch} distilled": distilled}
    skipped: Dict[str, str] = {}
    for method in settings.stock:
        why = unavailable(method)
        if why is not None:
            skipped[method] = why
            CONSOLE.log(f"Skipping {method}: {why}")
            continue
        from nerfstudio.configs.method_configs import method_configs

        runs[method] = stock_config(method, data, output_dir, method, method_configs[method].max_num_iterations)
    return runs, skipped


def run_compare(settings: CompareSettings, output_dir: Path) -> dict:
    """Train every run under the budget, then write compare.csv, compare.json and compare.png.

    Returns:
        The contents of compare.json: per run its method, steps, training seconds, rays per second, parameters,
        final PSNR and SSIM, curve, and the seconds it took to reach each other run's final PSNR (None: never);
        ``speedup`` (the from-scratch run's time to its own final PSNR over the distilled run's time to it) and
        ``throughput_ratio`` (distilled over from-scratch rays per second); ``skipped`` (stock method → why it cannot
        train here, :func:`unavailable`) and ``resources_utilization`` (peak memory of the process,
        :func:`~pvdal_ns.experiments.report.resources_utilization`).

    Raises:
        BadInputError: a stock method pvdal-ns cannot train.
        TeacherLoadError: the teacher's config cannot be read.
    """
    unknown = [m for m in settings.stock if m not in STOCK_METHODS and m not in CUDA_ONLY]
    if unknown:
        raise BadInputError(f"--stock {' '.join(unknown)}: not a stock method pvdal-ns can train; choose from "
                        f"{', '.join(STOCK_METHODS)}")
    configs, skipped = _configs(settings, output_dir)
    runs: Dict[str, dict] = {}
    for name, config in configs.items():
        run, curve = train_timed(config, name, settings.budget_seconds, settings.eval_seconds())
        rays = config.pipeline.datamanager.train_num_rays_per_batch
        runs[name] = {"method": config.method_name, "steps": run.steps, "seconds": round(run.seconds, 2),
                      "rays_per_second": run.steps * rays / run.seconds, "parameters": count_parameters(run.pipeline),
                      "psnr": curve[-1].psnr, "ssim": curve[-1].ssim, "config": str(run.config_path),
                      "curve": [asdict(p) for p in curve]}
        CONSOLE.log(f"{name}: {curve[-1].psnr:.2f} dB after {run.steps} steps in {run.seconds:.0f} s")
        del run
    curves = {name: [CurvePoint(**p) for p in r["curve"]] for name, r in runs.items()}
    for name, r in runs.items():
        r["time_to_reach"] = {
            other: time_to_reach(curves[name], o["psnr"]) for other, o in runs.items() if other != name
        }
    scratch, distilled = list(runs)[:2]
    own = time_to_reach(curves[scratch], runs[scratch]["psnr"])
    reach = runs[distilled]["time_to_reach"][scratch]
    record = {"settings": asdict(settings), "device": device_description(), "versions": versions(),
              "resources_utilization": resources_utilization(), "runs": runs,
              "skipped": skipped, "speedup": None if not reach else own / reach,
              "throughput_ratio": runs[distilled]["rays_per_second"] / runs[scratch]["rays_per_second"]}
    write_json(output_dir / "compare.json", record)
    write_atomic(output_dir / "compare.csv", lambda p: p.write_text(_csv(runs)))
    plot_compare(runs, settings, output_dir / "compare.png")
    _print(record)
    return record


def _csv(runs: Dict[str, dict]) -> str:
    out = io.StringIO()
    rows = csv.writer(out)
    rows.writerow(["run", "seconds", "steps", "psnr", "ssim"])
    for name, r in runs.items():
        for p in r["curve"]:
            rows.writerow([name, f"{p['seconds']:.2f}", p["steps"], f"{p['psnr']:.4f}", f"{p['ssim']:.5f}"])
    return out.getvalue()


def _print(record: dict) -> None:
    for name, r in record["runs"].items():
        CONSOLE.print(f"{name:36s} {r['psnr']:6.2f} dB  {r['steps']:6d} steps  {r['seconds']:7.1f} s  "
                      f"{r['rays_per_second']:9.0f} rays/s")
    for method, why in record["skipped"].items():
        CONSOLE.print(f"{method:36s} skipped: {why}")
    speedup = record["speedup"]
    CONSOLE.print("distilled reaches the from-scratch run's final PSNR "
                  + ("never, within the budget" if speedup is None else f"{speedup:.1f}× sooner")
                  + f"; throughput distilled / from scratch {record['throughput_ratio']:.2f}")


def plot_compare(runs: Dict[str, dict], settings: CompareSettings, path: Path) -> None:
    """``compare.png``: PSNR on the test views against training seconds (log axis), one line per run."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in runs.items():
        ax.plot([p["seconds"] for p in r["curve"]], [p["psnr"] for p in r["curve"]], marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, evaluation not counted)")
    ax.set_ylabel("PSNR on the test views (dB)")
    ax.set_title(f"{settings.student} student: distilled against from scratch, {settings.budget_seconds:.0f} s budget",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
