"""``ns-distill``: convert trained radiance fields between architectures with PVD-AL.

    ns-distill demo                                  # embedded lego: teacher → hash, vm, mlp, tensors
    ns-distill run --teacher outputs/…/config.yml --student mlp [vm …] [--steps N]
    ns-distill ablation                              # paper Table 3 on the embedded scene (VM → MLP)
    ns-distill matrix                                # paper Table 2: every teacher into every student
    ns-distill compare --teacher outputs/…/config.yml --student mlp   # distilled against from scratch
    ns-distill view --student outputs/…/config.yml [--teacher …]      # the viewer: student beside its teacher
    ns-distill run --teacher … --student mlp --erase X0 Y0 Z0 X1 Y1 Z1  # an edited conversion (paper §4.5)
    ns-distill edit --run <pvdal-tensors config.yml> --erase … [--preview]   # edit SH voxels, or preview an edit

Heavy imports (torch, nerfstudio) happen inside the commands, so ``--help`` and errors about bad input
are fast. Bad input prints one line and exits with code 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import tyro
from typing_extensions import Annotated

from pvdal_ns.presets import (
    ARCHITECTURES,
    DEMO_TEACHER,
    DEMO_TEACHER_STEPS,
    PAPER_ABLATION_ROWS,
    PRESETS,
    AblationRow,
    Architecture,
    Size,
    demo_steps,
    finetune_start,
    size_of,
)
from pvdal_ns.utils.edit_config import SceneEditConfig


@dataclass
class Demo:
    """On the embedded 100×100 lego scene: train a teacher (cached; a rerun reuses it), distil it into
    all four architectures, evaluate everything on the 10 test views and write report.json and
    comparison.png. A rerun with the same settings reuses the runs that finished and continues killed ones
    from their last checkpoint."""

    output_dir: Path = Path("outputs/demo")
    """Where runs, report.json and comparison.png go."""
    teacher: Architecture = DEMO_TEACHER
    """Architecture of the teacher trained from the images."""
    teacher_steps: int = DEMO_TEACHER_STEPS
    """Training steps of the teacher."""
    students: Tuple[Architecture, ...] = ARCHITECTURES
    """Architectures to distil into."""
    student_steps: Dict[str, int] = field(default_factory=demo_steps)
    """Distillation steps per student architecture (stages 1 and 2 take 15 % and 25 % of them, 10 % and
    10 % for the MLP, whose steps have 512 rays instead of 2048); the defaults fit the whole demo in
    about 20 minutes on 2 CPU cores."""
    small: bool = True
    """Use the CPU-sized presets (pvdal-*-small); --no-small for the paper's sizes."""

    def main(self, command: str) -> None:
        """Run the demo; ``command`` is recorded in report.json."""
        from pvdal_ns import EMBEDDED_SCENE
        from pvdal_ns.experiments.convert import convert, finish, train_or_reuse_teacher

        started = time.perf_counter()
        out = self.output_dir.resolve()
        size = size_of(self.small)
        teacher = train_or_reuse_teacher(self.teacher, size, EMBEDDED_SCENE, out, self.teacher_steps)
        steps = {**demo_steps(), **self.student_steps}
        students = convert(Path(teacher.report.config), self.students, size, EMBEDDED_SCENE, out, steps, "students",
                           resume=True)
        finish(out, [teacher, *students], started, {"command": command, "scene": str(EMBEDDED_SCENE)})


