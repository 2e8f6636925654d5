#!/usr/bin/env python3
"""Build the small embedded copy of the socketed-axe capture (real photographs with a backdrop).

Every frame of the source's nerfstudio ``transforms.json`` is area-downsampled (box filter) by an integer
--factor and written as a PNG under the same relative name; the per-frame intrinsics (fl_x, fl_y, cx, cy,
w, h) are divided by the factor, the distortion coefficients (k1–k3, p1, p2: normalised image
coordinates) and the poses are kept. A COLMAP text model of the same cameras goes to sparse/0 (for the ``colmap``
dataparser; no keypoints or points). The masks of the axe go to masks/ (a pixel is 255 where any source pixel of its
block shows the axe) but transforms.json does not name them: the copy is for training on the whole photograph,
backdrop and block included, as a user's capture is; tests use them to tell the background from the object.
The nerfstudio dataparser holds out every tenth view for evaluation.

Usage (from the repo root):  python scripts/make_embedded_capture.py
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
INTRINSICS = ("fl_x", "fl_y", "cx", "cy")


def fail(msg: str) -> None:
    print(f"make_embedded_capture: error: {msg}", file=sys.stderr)
    sys.exit(2)


def write_colmap_model(src: Path, dst: Path, factor: int) -> None:
    """The capture's COLMAP text model for the ``colmap`` dataparser: cameras with their size and intrinsics
    (f, cx, cy) divided by ``factor``, the images' poses as they are, no keypoints and no 3D points.
    nerfstudio 1.1.5 cannot read FULL_OPENCV cameras (the source's), so they become OPENCV: k3 is dropped
    (at the image corners it moves a point by about 0.35 % of its radius, a third of a pixel at 162×108)."""
    dst.mkdir(parents=True, exist_ok=True)
    cameras = []
    for line in (src / "cameras.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            cameras.append(line)
            continue
        camera_id, model, width, height, *params = line.split()
        params[:4] = [repr(float(v) / factor) for v in params[:4]]  # FULL_OPENCV: fx fy cx cy k1 k2 p1 p2 k3 …
        if model == "FULL_OPENCV":  # nerfstudio 1.1.5's colmap reader refuses it: OPENCV keeps k1 k2 p1 p2
            model, params = "OPENCV", params[:8]
        cameras.append(" ".join([camera_id, model, str(int(width) // factor), str(int(height) // factor), *params]))
    (dst / "cameras.txt").write_text("\n".join(cameras) + "\n")
    lines = [line for line in (src / "images.txt").read_text().splitlines() if not line.startswith("#")]
    poses = lines[0::2]  # each image: a pose line, then a line of keypoints (left empty here)
    (dst / "images.txt").write_text("".join(f"{pose}\n\n" for pose in poses))
    (dst / "points3D.txt").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "socketed_axe")
    parser.add_argument("--dst", type=Path, default=REPO_ROOT / "pvdal_ns" / "scenes" / "axe_162")
    parser.add_argument("--factor", type=int, default=4, help="integer downsampling factor (648×432 → 162×108 at 4)")
    args = parser.parse_args()
    source = args.src / "transforms.json"
    if not source.is_file():
        fail(f"{source} does not exist: pass --src <folder with the capture's nerfstudio transforms.json>")
    if args.factor < 1:
        fail(f"--factor must be a positive integer, got {args.factor}")
    meta = json.loads(source.read_text())
    meta.pop("ply_file_path", None)
    (args.dst / "images").mkdir(parents=True, exist_ok=True)
    (args.dst / "masks").mkdir(parents=True, exist_ok=True)
    for frame in meta["frames"]:
        image = Image.open(args.src / frame["file_path"]).convert("RGB")
        w, h = image.size
        if w % args.factor or h % args.factor:
            fail(f"{frame['file_path']} is {w}×{h}, not divisible by --factor {args.factor}")
        small = image.resize((w // args.factor, h // args.factor), Image.Resampling.BOX)
        small.save(args.dst / frame["file_path"], optimize=True)
        mask_path = frame.pop("mask_path", f"masks/{Path(frame['file_path']).stem}_mask.png")
        mask = np.asarray(Image.open(args.src / mask_path).convert("L")) > 0
        blocks = mask.reshape(h // args.factor, args.factor, w // args.factor, args.factor).any(axis=(1, 3))
        Image.fromarray((blocks * 255).astype(np.uint8)).save(args.dst / mask_path, optimize=True)
        for key in INTRINSICS:
            frame[key] = frame[key] / args.factor
        frame["w"], frame["h"] = w // args.factor, h // args.factor
    (args.dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    write_colmap_model(args.src / "sparse" / "0", args.dst / "sparse" / "0", args.factor)
    for name in ("LICENSE.md",):
        shutil.copy(args.src / name, args.dst / name)
    sizes = [np.asarray(Image.open(args.dst / f["file_path"])).shape for f in meta["frames"][:1]]
    print(f"wrote {len(meta['frames'])} frames of {sizes[0][1]}×{sizes[0][0]} to {args.dst}")


if __name__ == "__main__":
    main()
