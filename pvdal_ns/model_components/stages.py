"""The block-wise stage schedule of a distillation (paper §3.2.3)."""

from __future__ import annotations

from dataclasses import dataclass


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
