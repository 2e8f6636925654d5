"""What ``ns-distill`` does: train (or reuse) a teacher, convert it into students, evaluate and report."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.external import TCNN_EXISTS
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from pvdal_ns.engine.resume import FinishedRun, mark_finished, read_finished, reuse_or_resume
from pvdal_ns.engine.runner import EvalResult, TrainResult, evaluate, quiet, split_dataloader, train, train_together
from pvdal_ns.experiments.report import ModelReport, model_report, print_table, save_comparison, write_report
from pvdal_ns.method_configs import method_config, set_steps
from pvdal_ns.models.pvd_model import PVDModelConfig
from pvdal_ns.pipelines.distillation_pipeline import TEACHER_SEED
from pvdal_ns.pipelines.teacher_scene import (
    check_same_scene,
    check_scene_kind,
    take_teacher_image_scale,
    teacher_edits,
)
from pvdal_ns.presets import Size, checkpoint_interval, finetune_start, method_name
from pvdal_ns.teachers import check_teacher_run, load_teacher
from pvdal_ns.teachers.composed import open_edited_teacher
from pvdal_ns.teachers.edits import check_edit
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError, TeacherLoadError
from pvdal_ns.utils.files import Fields, read_record, write_json
from pvdal_ns.utils.library_internals import offline_lpips
from pvdal_ns.utils.run_config import open_run, read_trainer_config


def dataparser_for(data: Path) -> DataParserConfig:
    """nerfstudio's dataparser for a scene folder, as a user would pick it: ``blender-data`` for
    transforms_train.json (NeRF-synthetic), ``nerfstudio-data`` for a transforms.json (``ns-process-data``),
    ``colmap`` for a COLMAP model in sparse/0 or colmap/sparse/0.

    Raises:
        BadInputError: the folder holds none of them, or images its transforms files name are missing."""
    if (data / "transforms_train.json").is_file():
        _check_images(data, ("transforms_train.json", "transforms_val.json", "transforms_test.json"), ".png",
                      {"camera_angle_x": (int, float), "frames": list})
        return BlenderDataParserConfig(data=data)
    if (data / "transforms.json").is_file():
        _check_images(data, ("transforms.json",), "", {"frames": list})
        return NerfstudioDataParserConfig(data=data)
    for model in ("sparse/0", "colmap/sparse/0"):
        if (data / model).is_dir():
            return ColmapDataParserConfig(data=data, colmap_path=Path(model),
                                          load_3D_points=(data / model / "points3D.txt").is_file()
                                          or (data / model / "points3D.bin").is_file())
    raise BadInputError(f"--data {data} is not a scene folder nerfstudio reads: it has no transforms_train.json "
                    "(blender), transforms.json (nerfstudio-data, from ns-process-data) or sparse/0 (colmap)")


def _check_images(data: Path, transforms: Sequence[str], suffix: str, fields: Fields) -> None:
    """Raise :class:`BadInputError` when a ``transforms`` file of ``data`` is damaged (not JSON, without ``fields``,
    frames without a ``file_path`` and a ``transform_matrix``), or images they name (``file_path``, ``suffix`` added
    where it has none, as blender's) are not on disk. What nerfstudio reads besides is left to it."""
    names = []
    for name in transforms:
        if (data / name).is_file():
            frames = read_record(data / name, fields, "restore it from the capture, or pass another scene",
                                 items=("frames", {"file_path": str, "transform_matrix": list}))["frames"]
            names += [frame["file_path"] for frame in frames]
    missing = [n for n in names if not (data / (n if Path(n).suffix else n + suffix)).exists()]
    if missing:
        raise BadInputError(f"--data {data}: {len(missing)} of the {len(names)} images its transforms files name "
                        f"are missing (first: {missing[0]}): copy them in, or pass the whole scene folder")


def count_parameters(pipeline) -> int:
    """Trainable parameters of a pipeline's model."""
    return sum(p.numel() for p in pipeline.model.parameters())


def student_config(architecture: str, size: Size, data: Path, output_dir: Path, experiment: str,
                   steps: Optional[int], teacher: Optional[Path]) -> TrainerConfig:
    """The ``TrainerConfig`` of one run of ``pvdal-<architecture>[-<size>]`` (a teacher when ``teacher`` is None,
    else a student)."""
    config = quiet(method_config(architecture, size))
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser = dataparser_for(data)
    config.output_dir = output_dir
    config.experiment_name = experiment
    config.pipeline.teacher_config = teacher
    config.steps_per_eval_image = config.steps_per_eval_batch = 10**9  # evaluated once at the end
    return set_steps(config, steps) if steps else config


STOCK_METHODS = ("nerfacto", "instant-ngp", "tensorf", "vanilla-nerf")
"""Stock nerfstudio methods that train here and load as teachers (:mod:`pvdal_ns.teachers.stock`)."""


def stock_config(method: str, data: Path, output_dir: Path, experiment: str, steps: int,
                 rays_per_batch: int = 4096) -> TrainerConfig:
    """nerfstudio's own ``TrainerConfig`` of a stock method (as ``ns-train <method>`` builds it), set up
    for a scene on this machine: its dataparser (:func:`dataparser_for`), the single-process ``VanillaDataManager``,
    the torch implementation where tiny-cuda-nn is missing, no eval during training.

    Build and train it inside :func:`~pvdal_ns.utils.library_internals.offline_lpips` (``runner.train`` does) so the
    model does not try to download LPIPS weights.

    Raises:
        BadInputError: ``method`` is not one of :data:`STOCK_METHODS`.
    """
    from nerfstudio.configs.method_configs import method_configs  # on use: it loads every registered method

    if method not in STOCK_METHODS:
        raise BadInputError(f"unknown stock method {method!r}; choose one of {', '.join(STOCK_METHODS)}")
    config = quiet(copy.deepcopy(method_configs[method]))
    config.pipeline.datamanager = VanillaDataManagerConfig(
        data=data, dataparser=dataparser_for(data), train_num_rays_per_batch=rays_per_batch,
        eval_num_rays_per_batch=rays_per_batch)
    model = config.pipeline.model
    if hasattr(model, "implementation") and not TCNN_EXISTS:
        model.implementation = "torch"
    model.eval_num_rays_per_chunk = 1 << 13
    config.output_dir, config.experiment_name = output_dir, experiment
    config.max_num_iterations = steps
    config.steps_per_save = checkpoint_interval(steps, steps)
    config.steps_per_eval_image = config.steps_per_eval_batch = config.steps_per_eval_all_images = 10**9
    config.mixed_precision = False
    for group in config.optimizers.values():
        scheduler = group.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = steps
    return config


@dataclass
class Trained:
    """A trained model and its evaluation."""

    report: ModelReport
    result: EvalResult


def run_and_evaluate(config: TrainerConfig, name: str, role: str, run: Union[TrainResult, FinishedRun, None] = None,
                     resume: bool = False, data: Optional[Path] = None) -> Trained:
    """Train ``config`` in-process (unless ``run`` already did) and mark it finished (``run.json``), or reopen a
    finished ``run``; then evaluate it on the test views. With ``resume``, a finished run of the same settings is
    reopened instead of training and a killed one continues from its last checkpoint
    (:func:`~pvdal_ns.engine.resume.reuse_or_resume`). ``data``: a reopened run's scene folder, where its config's
    own path does not lead from here."""
    if run is None and resume:
        run = reuse_or_resume(config)
    cached = isinstance(run, FinishedRun)
    if cached:
        run = _reopen(run, role, data)  # type: ignore[arg-type]
    else:
        run = run or train(config, f"{name}: training")
        mark_finished(run.config_path, run.seconds, run.steps, run.start_step)
    edit = getattr(config.pipeline, "edit", None)
    references = None if edit is None or edit.empty else edited_teacher_views(run.pipeline, config)
    result = evaluate(run.pipeline, f"{name}: evaluating", references=references)
    report = model_report(name, role, config.method_name, result, run.seconds, count_parameters(run.pipeline),
                          run.steps, run.config_path, cached=cached, resumed_at=run.start_step)
    return Trained(report, result)


def edited_teacher_views(pipeline: Pipeline, config: TrainerConfig) -> List[Tensor]:
    """What an edited conversion's student is scored against (issue #34): its teacher, edited as the run's
    ``pipeline.edit`` says, rendered at the test views on white (Float[Tensor, "H W 3"] each, CPU), not the
    photographs, which hold what the edit took away.

    Raises:
        TeacherLoadError: the teacher cannot be loaded."""
    device = pipeline.device
    with torch.random.fork_rng():  # a stock teacher's grid is filled from jittered points
        torch.manual_seed(TEACHER_SEED)
        teacher = open_edited_teacher(config.pipeline.teacher_config, config.pipeline.edit, device,
                                      pipeline.model.sampling)
    loader = split_dataloader(pipeline.datamanager, "test")  # type: ignore[arg-type]
    return [teacher.render_camera(camera.to(device)) for camera, _ in loader]


def _reopen(finished: FinishedRun, role: str, data: Optional[Path] = None) -> TrainResult:
    """A finished run loaded from its last checkpoint (nerfstudio's ``eval_setup``; a stock model without fetching
    LPIPS's weights), as training left it; ``data``: its scene's folder, where its config's own path does not lead
    from here.

    Raises:
        TeacherLoadError: its config.yml or checkpoint is damaged (:func:`~pvdal_ns.utils.run_config.open_run`; the
            message names its ``role``)."""
    def at_data(config: TrainerConfig) -> TrainerConfig:
        if data is not None:
            config.pipeline.datamanager.data = data
        return config

    with offline_lpips():
        _, pipeline, _, _ = open_run(finished.config_path, role, update_config_callback=at_data)
    return TrainResult(finished.config_path, finished.seconds, finished.steps, pipeline, start_step=finished.start_step)


def evaluate_teacher(teacher_path: Path, data: Path) -> Trained:
    """The teacher's row of a conversion's report: the teacher run, of any family, evaluated on the scene's test
    views (``data``) at its own image scale, which its students inherit (:func:`distillation_config`), so the rows
    compare the same views at the same size. Its training time is its ``run.json``'s (a run ``ns-distill`` trained),
    else 0 (not known).

    Raises:
        TeacherLoadError: the run cannot be read (:func:`check_teacher_run`)."""
    config = check_teacher_run(teacher_path)
    finished = read_finished(teacher_path) or FinishedRun(teacher_path, 0.0, config.max_num_iterations)
    return run_and_evaluate(config, f"teacher ({config.method_name})", "teacher", finished, data=data)


def train_or_reuse_teacher(architecture: str, size: Size, data: Path, output_dir: Path, steps: int) -> Trained:
    """Train the demo teacher, or reuse the one a previous run left in ``output_dir``.

    The cache is keyed by architecture, preset, steps and scene; ``teacher.json`` beside the run holds
    its training time so a rerun reports it.
    """
    key = f"teacher-{method_name(architecture, size).removeprefix('pvdal-')}-{steps}"
    record = output_dir / f"{key}.json"
    config, name = student_config(architecture, size, data, output_dir, key, steps, None), f"teacher ({architecture})"
    if record.is_file():
        info = read_record(record, {"config": str, "seconds": (int, float)},
                           "delete it, and the teacher is trained again")
        config_path = Path(info["config"])
        if config_path.is_file() and info.get("data") == str(data):
            CONSOLE.log(f"Reusing the cached teacher {config_path} (delete {record} to retrain)")
            return run_and_evaluate(config, name, "teacher", FinishedRun(config_path, info["seconds"], steps))
    trained = run_and_evaluate(config, name, "teacher", resume=True)  # a killed teacher continues
    info = {"config": trained.report.config, "method": trained.report.method, "seconds": trained.report.train_seconds,
            "data": str(data)}
    write_json(record, info)
    return trained


def distillation_config(teacher_path: Path, architecture: str, size: Size, data: Path, output_dir: Path,
                        experiment: str, steps: Optional[int], teacher_grid: Optional[int] = None) -> TrainerConfig:
    """The ``TrainerConfig`` of a student of the teacher at ``teacher_path``. It reads the scene with the
    teacher's dataparser settings (same world frame and scale); a pvdal-* teacher's occupancy grid is
    taken over, so the student gets its ``grid_resolution`` (read from its config unless given).

    Raises:
        TeacherLoadError: the teacher's config.yml is missing or unreadable.
    """
    teacher = read_trainer_config(teacher_path)
    if teacher_grid is None:
        model = teacher.pipeline.model
        teacher_grid = model.grid_resolution if isinstance(model, PVDModelConfig) else None
    config = student_config(architecture, size, data, output_dir, experiment, steps, teacher_path)
    theirs = teacher.pipeline.datamanager.dataparser
    check_scene_kind(teacher, config.pipeline.datamanager.dataparser, data)
    config.pipeline.datamanager.dataparser = copy.deepcopy(theirs)  # its downscale factor with it
    take_teacher_image_scale(teacher, config.pipeline.datamanager)  # the image scale the teacher learnt its detail at
    check_same_scene(teacher, teacher_path, config.pipeline.datamanager.dataparser, data)
    if teacher_grid is not None:
        config.pipeline.model.grid_resolution = teacher_grid
    config.pipeline.edits_before = teacher_edits(teacher, teacher_path)
    return config


def convert(teacher_path: Path, students: Sequence[str], size: Size, data: Path, output_dir: Path,
            steps: Dict[str, Optional[int]], experiment: str, together: bool = False,
            teacher_cache: Optional[Path] = None, teacher_cache_gib: float = 4.0,
            renders_only: bool = False, finetune_steps: int = 0, resume: bool = False,
            edit: Optional[SceneEditConfig] = None) -> List[Trained]:
    """Distil the teacher at ``teacher_path`` into each of ``students`` (``steps`` per architecture, None or
    missing for the preset's): one run after another, or with ``together`` all in one lockstep run that
    renders the teacher once per batch (:func:`~pvdal_ns.engine.runner.train_together`). With ``teacher_cache``
    (serial mode) the first run writes the teacher's batches there (at most ``teacher_cache_gib`` GiB)
    and every run distils from them. ``renders_only``: distil from the teacher's images alone (L_rgb).
    ``finetune_steps``: the last N steps of every run train on the real images (paper Table 6). ``resume``: a
    student whose run of the same settings finished is evaluated, not trained; a killed one continues from its
    last checkpoint (:func:`~pvdal_ns.engine.resume.reuse_or_resume`). ``edit``: the teacher goes through these edits
    and the students are scored against its edited renders (:func:`edited_teacher_views`).

    Raises:
        BadInputError: fine-tuning steps that leave none to distil; an edit that cannot be carried out
            (:func:`~pvdal_ns.teachers.edits.check_edit`)."""
    edit = edit or SceneEditConfig()
    check_edit(edit, finetune_steps)
    configs = [distillation_config(teacher_path, arch, size, data, output_dir, experiment, steps.get(arch))
               for arch in students]
    for config in configs:
        config.pipeline.teacher_cache, config.pipeline.teacher_cache_gib = teacher_cache, teacher_cache_gib
        config.pipeline.teacher_renders_only = renders_only
        config.pipeline.finetune_steps = finetune_steps
        config.pipeline.edit = copy.deepcopy(edit)
        try:
            finetune_start(config.max_num_iterations, finetune_steps, f"the steps of {config.method_name}")
        except ValueError as error:
            raise BadInputError(f"--finetune-steps {error}") from None
    runs: List[Union[TrainResult, FinishedRun, None]] = [reuse_or_resume(c) if resume else None for c in configs]
    todo = [i for i, run in enumerate(runs) if run is None]
    if together and len(todo) > 1:
        trained = train_together([configs[i] for i in todo],
                                 f"students ({', '.join(students[i] for i in todo)}): training")
        for i, run in zip(todo, trained):
            runs[i] = run
    return [run_and_evaluate(config, f"student ({arch})", "student", run)
            for config, arch, run in zip(configs, students, runs)]


def finish(output_dir: Path, models: List[Trained], started: float, extra: dict) -> None:
    """Print the table and write ``report.json`` and ``comparison.png`` under ``output_dir``. With an edit in
    ``extra``, the students were scored against the edited teacher's renders: the image compares every model with
    the edited teacher's render (the teacher's error map shows the edit)."""
    reports = [m.report for m in models]
    print_table(reports)
    view = 0
    edited = "edit" in extra
    gt = models[-1 if edited else 0].result.gt[view]
    renders = {m.report.name: m.result.images[view] for m in models}
    psnrs = {m.report.name: float(m.result.per_view[view]["psnr"]) for m in models}  # type: ignore[arg-type]
    save_comparison(output_dir / "comparison.png", gt, renders, psnrs,
                    "edited teacher" if edited else "ground truth")
    total = {"total_seconds": round(time.perf_counter() - started, 1)}
    write_report(output_dir / "report.json", reports, {**total, **extra})
    CONSOLE.print(f"Wrote {output_dir / 'report.json'} and {output_dir / 'comparison.png'}")


def check_teacher(path: Path, role: str = "teacher") -> TrainerConfig:
    """Read a teacher's (or another ``role``'s) config or raise :class:`BadInputError` with the loader's one-line
    reason; a teacher must also be of a supported family and have a readable checkpoint (``check_teacher_run``)."""
    try:
        if role == "teacher":
            return check_teacher_run(path, read_checkpoint=True)
        return read_trainer_config(path.expanduser().resolve(), role)
    except TeacherLoadError as err:
        raise BadInputError(str(err)) from None


def view(student: Path, teacher: Optional[Path], port: Optional[int]) -> None:
    """``ns-distill view``: nerfstudio's viewer (``ns-viewer``'s ``_start_viewer``) on a finished student, with
    ``teacher`` (default: the one in the student's config) loaded for the comparison outputs and the
    student's hard-pose pool drawn (docs/design.md, "The viewer"). Serves until interrupted.

    Raises:
        BadInputError: the student config is unreadable or not a pvdal-* run, or there is no teacher to load.
        TeacherLoadError: the teacher cannot be loaded."""
    from nerfstudio.scripts.viewer.run_viewer import _start_viewer

    from pvdal_ns.pipelines.distillation_pipeline import DistillationPipelineConfig

    student = student.expanduser().resolve()
    config = check_teacher(student, role="student")
    if not isinstance(config.pipeline, DistillationPipelineConfig):
        raise BadInputError(f"student {student} is a '{config.method_name}' run, not a pvdal-* one: open it with "
                        f"ns-viewer --load-config {student}")
    teacher = teacher or config.pipeline.teacher_config
    if teacher is None:
        raise BadInputError(f"student {student} was trained from images, with no teacher: pass --teacher <config.yml>")
    teacher = Path(teacher).expanduser().resolve()
    check_teacher(teacher)
    config, pipeline, _, step = open_run(student, "student")
    pipeline.conversion.compare_with(load_teacher(teacher, pipeline.device, pipeline.model.sampling),
                                     config.pipeline.al.ray_fraction)
    config.vis = "viewer"  # ns-distill's own runs log to tensorboard (runner.quiet)
    if port is not None:
        config.viewer.websocket_port = port
    _start_viewer(config, pipeline, step)