@dataclass
class Run:
    """Convert a trained model (the teacher: any pvdal-* method, nerfacto, instant-ngp, tensorf,
    vanilla-nerf, or splatfacto on a GPU) into one or more architectures and report them."""

    teacher: Path
    """config.yml of the trained teacher run (as written by ns-train)."""
    student: Tuple[Architecture, ...]
    """Architectures to convert into; several train together, from one teacher pass per batch."""
    separately: bool = False
    """With several students: convert them one after another instead of together."""
    steps: Optional[int] = None
    """Distillation steps (default: the preset's)."""
    data: Optional[Path] = None
    """Scene folder for the training cameras and the test images (default: the teacher's)."""
    output_dir: Path = Path("outputs/distill")
    """Where the run, report.json and comparison.png go."""
    small: bool = True
    """Use the CPU-sized preset (pvdal-<student>-small); --no-small for the paper's sizes."""
    teacher_cache: Optional[Path] = None
    """Serial mode: a folder for the teacher's rendered batches. Missing: the teacher renders them first and
    is then released; present (a cache of the same teacher and settings): reused, no teacher loaded."""
    teacher_cache_gib: float = 4.0
    """Bound on the size of a teacher cache written by this run (GiB); longer runs cycle through it."""
    renders_only: bool = False
    """Distil from the teacher's rendered images only (no point losses); always so for splatfacto."""
    finetune_steps: int = 0
    """Fine-tune on the real training images for the last N of the steps, after distillation (paper Table 6)."""
    resume: bool = False
    """Continue the newest run of the same settings under --output-dir: a student that finished is evaluated again,
    not retrained; one that was killed continues from its last checkpoint; any other trains afresh."""
    edit: Annotated[SceneEditConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneEditConfig)
    """Edits of the teacher the students learn (--erase, --keep, --recolor, repeatable; the viewer's world frame):
    the students are scored against the edited teacher's renders."""

    def main(self, command: str) -> None:
        """Run the conversion; raises BadInputError / TeacherLoadError for bad input."""
        from pvdal_ns.experiments.convert import check_teacher, convert, evaluate_teacher, finish
        from pvdal_ns.pipelines.teacher_scene import resolve_data

        started = time.perf_counter()
        teacher_path = self.teacher.expanduser().resolve()
        teacher_config = check_teacher(teacher_path)
        data = resolve_data(teacher_config, teacher_path, self.data)
        out = self.output_dir.resolve()
        cache = None if self.teacher_cache is None else self.teacher_cache.expanduser().resolve()
        students = convert(teacher_path, list(self.student), size_of(self.small), data, out,
                           {a: self.steps for a in self.student},
                           f"from-{teacher_config.method_name}", together=not self.separately,
                           teacher_cache=cache, teacher_cache_gib=self.teacher_cache_gib,
                           renders_only=self.renders_only,
                           finetune_steps=self.finetune_steps, resume=self.resume, edit=self.edit)
        extra = {"command": command, "teacher_config": str(teacher_path), "scene": str(data)}
        if not self.edit.empty:
            extra["edit"] = {**self.edit.key(), "description": self.edit.describe(),
                             "students_scored_against": "the edited teacher's renders of the test views"}
        if cache is not None:
            from pvdal_ns.teachers import cache_nbytes

            extra["teacher_cache"] = {"path": str(cache), "bytes": cache_nbytes(cache)}
        # the teacher's row: its test views at its image scale, which the students inherit; this command trained
        # the students only, so they make the total training time
        extra["total_train_time"] = round(sum(s.report.train_seconds for s in students), 1)
        finish(out, [evaluate_teacher(teacher_path, data), *students], started, extra)


@dataclass
class Ablation:
    """Paper Table 3 on the embedded scene: distil the demo teacher into one student with every PVD-AL
    component on, then with each switched off (same teacher, steps and seeds). Writes ablation.md,
    ablation.json and ablation.png (per-view PSNR distributions, Fig. 6) under the output folder; a
    rerun with the same settings only runs the rows not yet measured."""

    output_dir: Path = Path("outputs/ablation")
    """Where the runs, ablation.md, ablation.json and ablation.png go."""
    teacher: Optional[Path] = None
    """config.yml of the teacher; default: the demo's teacher (trained and cached under --teacher-dir)."""
    teacher_dir: Path = Path("outputs/demo")
    """Where the demo's cached teacher is looked for (and trained if missing)."""
    student: Architecture = "mlp"
    """Architecture of the student."""
    steps: Optional[int] = None
    """Distillation steps of every run; default: the preset's ablation steps (1200 at 2048 rays a step, 4800
    for the MLP's 512 rays: the same rays seen)."""
    rows: Tuple[AblationRow, ...] = PAPER_ABLATION_ROWS
    """The runs of the table."""
    seeds: Tuple[int, ...] = (0,)
    """Every row runs once per seed; the table gives means over seeds."""

    def main(self, command: str) -> None:
        """Run the missing rows and write the table."""
        from pvdal_ns import EMBEDDED_SCENE
        from pvdal_ns.experiments.ablation import AblationSettings, run_ablation
        from pvdal_ns.experiments.convert import check_teacher, train_or_reuse_teacher

        if self.teacher is None:
            teacher = train_or_reuse_teacher(DEMO_TEACHER, "small", EMBEDDED_SCENE, self.teacher_dir.resolve(),
                                             DEMO_TEACHER_STEPS)
            teacher_path = Path(teacher.report.config)
        else:
            teacher_path = self.teacher.expanduser().resolve()
            check_teacher(teacher_path)
        steps = self.steps or PRESETS[self.student, "small"].ablation_steps
        settings = AblationSettings(str(teacher_path), self.student, steps, True, str(EMBEDDED_SCENE))
        run_ablation(settings, self.rows, self.seeds, self.output_dir.resolve())


