#!/usr/bin/env python3
"""Build the small embedded copy of the NeRF-synthetic lego scene.

Every image referenced by transforms_{train,val,test}.json is area-downsampled
(box filter, premultiplied alpha) to --size x --size and written as an RGBA PNG
under the same relative name (camera_angle_x is a field of view, so it does not
depend on resolution). The test split is the source's; the validation split is
--val-views views of the source's training split, spread evenly and left out of
the training split, so presets are tuned on views that are neither trained on
nor reported (the source's val split is its test views).

Usage (from the repo root):  python scripts/make_embedded_scene.py
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")


def fail(msg: str) -> None:
    print(f"make_embedded_scene: error: {msg}", file=sys.stderr)
    sys.exit(2)


def area_downsample_rgba(img: Image.Image, size: int) -> Image.Image:
    """Box-filter resize with premultiplied alpha, done in float (no dark fringes)."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3] / 255.0
    planes = [rgba[..., c] * alpha for c in range(3)] + [rgba[..., 3]]

    def box(plane: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(plane, mode="F").resize((size, size), Image.Resampling.BOX))

    r, g, b, a = (box(p) for p in planes)
    a_frac = a / 255.0
    rgb = np.stack([r, g, b], axis=-1)
    rgb = np.divide(rgb, a_frac[..., None], out=np.zeros_like(rgb), where=a_frac[..., None] > 0)
    out = np.concatenate([rgb, a[..., None]], axis=-1)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGBA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT / "../shared/data/nerf_synthetic/lego",
                        help="NeRF-synthetic scene folder (default: ../shared/data/nerf_synthetic/lego from the repo "
                             "root)")
    parser.add_argument("--dst", type=Path, default=REPO_ROOT / "pvdal_ns/scenes/lego_100",
                        help="output folder (default: pvdal_ns/scenes/lego_100 in the repo root)")
    parser.add_argument("--size", type=int, default=100, help="output width and height in pixels (default: 100)")
    parser.add_argument("--val-views", type=int, default=10,
                        help="training views held out as the validation split (default: 10)")
    args = parser.parse_args()

    src, dst = args.src.resolve(), args.dst.resolve()
    if args.size < 1:
        fail(f"--size must be positive, got {args.size}")
    if not src.is_dir():
        fail(f"source folder not found: {src}")

    transforms = {}
    for split in SPLITS:
        path = src / f"transforms_{split}.json"
        if not path.is_file():
            fail(f"transforms file not found: {path}")
        transforms[split] = json.loads(path.read_text())

    train = transforms["train"]["frames"]
    if not 0 < args.val_views < len(train):
        fail(f"--val-views must be between 1 and {len(train) - 1}, got {args.val_views}")
    held_out = {round((i + 0.5) * len(train) / args.val_views) for i in range(args.val_views)}
    transforms["val"] = {**transforms["train"], "frames": [f for i, f in enumerate(train) if i in held_out]}
    transforms["train"] = {**transforms["train"], "frames": [f for i, f in enumerate(train) if i not in held_out]}

    # Every image referenced by any split, each converted once.
    natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]  # noqa: E731
    rel_paths = sorted({f["file_path"] for t in transforms.values() for f in t["frames"]}, key=natural)
    for rel in rel_paths:
        if not (src / f"{rel}.png").is_file():
            fail(f"image referenced by a transforms file not found: {src / f'{rel}.png'}")

    written = []
    for rel in rel_paths:
        out_path = dst / f"{rel}.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src / f"{rel}.png") as img:
            area_downsample_rgba(img, args.size).save(out_path, optimize=True)
        written.append(out_path)
    print(f"wrote {len(written)} images ({args.size}x{args.size} RGBA) to {dst}")

    for split, data in transforms.items():
        out_path = dst / f"transforms_{split}.json"
        out_path.write_text(json.dumps(data, indent=4) + "\n")
        written.append(out_path)
        print(f"wrote {out_path.relative_to(dst)} ({len(data['frames'])} frames)")

    total = sum(p.stat().st_size for p in written)
    print(f"total size: {total} bytes ({total / 1024:.1f} KiB) in {len(written)} files")


if __name__ == "__main__":
    main()
