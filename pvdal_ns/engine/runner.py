"""Run nerfstudio training and evaluation in-process, with nerfstudio's progress bars.

Used by ``ns-distill``: it trains with nerfstudio's own ``Trainer`` (checkpoints, writers, callbacks
exactly as ``ns-train``) and evaluates on the full images of a split (the test views by default).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager
from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils import writer
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import get_progress

from pvdal_ns.data.datamanager import float32_intrinsics
from pvdal_ns.pipelines.sharing import sharing
from pvdal_ns.utils.library_internals import offline_lpips, trainer_start_step
from pvdal_ns.utils.metrics import synchronized_clock


def quiet(config: TrainerConfig) -> TrainerConfig:
    """Settings for a scripted run: tensorboard events instead of the viewer, no per-step console table."""
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.viewer.quit_on_train_completion = True
    config.machine.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return config


@dataclass
class TrainResult:
    """A finished training run.

    Times are read with :func:`~pvdal_ns.utils.metrics.synchronized_clock` on the run's device: on CUDA they cover
    the kernels run, not only their launches.

    Attributes:
        config_path: its ``config.yml`` (usable as ``--pipeline.teacher-config`` of another run).
        seconds: wall-clock training time (s), setup excluded.
        steps: optimisation steps.
        pipeline: the trained pipeline, in memory.
        step_seconds: wall time (s) from the end of each step to the end of the next (:func:`train` only; the
            first step is left out). On CUDA each step's end synchronises the device to read it.
        start_step: the first step trained here: 0, or where a resumed run (``load_dir``) continued; ``seconds``
            cover the steps from it.
    """

    config_path: Path
    seconds: float
    steps: int
    pipeline: Pipeline
    step_seconds: List[float] = field(default_factory=list)
    start_step: int = 0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch, as ``ns-train`` does with ``machine.seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup_trainer(config: TrainerConfig) -> Trainer:
    """Seed, write config.yml and set up nerfstudio's ``Trainer`` (LPIPS of stock models not downloaded). A run that
    resumes (``load_dir``, :func:`~pvdal_ns.engine.resume.reuse_or_resume`) writes its config.yml, as it was before
    the trainer shortened it to the steps left, once its checkpoint has loaded: a refused resume leaves the killed
    run's folder as it was."""
    set_seed(config.machine.seed)
    config.set_timestamp()
    resuming = copy.deepcopy(config) if config.load_dir is not None else None
    if resuming is None:
        config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    with offline_lpips():  # stock models build LPIPS in populate_modules
        trainer.setup()
    if resuming is not None:
        resuming.save_config()
    return trainer


def train(config: TrainerConfig, description: str) -> TrainResult:
    """Train ``config`` with nerfstudio's ``Trainer`` and a progress bar.

    The config is written to ``<output_dir>/<experiment>/<method>/<timestamp>/config.yml`` first,
    as ``ns-train`` does; checkpoints go beside it. Randomness is seeded with ``config.machine.seed``
    before the model is built, as ``ns-train`` does. ``seconds`` and ``step_seconds`` are read with
    :func:`~pvdal_ns.utils.metrics.synchronized_clock` (on CUDA: once before training, after every step, once after).
    """
    trainer = _setup_trainer(config)
    first, steps = _span(trainer)
    ends: List[float] = []
    device = trainer.device

    def after_step(step: int) -> None:
        ends.append(synchronized_clock(device))
        progress.update(task, completed=step + 1)

    with get_progress(description) as progress:
        task = progress.add_task("", total=steps, completed=first)
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step))
        start = synchronized_clock(device)
        trainer.train()
        seconds = synchronized_clock(device) - start
    trainer.shutdown()
    step_seconds = [b - a for a, b in zip(ends, ends[1:])]
    return TrainResult(config.get_base_dir() / "config.yml", seconds, steps, trainer.pipeline, step_seconds, first)


