"""A distillation with nerfstudio's viewer open in a browser against the same distillation without it (issue #18).

    .venv/bin/python benchmarks/viewer.py --teacher outputs/…/config.yml [--student hash] [--steps 300]
        [--screenshot docs/viewer-split.png]

Both runs distil the same student from the same teacher with the same seed, in this process, one after the
other: first with ``vis=tensorboard``, then with ``vis=viewer`` and a headless Chromium (Debian's
``chromium``, driven by playwright in a separate process, as a user's browser) connected to it before the
first step and left at the viewer's defaults (its training utilisation slider included). Prints the
wall-clock seconds of the training steps of each (first step's start to the last step's end: the viewer's
renders hold the training lock between steps, so per-step timers miss them) and the ratio. After the second
run the browser switches to the ``split`` output, hides the training cameras, zooms out so the hard-pose
frustums show, and saves a screenshot. Run it alone on the machine: the figures are times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BROWSER = r'''
import sys, time
from pathlib import Path
from playwright.sync_api import sync_playwright
port, flags, shot = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"http://localhost:{port}")
    page.get_by_text("Connected").wait_for(timeout=120_000)
    (flags / "connected").touch()
    while not (flags / "trained").exists():
        time.sleep(0.5)
    page.locator("input[value='rgb']").first.click()
    page.get_by_role("option", name="split", exact=True).click()
    page.get_by_text("Hide Train Cams").click()
    page.mouse.move(440, 420)
    for _ in range(3):
        page.mouse.wheel(0, 300)
        time.sleep(0.3)
    time.sleep(20)
    page.screenshot(path=shot)
    browser.close()
(flags / "done").touch()
'''


def distil(teacher: Path, student: str, steps: int, output_dir: Path, viewer: bool, port: int, screenshot: Path) -> float:
    """Seconds from the first step's start to the last step's end of one distillation."""
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.conversion import distillation_config
    from pvdal_ns.runner import _setup_trainer

    config = distillation_config(teacher, student, "small", EMBEDDED_SCENE, output_dir, "viewer" if viewer else "plain", steps)
    browser = None
    flags = output_dir / "flags"
    if viewer:
        config.vis = "viewer"
        config.viewer.websocket_port = port
        flags.mkdir(parents=True, exist_ok=True)
    trainer = _setup_trainer(config)
    if viewer:
        browser = subprocess.Popen([sys.executable, "-c", BROWSER, str(port), str(flags), str(screenshot)])
        while not (flags / "connected").exists():
            time.sleep(0.5)
        time.sleep(5)  # the first renders
    times = {}
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                                              lambda step: times.setdefault("start", time.perf_counter())))
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                                              lambda step: times.__setitem__("end", time.perf_counter())))
    trainer.train()
    if browser is not None:
        (flags / "trained").touch()
        browser.wait(timeout=300)
    return times["end"] - times["start"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", default="hash")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--port", type=int, default=7351)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-viewer"))
    parser.add_argument("--screenshot", type=Path, default=Path("docs/viewer-split.png"))
    args = parser.parse_args()
    out = args.output_dir.resolve()
    plain = distil(args.teacher.resolve(), args.student, args.steps, out, False, args.port, args.screenshot.resolve())
    viewed = distil(args.teacher.resolve(), args.student, args.steps, out, True, args.port, args.screenshot.resolve())
    print(f"pvdal-{args.student}-small, {args.steps} distillation steps: without the viewer {plain:.1f} s, with the viewer "
          f"open in a browser {viewed:.1f} s: {viewed / plain:.3f}× ({100 * (viewed / plain - 1):+.1f} %); "
          f"screenshot {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
