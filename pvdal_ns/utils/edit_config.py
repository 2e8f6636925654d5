"""The settings of a scene edit (issue #34): which boxes to erase, keep or recolour. Light (no torch), so the command
line parses them before anything heavy is imported; what an edit does is :mod:`pvdal_ns.teachers.edits`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import tyro
from typing_extensions import Annotated

BoxNumbers = Tuple[float, ...]
"""A box on the command line: 6 numbers (axis-aligned corners) or 9 (centre, roll pitch yaw in radians, sides)."""


@dataclass
class SceneEditConfig:
    """The edits of a conversion (``--pipeline.edit.*``; ``ns-distill run --erase/--keep/--recolor``). Empty: no
    edit. Recorded in the run's config.yml, part of the batch key (no cache or shared batch of an unedited run is
    reused) and named in the report."""

    erase: Annotated[List[BoxNumbers], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Boxes whose inside is emptied (density 0): ``X0 Y0 Z0 X1 Y1 Z1`` or ``CX CY CZ ROLL PITCH YAW SX SY SZ``."""
    keep: Annotated[List[BoxNumbers], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Boxes outside all of which the scene is emptied (crop to the object)."""
    recolor: Annotated[List[BoxNumbers], tyro.conf.UseAppendAction] = field(default_factory=list)
    """A box and an RGB in [0, 1]: ``X0 Y0 Z0 X1 Y1 Z1 R G B`` or the 9-number box then ``R G B``."""
    recolor_mode: Literal["replace", "multiply"] = "replace"
    """"replace": the colour inside a recolour box is its RGB; "multiply": multiplied by it (a tint)."""
    compose: Optional[Path] = None
    """config.yml of a second teacher put into the scene (paper Fig. 8(b)), moved by ``offset`` and scaled by
    ``scale``; the student's scene box grows to hold both. Composed first, then the boxes apply."""
    offset: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Where the second teacher's origin goes (world units of the first)."""
    scale: float = 1.0
    """The second teacher's uniform scale: its density at x is σ₂((x − offset) / scale) / scale."""

    @property
    def has_boxes(self) -> bool:
        """True when there are boxes to erase, keep or recolour."""
        return bool(self.erase or self.keep or self.recolor)

    @property
    def empty(self) -> bool:
        """True when there is nothing to edit."""
        return not self.has_boxes and self.compose is None

    def key(self) -> Dict[str, Any]:
        """The edits as plain lists, for the batch key and the report."""
        key = {"erase": [list(b) for b in self.erase], "keep": [list(b) for b in self.keep],
               "recolor": [list(b) for b in self.recolor], "recolor_mode": self.recolor_mode}
        if self.compose is not None:
            key["compose"] = {"teacher": str(Path(self.compose).expanduser().resolve()), "offset": list(self.offset),
                              "scale": self.scale}
        return key

    def describe(self) -> str:
        """One line for logs and reports: ``erase 1 box, recolor 1 box (replace)``; "none" when empty."""
        parts = [f"compose {self.compose} at {' '.join(f'{v:g}' for v in self.offset)}, scale {self.scale:g}"
                 ] if self.compose is not None else []
        parts += [f"{name} {len(boxes)} box{'es' if len(boxes) > 1 else ''}"
                  for name, boxes in (("keep", self.keep), ("erase", self.erase), ("recolor", self.recolor)) if boxes]
        if self.recolor:
            parts[-1] += f" ({self.recolor_mode})"
        return ", ".join(parts) or "none"