def _span(trainer: Trainer) -> Tuple[int, int]:
    """The first step a set-up trainer runs (past its checkpoint when resumed) and the step its run ends at
    (:class:`~pvdal_ns.engine.trainer.PVDTrainer` has shortened a resumed run's ``max_num_iterations`` to the
    steps left)."""
    start = trainer_start_step(trainer)
    return start, start + trainer.config.max_num_iterations


def _train_step(trainer: Trainer, step: int) -> None:
    """One step of nerfstudio 1.1.5's ``Trainer.train`` loop (``nerfstudio/engine/trainer.py``, lines 246–309)
    through the trainer's public methods: ``pipeline.train()``, the ``BEFORE_TRAIN_ITERATION`` callbacks,
    ``train_iteration``, the ``AFTER_TRAIN_ITERATION`` callbacks, the loss and metrics logging at
    ``steps_per_log``, ``eval_iteration``, ``save_checkpoint`` at ``steps_per_save`` and
    ``writer.write_out_storage()``. Left out: the viewer, pausing, and the timing events. A nerfstudio upgrade
    that changes those lines needs this checked."""
    trainer.step = step
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    loss, loss_dict, metrics_dict = trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    if step_check(step, trainer.config.logging.steps_per_log, run_at_zero=True):
        writer.put_scalar(name="Train Loss", scalar=loss, step=step)
        writer.put_dict(name="Train Loss Dict", scalar_dict=loss_dict, step=step)
        writer.put_dict(name="Train Metrics Dict", scalar_dict=metrics_dict, step=step)
    if trainer.pipeline.datamanager.eval_dataset:
        trainer.eval_iteration(step)
    if step_check(step, trainer.config.steps_per_save):
        trainer.save_checkpoint(step)
    writer.write_out_storage()


def _finish(trainer: Trainer) -> None:
    """The end of ``Trainer.train`` (``_after_train``, lines 324–346): the last checkpoint, the remaining events,
    the ``AFTER_TRAIN`` callbacks; then the trainer's shutdown."""
    trainer.save_checkpoint(trainer.step)
    writer.write_out_storage()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step=trainer.step, location=TrainingCallbackLocation.AFTER_TRAIN)
    trainer.shutdown()


def train_together(configs: List[TrainerConfig], description: str) -> List[TrainResult]:
    """Train several students of one teacher in lockstep, one teacher pass per batch.

    Each config gets its own nerfstudio ``Trainer`` (config.yml, checkpoints, tensorboard events and
    callbacks as ``ns-train`` writes them). They are set up inside :func:`~pvdal_ns.pipelines.sharing.sharing`, most
    steps first: they load the teacher once, and students whose batches agree
    (:func:`~pvdal_ns.pipelines.sharing.batch_key`) train on one source of pseudo-label batches, led by the one with
    the most steps (its errors drive active learning); students with other batch settings get their own
    batches from the same teacher. Every step, the students train one after another, leaders first; a
    student with fewer steps stops early, and a resumed one (``load_dir``) joins at the step after its checkpoint.

    Each step is nerfstudio's loop body (:func:`_train_step`), each end its ``_after_train`` (:func:`_finish`).

    Returns:
        One TrainResult per config, in the order given; ``seconds`` is the wall time of that student's own
        iterations (the shared teacher render of a step is counted in the first student to train at that step),
        read with :func:`~pvdal_ns.utils.metrics.synchronized_clock` before and after each (on CUDA: a synchronisation
        per student and step, where each student's time ends).
    """
    order = sorted(range(len(configs)), key=lambda i: -configs[i].max_num_iterations)  # leaders first
    trainers: Dict[int, Trainer] = {}
    writers: Dict[int, list] = {}
    with sharing():
        for i in order:
            writer.EVENT_WRITERS.clear()  # each Trainer adds its own writers to nerfstudio's global list
            trainers[i] = _setup_trainer(configs[i])
            writers[i] = list(writer.EVENT_WRITERS)
    seconds = dict.fromkeys(order, 0.0)
    spans = {i: _span(trainers[i]) for i in order}
    first, total = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
    with get_progress(description) as progress:
        task = progress.add_task("", total=total, completed=first)
        for step in range(first, total):
            for i in order:
                trainer = trainers[i]
                if not spans[i][0] <= step < spans[i][1]:
                    continue
                writer.EVENT_WRITERS[:] = writers[i]
                started = synchronized_clock(trainer.device)
                _train_step(trainer, step)
                seconds[i] += synchronized_clock(trainer.device) - started
            progress.update(task, completed=step + 1)
    results = []
    for i, config in enumerate(configs):
        trainer = trainers[i]
        writer.EVENT_WRITERS[:] = writers[i]
        _finish(trainer)
        results.append(TrainResult(config.get_base_dir() / "config.yml", seconds[i], spans[i][1], trainer.pipeline,
                                   start_step=spans[i][0]))
    writer.EVENT_WRITERS.clear()
    return results


