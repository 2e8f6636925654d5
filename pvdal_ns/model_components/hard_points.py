"""Hard points (TSP, paper Eq. 11; Algorithm 1): which occupied samples of a batch carry L_σ and L_c while active
learning's third level applies them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from pvdal_ns.model_components.sampling import PackedSamples


def top_fraction_per_ray(weights: Float[Tensor, " C"], ray_indices: Int[Tensor, " C"], fraction: float,
                         num_rays: int, valid: Optional[Bool[Tensor, " C"]] = None) -> Bool[Tensor, " C"]:
    """The ``ceil(fraction · n)`` largest of each ray's n weights, on packed samples (the per-ray
    selection f_sp of Eq. 11; Algorithm 1's ``sortedPW[:Nsp]``). Shapes do not depend on the data (no
    ``bincount`` without a length, no ``nonzero``): nothing waits for the device.

    Args:
        weights: weights in [0, 1] of C samples, grouped by ray (as :class:`PackedSamples` holds them).
        ray_indices: the ray of each sample, non-decreasing, below ``num_rays``.
        fraction: in [0, 1]; a ray with n ≥ 1 samples keeps at least one.
        valid: which of the C are samples (padding slots are never kept); None: all.

    Returns:
        Bool[Tensor, " C"], True for the kept samples.
    """
    if valid is None:
        valid = torch.ones_like(ray_indices, dtype=torch.bool)
    counts = torch.zeros(num_rays, dtype=torch.long, device=weights.device).index_add_(0, ray_indices, valid.long())
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.ceil(fraction * counts.float()).long()
    # by ray, then by weight descending; padding (which ends the last ray) after every sample
    descending = 1 - weights.double().clamp(0, 1)
    rank_in_ray = torch.where(valid, descending, torch.full_like(descending, 1.5))
    order = torch.argsort(ray_indices.double() * 2 + rank_in_ray)
    ray_sorted = ray_indices[order]
    rank = torch.arange(len(order), device=order.device) - starts[ray_sorted]
    selected = torch.empty_like(valid)
    selected[order] = rank < keep[ray_sorted]
    return selected & valid


def hard_point_mask(
    teacher_weights: Float[Tensor, "C 1"],
    student_weights: Float[Tensor, "C 1"],
    samples: PackedSamples,
    teacher_accumulation: Float[Tensor, "R 1"],
    student_accumulation: Float[Tensor, "R 1"],
    fraction: float = 0.3,
    min_opacity: float = 0.5,
) -> Bool[Tensor, " C"]:
    """TSP (Eq. 11): which of the C slots of ``samples`` carry the σ and colour losses.

    Each model nominates the top ``fraction`` of each ray's samples by its own weight, on the rays where its own
    opacity is at least ``min_opacity`` (authors' ``raymarching.cu``: ``ws < 0.5`` drops the ray of that model);
    a sample is kept when either model nominates it (the union of Algorithm 1's ``cat(tea_out[PW],
    stu_out[PW])``). A floater of the student where the teacher is empty is thus a hard point.

    Returns:
        Bool[Tensor, " C"], False in padding.
    """
    ray_indices = samples.ray_indices

    def nominated(weights: Tensor, accumulation: Tensor) -> Tensor:
        top = top_fraction_per_ray(weights.detach()[:, 0], ray_indices, fraction, samples.num_rays, samples.valid)
        return top & (accumulation.detach()[:, 0] >= min_opacity)[ray_indices]

    return nominated(teacher_weights, teacher_accumulation) | nominated(student_weights, student_accumulation)


@dataclass(frozen=True)
class HardPoints:
    """Hard points (TSP, Eq. 11) as the model applies them: of each ray's occupied samples, the top ``fraction``
    by the teacher's weight (on rays the teacher renders at least ``min_opacity`` opaque) or by the student's
    (on rays the student does) carry L_σ and L_c. Active learning hands one to the model while the level is
    active (:attr:`pvdal_ns.active_learning.active_learning.ActiveLearning.hard_points_at`)."""

    fraction: float = 0.3
    min_opacity: float = 0.5

    def select(self, teacher_weights: Float[Tensor, "C 1"], student_weights: Float[Tensor, "C 1"],
               samples: PackedSamples, teacher_accumulation: Float[Tensor, "R 1"],
               student_accumulation: Float[Tensor, "R 1"]) -> Bool[Tensor, " C"]:
        """:func:`hard_point_mask` with this rule's fraction and opacity."""
        return hard_point_mask(teacher_weights, student_weights, samples, teacher_accumulation, student_accumulation,
                               self.fraction, self.min_opacity)
