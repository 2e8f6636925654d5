"""The one preset table: sizes, learning rates, steps and batch settings of every ``pvdal-*`` method, and the
step counts ``ns-distill demo`` and ``ns-distill ablation`` give each architecture.

Three sizes: ``paper`` (``pvdal-<arch>``, paper §4.1), ``small`` (``pvdal-<arch>-small``, trains in minutes on a
CPU) and ``compressed`` (``pvdal-<arch>-compressed``, MLP and tensors only: the small preset with fewer
parameters, paper Table 7).

Plain numbers only (no torch or nerfstudio import), so that ``ns-distill --help`` can show them at once;
:func:`pvdal_ns.method_configs.method_config` turns a row into a nerfstudio ``TrainerConfig``. Why each CPU-sized
number is what it is: docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Literal, Optional, Tuple, get_args

Architecture = Literal["hash", "vm", "mlp", "tensors"]
"""A student (and teacher) architecture of paper Table 1: hash grid (Instant-NGP), VM tensors (TensoRF), NeRF MLP,
dense SH voxel grid ("Tensors" in the paper: Plenoxels; not the stock teacher ``tensorf``, which is a VM)."""
ARCHITECTURES: Tuple[Architecture, ...] = get_args(Architecture)
"""The four, in the paper's order."""

AblationRow = Literal[
    "all", "w/o L_v", "w/o L_sigma", "w/o L_c", "w/o L_rgb", "w/o density clipping", "w/o block-wise",
    "w/o hard poses", "w/o hard rays", "w/o hard points", "w/o active learning", "forward density clipping",
    "normL2 losses", "w/o warm start", "renders only",
]
"""A row of ``ns-distill ablation`` (what each switches: :data:`pvdal_ns.experiments.ablation.ROWS`): "all" and the
paper's ten "w/o" rows of Table 3, then four variants."""
PAPER_ABLATION_ROWS: Tuple[AblationRow, ...] = get_args(AblationRow)[:11]
"""The rows ``ns-distill ablation`` runs unless told: "all" and the paper's ten "w/o" rows."""

Size = Literal["paper", "small", "compressed"]
"""Which preset of an architecture: the paper's sizes, the CPU-sized one, or the compressed one (Table 7)."""


def size_of(small: bool) -> Size:
    """The size a ``--small`` / ``--no-small`` flag of ``ns-distill`` stands for."""
    return "small" if small else "paper"


def method_name(architecture: str, size: Size) -> str:
    """The nerfstudio method name of a preset: ``pvdal-<architecture>`` with ``-small`` or ``-compressed``."""
    return f"pvdal-{architecture}" + ("" if size == "paper" else f"-{size}")

LR_FINAL = 7e-5
"""Cosine decay target of every learning rate (authors' code)."""

GRID_LR, NETWORK_LR, MLP_LR = 2e-2, 1e-2, 1e-3

STAGE_FRACTIONS = (0.15, 0.25)
"""Stage 1 and stage 2 as fractions of all steps (paper §4.1: 3k and 5k of 20k)."""

SMALL_GRID = {"grid_resolution": 64, "grid_warmup_steps": 64, "grid_ema_decay": 0.8}
"""Occupancy-grid settings of the CPU-sized presets (``PVDModelConfig`` fields)."""


@dataclass(frozen=True)
class ProposalPreset:
    """Proposal sampling of a preset (``PVDModelConfig.proposal``; used where space is contracted).

    Attributes:
        proposal_samples: samples per ray of each proposal level.
        samples: samples per ray the fields are evaluated at.
        fields: (kind, resolution) of each level's proposal density field: "hash" (nerfstudio's
            ``HashMLPDensityField``) or "grid" (a dense grid of log densities).
        learning_rate: the ``proposal_networks`` group's initial Adam learning rate (a group every preset has; used
            where a model samples with proposals).
    """

    proposal_samples: Tuple[int, ...]
    samples: int
    fields: Tuple[Tuple[str, int], ...]
    learning_rate: float


