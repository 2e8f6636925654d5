"""PVD losses (paper Eq. 6–8); the hard points that carry them are :mod:`.hard_points`, the stages that switch
them on :mod:`.stages`.

Every term reduces the residuals over the shared sample points or rays in one of two forms
(``PVDLossConfig.form``): their mean square ("mse", the default), or their L2 norm ("norm", the authors'
``normL2``: ``torch.norm(pred - gt)`` over all elements, docs/design.md "Method"). The model applies them
(:meth:`pvdal_ns.models.pvd_model.PVDModel.get_loss_dict`); active learning decides when hard points apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
from jaxtyping import Bool, Float
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
    clip_mode: Literal["target", "forward"] = "target"
    """How the density clip applies. "target": in the losses only, to L_σ and to L_v's density channel,
    keeping a gradient where only the student is beyond a bound (:func:`clipped_residual`). "forward": as the
    authors' code, raw density is clamped in the forward pass of both models, so the render, L_σ and L_v
    see clamped values and the student gets no gradient outside [a, b] (:func:`clamp_density`)."""
    form: Literal["mse", "norm"] = "mse"
    """Reduction of every term: "mse", the mean of squared residuals; "norm", their L2 norm (authors' normL2)."""
    volume_weight_decay: float = 1.0
    """ω₁ is multiplied by this every step (authors' code: 0.995); 1 keeps it constant (paper)."""


def reduce(squares: Tensor, form: str = "mse", channels: int = 1, where: Optional[Bool[Tensor, " N"]] = None
           ) -> Tensor:
    """A loss from squared residuals: their mean ("mse"; 0 with a gradient path when there are none), or the
    L2 norm of the residuals ("norm": the square root of their sum, with a zero gradient at zero).

    Args:
        squares: N squared residuals (Float[Tensor, " N"] or Float[Tensor, "N K"]), or their means over
            ``channels`` channels (as :func:`ray_rgb_errors`).
        form: "mse" or "norm".
        channels: how many residuals each entry of ``squares`` averages (counts them for "norm").
        where: which of the N count (the padding of packed samples, hard points, rays held whole); None: all. A
            mask, not an index: the loss has the same shape every step (no synchronisation on a GPU).
    """
    if where is not None:
        keep = where.to(squares.dtype).view(-1, *([1] * (squares.dim() - 1)))
        squares = squares * keep
        count = keep.sum() * (squares.numel() // max(len(squares), 1))
    else:
        count = squares.new_tensor(float(squares.numel()))
    if form == "mse":
        return squares.sum() / count.clamp(min=1)
    if form == "norm":
        return torch.sqrt((squares.sum() * channels).clamp_min(1e-20))
    raise ValueError(f"loss form must be 'mse' or 'norm', got {form!r}")


def clipped_residual(
    student: Float[Tensor, "N 1"], teacher: Float[Tensor, "N 1"], clip: Optional[Tuple[float, float]]
) -> Float[Tensor, "N 1"]:
    """The residual of Eq. 8 between raw densities clipped to [a, b] ("target" clip mode).

    Equal to Eq. 8's wherever Eq. 8 has a gradient. Where the student is beyond a bound the teacher is
    not (say σ_s < a ≤ σ_t), Eq. 8 is flat in σ_s and would leave the student stuck; here the
    residual σ_s − clip(σ_t) still pulls it back. Both beyond the same bound → zero, as in Eq. 8.

    Args:
        student: raw (log-space) densities, gradients flow into these.
        teacher: raw densities of the teacher at the same points.
        clip: (a, b) or None for no clipping (plain difference).
    """
    if clip is None:
        return student - teacher
    a, b = clip
    both_below = (teacher <= a) & (student <= a)
    both_above = (teacher >= b) & (student >= b)
    return torch.where(both_below | both_above, torch.zeros_like(student), student - teacher.clamp(a, b))


def clamp_density(points: PointOutputs, clip: Tuple[float, float]) -> PointOutputs:
    """The "forward" clip mode (authors' ``network.py``): raw density, and the density channel of ϕ¹,
    clamped to [a, b]; a clamped value passes no gradient."""
    a, b = clip
    phi1 = None if points.phi1 is None else torch.cat([points.phi1[..., :1].clamp(a, b), points.phi1[..., 1:]], -1)
    return PointOutputs(points.raw_density.clamp(a, b), points.rgb, phi1)


def volume_aligned_loss(student: Float[Tensor, "N 16"], teacher: Float[Tensor, "N 16"],
                        clip: Optional[Tuple[float, float]] = None, form: str = "mse",
                        where: Optional[Bool[Tensor, " N"]] = None) -> Tensor:
    """L_v (Eq. 6) between student and teacher ϕ¹ volume features at the points ``where`` says (:func:`reduce`);
    channel 0 (raw density) clipped as L_σ when ``clip`` is given (:func:`clipped_residual`), so a stock
    teacher's log σ of −20 in empty space does not dominate the 16 channels."""
    residual = torch.cat([clipped_residual(student[..., :1], teacher[..., :1], clip),
                          student[..., 1:] - teacher[..., 1:]], dim=-1)
    return reduce(residual**2, form, where=where)


def clipped_density_loss(
    student: Float[Tensor, "N 1"], teacher: Float[Tensor, "N 1"], clip: Optional[Tuple[float, float]],
    form: str = "mse", where: Optional[Bool[Tensor, " N"]] = None,
) -> Tensor:
    """L_σ (Eq. 8) on raw densities clipped to [a, b] (:func:`clipped_residual`; None: unclipped), at the points
    ``where`` says."""
    return reduce(clipped_residual(student, teacher, clip) ** 2, form, where=where)


def colour_loss(student: Float[Tensor, "N 3"], teacher: Float[Tensor, "N 3"], form: str = "mse",
                where: Optional[Bool[Tensor, " N"]] = None) -> Tensor:
    """L_c between per-point colours after the sigmoid, at the points ``where`` says."""
    return reduce((student - teacher) ** 2, form, where=where)


def ray_rgb_errors(student: Float[Tensor, "R 3"], teacher: Float[Tensor, "R 3"]) -> Float[Tensor, " R"]:
    """Per-ray squared error of rendered colours, averaged over RGB; they give L_rgb (:func:`rgb_loss`), and
    they rank the hard rays and poses of active learning (Eq. 9–10)."""
    return ((student - teacher) ** 2).mean(dim=-1)


def rgb_loss(errors: Float[Tensor, " R"], form: str = "mse", where: Optional[Bool[Tensor, " R"]] = None) -> Tensor:
    """L_rgb from the per-ray errors of :func:`ray_rgb_errors` on the rays ``where`` says: their mean, or the
    norm of the R × 3 residuals."""
    return reduce(errors, form, channels=3, where=where)


def point_losses(
    student: PointOutputs,
    teacher: PointOutputs,
    stage: int,
    config: PVDLossConfig,
    align_volume: bool,
    hard_points: Optional[Bool[Tensor, " M"]] = None,
    step: int = 0,
    valid: Optional[Bool[Tensor, " M"]] = None,
) -> Dict[str, Tensor]:
    """Weighted per-point losses for a stage: L_v from stage 1, L_σ and L_c from stage 2, with the density
    clip and the form of ``config`` (in "forward" clip mode the model hands both sides clamped already).

    Args:
        student, teacher: outputs at the same M points (``rgb`` needed from stage 2).
        stage: 1, 2 or 3.
        align_volume: False when either side has no 16-d volume feature (L_v skipped).
        hard_points: the points that carry L_σ and L_c (hard points, TSP, Algorithm 1); None: all.
        step: the training step; ω₁ is ``volume_weight · volume_weight_decay ** step``.
        valid: which of the M are points (the slots of packed samples that are not padding); None: all.

    Returns:
        ``{"volume_loss", "density_loss", "colour_loss"}`` as far as the stage has them; weights applied.
    """
    losses: Dict[str, Tensor] = {}
    clip = config.density_clip if config.clip_mode == "target" else None  # "forward": clamped by the model
    form = config.form
    if align_volume and config.volume_weight > 0:
        assert student.phi1 is not None and teacher.phi1 is not None
        weight = config.volume_weight * config.volume_weight_decay**step
        losses["volume_loss"] = weight * volume_aligned_loss(student.phi1, teacher.phi1, clip, form, valid)
    if stage >= 2:
        where = valid if hard_points is None else hard_points if valid is None else hard_points & valid
        if config.density_weight > 0:
            losses["density_loss"] = config.density_weight * clipped_density_loss(
                student.raw_density, teacher.raw_density, clip, form, where
            )
        if config.colour_weight > 0:
            assert student.rgb is not None and teacher.rgb is not None
            losses["colour_loss"] = config.colour_weight * colour_loss(student.rgb, teacher.rgb, form, where)
    return losses