@dataclass
class Matrix:
    """Paper Table 2: train a teacher of every architecture from the scene's images (cached; a rerun reuses
    it), distil each into every student architecture (the students of one teacher together), evaluate on
    the test views. Writes matrix.json (one record per pair), matrix.md (teachers as rows, students as
    columns) and matrix.png (student − teacher PSNR); a rerun with the same settings only runs the missing
    pairs."""

    output_dir: Path = Path("outputs/matrix")
    """Where the runs, matrix.json, matrix.md and matrix.png go."""
    data: Optional[Path] = None
    """Scene folder: blender, nerfstudio-data (transforms.json) or colmap (default: the embedded 100×100 lego)."""
    teachers: Tuple[Architecture, ...] = ARCHITECTURES  # type: ignore[assignment]
    """Teacher architectures (rows)."""
    students: Tuple[Architecture, ...] = ARCHITECTURES  # type: ignore[assignment]
    """Student architectures (columns)."""
    teacher_steps: Dict[str, int] = field(default_factory=dict)
    """Training steps of a teacher, per architecture (default: its preset's teacher_steps)."""
    student_steps: Dict[str, int] = field(default_factory=dict)
    """Distillation steps of a student, per architecture (default: the demo's)."""
    teacher_dir: Optional[Path] = None
    """Where teachers are cached (default: the output folder; outputs/demo reuses the demo's VM teacher)."""
    small: bool = True
    """Use the CPU-sized presets (pvdal-*-small); --no-small for the paper's sizes."""

    def main(self, command: str) -> None:
        """Run the missing pairs and write the table."""
        from pvdal_ns import EMBEDDED_SCENE
        from pvdal_ns.experiments.convert import dataparser_for
        from pvdal_ns.experiments.matrix import MatrixSettings, run_matrix
        from pvdal_ns.presets import matrix_steps

        data = (self.data or EMBEDDED_SCENE).expanduser().resolve()
        dataparser_for(data)  # a scene nerfstudio reads, or one line saying what is missing
        teacher_steps, student_steps = matrix_steps(size_of(self.small))
        settings = MatrixSettings(str(data), self.small, {**teacher_steps, **self.teacher_steps},
                                  {**student_steps, **self.student_steps})
        run_matrix(settings, self.teachers, self.students, self.output_dir.resolve(),
                   None if self.teacher_dir is None else self.teacher_dir.expanduser())


@dataclass
class Compare:
    """One architecture trained two ways under the same wall-clock budget: from the scene's images (from
    scratch) and distilled from the teacher; plus stock nerfstudio methods trained from the images. Each run is
    evaluated on the test views at intervals of training time (evaluation not counted). Writes compare.csv,
    compare.json (curves, time to reach each other run's final PSNR, the speed-up of distilled over from
    scratch) and compare.png (PSNR against seconds)."""

    teacher: Path
    """config.yml of the trained teacher run (as written by ns-train)."""
    student: Architecture
    """The architecture to train both ways."""
    budget_seconds: float = 600.0
    """Training wall time of every run (s); sized for a 2-core CPU and the CPU presets."""
    stock: Tuple[str, ...] = ("tensorf",)
    """Stock methods to train from the images too (tensorf, nerfacto, vanilla-nerf; instant-ngp needs CUDA)."""
    steps: Optional[int] = None
    """Planned steps of the pvdal runs (their schedules); default: the preset's. A run stops at the budget."""
    evaluations: int = 10
    """Evaluations per run, evenly spaced in log time, the last at the end."""
    data: Optional[Path] = None
    """Scene folder (default: the teacher's)."""
    output_dir: Path = Path("outputs/compare")
    """Where the runs, compare.csv, compare.json and compare.png go."""
    size: Size = "small"
    """The student's preset, for both runs: small (pvdal-<student>-small), paper (the paper's sizes) or compressed
    (pvdal-<student>-compressed, fewer parameters, paper Table 7; mlp and tensors); with --steps and a large
    --budget-seconds the two runs train the same number of steps, as Table 7 compares them."""

    def main(self, command: str) -> None:
        """Run the comparison."""
        from pvdal_ns.experiments.compare import CompareSettings, run_compare
        from pvdal_ns.experiments.convert import check_teacher
        from pvdal_ns.pipelines.teacher_scene import resolve_data

        teacher_path = self.teacher.expanduser().resolve()
        data = resolve_data(check_teacher(teacher_path), teacher_path, self.data)
        settings = CompareSettings(str(teacher_path), self.student, str(data), self.size, self.budget_seconds,
                                   self.steps, self.evaluations, tuple(self.stock))
        run_compare(settings, self.output_dir.resolve())