@dataclass
class CurvePoint:
    """One evaluation of a run under a time budget: training seconds and steps so far, PSNR (dB) and SSIM on the
    test views (SSIM None where the model gives none)."""

    seconds: float
    steps: int
    psnr: float
    ssim: Optional[float]


def train_timed(config: TrainerConfig, description: str, budget_seconds: float,
                eval_seconds: List[float], eval_downscale: int = 1) -> Tuple[TrainResult, List[CurvePoint]]:
    """Train ``config`` until its ``max_num_iterations`` or ``budget_seconds`` of training, whichever comes first,
    evaluating on the test views (at 1 / ``eval_downscale`` of their size, see :func:`evaluate`) each time the
    training time passes one of ``eval_seconds`` and at the end.

    Training time is the wall time of the steps (nerfstudio's loop body, :func:`_train_step`), each read with
    :func:`~pvdal_ns.utils.metrics.synchronized_clock` before and after it (on CUDA the device is synchronised at both
    ends of every step: the budget is checked after each); evaluations are not counted. The learning-rate
    schedules stay those of ``max_num_iterations``: a run the budget stops is what a user gets who stops it then.

    Returns:
        The run (``seconds``: training time; ``steps``: steps done) and its curve, one point per evaluation.
    """
    trainer = _setup_trainer(config)
    pending = sorted(t for t in eval_seconds if t < budget_seconds)
    curve: List[CurvePoint] = []
    seconds, steps = 0.0, 0

    def evaluate_now() -> None:
        result = evaluate(trainer.pipeline, f"{description}: evaluating at {seconds:.0f} s", downscale=eval_downscale)
        curve.append(CurvePoint(round(seconds, 2), steps, result.psnr, result.ssim))

    with get_progress(description) as progress:
        task = progress.add_task("", total=budget_seconds)
        for step in range(config.max_num_iterations):
            started = synchronized_clock(trainer.device)
            _train_step(trainer, step)
            seconds += synchronized_clock(trainer.device) - started
            steps = step + 1
            progress.update(task, completed=min(seconds, budget_seconds))
            if seconds >= budget_seconds:
                break
            if pending and seconds >= pending[0]:
                while pending and seconds >= pending[0]:
                    pending.pop(0)
                evaluate_now()
    evaluate_now()
    _finish(trainer)
    return TrainResult(config.get_base_dir() / "config.yml", seconds, steps, trainer.pipeline), curve


@dataclass
class EvalResult:
    """Metrics of a model on one split of the scene (its test views unless told).

    Attributes:
        psnr: mean over the views; ssim, lpips: means, or None where the model gives none (LPIPS without its weights).
        per_view: one ``{"psnr", "ssim", "lpips"}`` per view, in dataset order.
        images: rendered Float[Tensor, "H W 3"] per view (CPU), ground truth in ``gt``.
    """

    psnr: float
    ssim: Optional[float]
    lpips: Optional[float]
    per_view: List[Dict[str, Optional[float]]] = field(default_factory=list)
    images: List[torch.Tensor] = field(default_factory=list)
    gt: List[torch.Tensor] = field(default_factory=list)


