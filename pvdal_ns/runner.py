"""Run nerfstudio training and evaluation in-process, with rich progress bars.

Used by ``ns-distill``: it trains with nerfstudio's own ``Trainer`` (checkpoints, writers, callbacks
exactly as ``ns-train``) and evaluates on the eval split's full images.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pvdal_ns.metrics import image_metrics, offline_lpips


def progress_bar() -> Progress:
    """A rich progress bar with steps done, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


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

    Attributes:
        config_path: its ``config.yml`` (usable as ``--pipeline.teacher-config`` of another run).
        seconds: wall-clock training time (s), setup excluded.
        steps: optimisation steps.
        pipeline: the trained pipeline, in memory.
    """

    config_path: Path
    seconds: float
    steps: int
    pipeline: Pipeline


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch, as ``ns-train`` does with ``machine.seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup_trainer(config: TrainerConfig):
    """Seed, write config.yml and set up nerfstudio's ``Trainer`` (LPIPS of stock models not downloaded)."""
    set_seed(config.machine.seed)
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    with offline_lpips():  # stock models build LPIPS in populate_modules
        trainer.setup()
    return trainer


def train(config: TrainerConfig, description: str) -> TrainResult:
    """Train ``config`` with nerfstudio's ``Trainer`` and a progress bar.

    The config is written to ``<output_dir>/<experiment>/<method>/<timestamp>/config.yml`` first,
    as ``ns-train`` does; checkpoints go beside it. Randomness is seeded with ``config.machine.seed``
    before the model is built, as ``ns-train`` does.
    """
    trainer = _setup_trainer(config)
    steps = config.max_num_iterations
    with progress_bar() as progress:
        task = progress.add_task(description, total=steps)
        trainer.callbacks.append(
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION], lambda step: progress.update(task, completed=step + 1)
            )
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    trainer.shutdown()
    return TrainResult(config.get_base_dir() / "config.yml", seconds, steps, trainer.pipeline)


def train_together(configs: List[TrainerConfig], description: str) -> List[TrainResult]:
    """Train several students of one teacher in lockstep, one teacher pass per batch.

    Each config gets its own nerfstudio ``Trainer`` (config.yml, checkpoints, tensorboard events and
    callbacks as ``ns-train`` writes them). They load the teacher once (:func:`sharing_teachers`), and
    at every step all students with the same batch settings (rays per batch, samples per ray, grid) train
    on one pseudo-label batch, made by the datamanager of the one with the most steps (the leader: its
    errors drive active learning, see :meth:`DistillationDataManager.share_batches_from`); students with
    other batch settings get their own batches from the same teacher. A student with fewer steps stops
    early.

    Returns:
        One TrainResult per config; ``seconds`` is the wall time of that student's own iterations (the
        shared teacher render of a step is counted in the first student to train at that step).
    """
    from nerfstudio.utils import writer

    from pvdal_ns.pipeline import sharing_teachers

    trainers, writers = [], []
    with sharing_teachers():
        for config in configs:
            writer.EVENT_WRITERS.clear()  # each Trainer adds its own writers to nerfstudio's global list
            trainers.append(_setup_trainer(config))
            writers.append(list(writer.EVENT_WRITERS))
    groups: Dict[tuple, List[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(_batch_settings(config), []).append(i)
    for members in groups.values():
        lead = max(members, key=lambda i: configs[i].max_num_iterations)  # renders every step
        for i in members:
            if i != lead:
                trainers[i].pipeline.datamanager.share_batches_from(trainers[lead].pipeline.datamanager)
    seconds = [0.0] * len(trainers)
    total = max(c.max_num_iterations for c in configs)
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for step in range(total):
            for i, trainer in enumerate(trainers):
                if step >= trainer.config.max_num_iterations:
                    continue
                writer.EVENT_WRITERS[:] = writers[i]
                started = time.perf_counter()
                _iteration(trainer, step)
                seconds[i] += time.perf_counter() - started
                writer.write_out_storage()
            progress.update(task, completed=step + 1)
    results = []
    for i, (trainer, config) in enumerate(zip(trainers, configs)):
        writer.EVENT_WRITERS[:] = writers[i]
        trainer._after_train()
        trainer.shutdown()
        results.append(TrainResult(config.get_base_dir() / "config.yml", seconds[i], config.max_num_iterations, trainer.pipeline))
    writer.EVENT_WRITERS.clear()
    return results


def _batch_settings(config: TrainerConfig) -> tuple:
    """What must agree for two students to train on the same pseudo-label batches."""
    datamanager, model = config.pipeline.datamanager, config.pipeline.model
    return (datamanager.train_num_rays_per_batch, datamanager.poses_per_epoch, datamanager.steps_per_epoch,
            model.num_samples, model.grid_resolution, config.pipeline.teacher_renders_only)


def _iteration(trainer, step: int) -> None:
    """One step of nerfstudio's ``Trainer.train`` loop: callbacks, optimisation, logging, checkpoint."""
    from nerfstudio.utils import writer
    from nerfstudio.utils.misc import step_check

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
    if step_check(step, trainer.config.steps_per_save):
        trainer.save_checkpoint(step)


@dataclass
class EvalResult:
    """Metrics of a model on the eval split.

    Attributes:
        psnr, ssim: means over the views; lpips: mean, or None when its weights are not on disk.
        per_view: one ``{"psnr", "ssim", "lpips"}`` per view, in dataset order.
        images: rendered Float[Tensor, "H W 3"] per view (CPU), ground truth in ``gt``.
    """

    psnr: float
    ssim: float
    lpips: Optional[float]
    per_view: List[Dict[str, Optional[float]]] = field(default_factory=list)
    images: List[torch.Tensor] = field(default_factory=list)
    gt: List[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def evaluate(pipeline: Pipeline, description: str = "Evaluating") -> EvalResult:
    """Render every eval image and compare it with the ground truth (composited on the model's background)."""
    pipeline.eval()
    model = pipeline.model
    loader = pipeline.datamanager.fixed_indices_eval_dataloader
    per_view, images, gts = [], [], []
    with progress_bar() as progress:
        for camera, batch in progress.track(loader, total=len(loader), description=description):
            pred = model.get_outputs_for_camera(camera)["rgb"].cpu()
            gt = model.renderer_rgb.blend_background(batch["image"].to(model.device)).cpu()
            per_view.append(image_metrics(pred, gt))
            images.append(pred)
            gts.append(gt)
    pipeline.train()

    def mean(key: str) -> Optional[float]:
        values = [v[key] for v in per_view]
        return None if any(v is None for v in values) else float(sum(values) / len(values))  # type: ignore

    return EvalResult(mean("psnr"), mean("ssim"), mean("lpips"), per_view, images, gts)  # type: ignore
