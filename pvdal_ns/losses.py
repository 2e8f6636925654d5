"""PVD losses (paper Eq. 6–8), the hard points that carry them (TSP, Eq. 11) and the block-wise stage
schedule (§3.2.3).

All terms are mean-squared errors (the paper's L₂) over the shared sample points or rays. The model applies
them (:meth:`pvdal_ns.model.PVDModel.get_loss_dict`); active learning decides when hard points apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from pvdal_ns.fields import PointOutputs


@dataclass
class PVDLossConfig:
    """Weights of Eq. 7 (paper §4.1 values) and the density clip of Eq. 8."""

    volume_weight: float = 2e-3
    """ω₁, volume-aligned loss L_v on ϕ¹ (Eq. 6)."""
    density_weight: float = 2e-3
    """ω₂, density loss L_σ on clipped raw densities (Eq. 8)."""
    colour_weight: float = 2e-3
    """ω₃, colour loss L_c on per-point colours after the sigmoid."""
    rgb_weight: float = 1.0
    """ω₄, rendered-RGB loss L_rgb."""
    density_clip: Optional[Tuple[float, float]] = (-2.0, 7.0)
    """[a, b] for raw (log-space) densities, σ ∈ [0.135, 1097]; None compares unclipped raw densities."""
    volume_weight_decay: float = 1.0
    """ω₁ is multiplied by this every step (authors' code: 0.995); 1 keeps it constant (paper)."""


def _mean(x: Tensor) -> Tensor:
    """Mean that is 0 (with a gradient path) when a batch has no occupied sample points."""
    return x.sum() / max(x.numel(), 1)


def volume_aligned_loss(student: Float[Tensor, "N 16"], teacher: Float[Tensor, "N 16"]) -> Tensor:
    """L_v (Eq. 6): MSE between student and teacher ϕ¹ volume features."""
    return _mean((student - teacher) ** 2)


def clipped_density_loss(
    student: Float[Tensor, "N 1"], teacher: Float[Tensor, "N 1"], clip: Optional[Tuple[float, float]]
) -> Tensor:
    """L_σ (Eq. 8): MSE between raw densities clipped to [a, b].

    Equal to Eq. 8 wherever Eq. 8 has a gradient. Where the student is beyond a bound the teacher is
    not (say σ_s < a ≤ σ_t), Eq. 8 is flat in σ_s and would leave the student stuck; here the
    residual σ_s − clip(σ_t) still pulls it back. Both beyond the same bound → no loss, as in Eq. 8.

    Args:
        student: raw (log-space) densities, gradients flow into these.
        teacher: raw densities of the teacher at the same points.
        clip: (a, b) or None for no clipping.
    """
    if clip is None:
        return _mean((student - teacher) ** 2)
    a, b = clip
    target = teacher.clamp(a, b)
    both_below = (teacher <= a) & (student <= a)
    both_above = (teacher >= b) & (student >= b)
    residual = torch.where(both_below | both_above, torch.zeros_like(student), student - target)
    return _mean(residual**2)


def colour_loss(student: Float[Tensor, "N 3"], teacher: Float[Tensor, "N 3"]) -> Tensor:
    """L_c: MSE between per-point colours after the sigmoid."""
    return _mean((student - teacher) ** 2)


def ray_rgb_errors(student: Float[Tensor, "R 3"], teacher: Float[Tensor, "R 3"]) -> Float[Tensor, "R"]:
    """Per-ray squared error of rendered colours, averaged over RGB; their mean is L_rgb, and they rank
    the hard rays and poses of active learning (Eq. 9–10)."""
    return ((student - teacher) ** 2).mean(dim=-1)


def rgb_loss(student: Float[Tensor, "R 3"], teacher: Float[Tensor, "R 3"]) -> Tensor:
    """L_rgb: MSE between rendered pixel colours."""
    return ray_rgb_errors(student, teacher).mean()


def point_losses(
    student: PointOutputs,
    teacher: PointOutputs,
    stage: int,
    config: PVDLossConfig,
    align_volume: bool,
    hard_points: Optional[Bool[Tensor, "M"]] = None,
    step: int = 0,
) -> Dict[str, Tensor]:
    """Weighted per-point losses for a stage: L_v from stage 1, L_σ and L_c from stage 2.

    Args:
        student, teacher: outputs at the same M points (``rgb`` needed from stage 2).
        stage: 1, 2 or 3.
        align_volume: False when either side has no 16-d volume feature (L_v skipped).
        hard_points: the points that carry L_σ and L_c (hard points, TSP, Algorithm 1); None: all.
        step: the training step; ω₁ is ``volume_weight · volume_weight_decay ** step``.

    Returns:
        ``{"volume_loss", "density_loss", "colour_loss"}`` as far as the stage has them; weights applied.
    """
    losses: Dict[str, Tensor] = {}
    if align_volume and config.volume_weight > 0:
        assert student.phi1 is not None and teacher.phi1 is not None
        weight = config.volume_weight * config.volume_weight_decay**step
        losses["volume_loss"] = weight * volume_aligned_loss(student.phi1, teacher.phi1)
    if stage >= 2:
        if hard_points is not None:
            student, teacher = _select(student, hard_points), _select(teacher, hard_points)
        if config.density_weight > 0:
            losses["density_loss"] = config.density_weight * clipped_density_loss(
                student.raw_density, teacher.raw_density, config.density_clip
            )
        if config.colour_weight > 0:
            assert student.rgb is not None and teacher.rgb is not None
            losses["colour_loss"] = config.colour_weight * colour_loss(student.rgb, teacher.rgb)
    return losses


def _select(points: PointOutputs, keep: Tensor) -> PointOutputs:
    return PointOutputs(points.raw_density[keep], None if points.rgb is None else points.rgb[keep])


def top_fraction_per_ray(weights: Float[Tensor, "M"], ray_ids: Int[Tensor, "M"], fraction: float) -> Bool[Tensor, "M"]:
    """The ``ceil(fraction · n)`` largest of each ray's n weights, on packed samples (the per-ray
    selection f_sp of Eq. 11; Algorithm 1's ``sortedPW[:Nsp]``).

    Args:
        weights: weights in [0, 1] of M samples, grouped by ray (as ``weights[mask]`` gives them).
        ray_ids: the ray of each sample, non-decreasing.
        fraction: in [0, 1]; a ray with n ≥ 1 samples keeps at least one.

    Returns:
        Bool[Tensor, "M"], True for the kept samples.
    """
    if len(weights) == 0:
        return torch.zeros(0, dtype=torch.bool, device=weights.device)
    counts = torch.bincount(ray_ids)
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.ceil(fraction * counts.float()).long()
    key = ray_ids.double() * 2 + (1 - weights.double().clamp(0, 1))  # by ray, then by weight descending
    order = torch.argsort(key)
    ray_sorted = ray_ids[order]
    rank = torch.arange(len(order), device=order.device) - starts[ray_sorted]
    selected = torch.empty_like(ray_ids, dtype=torch.bool)
    selected[order] = rank < keep[ray_sorted]
    return selected


def hard_point_mask(
    teacher_weights: Float[Tensor, "R S 1"],
    student_weights: Float[Tensor, "R S 1"],
    mask: Bool[Tensor, "R S"],
    teacher_accumulation: Float[Tensor, "R 1"],
    fraction: float = 0.3,
    min_opacity: float = 0.5,
) -> Bool[Tensor, "M"]:
    """TSP (Eq. 11): which of the M = mask.sum() occupied samples carry the σ and colour losses.

    A sample is kept when it is among the top ``fraction`` of its ray's occupied samples by the teacher's
    weight or by the student's (the union of Algorithm 1's ``cat(tea_out[PW], stu_out[PW])``), and its
    ray's teacher opacity is at least ``min_opacity``.

    Returns:
        Bool[Tensor, "M"] in the order of ``positions[mask]``.
    """
    ray_ids = torch.nonzero(mask)[:, 0]
    teacher = top_fraction_per_ray(teacher_weights.detach()[mask][:, 0], ray_ids, fraction)
    student = top_fraction_per_ray(student_weights.detach()[mask][:, 0], ray_ids, fraction)
    opaque = (teacher_accumulation.detach()[:, 0] >= min_opacity)[ray_ids]
    return (teacher | student) & opaque


@dataclass(frozen=True)
class HardPoints:
    """Hard points (TSP, Eq. 11) as the model applies them: of each ray's occupied samples, the top ``fraction``
    by the teacher's or the student's weight carry L_σ and L_c, on rays whose teacher opacity is at least
    ``min_opacity``. Active learning hands one to the model while the level is active
    (:attr:`pvdal_ns.active_learning.ActiveLearning.hard_points`)."""

    fraction: float = 0.3
    min_opacity: float = 0.5

    def select(self, teacher_weights: Float[Tensor, "R S 1"], student_weights: Float[Tensor, "R S 1"],
               mask: Bool[Tensor, "R S"], teacher_accumulation: Float[Tensor, "R 1"]) -> Bool[Tensor, "M"]:
        """:func:`hard_point_mask` with this rule's fraction and opacity."""
        return hard_point_mask(teacher_weights, student_weights, mask, teacher_accumulation, self.fraction, self.min_opacity)


@dataclass
class StageSchedule:
    """Block-wise distillation (§3.2.3): stage 1 (ϕ¹ only) for ``stage1_steps``, stage 2 (+ σ and colour
    at points) for ``stage2_steps``, then stage 3 (+ rendered RGB). ``blockwise=False`` runs stage 3
    from the first step; ``has_stage1=False`` (no volume feature on one side) starts at stage 2."""

    stage1_steps: int = 3000
    stage2_steps: int = 5000
    blockwise: bool = True
    has_stage1: bool = True

    def stage_at(self, step: int) -> int:
        """The stage (1, 2 or 3) at a 0-based training step."""
        if not self.blockwise:
            return 3
        s1 = self.stage1_steps if self.has_stage1 else 0
        if step < s1:
            return 1
        return 2 if step < s1 + self.stage2_steps else 3

    @property
    def stage3_start(self) -> int:
        """The first step of stage 3."""
        if not self.blockwise:
            return 0
        return (self.stage1_steps if self.has_stage1 else 0) + self.stage2_steps