@dataclass
class View:
    """Open nerfstudio's viewer on a finished student with its teacher loaded: the Output type list adds
    teacher_rgb, teacher_depth, error (|student − teacher|), split (teacher left, student right) and hard_rays,
    and the student's hard-pose pool is drawn as frustums. Ctrl-C stops it. ns-viewer --load-config shows the
    student alone."""

    student: Path
    """config.yml of the student run (as written by ns-train or ns-distill)."""
    teacher: Optional[Path] = None
    """config.yml of the teacher to compare with (default: the one the student was distilled from)."""
    port: Optional[int] = None
    """Websocket port of the viewer (default: nerfstudio's, 7007, or the next free one)."""

    def main(self, command: str) -> None:
        """Serve the viewer until interrupted; raises BadInputError / TeacherLoadError for bad input."""
        from pvdal_ns.experiments.convert import view

        try:
            view(self.student, self.teacher, self.port)
        except KeyboardInterrupt:
            print("ns-distill view: stopped")


@dataclass
class Edit:
    """Edit a scene without training (paper §4.5): with --preview, render any run and the run edited at its first
    test views (preview.png), to find the box; without, write the edit into a pvdal-tensors run's SH voxels as a new
    run, which then serves as a teacher (ns-distill run --teacher <it> --student mlp). Boxes are in the viewer's
    world frame; a VM, hash or MLP run is refused with the conversion route."""

    run: Path
    """config.yml of the run to edit (a pvdal-tensors run) or to preview (any teacher family)."""
    edit: Annotated[SceneEditConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneEditConfig)
    """--erase, --keep, --recolor (repeatable), --recolor-mode."""
    preview: bool = False
    """Render the run and the edited run at its test views (preview.png) instead of writing a run."""
    views: int = 4
    """How many test views --preview renders."""
    data: Optional[Path] = None
    """--preview: the scene folder (default: the run's)."""
    output_dir: Path = Path("outputs/edited")
    """Where the edited run (or preview.png) goes."""

    def main(self, command: str) -> None:
        """Preview or write the edit; raises BadInputError / TeacherLoadError for bad input."""
        from pvdal_ns.experiments.edit import edit_tensors_run, preview

        run, out = self.run.expanduser().resolve(), self.output_dir.expanduser().resolve()
        if self.preview:
            preview(run, self.edit, out, self.data, self.views)
        else:
            edit_tensors_run(run, self.edit, out)


Commands = Union[
    Annotated[Demo, tyro.conf.subcommand(name="demo")],
    Annotated[Run, tyro.conf.subcommand(name="run")],
    Annotated[Ablation, tyro.conf.subcommand(name="ablation")],
    Annotated[Matrix, tyro.conf.subcommand(name="matrix")],
    Annotated[Compare, tyro.conf.subcommand(name="compare")],
    Annotated[View, tyro.conf.subcommand(name="view")],
    Annotated[Edit, tyro.conf.subcommand(name="edit")],
]


