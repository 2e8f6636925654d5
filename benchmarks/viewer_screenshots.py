"""Screenshots of the conversion's outputs in nerfstudio's viewer at its full resolution (issue #29), taken in a
headless Debian Chromium driven by playwright, as a user would take them on a slow machine.

    .venv/bin/python benchmarks/viewer_screenshots.py --student outputs/…/students/pvdal-hash-small/<ts>/config.yml
    .venv/bin/python benchmarks/viewer_screenshots.py --teacher outputs/…/config.yml --train-steps 3000

``--student``: ``ns-distill view`` of a finished student (nothing trains). ``--teacher``: ``ns-train
pvdal-<--architecture>-small --pipeline.teacher-config <teacher>`` distils a student with the viewer open; the
script watches the render's resolution for ``--watch`` seconds while it trains, then clicks "Pause Training"
(what a user does for a full-resolution comparison). Then, for each of ``--outputs`` (default ``teacher_rgb``,
``split``, ``error``) it picks the output in the "Output type" list, leaves the camera still, waits until the
viewer has replaced its moving, low-resolution render by the static one at "Max res" (the panel's "Resolution:"
line), and saves the page as ``<--out>/viewer-<output>.png``. Prints, per step, the resolutions the panel showed
and the seconds until the full one; and the share of the first view (the ``rgb`` output, before any click) that
the scene covers. Exits 1 when a full-resolution render did not come within ``--timeout`` seconds.

Needs Debian's ``chromium`` and playwright (a test extra). Run it alone on the machine: a 512-pixel render of
student and teacher takes seconds of a CPU.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

VIEWPORT = {"width": 1280, "height": 800}
CANVAS = {"x": 0, "y": 52, "width": 958, "height": 748}
"""The viewer's 3D canvas in a 1280×800 page: below the title bar, left of the panel."""
RESOLUTION = re.compile(r"Resolution:\s*(\d+)\s*[x×]\s*(\d+)\s*px")


def full_resolution(max_res: int, width: int, height: int) -> Tuple[int, int]:
    """The size of nerfstudio's static render ("high" state of its render state machine) at ``max_res`` for a
    canvas of ``width`` × ``height`` (``RenderStateMachine._calculate_image_res``)."""
    aspect = width / height
    h, w = max_res, int(max_res * aspect)
    if w > max_res:
        w, h = max_res, int(max_res / aspect)
    return w, h


def resolution(page) -> Optional[Tuple[int, int]]:
    """The render size the panel shows ("Resolution: W×Hpx"), None before the first frame."""
    found = RESOLUTION.search(page.inner_text("body"))
    return (int(found.group(1)), int(found.group(2))) if found and found.group(1) != "0" else None


def wait_for_full(page, full: Tuple[int, int], timeout: float, fresh: bool) -> Tuple[float, List[str]]:
    """Seconds until the panel shows the full resolution, and the resolutions it showed meanwhile. ``fresh``:
    a change was just made, so first wait for the viewer's low-resolution render of it (the full one shown
    before the change is the old picture)."""
    started, seen, low_seen = time.monotonic(), [], not fresh
    while time.monotonic() - started < timeout:
        now = resolution(page)
        if now is not None and (not seen or seen[-1] != f"{now[0]}x{now[1]}"):
            seen.append(f"{now[0]}x{now[1]}")
        if now is not None and now != full:
            low_seen = True
        if now == full and low_seen:
            return time.monotonic() - started, seen
        if fresh and not low_seen and time.monotonic() - started > 60:
            low_seen = True  # the low render came and went between two looks
        time.sleep(0.1)
    raise TimeoutError(f"no {full[0]}x{full[1]} render within {timeout:.0f} s (seen: {', '.join(seen) or 'none'})")


