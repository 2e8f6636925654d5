"""pvdal-ns: convert a trained radiance field into another architecture by Progressive Volume
Distillation with Active Learning (PVD-AL), as a nerfstudio plugin.

Importing this package must not need CUDA or tiny-cuda-nn: nerfstudio imports every registered plugin
when ``ns-train`` starts, and one failing import breaks it for every method.
"""

from pathlib import Path

__version__ = "0.1.0"

EMBEDDED_SCENE = Path(__file__).parent / "scenes" / "lego_100"
"""The embedded 100×100 lego scene (blender format; r_0–r_89 train, r_90–r_99 val and test)."""

EMBEDDED_CAPTURE = Path(__file__).parent / "scenes" / "axe_162"
"""The embedded socketed-axe capture: 48 real photographs at 162×108 with a backdrop (nerfstudio-data format,
OPENCV distortion; the dataparser holds out every tenth view). Made by ``scripts/make_embedded_capture.py``."""

EMBEDDED_ROOM = Path(__file__).parent / "scenes" / "room_128"
"""The embedded procedural room: 48 views at 128×96 from cameras standing inside a textured room, so every view has
surfaces at all depths (nerfstudio-data format, OPENCV with zero distortion; the dataparser holds out every tenth
view). Made by ``scripts/make_room_scene.py``."""
