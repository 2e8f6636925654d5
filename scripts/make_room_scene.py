#!/usr/bin/env python3
"""Generate the small embedded room scene: a synthetic capture whose every view has surfaces at all depths.

A closed room (8 × 8 × 3 world units, z up, floor at z = 0) with a table in the middle, a few small textured
boxes and spheres on it, and a pillar, a shelf, a crate, a cabinet and two spheres at various distances. The cameras
stand inside the room, so walls, floor and ceiling are behind everything in every view: a capture that fills the
view (issue #33: such captures make occupancy-grid sampling slow, since no ray's samples can be skipped as empty;
proposal sampling is the answer). Each wall, the floor and the ceiling carry a distinct high-contrast procedural
texture (stripes of several widths, checkers, bricks, value noise, colour gradients), so a radiance field has
detail to learn at every depth.

Rendering is exact ray casting against boxes, spheres and the room's inner faces (nearest hit), Lambertian shading
with one directional light and ambient light (no shadows), 2×2 supersampling; the images are opaque RGB PNGs.
48 pinhole views of 128×96 px (horizontal field of view 70°) stand on a jittered ring around the table, 1.6–2.6
from it and 1.0–1.8 high, each looking at the objects on the table with a few degrees of jitter. transforms.json
is in nerfstudio-data format (camera-to-world, OpenGL axes: the camera looks down −z, y up; OPENCV with all
distortion coefficients 0) and names no splits: the nerfstudio dataparser holds out every tenth view.
Everything comes from a fixed seed, so a re-run writes byte-identical files. The scene is generated, so no credit
is owed.

Usage (from the repo root):  .venv/bin/python scripts/make_room_scene.py
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 33
N_VIEWS = 48
WIDTH, HEIGHT = 128, 96
HFOV_DEG = 70.0
SUPERSAMPLE = 2
ROOM_LO, ROOM_HI = np.array([-4.0, -4.0, 0.0]), np.array([4.0, 4.0, 3.0])
TARGET = np.array([0.0, 0.0, 0.9])  # the objects on the table
LIGHT = np.array([0.5, 0.35, 0.79]) / np.linalg.norm([0.5, 0.35, 0.79])  # towards the light
AMBIENT, DIFFUSE = 0.45, 0.55
EPS = 1e-6


class Textures:
    """Procedural albedos: each method maps hit points (M, 3) to colours (M, 3) in [0, 1]. The random lattices
    (value noise, per-cell colours, stripe widths) are drawn once from ``rng``."""

    def __init__(self, rng: np.random.Generator):
        self.lattice = rng.random((64, 64))
        self.cells = rng.random((64, 64, 3))
        self.barcode = np.cumsum(rng.uniform(0.04, 0.3, 60))  # stripe edges of several widths
        self.bands = np.cumsum(rng.uniform(0.06, 0.35, 20))

    def noise(self, u: np.ndarray, v: np.ndarray, octaves: int = 4) -> np.ndarray:
        """Value noise (smoothstep-interpolated lattice, wrapping every 64 cells) summed over octaves, in [0, 1]."""
        total, amplitude, norm = np.zeros_like(u), 1.0, 0.0
        for octave in range(octaves):
            x, y = u * 2**octave + 17.0 * octave, v * 2**octave + 31.0 * octave
            i, j = np.floor(x).astype(int), np.floor(y).astype(int)
            fx, fy = x - i, y - j
            fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
            lat = self.lattice
            a, b = lat[i % 64, j % 64], lat[(i + 1) % 64, j % 64]
            c, d = lat[i % 64, (j + 1) % 64], lat[(i + 1) % 64, (j + 1) % 64]
            total += amplitude * ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy)
            norm += amplitude
            amplitude *= 0.5
        return total / norm

    def cell_colour(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.cells[np.floor(u).astype(int) % 64, np.floor(v).astype(int) % 64]

    @staticmethod
    def checker(u: np.ndarray, v: np.ndarray, size: float) -> np.ndarray:
        return ((np.floor(u / size) + np.floor(v / size)) % 2).astype(bool)

    @staticmethod
    def mix(a, b, t: np.ndarray) -> np.ndarray:
        return np.asarray(a) * (1 - t[:, None]) + np.asarray(b) * t[:, None]

    # The room's inner faces.
    def floor(self, p: np.ndarray) -> np.ndarray:
        """Cream and brown checkers of 0.5, shaded by noise, with a thin blue line every 2 units."""
        x, y = p[:, 0], p[:, 1]
        col = self.mix([0.91, 0.86, 0.75], [0.23, 0.18, 0.15], self.checker(x, y, 0.5).astype(float))
        col = col * (0.75 + 0.4 * self.noise(4 * x, 4 * y, 3))[:, None]
        line = (np.abs((x + 4) % 2 - 1) > 0.97) | (np.abs((y + 4) % 2 - 1) > 0.97)
        col[line] = [0.1, 0.3, 0.85]
        return col

    def ceiling(self, p: np.ndarray) -> np.ndarray:
        """Stripes of several widths across x (three square waves of periods 0.2, 0.55 and 1.3 → 8 colours)."""
        x = p[:, 0]
        bits = ((x / 0.2) % 2 < 1).astype(int) + 2 * ((x / 0.55) % 2 < 1) + 4 * ((x / 1.3) % 2 < 1)
        palette = np.array([[0.95, 0.95, 0.95], [0.1, 0.2, 0.6], [0.3, 0.6, 0.95], [0.05, 0.05, 0.1],
                            [0.8, 0.9, 1.0], [0.2, 0.4, 0.3], [0.6, 0.75, 0.9], [0.15, 0.1, 0.35]])
        return palette[bits]

    def bricks(self, p: np.ndarray) -> np.ndarray:
        """Wall x = +4: bricks 0.5 × 0.2, alternate rows offset, light mortar, each brick's own red shade."""
        u, v = p[:, 1], p[:, 2]
        row = np.floor(v / 0.2)
        uu = u + 0.25 * (row % 2)
        col_idx = np.floor(uu / 0.5)
        shade = self.cell_colour(col_idx, row)[:, 0]
        col = self.mix([0.75, 0.25, 0.15], [0.45, 0.12, 0.08], shade)
        mortar = ((v % 0.2) < 0.025) | ((uu % 0.5) < 0.025)
        col[mortar] = [0.85, 0.83, 0.78]
        return col

    def marble(self, p: np.ndarray) -> np.ndarray:
        """Wall x = −4: multi-octave value noise through a blue → yellow → magenta ramp, with dark veins."""
        u, v = p[:, 1], p[:, 2]
        n = self.noise(2.5 * u + 100, 2.5 * v, 5)
        t = np.clip((n - 0.2) / 0.6, 0, 1)
        col = np.where((t < 0.5)[:, None], self.mix([0.1, 0.2, 0.7], [0.95, 0.85, 0.2], 2 * t),
                       self.mix([0.95, 0.85, 0.2], [0.8, 0.1, 0.6], 2 * t - 1))
        vein = np.abs(np.sin(12 * n + 3 * u)) < 0.12
        col[vein] *= 0.25
        return col

    def gradient(self, p: np.ndarray) -> np.ndarray:
        """Wall y = +4: a hue gradient along x, darker towards the floor, overlaid with barcode stripes."""
        x, z = p[:, 0], p[:, 2]
        hue = (x + 4) / 8
        col = np.stack([0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], axis=1)
        col = col * (0.45 + 0.55 * z / 3)[:, None]
        stripe = (np.searchsorted(self.barcode, (x + 4) % self.barcode[-1]) % 2 == 1) & (z > 1.9) & (z < 2.6)
        col[stripe] = [0.05, 0.05, 0.05]
        return col

    def dots(self, p: np.ndarray) -> np.ndarray:
        """Wall y = −4: diagonal stripes (orange and teal) with white polka dots of 0.12 radius."""
        x, z = p[:, 0], p[:, 2]
        diag = ((x + z) / 0.3) % 2 < 1
        col = np.where(diag[:, None], [0.95, 0.55, 0.1], [0.05, 0.45, 0.45])
        du, dv = (x % 0.5) - 0.25, (z % 0.5) - 0.25
        col[du * du + dv * dv < 0.12**2] = [0.97, 0.97, 0.97]
        return col

    # Furniture and objects.
    def wood(self, p: np.ndarray) -> np.ndarray:
        """Table: wood grain (sine rings bent by noise) along x."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        rings = 0.5 + 0.5 * np.sin(40 * y + 6 * self.noise(3 * x + 50, 3 * z + 7 * y, 3))
        return self.mix([0.62, 0.40, 0.20], [0.30, 0.17, 0.07], rings)

    def pillar(self, p: np.ndarray) -> np.ndarray:
        """Pillar: horizontal bands of random heights, alternating green and white, with a noisy tint."""
        z = p[:, 2]
        band = np.searchsorted(self.bands, z % self.bands[-1]) % 2 == 1
        col = np.where(band[:, None], [0.1, 0.55, 0.2], [0.92, 0.92, 0.88])
        return col * (0.8 + 0.3 * self.noise(6 * p[:, 0] + 6 * p[:, 1] + 200, 6 * z, 2))[:, None]

    def tiles(self, p: np.ndarray) -> np.ndarray:
        """Shelf: a grid of 0.2 cells, each its own random colour, with dark seams."""
        x, y, z = p[:, 0] / 0.2, p[:, 1] / 0.2, p[:, 2] / 0.2
        col = self.cell_colour(x + y + 300, z).copy()
        seam = (np.abs(x % 1 - 0.5) > 0.45) | (np.abs(z % 1 - 0.5) > 0.45)
        col[seam] = [0.08, 0.08, 0.08]
        return col

    def crate(self, p: np.ndarray) -> np.ndarray:
        """Crate: orange and black checkers of 0.15 in all three axes."""
        k = (np.floor(p[:, 0] / 0.15) + np.floor(p[:, 1] / 0.15) + np.floor(p[:, 2] / 0.15)) % 2
        return self.mix([1.0, 0.55, 0.0], [0.05, 0.05, 0.05], k)

    @staticmethod
    def fine_checker(colour_a, colour_b, size: float):
        def texture(p: np.ndarray) -> np.ndarray:
            k = (np.floor(p[:, 0] / size) + np.floor(p[:, 1] / size) + np.floor(p[:, 2] / size)) % 2
            return Textures.mix(colour_a, colour_b, k)
        return texture

    def noisy(self, colour_a, colour_b, scale: float, offset: float):
        def texture(p: np.ndarray) -> np.ndarray:
            n = self.noise(scale * (p[:, 0] + p[:, 1]) + offset, scale * p[:, 2], 3)
            return self.mix(colour_a, colour_b, np.clip(2 * n - 0.5, 0, 1))
        return texture

    @staticmethod
    def beach_ball(centre, colours):
        """Sphere: longitude segments in ``colours``, with a white cap at each pole."""
        def texture(p: np.ndarray) -> np.ndarray:
            q = p - centre
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            seg = np.floor((np.arctan2(q[:, 1], q[:, 0]) + np.pi) / (2 * np.pi) * len(colours)).astype(int)
            col = np.asarray(colours, dtype=float)[seg % len(colours)]
            col[np.abs(q[:, 2]) > 0.85] = [0.97, 0.97, 0.97]
            return col
        return texture

    @staticmethod
    def latitude(centre, colour_a, colour_b, bands: float):
        """Sphere: latitude stripes."""
        def texture(p: np.ndarray) -> np.ndarray:
            q = (p - centre)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            k = (np.floor((np.arcsin(np.clip(q[:, 2], -1, 1)) / np.pi + 0.5) * bands) % 2)
            return Textures.mix(colour_a, colour_b, k)
        return texture


def scene(tex: Textures):
    """The room's six inner faces (textures in face order −x, +x, −y, +y, −z, +z) and the objects: ("box", lo, hi,
    texture) or ("sphere", centre, radius, texture)."""
    room = [tex.marble, tex.bricks, tex.dots, tex.gradient, tex.floor, tex.ceiling]
    top = 0.75  # the table's top
    objects = [
        ("box", np.array([-0.55, -0.4, 0.0]), np.array([0.55, 0.4, top]), tex.wood),  # table
        ("box", np.array([-0.35, -0.25, top]), np.array([-0.1, 0.0, top + 0.25]),
         tex.fine_checker([0.9, 0.1, 0.1], [0.97, 0.97, 0.97], 0.04)),
        ("box", np.array([0.15, 0.1, top]), np.array([0.3, 0.25, top + 0.4]),
         tex.noisy([0.1, 0.2, 0.8], [0.6, 0.9, 1.0], 25.0, 400.0)),
        ("box", np.array([-0.4, 0.15, top]), np.array([-0.2, 0.3, top + 0.08]),
         tex.fine_checker([0.1, 0.1, 0.1], [1.0, 0.85, 0.1], 0.025)),
        ("sphere", np.array([0.05, -0.15, top + 0.15]), 0.15,
         tex.latitude(np.array([0.05, -0.15, top + 0.15]), [0.1, 0.7, 0.2], [0.95, 0.95, 0.3], 8)),
        ("sphere", np.array([0.35, -0.2, top + 0.07]), 0.07,
         tex.beach_ball(np.array([0.35, -0.2, top + 0.07]), [[0.9, 0.2, 0.6], [0.2, 0.2, 0.9], [1.0, 0.9, 0.1]])),
        ("sphere", np.array([-0.05, 0.2, top + 0.05]), 0.05,
         tex.latitude(np.array([-0.05, 0.2, top + 0.05]), [0.9, 0.4, 0.0], [0.2, 0.0, 0.3], 6)),
        ("box", np.array([2.9, -2.9, 0.0]), np.array([3.3, -2.5, 3.0]), tex.pillar),  # pillar, floor to ceiling
        ("box", np.array([-1.2, 3.45, 0.0]), np.array([0.8, 4.0, 1.6]), tex.tiles),  # shelf against wall y = +4
        ("sphere", np.array([-0.4, 3.72, 1.85]), 0.25,
         tex.latitude(np.array([-0.4, 3.72, 1.85]), [0.95, 0.95, 0.95], [0.8, 0.0, 0.1], 10)),  # on the shelf
        ("box", np.array([2.7, 2.4, 0.0]), np.array([3.5, 3.2, 0.8]), tex.crate),  # crate in a corner
        ("sphere", np.array([-2.9, -2.7, 0.6]), 0.6,
         tex.beach_ball(np.array([-2.9, -2.7, 0.6]),
                        [[0.9, 0.1, 0.1], [0.1, 0.4, 0.9], [1.0, 0.85, 0.0], [0.1, 0.7, 0.3]])),  # on the floor
        ("box", np.array([-3.95, 0.8, 0.0]), np.array([-3.45, 2.0, 1.1]),
         tex.noisy([0.3, 0.1, 0.4], [0.95, 0.75, 0.85], 6.0, 700.0)),  # a cabinet against wall x = −4
    ]
    return room, objects


def hit_box(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Nearest entry of rays ``o + t d`` into an axis-aligned box from outside: (t, or inf where missed; normal)."""
    inv = 1.0 / d
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    near, far = tmin.max(axis=1), tmax.min(axis=1)
    axis = tmin.argmax(axis=1)
    t = np.where((near <= far) & (near > EPS), near, np.inf)
    normal = np.zeros_like(d)
    rows = np.arange(len(d))
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t, normal


