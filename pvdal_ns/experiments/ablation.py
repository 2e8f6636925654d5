"""``ns-distill ablation``: paper Table 3 on one teacher → student pair, every run with the same teacher,
steps and seed; and Fig. 6's per-view PSNR distributions (active learning should raise the minimum).

Each finished run is appended to ``ablation.json`` at once (atomically), so an interrupted ablation
keeps its rows and a rerun with the same settings only runs the missing ones; a row killed mid-run continues
from its last checkpoint (:func:`~pvdal_ns.engine.resume.reuse_or_resume`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, get_args

import numpy as np
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.experiments.convert import distillation_config, run_and_evaluate
from pvdal_ns.experiments.report import device_description, versions
from pvdal_ns.presets import AblationRow, size_of
from pvdal_ns.utils.files import pyplot, read_record, save_figure, write_atomic, write_json


def _off(*names: str) -> Callable[[TrainerConfig], None]:
    def apply(config: TrainerConfig) -> None:
        pipeline = config.pipeline
        for name in names:
            owner, attr = name.split(".")
            target = {"loss": pipeline.loss, "al": pipeline.al, "pipeline": pipeline}[owner]  # type: ignore[attr-defined]
            setattr(target, attr, None if attr == "density_clip" else 0.0 if attr.endswith("weight") else False)

    return apply


def _without_volume_loss(config: TrainerConfig) -> None:
    """No L_v, with the same stage-3 budget: stage 1 had nothing else to train, so its steps go to stage 2
    (without it, stage 3 and active learning would start earlier and get more steps)."""
    pipeline = config.pipeline
    pipeline.loss.volume_weight = 0.0  # type: ignore[attr-defined]
    pipeline.stage2_steps += pipeline.stage1_steps  # type: ignore[attr-defined]


def _without_blockwise(config: TrainerConfig) -> None:
    """Every loss from the first step, with active learning starting where it starts in "all" (the first step
    of stage 3 there; stage 1 only where the student has a ϕ¹ volume feature)."""
    pipeline = config.pipeline
    has_stage1 = pipeline.model.field._target.has_volume_feature  # type: ignore[attr-defined]
    pipeline.al.start_step = (pipeline.stage1_steps if has_stage1 else 0) + pipeline.stage2_steps  # type: ignore[attr-defined]
    pipeline.blockwise = False  # type: ignore[attr-defined]


def _loss_setting(name: str, value: object) -> Callable[[TrainerConfig], None]:
    return lambda config: setattr(config.pipeline.loss, name, value)  # type: ignore[attr-defined]


ROWS: Dict[AblationRow, Callable[[TrainerConfig], None]] = {
    "all": _off(),
    "w/o L_v": _without_volume_loss,
    "w/o L_sigma": _off("loss.density_weight"),
    "w/o L_c": _off("loss.colour_weight"),
    "w/o L_rgb": _off("loss.rgb_weight"),
    "w/o density clipping": _off("loss.density_clip"),
    "w/o block-wise": _without_blockwise,
    "w/o hard poses": _off("al.poses"),
    "w/o hard rays": _off("al.rays"),
    "w/o hard points": _off("al.points"),
    "w/o active learning": _off("al.poses", "al.rays", "al.points"),
    "forward density clipping": _loss_setting("clip_mode", "forward"),
    "normL2 losses": _loss_setting("form", "norm"),
    "w/o warm start": lambda config: setattr(config.pipeline, "warm_start", False),
    "renders only": lambda config: setattr(config.pipeline, "teacher_renders_only", True),
}
"""Table 3's rows: each switches one component off (the paper's "w/o …") and keeps the rest, the stage-3
budget and the active-learning start included. Variants (not in the default rows): the authors' density clip
in the forward pass, their normL2 loss form, no warm start, and "renders only" (plain distillation from the
teacher's images, without any PVD point loss)."""

assert tuple(ROWS) == get_args(AblationRow), "every row of the command line, in its order, switches something"


@dataclass
class AblationSettings:
    """What makes two ablation runs comparable (a rerun reuses rows only when these match)."""

    teacher_config: str
    student: str
    steps: int
    small: bool
    scene: str


def _run_row(settings: AblationSettings, row: str, seed: int, output_dir: Path) -> dict:
    experiment = f"{row.replace('/', '').replace(' ', '-')}-seed{seed}"
    config = distillation_config(Path(settings.teacher_config), settings.student, size_of(settings.small),
                                 Path(settings.scene), output_dir, experiment, settings.steps)
    config.machine.seed = seed
    ROWS[row](config)
    trained = run_and_evaluate(config, f"{row} (seed {seed})", "student", resume=True)  # a killed row continues
    result, report = trained.result, trained.report
    psnr = [float(v["psnr"]) for v in result.per_view]  # type: ignore[arg-type]
    ssim = [float(v["ssim"]) for v in result.per_view]  # type: ignore[arg-type]
    return {
        "row": row, "seed": seed, "psnr": statistics.mean(psnr), "psnr_min": min(psnr), "psnr_max": max(psnr),
        "ssim": statistics.mean(ssim), "ssim_min": min(ssim), "ssim_max": max(ssim),
        "per_view_psnr": [round(p, 3) for p in psnr], "train_seconds": report.train_seconds,
        "seconds_per_step": round(report.train_seconds / max(1, report.steps - report.resumed_at), 4),
        "resumed_at": report.resumed_at, "config": report.config,
    }


def run_ablation(settings: AblationSettings, rows: Sequence[str], seeds: Sequence[int], output_dir: Path) -> List[dict]:
    """Run every (row, seed) not yet in ``output_dir/ablation.json`` and rewrite the table and plot.

    Returns:
        :func:`summarise` of the rows over ``seeds``.

    Raises:
        TeacherLoadError: the teacher cannot be loaded.
    """
    record = output_dir / "ablation.json"
    done: List[dict] = []
    if record.is_file():
        previous = read_record(record, {"settings": dict, "runs": list}, "delete it, and every row is run again",
                               items=("runs", {"row": str, "seed": int, "psnr": (int, float)}))
        if previous.get("settings") == settings.__dict__:
            done = previous["runs"]
            CONSOLE.log(f"Reusing {len(done)} finished runs from {record}")
    for seed in seeds:
        for row in rows:
            if any(r["row"] == row and r["seed"] == seed for r in done):
                continue
            started = time.perf_counter()
            done.append(_run_row(settings, row, seed, output_dir))
            CONSOLE.log(f"{row} (seed {seed}): {done[-1]['psnr']:.2f} dB in {time.perf_counter() - started:.0f} s")
            payload = {"settings": settings.__dict__, "device": device_description(), "versions": versions(),
                       "runs": done}
            write_json(record, payload)
    chosen = [r for r in done if r["seed"] in seeds]
    summary = summarise(chosen, rows)
    write_atomic(output_dir / "ablation.md", lambda p: p.write_text(markdown_table(summary, settings, seeds)))
    plot_per_view(chosen, rows, output_dir / "ablation.png")
    CONSOLE.print(markdown_table(summary, settings, seeds))
    return summary


def summarise(runs: List[dict], rows: Sequence[str]) -> List[dict]:
    """Per row, over its seeds: means of mean/min/max per-view PSNR and SSIM, and of time per step; the
    spread of the seeds' mean PSNR (``psnr_sd``, sample standard deviation, 0 for one seed) and, where "all"
    ran with the same seeds, the mean and spread of each seed's difference from it (``delta``, ``delta_sd``)."""
    out = []
    base = {r["seed"]: r["psnr"] for r in runs if r["row"] == "all"}
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        if not mine:
            continue
        keys = ("psnr", "psnr_min", "psnr_max", "ssim", "ssim_min", "ssim_max", "seconds_per_step")
        summary = {"row": row, "seeds": len(mine), **{k: statistics.mean(r[k] for r in mine) for k in keys}}
        summary["psnr_sd"] = statistics.stdev(r["psnr"] for r in mine) if len(mine) > 1 else 0.0
        deltas = [r["psnr"] - base[r["seed"]] for r in mine if r["seed"] in base]
        if row != "all" and deltas:
            summary["delta"] = statistics.mean(deltas)
            summary["delta_sd"] = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        out.append(summary)
    return out


def markdown_table(summary: List[dict], settings: AblationSettings, seeds: Sequence[int]) -> str:
    """Table 3 as markdown: PSNR mean ± spread over seeds, Δ against "all" (mean ± spread of the per-seed
    differences), per-view PSNR min/max, SSIM, time per step."""
    lines = [
        f"Ablation: {Path(settings.teacher_config).parent.parent.name} teacher → {settings.student} student, "
        f"{settings.steps} steps, seeds {list(seeds)} (mean over seeds ± sample standard deviation), "
        f"{device_description()}",
        "",
        "| run | PSNR mean | Δ vs all | PSNR min | PSNR max | SSIM mean | SSIM min | s/step | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        delta = f"{s['delta']:+.2f} ± {s['delta_sd']:.2f}" if "delta" in s else ""
        lines.append(f"| {s['row']} | {s['psnr']:.2f} ± {s['psnr_sd']:.2f} | {delta} | {s['psnr_min']:.2f} | "
                     f"{s['psnr_max']:.2f} | {s['ssim']:.4f} | {s['ssim_min']:.4f} | {s['seconds_per_step']:.3f} | "
                     f"{s['seeds']} |")
    return "\n".join(lines) + "\n"


def plot_per_view(runs: List[dict], rows: Sequence[str], path: Path) -> None:
    """Fig. 6: the distribution of per-view PSNR of each row (box and points, all seeds)."""
    plt = pyplot()

    present = [row for row in rows if any(r["row"] == row for r in runs)]
    data = [[p for r in runs if r["row"] == row for p in r["per_view_psnr"]] for row in present]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(present), 4.2))
    ax.boxplot(data, whis=(0, 100))
    for i, values in enumerate(data, start=1):
        ax.scatter(np.full(len(values), i) + np.random.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.6)
    ax.set_xticks(range(1, len(present) + 1), present, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("per-view PSNR (dB)")
    ax.set_title("PVD-AL ablation: per-view PSNR on the test views (whiskers: min–max)", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)