def _quick_checks(command: Union[Demo, Run, Ablation, Matrix, Compare, View, Edit]) -> None:
    """Checks that need no heavy import, so bad input fails in a moment."""
    from pvdal_ns.utils.errors import not_a_run_config  # light: rich and nerfstudio's console only
    output_dir = getattr(command, "output_dir", None)
    if output_dir is not None:
        existing = output_dir.expanduser().absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise SystemExit(_error(f"--output-dir {output_dir} cannot be written ({existing} is "
                                    f"{'a file' if not existing.is_dir() else 'not writable'}): choose another folder"))
    if isinstance(command, (Demo, Matrix)):
        for what in ("teacher_steps", "student_steps"):
            per_architecture = getattr(command, what)
            for arch, steps in (per_architecture.items() if isinstance(per_architecture, dict) else ()):
                if arch not in ARCHITECTURES:
                    raise SystemExit(_error(f"--{what.replace('_', '-')} names {arch!r}, "
                                            f"not one of {', '.join(ARCHITECTURES)}"))
                if steps < 1:
                    raise SystemExit(_error(f"--{what.replace('_', '-')} {arch} must be at least 1, got {steps}"))
    if isinstance(command, Ablation) and command.steps is not None and command.steps < 1:
        raise SystemExit(_error(f"--steps must be at least 1, got {command.steps}"))
    if isinstance(command, Compare):
        if command.budget_seconds <= 0:
            raise SystemExit(_error(f"--budget-seconds must be positive, got {command.budget_seconds}"))
        if command.evaluations < 1:
            raise SystemExit(_error(f"--evaluations must be at least 1, got {command.evaluations}"))
        if command.steps is not None and command.steps < 1:
            raise SystemExit(_error(f"--steps must be at least 1, got {command.steps}"))
        if (command.student, command.size) not in PRESETS:
            sizes = [a for a in ARCHITECTURES if (a, command.size) in PRESETS]
            raise SystemExit(_error(f"--size {command.size} exists for {' and '.join(sizes)} students only, "
                                    f"not {command.student}"))
    runs = [("teacher", command.teacher)] if isinstance(command, (Run, Ablation, Compare)) else []
    if isinstance(command, View):
        runs = [("student", command.student), ("teacher", command.teacher)]
    if isinstance(command, Edit):
        runs = [("run", command.run)]
        if command.views < 1:
            raise SystemExit(_error(f"--views must be at least 1, got {command.views}"))
    for role, path in runs:
        problem = None if path is None else not_a_run_config(role, path.expanduser())
        if problem is not None:
            raise SystemExit(_error(problem))
    if isinstance(command, Run):
        if command.steps is not None and command.steps < 1:
            raise SystemExit(_error(f"--steps must be at least 1, got {command.steps}"))
        if len(set(command.student)) != len(command.student):
            raise SystemExit(_error(f"--student names an architecture twice: {' '.join(command.student)}"))
        try:
            finetune_start(command.steps or sys.maxsize, command.finetune_steps, "--steps")
        except ValueError as error:
            raise SystemExit(_error(f"--finetune-steps {error}")) from None
        if command.teacher_cache_gib <= 0:
            raise SystemExit(_error(f"--teacher-cache-gib must be positive, got {command.teacher_cache_gib}"))
        cache = command.teacher_cache
        if cache is not None and cache.expanduser().exists() and not (cache.expanduser() / "meta.json").is_file():
            raise SystemExit(_error(f"--teacher-cache {cache} exists but is not a finished pvdal teacher cache: "
                                    "delete it or choose another path"))


def _error(message: str) -> int:
    print(f"ns-distill: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line and run; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    command = tyro.cli(Commands, args=args, description=__doc__)
    _quick_checks(command)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch/nerfstudio deprecations at import
    warnings.filterwarnings("ignore", category=UserWarning)
    from pvdal_ns.utils.errors import PVDError
    from pvdal_ns.utils.files import exclusive

    # one command at a time writes a folder: its output folder and the folder it trains or reuses the demo's teacher in
    folders: Dict[Path, str] = {}
    for flag, name in (("--output-dir", "output_dir"), ("--teacher-dir", "teacher_dir")):
        folder = getattr(command, name, None)
        if folder is not None:
            folders.setdefault(folder.expanduser().resolve(), flag)  # one folder is locked once
    try:
        with contextlib.ExitStack() as locks:
            for folder, flag in folders.items():
                locks.enter_context(exclusive(folder, f"{flag} {folder}"))
            command.main(" ".join(["ns-distill", *args]))
    except PVDError as err:  # the library's one error class (docs/design.md, "Errors")
        return _error(str(err))
    except KeyboardInterrupt:
        return _error("interrupted; finished runs and their checkpoints are kept under the output folder")
    return 0


def entrypoint() -> None:
    """Console-script entry point of ``ns-distill``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
