"""A distillation with nerfstudio's viewer open in a browser against the same distillation without it (issue #18).

    .venv/bin/python benchmarks/viewer.py --teacher outputs/…/config.yml [--student hash] [--steps 300]
        [--screenshot docs/viewer-hard-poses.png] [--max-res 512] [--pin] [--no-browser]

Both runs distil the same student from the same teacher with the same seed, in this process, one after the
other: first with ``vis=tensorboard``, then with ``vis=viewer`` and a headless Chromium (Debian's
``chromium``, driven by playwright in a separate process, as a user's browser) connected to it before the
first step and left at the viewer's defaults (its training utilisation slider included). Prints the
wall-clock seconds of the training steps of each (first step's start to the last step's end: the viewer's
renders hold the training lock between steps, so per-step timers miss them) and the ratio. After the second
run the browser switches to the ``split`` output, hides the training cameras, turns off depth compositing,
zooms out so the hard-pose frustums show, and saves a screenshot. Also printed: the viewer's renders during
training (count, seconds) and the CPU seconds the browser's processes used meanwhile. ``--pin`` trains on core 0
(one torch thread) and runs the browser on core 1, as a browser on another machine would leave training alone;
``--no-browser`` opens the viewer with no client. Run it alone on the machine: the figures are times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BROWSER = r'''
import sys, time
from pathlib import Path
from playwright.sync_api import sync_playwright
port, flags, shot, max_res, hidden = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"http://localhost:{port}")
    page.get_by_text("Connected").wait_for(timeout=120_000)
    if hidden == "1":  # another tab in front: Chromium stops drawing the viewer's WebGL canvas, the connection stays
        cover = browser.new_page()
        cover.bring_to_front()
    if max_res != "512":
        field = page.locator("input[type=text][value='512']").element_handle()
        field.fill(max_res)
        field.press("Enter")
    (flags / "connected").touch()
    while not (flags / "trained").exists():
        time.sleep(0.5)
    if hidden == "1":
        page.bring_to_front()
    page.locator("input[value='rgb']").first.click()
    page.get_by_role("option", name="split", exact=True).click()
    page.get_by_text("Hide Train Cams").click()
    page.get_by_text("Composite depth").click()  # else a blender object's empty pixels (depth: the ray's near end) hide the frustums
    page.mouse.move(440, 420)
    for _ in range(12):
        page.mouse.wheel(0, 300)
        time.sleep(0.3)
    time.sleep(20)
    page.screenshot(path=shot)
    browser.close()
(flags / "done").touch()
'''  # noqa: E501 (a script for a subprocess: its lines are string content)


def _browser_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by the running Chromium processes."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if "chrom" in (process.info["name"] or "") and process.info["cpu_times"] is not None:
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


def distil(teacher: Path, student: str, steps: int, output_dir: Path, viewer: bool, port: int, screenshot: Path,
           max_res: int, pin: bool, hidden: bool, browse: bool = True) -> float:
    """Seconds from the first step's start to the last step's end of one distillation. ``pin``: training on the
    first core, the browser on the second (as a browser on another machine would leave the training's CPU alone)."""
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import _setup_trainer
    from pvdal_ns.experiments.convert import distillation_config

    config = distillation_config(teacher, student, "small", EMBEDDED_SCENE, output_dir,
                                 "viewer" if viewer else "plain", steps)
    browser = None
    flags = output_dir / "flags"
    if viewer:
        config.vis = "viewer"
        config.viewer.websocket_port = port
        shutil.rmtree(flags, ignore_errors=True)  # a previous run's
        flags.mkdir(parents=True)
    trainer = _setup_trainer(config)
    if viewer and browse:
        port = trainer.viewer_state.viser_server.get_port()  # viser moves to a free port if the one asked for is taken
        browser = subprocess.Popen([sys.executable, "-c", BROWSER, str(port), str(flags), str(screenshot), str(max_res),
                                    "1" if hidden else "0"],
                                   preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None)
        while not (flags / "connected").exists():
            if browser.poll() is not None:
                raise SystemExit(f"the browser stopped before it connected to the viewer on port {port}")
            time.sleep(0.5)
        machines = trainer.viewer_state.render_statemachines
        while not machines or any(m.state != "high" or m.next_action is not None for m in machines.values()):
            # the first renders (at full resolution, before the first step: they hold the training lock)
            time.sleep(0.5)
        time.sleep(1)
    times, renders = {}, []
    model = trainer.pipeline.model
    render = model.get_outputs_for_camera_ray_bundle

    def timed_render(*a, **k):  # what the viewer's renders take of the training process's wall time
        start = time.perf_counter()
        out = render(*a, **k)
        renders.append(time.perf_counter() - start)
        return out

    model.get_outputs_for_camera_ray_bundle = timed_render
    browser_cpu = _browser_cpu_seconds()
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                                              lambda step: times.setdefault("start", time.perf_counter())))
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                                              lambda step: times.__setitem__("end", time.perf_counter())))
    trainer.train()
    if viewer:
        print(f"with the viewer: {len(renders)} renders, {sum(renders):.1f} s in them; the browser's processes used "
              f"{_browser_cpu_seconds() - browser_cpu:.1f} CPU-s during training")
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
    parser.add_argument("--screenshot", type=Path, default=Path("docs/viewer-hard-poses.png"))
    parser.add_argument("--max-res", type=int, default=512, help="the viewer's Max res (its default: 512)")
    parser.add_argument("--no-browser", action="store_true", help="the viewer's server alone, no browser connected")
    parser.add_argument("--hidden", action="store_true", help="another tab in front of the viewer's during training")
    parser.add_argument("--pin", action="store_true",
                        help="training on core 0 with one torch thread, the browser on core 1")
    args = parser.parse_args()
    if args.pin:
        import torch

        os.sched_setaffinity(0, {0})
        torch.set_num_threads(1)
    out = args.output_dir.resolve()
    runs = [distil(args.teacher.resolve(), args.student, args.steps, out, viewer, args.port, args.screenshot.resolve(),
                   args.max_res, args.pin, args.hidden, not args.no_browser) for viewer in (False, True)]
    plain, viewed = runs
    print(f"pvdal-{args.student}-small, {args.steps} distillation steps, max res {args.max_res}"
          f"{', pinned' if args.pin else ''}{', tab hidden' if args.hidden else ''}: "
          f"without the viewer {plain:.1f} s, "
          f"with the viewer {'(no browser)' if args.no_browser else 'open in a browser'} {viewed:.1f} s: "
          f"{viewed / plain:.3f}× "
          f"({100 * (viewed / plain - 1):+.1f} %); screenshot {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
