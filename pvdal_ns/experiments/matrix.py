"""``ns-distill matrix``: every teacher architecture into every student architecture (paper Table 2).

Each teacher is trained from the scene's images once and cached
(:func:`~pvdal_ns.experiments.convert.train_or_reuse_teacher`, as the demo's); its students train together from one
teacher pass per batch where their batch settings agree (:func:`~pvdal_ns.experiments.convert.convert` with
``together``). Every finished pair is added to ``matrix.json`` at once (atomically), so an interrupted matrix keeps
what it measured and a rerun with the same settings only runs the missing pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.experiments.convert import Trained, convert, train_or_reuse_teacher
from pvdal_ns.experiments.report import device_description, versions
from pvdal_ns.presets import size_of
from pvdal_ns.utils.files import pyplot, read_record, save_figure, write_atomic, write_json


@dataclass(frozen=True)
class MatrixSettings:
    """What makes two measurements of one pair comparable (a rerun reuses a pair only when these match).

    Attributes:
        scene: the scene folder (blender format) teachers train on and every model is tested on.
        small: the CPU-sized presets (pvdal-*-small) or the paper's sizes.
        teacher_steps: architecture → training steps of that teacher from the images.
        student_steps: architecture → distillation steps of that student.
    """

    scene: str
    small: bool
    teacher_steps: Dict[str, int]
    student_steps: Dict[str, int]

    def pair_key(self, teacher: str, student: str) -> dict:
        """The settings one (teacher, student) record was measured with."""
        return {"scene": self.scene, "small": self.small, "teacher_steps": self.teacher_steps[teacher],
                "student_steps": self.student_steps[student]}


def _record(trained: Trained) -> dict:
    report = asdict(trained.report)
    keys = ("psnr", "ssim", "lpips", "train_seconds", "resumed_at", "parameters", "steps", "config", "per_view_psnr")
    return {k: report[k] for k in keys}


def run_matrix(settings: MatrixSettings, teachers: Sequence[str], students: Sequence[str], output_dir: Path,
               teacher_dir: Optional[Path] = None) -> dict:
    """Measure every (teacher, student) pair not yet in ``output_dir/matrix.json`` and rewrite matrix.md and
    matrix.png.

    Args:
        settings: scene, presets and steps of every run.
        teachers, students: architectures ("hash", "vm", "mlp", "tensors"), in table order.
        output_dir: where the runs and the three files go.
        teacher_dir: where teachers are cached (default ``output_dir``; ``ns-distill demo``'s folder reuses its
            VM teacher).

    Returns:
        The contents of matrix.json: ``teachers`` (architecture → record) and ``pairs`` (one record per pair:
        teacher, student, teacher_psnr, psnr, delta, ssim, lpips or None, train_seconds, parameters, steps).

    Raises:
        TeacherLoadError: a cached teacher cannot be loaded.
    """
    path = output_dir / "matrix.json"
    pair_fields = {"teacher": str, "student": str, "settings": dict}
    record = (read_record(path, {"teachers": dict, "pairs": list}, "delete it, and every pair is measured again",
                          items=("pairs", pair_fields))
              if path.is_file() else {"teachers": {}, "pairs": []})
    record.update(device=device_description(), versions=versions())

    def save() -> None:
        write_json(path, record)

    for teacher_arch in teachers:
        missing = [s for s in students if not any(
            p["teacher"] == teacher_arch and p["student"] == s and p["settings"] == settings.pair_key(teacher_arch, s)
            for p in record["pairs"])]
        if not missing:
            continue
        size = size_of(settings.small)
        teacher = train_or_reuse_teacher(teacher_arch, size, Path(settings.scene),
                                         (teacher_dir or output_dir).resolve(), settings.teacher_steps[teacher_arch])
        record["teachers"][teacher_arch] = {**_record(teacher), "steps": settings.teacher_steps[teacher_arch]}
        trained = convert(Path(teacher.report.config), missing, size, Path(settings.scene), output_dir,
                          {s: settings.student_steps[s] for s in missing}, f"from-{teacher_arch}", together=True,
                          resume=True)  # a student killed mid-run continues from its last checkpoint
        record["pairs"] = [p for p in record["pairs"] if not (p["teacher"] == teacher_arch and p["student"] in missing)]
        for student_arch, student in zip(missing, trained):
            pair = {"teacher": teacher_arch, "student": student_arch, "teacher_psnr": teacher.report.psnr,
                    **_record(student), "delta": student.report.psnr - teacher.report.psnr,
                    "settings": settings.pair_key(teacher_arch, student_arch)}
            record["pairs"].append(pair)
            CONSOLE.log(f"{teacher_arch} → {student_arch}: {pair['psnr']:.2f} dB "
                        f"({pair['delta']:+.2f} against the teacher)")
        save()
    save()
    write_atomic(output_dir / "matrix.md", lambda p: p.write_text(markdown_table(record, teachers, students)))
    plot_matrix(record, teachers, students, output_dir / "matrix.png")
    CONSOLE.print(markdown_table(record, teachers, students))
    return record


def _pair(record: dict, teacher: str, student: str) -> Optional[dict]:
    return next((p for p in record["pairs"] if p["teacher"] == teacher and p["student"] == student), None)


def markdown_table(record: dict, teachers: Sequence[str], students: Sequence[str]) -> str:
    """Table 2's layout: one row per teacher (its own PSNR beside it), one column per student: PSNR (Δ)."""
    lines = [f"PVD-AL conversions on the test views: PSNR in dB (Δ against the teacher); {record['device']}", "",
             "| teacher | teacher PSNR | " + " | ".join(f"→ {s}" for s in students) + " |",
             "|---|---:|" + "---:|" * len(students)]
    for t in teachers:
        if t not in record["teachers"]:
            continue
        cells = []
        for s in students:
            p = _pair(record, t, s)
            cells.append("" if p is None else f"{p['psnr']:.2f} ({p['delta']:+.2f})")
        lines.append(f"| {t} | {record['teachers'][t]['psnr']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_matrix(record: dict, teachers: Sequence[str], students: Sequence[str], path: Path) -> None:
    """``matrix.png``: a heat map of student − teacher PSNR (dB), teachers as rows, each cell annotated."""
    plt = pyplot()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    rows = [t for t in teachers if t in record["teachers"]]
    delta = np.full((len(rows), len(students)), np.nan)
    for i, t in enumerate(rows):
        for j, s in enumerate(students):
            p = _pair(record, t, s)
            if p is not None:
                delta[i, j] = p["delta"]
    low = min(-0.5, float(np.nanmin(delta)) if np.isfinite(delta).any() else -0.5)
    high = max(0.1, float(np.nanmax(delta)) if np.isfinite(delta).any() else 0.1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(students), 1.2 + 0.9 * len(rows)))
    image = ax.imshow(delta, cmap="RdYlGn", norm=TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=high))
    for i, t in enumerate(rows):
        for j, s in enumerate(students):
            p = _pair(record, t, s)
            if p is not None:
                ax.text(j, i, f"{p['psnr']:.2f}\n{p['delta']:+.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(students)), [f"→ {s}" for s in students])
    ax.set_yticks(range(len(rows)), [f"{t} ({record['teachers'][t]['psnr']:.2f})" for t in rows])
    ax.set_xlabel("student")
    ax.set_ylabel("teacher (its PSNR)")
    fig.colorbar(image, ax=ax, label="student − teacher PSNR (dB)")
    ax.set_title("PVD-AL: every teacher into every student (test views)", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)