NERFACTO_PROPOSALS = ProposalPreset((256, 96), 48, (("hash", 128), ("hash", 256)), 1e-2)
"""nerfacto's: what the paper-sized presets use (on a GPU)."""
SMALL_PROPOSALS = ProposalPreset((64, 32), 16, (("grid", 64), ("grid", 128)), 0.1)
"""The CPU-sized presets': fewer samples (16 and 32 gave the same PSNR after 400 steps on the room and the axe, 16 in
half the time), and dense grids, which cost on two CPU cores a twenty-fifth of nerfstudio's torch hash grid. A grid
holds log densities directly and moves at its learning rate's pace: 0.1, between what training from images and
distilling want (docs/benchmarks.md, "Captures that fill the view": from the axe's images 17.45 / 17.40 / 17.05 dB at
1e-2 / 0.1 / 0.3; a student's own proposals against its nerfacto teacher 15.2 / 17.6 / 18.2)."""


@dataclass(frozen=True)
class Preset:
    """One ``pvdal-<architecture>[-small|-compressed]`` method.

    Attributes:
        field: keyword arguments of the architecture's field config (its defaults are the paper's sizes).
        learning_rates: initial Adam learning rate per parameter group ("grids", "networks").
        steps: training steps.
        rays_per_batch: rays per training batch.
        num_samples: uniform samples per ray before occupancy masking.
        stage_fractions: stage 1 and stage 2 as fractions of ``steps``.
        grid: occupancy-grid settings (``PVDModelConfig`` ``grid_*`` fields); empty: the model's defaults.
        ray_pool_size: rays the hard-ray pool holds; None: ``ActiveLearningConfig``'s default (4096 × 150).
        demo_steps: distillation steps of this student in ``ns-distill demo`` (CPU presets only).
        ablation_steps: distillation steps of every ``ns-distill ablation`` run with this student.
        teacher_steps: training steps from the images when ``ns-distill matrix`` makes a teacher of it.
        proposals: proposal sampling, where space is contracted.
    """

    field: Dict[str, float]
    learning_rates: Dict[str, float]
    steps: int
    rays_per_batch: int
    num_samples: int
    stage_fractions: Tuple[float, float] = STAGE_FRACTIONS
    grid: Dict[str, float] = field(default_factory=dict)
    ray_pool_size: Optional[int] = None
    demo_steps: Optional[int] = None
    ablation_steps: Optional[int] = None
    teacher_steps: Optional[int] = None
    proposals: ProposalPreset = NERFACTO_PROPOSALS


def _paper(learning_rates: Dict[str, float]) -> Preset:
    return Preset({}, learning_rates, steps=20000, rays_per_batch=4096, num_samples=512)


def _small(field_sizes: Dict[str, float], learning_rates: Dict[str, float], demo_steps: int, steps: int = 3000,
           rays_per_batch: int = 2048, stage_fractions: Tuple[float, float] = STAGE_FRACTIONS,
           ablation_steps: int = 1200, teacher_steps: int = 1000) -> Preset:
    return Preset(field_sizes, learning_rates, steps, rays_per_batch, num_samples=160, stage_fractions=stage_fractions,
                  grid=SMALL_GRID, ray_pool_size=8 * 2048,  # full after ~80 steps of stage 3, as 4096 × 150 in 20k
                  demo_steps=demo_steps, ablation_steps=ablation_steps, teacher_steps=teacher_steps,
                  proposals=SMALL_PROPOSALS)


HASH_LR = {"grids": GRID_LR, "networks": NETWORK_LR}
VM_LR = {"grids": GRID_LR, "networks": NETWORK_LR / 10}
TENSORS_LR = {"grids": GRID_LR * 5}

