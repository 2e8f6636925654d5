"""nerfstudio method specifications: ``pvdal-{hash,vm,mlp,tensors}`` (paper §4.1 sizes),
``pvdal-{…}-small`` (presets that train in minutes on a CPU) and ``pvdal-{mlp,tensors}-compressed`` (fewer
parameters, paper Table 7), built from the one preset table (:data:`pvdal_ns.presets.PRESETS`).

Each trains on images when no teacher is given and distils from ``--pipeline.teacher-config`` when one
is. Registered through the ``nerfstudio.method_configs`` entry-point group.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig, OptimizerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification
from torch.optim import SparseAdam

from pvdal_ns.data.datamanager import DistillationDataManagerConfig
from pvdal_ns.engine.trainer import FusedAdamOptimizerConfig, PVDTrainerConfig
from pvdal_ns.fields import HashFieldConfig, MLPFieldConfig, PVDFieldConfig, TensorsFieldConfig, VMFieldConfig
from pvdal_ns.fields.proposal import ProposalFieldConfig
from pvdal_ns.model_components.sampling import ProposalSampling
from pvdal_ns.models.pvd_model import PVDModelConfig
from pvdal_ns.pipelines.distillation_pipeline import DistillationPipelineConfig
from pvdal_ns.presets import LR_FINAL, PRESETS, Size, checkpoint_interval, method_name

FIELD_CONFIGS = {"hash": HashFieldConfig, "vm": VMFieldConfig, "mlp": MLPFieldConfig, "tensors": TensorsFieldConfig}


def field_config(architecture: str, size: Size) -> PVDFieldConfig:
    """A fresh field config of ``pvdal-<architecture>[-<size>]`` (sizes from :data:`~pvdal_ns.presets.PRESETS`).

    Raises:
        KeyError: ``architecture`` is not one of hash, vm, mlp, tensors, or has no preset of that size."""
    return FIELD_CONFIGS[architecture](**PRESETS[architecture, size].field)


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
        learning_rates: initial Adam learning rate per parameter group ("grids", "networks", "proposal_networks").
        steps: default number of training steps.
        rays_per_batch: rays per training batch.
        num_samples: uniform samples per ray before occupancy masking.
        grid: occupancy-grid settings of ``PVDModelConfig`` (``grid_*`` fields).
    """
    cuda = torch.cuda.is_available()
    # the SH grid: sparse gradients and SparseAdam on a CPU; on CUDA, as every group, a fused Adam, whose non-finite
    # steps are skipped on the device (engine.trainer.GuardedOptimizers)
    sparse = isinstance(field, TensorsFieldConfig) and not cuda
    if isinstance(field, TensorsFieldConfig):
        field.sparse_gradients = sparse
    adam = FusedAdamOptimizerConfig if cuda else AdamOptimizerConfig
    optimizers = {
        group: {
            "optimizer": OptimizerConfig(_target=SparseAdam, lr=lr, eps=1e-15)
            if sparse and group == "grids"
            else adam(lr=lr, eps=1e-15),
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


def set_steps(config: TrainerConfig, steps: int,
              stage_fractions: Optional[Tuple[float, float]] = None) -> TrainerConfig:
    """Set the number of steps, and with it the learning-rate schedules, the stage lengths (scaled with the steps:
    the fractions the config has now, unless ``stage_fractions`` is given) and a checkpoint at least every tenth."""
    pipeline = config.pipeline
    assert isinstance(pipeline, DistillationPipelineConfig)
    if stage_fractions is None:
        stage_fractions = (pipeline.stage1_steps / config.max_num_iterations,
                           pipeline.stage2_steps / config.max_num_iterations)
    config.max_num_iterations = steps
    for group in config.optimizers.values():
        if group["scheduler"] is not None:
            group["scheduler"].max_steps = steps
    pipeline.stage1_steps, pipeline.stage2_steps = (round(f * steps) for f in stage_fractions)
    config.steps_per_save = checkpoint_interval(steps, config.steps_per_save)
    return config


def method_config(architecture: str, size: Size) -> TrainerConfig:
    """A fresh copy of the registered ``TrainerConfig`` of ``pvdal-<architecture>[-<size>]``.

    Raises:
        KeyError: no such preset (the compressed size exists for mlp and tensors only)."""
    preset = PRESETS[architecture, size]
    learning_rates = {**preset.learning_rates, "proposal_networks": preset.proposals.learning_rate}
    config = pvdal_trainer_config(method_name(architecture, size), field_config(architecture, size),
                                  learning_rates, preset.steps, preset.rays_per_batch, preset.num_samples,
                                  preset.grid)
    assert isinstance(config.pipeline, DistillationPipelineConfig)
    proposals = preset.proposals
    config.pipeline.model.proposal = ProposalSampling(
        num_proposal_samples_per_ray=proposals.proposal_samples, num_samples=proposals.samples,
        fields=tuple(ProposalFieldConfig(kind, resolution) for kind, resolution in proposals.fields))  # type: ignore
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