def hit_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float):
    """Nearest hit of rays (unit ``d``) on a sphere from outside: (t, or inf where missed; normal)."""
    oc = o - centre
    b = d @ oc
    disc = b * b - (oc @ oc - radius * radius)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc > 0) & (t > EPS), t, np.inf)
    normal = (o + np.where(np.isfinite(t), t, 0.0)[:, None] * d - centre) / radius
    return t, normal


def hit_room(o: np.ndarray, d: np.ndarray):
    """Exit of rays from inside the room: (t, inward normal, face index 0–5 in order −x, +x, −y, +y, −z, +z)."""
    inv = 1.0 / d
    tmax = np.maximum((ROOM_LO - o) * inv, (ROOM_HI - o) * inv)
    axis = tmax.argmin(axis=1)
    rows = np.arange(len(d))
    t = tmax[rows, axis]
    positive = d[rows, axis] > 0
    normal = np.zeros_like(d)
    normal[rows, axis] = np.where(positive, -1.0, 1.0)
    return t, normal, 2 * axis + positive


def render(c2w: np.ndarray, focal: float, room, objects) -> np.ndarray:
    """An RGB uint8 image (HEIGHT, WIDTH, 3) seen by the camera ``c2w`` (OpenGL axes), SUPERSAMPLE² rays a pixel."""
    s = SUPERSAMPLE
    xs = (np.arange(WIDTH * s) + 0.5) / s  # sub-pixel centres, in pixels
    ys = (np.arange(HEIGHT * s) + 0.5) / s
    px, py = np.meshgrid(xs, ys)
    cam = np.stack([(px - WIDTH / 2) / focal, -(py - HEIGHT / 2) / focal, -np.ones_like(px)], axis=-1).reshape(-1, 3)
    d = cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[np.abs(d) < 1e-12] = 1e-12  # no division by zero in the slab tests
    o = c2w[:3, 3]

    t_room, n_room, face = hit_room(o, d)
    ts, normals = [t_room], [n_room]
    for kind, a, b, _ in objects:
        t, n = hit_box(o, d, a, b) if kind == "box" else hit_sphere(o, d, a, b)
        ts.append(t)
        normals.append(n)
    nearest = np.argmin(np.stack(ts), axis=0)
    colour = np.zeros_like(d)
    for k, (t, n) in enumerate(zip(ts, normals)):
        mask = nearest == k
        if not mask.any():
            continue
        p = o + t[mask, None] * d[mask]
        if k == 0:
            albedo = np.zeros_like(p)
            for f, texture in enumerate(room):
                sel = face[mask] == f
                if sel.any():
                    albedo[sel] = texture(p[sel])
        else:
            albedo = objects[k - 1][3](p)
        colour[mask] = albedo * (AMBIENT + DIFFUSE * np.maximum(n[mask] @ LIGHT, 0.0))[:, None]
    image = colour.reshape(HEIGHT, s, WIDTH, s, 3).mean(axis=(1, 3))
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world (4×4, OpenGL axes: looks down −z, y up, x right) at ``eye`` looking at ``target``, level."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def cameras(rng: np.random.Generator) -> list:
    """N_VIEWS camera-to-worlds on a jittered ring around the table, looking at TARGET with a few degrees of jitter."""
    poses = []
    for k in range(N_VIEWS):
        azimuth = 2 * np.pi * (k + rng.uniform(-0.35, 0.35)) / N_VIEWS
        distance, height = rng.uniform(1.6, 2.6), rng.uniform(1.0, 1.8)
        eye = np.array([distance * np.cos(azimuth), distance * np.sin(azimuth), height])
        yaw, pitch = np.radians(rng.uniform(-4.0, 4.0, 2))  # jitter of the viewing direction
        to_target = TARGET - eye
        horizontal = np.hypot(to_target[0], to_target[1])
        heading = np.arctan2(to_target[1], to_target[0]) + yaw
        elevation = np.arctan2(to_target[2], horizontal) + pitch
        direction = np.array([np.cos(elevation) * np.cos(heading), np.cos(elevation) * np.sin(heading),
                              np.sin(elevation)])
        poses.append(look_at(eye, eye + direction))
    return poses


