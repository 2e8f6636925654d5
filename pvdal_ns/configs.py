"""nerfstudio method specifications: ``pvdal-{hash,vm,mlp,tensors}`` (paper §4.1 sizes) and
``pvdal-{…}-small`` (presets that train in minutes on a CPU).

Each trains on images when no teacher is given and distils from ``--pipeline.teacher-config`` when one
is. Registered through the ``nerfstudio.method_configs`` entry-point group.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig, OptimizerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification
from torch.optim import SparseAdam

from pvdal_ns.checkpoints import allow_numpy_scalars
from pvdal_ns.datamanager import DistillationDataManagerConfig
from pvdal_ns.fields import HashFieldConfig, MLPFieldConfig, PVDFieldConfig, TensorsFieldConfig, VMFieldConfig
from pvdal_ns.model import PVDModelConfig
from pvdal_ns.pipeline import DistillationPipelineConfig

allow_numpy_scalars()  # lets ns-eval / ns-render / ns-viewer read checkpoints with weights_only=True

LR_FINAL = 7e-5
"""Cosine decay target of every learning rate (authors' code)."""


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
    return TrainerConfig(
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
    )


GRID_LR, NETWORK_LR, MLP_LR = 2e-2, 1e-2, 1e-3

PAPER = {
    "hash": (HashFieldConfig(), {"grids": GRID_LR, "networks": NETWORK_LR}),
    "vm": (VMFieldConfig(), {"grids": GRID_LR, "networks": NETWORK_LR / 10}),
    "mlp": (MLPFieldConfig(), {"networks": MLP_LR}),
    "tensors": (TensorsFieldConfig(), {"grids": GRID_LR * 5}),
}
SMALL = {
    "hash": (HashFieldConfig(num_levels=12, log2_hashmap_size=15, max_res=512), PAPER["hash"][1]),
    "vm": (VMFieldConfig(resolution=128, hidden_dim=64), PAPER["vm"][1]),
    "mlp": (MLPFieldConfig(num_layers=6, split_layer=4, width=128, num_frequencies=8), {"networks": 5 * MLP_LR}),
    "tensors": (TensorsFieldConfig(resolution=96), PAPER["tensors"][1]),
}

STAGE_FRACTIONS = (0.15, 0.25)
"""Stage 1 and stage 2 as fractions of all steps (paper §4.1: 3k and 5k of 20k)."""
MLP_SMALL_STAGE_FRACTIONS = (0.10, 0.10)
"""pvdal-mlp-small: shorter stages 1 and 2 gave +0.4 dB in 1200-step runs (docs/benchmarks.md)."""
MLP_SMALL_RAYS = 512
"""pvdal-mlp-small: rays per step. For the same rays seen, more steps of fewer rays train the small MLP
better (2048 × 1200: 28.85 dB, 1024 × 2400: 29.24, 512 × 4800: 29.53; docs/benchmarks.md), and a
512-ray step costs a third of a 2048-ray one on 2 CPU cores. Width 128 (not 96): 29.62 against 29.00 dB
at 512 × 9600 against the demo's teacher."""


def set_steps(config: TrainerConfig, steps: int, stage_fractions: Optional[Tuple[float, float]] = None) -> TrainerConfig:
    """Set the number of steps, and with it the learning-rate schedules and the stage lengths (scaled
    with the steps: the fractions the config has now, unless ``stage_fractions`` is given)."""
    pipeline = config.pipeline
    assert isinstance(pipeline, DistillationPipelineConfig)
    if stage_fractions is None:
        stage_fractions = (pipeline.stage1_steps / config.max_num_iterations, pipeline.stage2_steps / config.max_num_iterations)
    config.max_num_iterations = steps
    for group in config.optimizers.values():
        if group["scheduler"] is not None:
            group["scheduler"].max_steps = steps
    pipeline.stage1_steps, pipeline.stage2_steps = (round(f * steps) for f in stage_fractions)
    return config


def method_config(architecture: str, small: bool) -> TrainerConfig:
    """A fresh copy of the registered ``TrainerConfig`` of ``pvdal-<architecture>[-small]``."""
    field, lrs = (SMALL if small else PAPER)[architecture]
    field = dataclasses.replace(field)
    name = f"pvdal-{architecture}" + ("-small" if small else "")
    if small:
        grid = {"grid_resolution": 64, "grid_warmup_steps": 64, "grid_ema_decay": 0.8}
        rays, steps = (MLP_SMALL_RAYS, 9600) if architecture == "mlp" else (2048, 3000)
        config = pvdal_trainer_config(name, field, lrs, steps=steps, rays_per_batch=rays, num_samples=160, grid=grid)
        assert isinstance(config.pipeline, DistillationPipelineConfig)
        config.pipeline.al.ray_pool_size = 8 * 2048  # full after ~80 steps of stage 3, as 4096 × 150 in 20k steps
    else:
        config = pvdal_trainer_config(name, field, lrs, steps=20000, rays_per_batch=4096, num_samples=512, grid={})
    fractions = MLP_SMALL_STAGE_FRACTIONS if small and architecture == "mlp" else STAGE_FRACTIONS
    return set_steps(config, config.max_num_iterations, fractions)


def _spec(architecture: str, small: bool) -> MethodSpecification:
    what = {"hash": "hash grid", "vm": "VM tensor", "mlp": "MLP", "tensors": "dense SH voxel grid"}[architecture]
    size = "CPU-sized preset" if small else "paper sizes"
    return MethodSpecification(
        config=method_config(architecture, small),
        description=f"PVD-AL {what} ({size}); add --pipeline.teacher-config to distil from a trained model",
    )


pvdal_hash = _spec("hash", False)
pvdal_vm = _spec("vm", False)
pvdal_mlp = _spec("mlp", False)
pvdal_tensors = _spec("tensors", False)
pvdal_hash_small = _spec("hash", True)
pvdal_vm_small = _spec("vm", True)
pvdal_mlp_small = _spec("mlp", True)
pvdal_tensors_small = _spec("tensors", True)