PRESETS: Dict[Tuple[str, Size], Preset] = {
    ("hash", "paper"): _paper(HASH_LR),
    ("vm", "paper"): _paper(VM_LR),
    ("mlp", "paper"): _paper({"networks": MLP_LR}),
    ("tensors", "paper"): _paper(TENSORS_LR),
    # demo: 500 steps sat on the teacher − 1.5 dB line with the stock tensorf teacher; 700 gave 28.47 dB
    ("hash", "small"): _small({"num_levels": 12, "log2_hashmap_size": 15, "max_res": 512}, HASH_LR, demo_steps=700),
    ("vm", "small"): _small({"resolution": 128, "hidden_dim": 64}, VM_LR, demo_steps=500),
    # 6 × 128 at 512 rays × 9600 steps with stages 10 % / 10 %: more, smaller steps train the small MLP better
    # (29.62 against 28.80 dB for 2048 × 3600), and shorter stages 1–2 gave +0.4 dB; ablation: the same rays
    # seen as 1200 steps of 2048 rays
    ("mlp", "small"): _small({"num_layers": 6, "split_layer": 4, "width": 128, "num_frequencies": 8},
                          {"networks": 5 * MLP_LR}, demo_steps=9600, steps=9600, rays_per_batch=512,
                          stage_fractions=(0.10, 0.10), ablation_steps=4800, teacher_steps=4800),
    ("tensors", "small"): _small({"resolution": 96}, TENSORS_LR, demo_steps=400),
}
# Paper Table 7 compresses NeRF (14M → 11M) and Plenoxels (560M → 233M): the same presets with a narrower MLP
# and a coarser grid, the rest (rays, steps, learning rates, stages) as the small ones
PRESETS["mlp", "compressed"] = replace(PRESETS["mlp", "small"], field={**PRESETS["mlp", "small"].field, "width": 64})
PRESETS["tensors", "compressed"] = replace(PRESETS["tensors", "small"], field={"resolution": 64})
"""(architecture, size) → preset. Paper sizes: §4.1 and the authors' code (docs/design.md, "Method")."""

DEMO_TEACHER = "vm"
"""Architecture of the teacher ``ns-distill demo`` (and the default ablation) trains from the images."""
DEMO_TEACHER_STEPS: int = PRESETS[DEMO_TEACHER, "small"].teacher_steps  # type: ignore[assignment]
"""Training steps of that teacher (its preset's ``teacher_steps``)."""


def matrix_steps(size: Size) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Steps of ``ns-distill matrix``: (each teacher's training from the images, each student's distillation);
    the CPU presets' ``teacher_steps`` and ``demo_steps``, the paper sizes' ``steps`` for both."""
    presets = {arch: PRESETS[arch, size] for arch in ARCHITECTURES}
    teachers = {a: p.teacher_steps or p.steps for a, p in presets.items()}
    return teachers, {a: p.demo_steps or p.steps for a, p in presets.items()}


def demo_steps() -> Dict[str, int]:
    """Distillation steps of each student of ``ns-distill demo`` (the CPU presets')."""
    return {arch: PRESETS[arch, "small"].demo_steps for arch in ARCHITECTURES}  # type: ignore[misc]


def checkpoint_interval(steps: int, steps_per_save: int) -> int:
    """Steps between checkpoints of a run of ``steps`` steps: ``steps_per_save``, or less, so that a checkpoint is
    saved at least every tenth of the run (a killed run loses at most a tenth; docs/design.md, "A run's length,
    resuming, crashes and the machine")."""
    return min(steps_per_save, max(1, steps // 10))


def finetune_start(steps: int, finetune_steps: int, limit: str = "the run's steps") -> int:
    """The first step of a run of ``steps`` steps that fine-tunes on the training images (its last
    ``finetune_steps``; paper Table 6). ``limit``: the option that sets ``steps``, for the message.

    Raises:
        ValueError: ``finetune_steps`` is negative or leaves no step to distil; the message starts with the number
            (the caller names the option)."""
    if finetune_steps < 0:
        raise ValueError(f"{finetune_steps} is negative: give 0 (no fine-tuning) or more")
    if finetune_steps >= steps:
        raise ValueError(f"{finetune_steps} leaves none of the run's {steps} steps to distil: "
                         f"make it smaller than {limit}")
    return steps - finetune_steps