def inside_object(point: np.ndarray, objects, margin: float = 0.2) -> bool:
    for kind, a, b, _ in objects:
        if kind == "box" and np.all(point > a - margin) and np.all(point < b + margin):
            return True
        if kind == "sphere" and np.linalg.norm(point - a) < b + margin:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dst", type=Path, default=REPO_ROOT / "pvdal_ns" / "scenes" / "room_128")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    room, objects = scene(Textures(rng))
    poses = cameras(rng)
    for c2w in poses:  # the ring stays clear of every object and wall
        assert not inside_object(c2w[:3, 3], objects) and np.all(np.abs(c2w[:2, 3]) < ROOM_HI[:2] - 0.5)
    focal = (WIDTH / 2) / np.tan(np.radians(HFOV_DEG) / 2)
    (args.dst / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for k, c2w in enumerate(poses):
        file_path = f"images/view_{k:02d}.png"
        Image.fromarray(render(c2w, focal, room, objects)).save(args.dst / file_path, optimize=True)
        frames.append({"file_path": file_path, "transform_matrix": c2w.tolist(),
                       "fl_x": focal, "fl_y": focal, "cx": WIDTH / 2, "cy": HEIGHT / 2, "w": WIDTH, "h": HEIGHT,
                       "k1": 0.0, "k2": 0.0, "k3": 0.0, "k4": 0.0, "p1": 0.0, "p2": 0.0})
    meta = {"camera_model": "OPENCV", "frames": frames}
    (args.dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {len(frames)} frames of {WIDTH}×{HEIGHT} to {args.dst}")


if __name__ == "__main__":
    main()