def canvas(page) -> np.ndarray:
    """The 3D canvas as RGB floats."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=CANVAS))).convert("RGB")).astype(np.float64)


def coverage(image: np.ndarray, background: float = 235.0) -> Tuple[float, float]:
    """The share of the canvas that is not a blender scene's white background, and the share of its height that
    the non-white pixels span (rows with at least 1 % of them)."""
    scene = image.mean(axis=-1) < background
    rows = np.nonzero(scene.mean(axis=1) > 0.01)[0]
    return float(scene.mean()), float((rows[-1] - rows[0] + 1) / len(scene)) if len(rows) else 0.0


def choose_output(page, current: str, name: str) -> None:
    """Pick ``name`` in the "Output type" list (now showing ``current``)."""
    page.locator(f"input[value='{current}']").first.click()
    page.get_by_role("option", name=name, exact=True).click()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start_viewer(args, port: int, log: Path) -> subprocess.Popen:
    """``ns-distill view`` of the student, or ``ns-train`` distilling one, serving on ``port``; its output goes to
    ``log`` (a pipe nobody reads would stop a training that logs)."""
    bin_dir = Path(sys.executable).parent
    if args.student is not None:
        command = [str(bin_dir / "ns-distill"), "view", "--student", str(args.student), "--port", str(port)]
    else:
        from pvdal_ns import EMBEDDED_SCENE

        command = [str(bin_dir / "ns-train"), f"pvdal-{args.architecture}-small", "--pipeline.teacher-config",
                   str(args.teacher), "--max-num-iterations", str(args.train_steps),
                   "--viewer.websocket-port", str(port), "--output-dir", str(args.output_dir),
                   "--experiment-name", "viewer-screenshots",
                   "blender-data", "--data", str(args.data or EMBEDDED_SCENE)]
    print("$", " ".join(command), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_mutually_exclusive_group(required=True)
    run.add_argument("--student", type=Path, help="config.yml of a finished pvdal-* student (ns-distill view)")
    run.add_argument("--teacher", type=Path, help="config.yml of a teacher: distil a student with the viewer open")
    parser.add_argument("--architecture", default="hash", help="the student's, with --teacher")
    parser.add_argument("--train-steps", type=int, default=3000, help="with --teacher: the distillation's length")
    parser.add_argument("--data", type=Path, default=None,
                        help="with --teacher: the scene (default: the embedded lego)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/viewer-screenshots"))
    parser.add_argument("--watch", type=float, default=60.0, help="with --teacher: seconds watched before pausing")
    parser.add_argument("--outputs", nargs="+", default=["teacher_rgb", "split", "error"])
    parser.add_argument("--max-res", type=int, default=512, help="the panel's Max res (nerfstudio's default: 512)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder of the viewer-<output>.png files")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one full-resolution render")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (make browser)")
    port = free_port()
    log = args.output_dir / "viewer.log"
    viewer = start_viewer(args, port, log)
    full = full_resolution(args.max_res, CANVAS["width"], CANVAS["height"])
    try:
        while f":{port}" not in log.read_text(errors="replace"):
            if viewer.poll() is not None:
                raise SystemExit(f"the viewer stopped before serving (exit {viewer.returncode}): see {log}")
            time.sleep(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://localhost:{port}")
            page.get_by_text("Connected").wait_for(timeout=120_000)
            if args.max_res != 512:
                field = page.locator("input[type=text][value='512']").element_handle()
                field.fill(str(args.max_res))
                field.press("Enter")
            if args.teacher is not None:
                started, seen = time.monotonic(), []
                while time.monotonic() - started < args.watch:
                    now = resolution(page)
                    if now is not None and (not seen or seen[-1] != f"{now[0]}x{now[1]}"):
                        seen.append(f"{now[0]}x{now[1]}")
                    time.sleep(0.25)
                step = re.search(r"Step:\s*(\d+)", page.inner_text("body"))
                print(f"training, camera still, {args.watch:.0f} s: resolutions {' → '.join(seen) or 'none'} "
                      f"(step {step.group(1) if step else '?'})", flush=True)
                page.get_by_text("Pause Training").click()
                seconds, seen = wait_for_full(page, full, args.timeout, fresh=False)
                print(f"Pause Training: {full[0]}x{full[1]} after {seconds:.1f} s ({' → '.join(seen)})", flush=True)
            else:
                seconds, seen = wait_for_full(page, full, args.timeout, fresh=False)
                print(f"first view (rgb): {full[0]}x{full[1]} after {seconds:.1f} s ({' → '.join(seen)})", flush=True)
            time.sleep(2)
            covered, height = coverage(canvas(page))
            print(f"first view: the scene covers {100 * covered:.0f} % of the canvas, {100 * height:.0f} % of its "
                  "height", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            current = "rgb"
            for name in args.outputs:
                choose_output(page, current, name)
                current = name
                page.mouse.move(1100, 780)  # off the canvas and the list: no hover, no camera motion
                seconds, seen = wait_for_full(page, full, args.timeout, fresh=True)
                time.sleep(2)  # the browser decodes and draws the frame
                shot = args.out / f"viewer-{name}.png"
                page.screenshot(path=str(shot))
                print(f"{name}: {full[0]}x{full[1]} after {seconds:.1f} s ({' → '.join(seen)}); {shot}", flush=True)
            browser.close()
        return 0
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        viewer.terminate()
        viewer.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
