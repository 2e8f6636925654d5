"""What a teacher gives a distillation step, as data (docs/design.md, "Teachers"): its :class:`Capability` flags, the
:class:`TeacherBatch` of one batch of rays and the :class:`TeacherImages` of renders-only distillation. They live
below the model, which takes a :class:`TeacherBatch` as its input; the teachers that make them are
:mod:`pvdal_ns.teachers`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from jaxtyping import Float, Int
from nerfstudio.model_components.renderers import RGBRenderer
from torch import Tensor

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.sampling import PackedSamples


class Capability(enum.Flag):
    """What a teacher can give; the pipeline derives from them which losses, stages and active-learning
    levels a distillation has (docs/design.md, "Teachers")."""

    RAYS = enum.auto()
    """Renders any ray on demand (:meth:`Teacher.render`): novel poses and hard rays (TSR)."""
    IMAGES = enum.auto()
    """Renders whole cameras (:meth:`Teacher.render_images`): distillation from renders only."""
    POINTS = enum.auto()
    """Density and colour at the shared sample points (L_σ, L_c, stage 2, hard points)."""
    VOLUME_FEATURE = enum.auto()
    """The 16-d ϕ¹ volume feature at those points (L_v, stage 1)."""
    RECORDED = enum.auto()
    """Holds recorded batches of rays of its own (:meth:`Teacher.recorded_batch`): no new poses or rays."""


@dataclass
class TeacherBatch:
    """The teacher's view of one batch of R rays, at the sample points it shares with the student.

    How much of it is there follows the stage it was made for (block-wise distillation, §3.2.3: "the student
    and the teacher do not need to forward the complete network and render RGB in the early stages"):
    stage 1 has ϕ¹ and density at the points, stage 2 adds their colour (ϕ²), stage 3 the render.

    Attributes:
        samples: the shared samples (:class:`~pvdal_ns.model_components.sampling.PackedSamples`, C slots): the
            occupied (and seen) ones of the spaced, jittered samples along the rays; only these are evaluated.
        points: PointOutputs at the C slots (colour from stage 2); None from renders only.
        weights: Float[Tensor, "C 1"], volume-rendering weights (Eq. 12 terms); None before stage 3 and
            from renders only.
        rgb: Float[Tensor, "R 3"], rendered colour composited on ``background``; None before stage 3.
        accumulation: Float[Tensor, "R 1"], opacity of each ray; None before stage 3.
        background: Float[Tensor, "R 3"], each ray's background colour in [0, 1], shared with the student.
    """

    samples: PackedSamples
    points: Optional[PointOutputs]
    weights: Optional[Tensor]
    rgb: Optional[Tensor]
    accumulation: Optional[Tensor]
    background: Tensor


def points_batch(samples: PackedSamples, points: PointOutputs, background: Float[Tensor, "R 3"], stage: int,
                 renderer_rgb: RGBRenderer) -> TeacherBatch:
    """The :class:`TeacherBatch` of a teacher that knows ``points`` at the slots of ``samples``, as far as
    ``stage`` (1–3) needs it: composited on ``background`` (:meth:`PackedSamples.composite
    <pvdal_ns.model_components.sampling.PackedSamples.composite>`, with ``renderer_rgb``) in stage 3 only. Shared
    by live teachers and the teacher cache."""
    if stage < 3:
        return TeacherBatch(samples, points, None, None, None, background)
    out = samples.composite(points, renderer_rgb, background)
    return TeacherBatch(samples, points, out["weights"], out["rgb"], out["accumulation"], background)


@dataclass
class TeacherImages:
    """The teacher's renders of whole cameras, for distillation from renders only.

    Attributes:
        rgb: Float[Tensor, "N H W 3"], colour premultiplied by opacity (i.e. on a black background).
        accumulation: Float[Tensor, "N H W 1"], opacity of each pixel's ray.
    """

    rgb: Tensor
    accumulation: Tensor

    def composite(self, pixels: Int[Tensor, "R 3"], background: Float[Tensor, "R 3"]) -> Tuple[Tensor, Tensor]:
        """RGB Float[Tensor, "R 3"] of the (camera, row, column) ``pixels`` on ``background``, and their
        accumulation Float[Tensor, "R 1"]."""
        p = pixels.to(self.rgb.device)
        rgb, accumulation = self.rgb[p[:, 0], p[:, 1], p[:, 2]], self.accumulation[p[:, 0], p[:, 1], p[:, 2]]
        return rgb + (1.0 - accumulation) * background.to(rgb), accumulation
