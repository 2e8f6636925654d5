"""Hard points (TSP, paper Eq. 11; Algorithm 1): which occupied samples of a batch carry L_σ and L_c while active
learning's third level applies them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def top_fraction_per_ray(weights: Float[Tensor, " M"], ray_ids: Int[Tensor, " M"],
                         fraction: float) -> Bool[Tensor, " M"]:
    """The ``ceil(fraction · n)`` largest of each ray's n weights, on packed samples (the per-ray
    selection f_sp of Eq. 11; Algorithm 1's ``sortedPW[:Nsp]``).

    Args:
        weights: weights in [0, 1] of M samples, grouped by ray (as ``weights[mask]`` gives them).
        ray_ids: the ray of each sample, non-decreasing.
        fraction: in [0, 1]; a ray with n ≥ 1 samples keeps at least one.

    Returns:
        Bool[Tensor, " M"], True for the kept samples.
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
    student_accumulation: Float[Tensor, "R 1"],
    fraction: float = 0.3,
    min_opacity: float = 0.5,
) -> Bool[Tensor, " M"]:
    """TSP (Eq. 11): which of the M = mask.sum() occupied samples carry the σ and colour losses.

    Each model nominates the top ``fraction`` of each ray's occupied samples by its own weight, on the rays
    where its own opacity is at least ``min_opacity`` (authors' ``raymarching.cu``: ``ws < 0.5`` drops the
    ray of that model); a sample is kept when either model nominates it (the union of Algorithm 1's
    ``cat(tea_out[PW], stu_out[PW])``). A floater of the student where the teacher is empty is thus a
    hard point.

    Returns:
        Bool[Tensor, " M"] in the order of ``positions[mask]``.
    """
    ray_ids = torch.nonzero(mask)[:, 0]

    def nominated(weights: Tensor, accumulation: Tensor) -> Tensor:
        top = top_fraction_per_ray(weights.detach()[mask][:, 0], ray_ids, fraction)
        return top & (accumulation.detach()[:, 0] >= min_opacity)[ray_ids]

    return nominated(teacher_weights, teacher_accumulation) | nominated(student_weights, student_accumulation)


@dataclass(frozen=True)
class HardPoints:
    """Hard points (TSP, Eq. 11) as the model applies them: of each ray's occupied samples, the top ``fraction``
    by the teacher's weight (on rays the teacher renders at least ``min_opacity`` opaque) or by the student's
    (on rays the student does) carry L_σ and L_c. Active learning hands one to the model while the level is
    active (:attr:`pvdal_ns.active_learning.active_learning.ActiveLearning.hard_points_at`)."""

    fraction: float = 0.3
    min_opacity: float = 0.5

    def select(self, teacher_weights: Float[Tensor, "R S 1"], student_weights: Float[Tensor, "R S 1"],
               mask: Bool[Tensor, "R S"], teacher_accumulation: Float[Tensor, "R 1"],
               student_accumulation: Float[Tensor, "R 1"]) -> Bool[Tensor, " M"]:
        """:func:`hard_point_mask` with this rule's fraction and opacity."""
        return hard_point_mask(teacher_weights, student_weights, mask, teacher_accumulation, student_accumulation,
                               self.fraction, self.min_opacity)