def _score(value) -> Optional[float]:
    """A metric of ``get_image_metrics_and_images`` as a float; None for a missing or NaN one."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def split_dataloader(datamanager: VanillaDataManager, split: str) -> FixedIndicesEvalDataloader:
    """Every image of one split of the scene, in order, as ``fixed_indices_eval_dataloader`` gives the eval
    split's. Training evaluates on "val" (what presets are tuned on); reports give "test" (the views neither
    trained nor tuned on: the embedded scene's val views are training views held out)."""
    if split == datamanager.test_split:
        return datamanager.fixed_indices_eval_dataloader
    outputs = datamanager.dataparser.get_dataparser_outputs(split=split)
    dataset = float32_intrinsics(datamanager.dataset_type(dataparser_outputs=outputs,
                                                          scale_factor=datamanager.config.camera_res_scale_factor))
    return FixedIndicesEvalDataloader(input_dataset=dataset, device=datamanager.device)


@torch.no_grad()
def evaluate(
    pipeline: Pipeline, description: str = "Evaluating", split: str = "test", downscale: int = 1,
    references: Optional[Sequence[torch.Tensor]] = None,
) -> EvalResult:
    """Render every image of ``split`` (the scene's test views by default: what reports give; "val" is what
    presets are tuned on) and score it as ``ns-eval`` does, through the model's own
    ``get_image_metrics_and_images`` (the ground truth composited on the model's background there): ``psnr``,
    ``ssim`` and ``lpips`` per view, None where the model gives none (LPIPS without its weights on disk,
    :func:`~pvdal_ns.utils.library_internals.offline_lpips`; vanilla-nerf's metrics have other names).

    ``downscale`` > 1 renders each view at 1/downscale of its width and height (nerfstudio's
    ``Cameras.rescale_output_resolution``) against the ground truth box-filtered by the same factor (before the
    model composites it): for models whose full-size render is too slow on the machine (a torch nerfacto on a CPU).

    ``references``: the images to score against instead of the split's (Float[Tensor, "H W 3"] in [0, 1], one a
    view, at the views' size; an edited conversion's: the edited teacher's renders, docs/design.md "Editing").

    Raises:
        ValueError: an image's size is not divisible by ``downscale``.
    """
    pipeline.eval()
    model = pipeline.model
    loader = split_dataloader(pipeline.datamanager, split)  # type: ignore[arg-type]
    per_view, images, gts = [], [], []
    with get_progress(description) as progress:
        for view, (camera, batch) in enumerate(progress.track(loader, total=len(loader))):
            image = batch["image"] if references is None else references[view].to(batch["image"])
            if downscale > 1:
                if image.shape[0] % downscale or image.shape[1] % downscale:
                    raise ValueError(f"a {image.shape[1]}×{image.shape[0]} view cannot be downscaled by {downscale}")
                camera = copy.deepcopy(camera)
                camera.rescale_output_resolution(1.0 / downscale)
                image = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1), downscale).permute(1, 2, 0)
            outputs = model.get_outputs_for_camera(camera)
            metrics, figures = model.get_image_metrics_and_images(outputs, {**batch, "image": image})
            pred = outputs["rgb"].cpu()
            per_view.append({key: _score(metrics.get(key)) for key in ("psnr", "ssim", "lpips")})
            images.append(pred)
            gts.append(figures["img"][:, : pred.shape[1]].cpu())  # every model puts the ground truth first
    pipeline.train()

    def mean(key: str) -> Optional[float]:
        values = [v[key] for v in per_view]
        return None if any(v is None for v in values) else float(sum(values) / len(values))  # type: ignore

    return EvalResult(mean("psnr"), mean("ssim"), mean("lpips"), per_view, images, gts)  # type: ignore
