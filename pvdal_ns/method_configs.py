"""nerfstudio method specifications: ``pvdal-{hash,vm,mlp,tensors}`` (paper §4.1 sizes),
``pvdal-{…}-small`` (presets that train in minutes on a CPU) and ``pvdal-{mlp,tensors}-compressed`` (fewer
parameters, paper Table 7), built from the one preset table (:data:`pvdal_ns.presets.PRESETS`).

Each trains on images when no teacher is given and distils from ``--pipeline.teacher-config`` when one
is. Registered through the ``nerfstudio.method_configs`` entry-point group.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig, OptimizerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification
from torch.optim import SparseAdam

from pvdal_ns.utils.checkpoints import allow_numpy_scalars
from pvdal_ns.data.datamanager import DistillationDataManagerConfig
from pvdal_ns.fields import HashFieldConfig, MLPFieldConfig, PVDFieldConfig, TensorsFieldConfig, VMFieldConfig
from pvdal_ns.models.pvd_model import PVDModelConfig
from pvdal_ns.pipelines.distillation_pipeline import DistillationPipelineConfig
from pvdal_ns.presets import LR_FINAL, PRESETS, Size, method_name
from pvdal_ns.engine.trainer import PVDTrainer, install_refusal_hook, refuse

allow_numpy_scalars()  # lets ns-eval / ns-render / ns-viewer read checkpoints with weights_only=True
install_refusal_hook()  # ns-train: a teacher it cannot load is one line, exit code 2

FIELD_CONFIGS = {"hash": HashFieldConfig, "vm": VMFieldConfig, "mlp": MLPFieldConfig, "tensors": TensorsFieldConfig}


def field_config(architecture: str, size: Size) -> PVDFieldConfig:
    """A fresh field config of ``pvdal-<architecture>[-<size>]`` (sizes from :data:`~pvdal_ns.presets.PRESETS`).

    Raises:
        KeyError: ``architecture`` is not one of hash, vm, mlp, tensors, or has no preset of that size."""
    return FIELD_CONFIGS[architecture](**PRESETS[architecture, size].field)


@dataclass
class PVDTrainerConfig(TrainerConfig):
    """nerfstudio's ``TrainerConfig`` for the pvdal-* methods, where ``--max-num-iterations`` is the one setting of
    a run's length: the stage lengths and learning-rate schedules written for the preset's steps (those of the
    schedules) follow it, as :func:`set_steps` does for ``ns-distill`` (docs/design.md, "A run's length, resuming,
    crashes and the machine").
    Stage lengths given on the command line are kept; a run too short to reach stage 3 with them is refused in
    one line (exit code 2). Runs when ``ns-train`` builds the config; a config read from config.yml is as saved.
    Its trainer is :class:`~pvdal_ns.engine.trainer.PVDTrainer` (atomic checkpoints, checked resume, non-finite guard);
    a checkpoint is saved at least every tenth of the run."""

    _target: Type = field(default_factory=lambda: PVDTrainer)
    max_nonfinite_steps: int = 10
    """Steps in a row whose gradients hold a NaN or an Inf (each skipped) after which the run stops."""

    def __post_init__(self) -> None:
        self.steps_per_save = min(self.steps_per_save, max(1, self.max_num_iterations // 10))  # a kill loses ≤ 10 %
        planned = {group["scheduler"].max_steps for group in self.optimizers.values() if group.get("scheduler")}
        pipeline, steps = self.pipeline, self.max_num_iterations
        if len(planned) != 1 or not isinstance(pipeline, DistillationPipelineConfig):
            return
        written_for = planned.pop()
        preset = next((PRESETS[key] for key in PRESETS if method_name(*key) == self.method_name), None)
        if steps != written_for and preset is not None:
            defaults = tuple(round(f * written_for) for f in preset.stage_fractions)
            self.optimizers = copy.deepcopy(self.optimizers)  # tyro may share them with the registered method
            for group in self.optimizers.values():
                if group.get("scheduler") is not None:
                    group["scheduler"].max_steps = steps
            if (pipeline.stage1_steps, pipeline.stage2_steps) == defaults:
                pipeline.stage1_steps, pipeline.stage2_steps = (round(f * steps) for f in preset.stage_fractions)
        if pipeline.distils and pipeline.blockwise and pipeline.stage1_steps + pipeline.stage2_steps >= steps:
            refuse(f"--pipeline.stage1-steps {pipeline.stage1_steps} and --pipeline.stage2-steps {pipeline.stage2_steps} "
                   f"leave no step of stage 3 in a run of {steps} steps: shorten them, or leave them out to scale the "
                   "preset's with --max-num-iterations")


def pvdal_trainer_config(
    name: str,
    field: PVDFieldConfig,
    learning_rates: Dict[str, float],
    steps: int,
    rays_per_batch: int,
    num_samples: int,
    grid: Dict[str, float],
) -> TrainerConfig:
    """A complete ``TrainerConfig`` for one architecture.

    Args:
        name: the method name shown by ``ns-train``.
        field: the field configuration (architecture and sizes).
        learning_rates: initial Adam learning rate per parameter group ("grids", "networks").
        steps: default number of training steps.
        rays_per_batch: rays per training batch.
        num_samples: uniform samples per ray before occupancy masking.
        grid: occupancy-grid settings of ``PVDModelConfig`` (``grid_*`` fields).
    """
    sparse = isinstance(field, TensorsFieldConfig)  # its grid has sparse gradients
    optimizers = {
        group: {
            "optimizer": OptimizerConfig(_target=SparseAdam, lr=lr, eps=1e-15)
            if sparse and group == "grids"
            else AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": CosineDecaySchedulerConfig(warm_up_end=0, learning_rate_alpha=LR_FINAL / lr, max_steps=steps),
        }
        for group, lr in learning_rates.items()
    }
    return PVDTrainerConfig(
        method_name=name,
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=2000,
        max_num_iterations=steps,
        mixed_precision=False,
        pipeline=DistillationPipelineConfig(
            datamanager=DistillationDataManagerConfig(
                dataparser=BlenderDataParserConfig(),
                train_num_rays_per_batch=rays_per_batch,
                eval_num_rays_per_batch=rays_per_batch,
            ),
            model=PVDModelConfig(field=field, num_samples=num_samples, eval_num_rays_per_chunk=1 << 14, **grid),
        ),
        optimizers=optimizers,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),  # CPU where there is no CUDA
    )


def set_steps(config: TrainerConfig, steps: int, stage_fractions: Optional[Tuple[float, float]] = None) -> TrainerConfig:
    """Set the number of steps, and with it the learning-rate schedules, the stage lengths (scaled with the steps:
    the fractions the config has now, unless ``stage_fractions`` is given) and a checkpoint at least every tenth."""
    pipeline = config.pipeline
    assert isinstance(pipeline, DistillationPipelineConfig)
    if stage_fractions is None:
        stage_fractions = (pipeline.stage1_steps / config.max_num_iterations, pipeline.stage2_steps / config.max_num_iterations)
    config.max_num_iterations = steps
    for group in config.optimizers.values():
        if group["scheduler"] is not None:
            group["scheduler"].max_steps = steps
    pipeline.stage1_steps, pipeline.stage2_steps = (round(f * steps) for f in stage_fractions)
    config.steps_per_save = min(config.steps_per_save, max(1, steps // 10))  # a kill loses ≤ 10 %
    return config


def method_config(architecture: str, size: Size) -> TrainerConfig:
    """A fresh copy of the registered ``TrainerConfig`` of ``pvdal-<architecture>[-<size>]``.

    Raises:
        KeyError: no such preset (the compressed size exists for mlp and tensors only)."""
    preset = PRESETS[architecture, size]
    config = pvdal_trainer_config(method_name(architecture, size), field_config(architecture, size),
                                  preset.learning_rates, preset.steps, preset.rays_per_batch, preset.num_samples,
                                  preset.grid)
    assert isinstance(config.pipeline, DistillationPipelineConfig)
    if preset.ray_pool_size is not None:
        config.pipeline.al.ray_pool_size = preset.ray_pool_size
    return set_steps(config, preset.steps, preset.stage_fractions)


def _spec(architecture: str, size: Size) -> MethodSpecification:
    what = {"hash": "hash grid", "vm": "VM tensor", "mlp": "MLP", "tensors": "dense SH voxel grid"}[architecture]
    sizes = {"paper": "paper sizes", "small": "CPU-sized preset", "compressed": "CPU-sized, fewer parameters"}
    return MethodSpecification(
        config=method_config(architecture, size),
        description=f"PVD-AL {what} ({sizes[size]}); add --pipeline.teacher-config to distil from a trained model",
    )


pvdal_hash = _spec("hash", "paper")
pvdal_vm = _spec("vm", "paper")
pvdal_mlp = _spec("mlp", "paper")
pvdal_tensors = _spec("tensors", "paper")
pvdal_hash_small = _spec("hash", "small")
pvdal_vm_small = _spec("vm", "small")
pvdal_mlp_small = _spec("mlp", "small")
pvdal_tensors_small = _spec("tensors", "small")
pvdal_mlp_compressed = _spec("mlp", "compressed")
pvdal_tensors_compressed = _spec("tensors", "compressed")
