"""The conversion in nerfstudio's viewer: the teacher's outputs beside the student's, renders that leave
training as it was, and the viewer itself in a real headless browser (Debian's chromium + playwright)."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _student(tiny_config, teacher_path, out: Path, steps: int):
    config = tiny_config("vm", out, steps=steps, teacher=teacher_path, experiment="student")
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 10, 10  # stage 3 (and active learning) from 20
    config.pipeline.warm_start = False  # a student that differs from its teacher
    return config


@pytest.fixture(scope="module")
def viewed_student(tiny_teacher, tmp_path_factory, tiny_config):
    """A VM student distilled for 60 steps (two epochs of active learning): (config.yml path, pipeline)."""
    from pvdal_ns.engine.runner import train

    run = train(_student(tiny_config, tiny_teacher[0], tmp_path_factory.mktemp("viewed"), 60), "student")
    assert len(run.pipeline.active_learning.hard_poses.poses) > 0
    return run.config_path, run.pipeline


def _camera(pipeline):
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    return camera


def test_viewer_outputs_put_the_teacher_beside_the_student(tiny_teacher, viewed_student):
    from pvdal_ns.viewer.conversion_panel import COMPARISON_OUTPUTS, DIVIDER, TeacherComparison

    _, teacher_pipeline = tiny_teacher
    _, pipeline = viewed_student
    model, camera = pipeline.model, _camera(pipeline)
    pipeline.eval()
    assert model.comparison is None  # no viewer: evaluation renders the student alone
    plain = model.get_outputs_for_camera(camera)
    assert not set(COMPARISON_OUTPUTS) & set(plain)

    model.comparison = TeacherComparison(pipeline.conversion.teacher, model.renderer_rgb, ray_fraction=0.1)
    try:
        out = model.get_outputs_for_camera(camera)
    finally:
        model.comparison = None
        pipeline.train()
    height, width = int(camera.height), int(camera.width)
    for key, channels in {"teacher_rgb": 3, "split": 3, "teacher_depth": 1, "error": 1, "hard_rays": 1}.items():
        assert out[key].shape == (height, width, channels), key
    assert torch.equal(out["rgb"], plain["rgb"])
    # teacher_rgb is the teacher's own render of the camera
    teacher_pipeline.eval()
    with torch.no_grad():
        own = teacher_pipeline.model.get_outputs_for_camera(camera)
    teacher_pipeline.train()
    assert float(-10 * torch.log10(torch.mean((own["rgb"] - out["teacher_rgb"]) ** 2))) > 40.0
    assert torch.allclose(out["teacher_depth"], own["depth"], atol=1e-3)
    # the heat maps and the split view are made of the two renders
    assert torch.allclose(out["error"], (out["rgb"] - out["teacher_rgb"]).abs().mean(-1, keepdim=True))
    assert float(out["error"].mean()) > 0.005  # 60 steps from scratch: the student is not its teacher yet
    middle = width // 2
    assert torch.equal(out["split"][:, :middle], out["teacher_rgb"][:, :middle])
    assert torch.equal(out["split"][:, middle + 1:], out["rgb"][:, middle + 1:])
    assert torch.equal(out["split"][:, middle], torch.tensor(DIVIDER).expand(height, 3))  # the line between them
    # ns-viewer --load-config on the student: no teacher, so the viewer shows the student alone
    from nerfstudio.utils.eval_utils import eval_setup

    _, alone, _, _ = eval_setup(viewed_student[0], test_mode="test")
    assert alone.conversion.teacher is None and alone.model.comparison is None
    hard = out["hard_rays"].flatten()
    assert int((hard > 0).sum()) == round(0.1 * height * width)
    assert float(hard[hard > 0].min()) >= float(((out["rgb"] - out["teacher_rgb"]) ** 2).mean(-1).flatten().kthvalue(
        height * width - round(0.1 * height * width)).values)


def test_viewer_renders_leave_the_training_batches_and_the_teacher_as_they_were(tiny_teacher, tmp_path, tiny_config,
                                                                                 train_step_losses):
    from pvdal_ns.engine.runner import _setup_trainer
    from pvdal_ns.viewer.conversion_panel import TeacherComparison

    def losses(viewer_renders: bool):
        config = _student(tiny_config, tiny_teacher[0], tmp_path / str(viewer_renders), 30)
        trainer = _setup_trainer(config)
        pipeline = trainer.pipeline
        model, teacher = pipeline.model, pipeline.conversion.teacher
        camera = _camera(pipeline)
        if viewer_renders:  # what the viewer does between steps: eval, render with the teacher, train
            model.comparison = TeacherComparison(teacher, model.renderer_rgb, 0.1)
        values = []
        for step in range(24):  # into stage 3 and active learning
            _, loss_dict, _ = train_step_losses(trainer, step)
            values.append({k: float(v) for k, v in loss_dict.items()})
            if viewer_renders and step % 3 == 0:
                model.eval()
                model.get_outputs_for_camera(camera)
                model.train()
        assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
        assert all(not k.startswith(("teacher", "conversion")) for k in pipeline.state_dict())
        return values

    assert losses(True) == losses(False)


def test_ns_distill_view_refuses_what_it_cannot_show(tiny_teacher, tmp_path):
    ns_distill = Path(sys.executable).parent / "ns-distill"
    for student, says in ((tmp_path / "nothing" / "config.yml", "student config .* does not exist"),
                          (tiny_teacher[0], "was trained from images, with no teacher: pass --teacher")):
        result = subprocess.run([str(ns_distill), "view", "--student", str(student)], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and re.search(says, result.stderr), result.stderr[-2000:]


def test_the_first_view_frames_the_scene(viewed_student):
    """The first camera of a browser tab, rendered as nerfstudio's viewer renders it: the object large in the
    middle, not cut off (nerfstudio's own 75° first view shows a blender object small)."""
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.viewer.utils import CameraState, get_camera

    from pvdal_ns.viewer.conversion_panel import first_view

    _, pipeline = viewed_student
    dataset = pipeline.datamanager.train_dataset
    centres = dataset.cameras.camera_to_worlds[:, :3, 3].double()

    def coverage(position, look_at, up, fov):
        """Share of a 48×60 render the object covers, and the share of its height it spans."""
        back = (position - look_at) / np.linalg.norm(position - look_at)  # viser's look-at camera, OpenGL axes
        right = np.cross(up, back) / np.linalg.norm(np.cross(up, back))
        c2w = torch.tensor(np.stack([right, np.cross(back, right), back, position], axis=1))
        camera = get_camera(CameraState(fov, 1.25, c2w, CameraType.PERSPECTIVE), 48, 60)
        pipeline.eval()
        with torch.no_grad():
            scene = pipeline.model.get_outputs_for_camera(camera)["accumulation"][..., 0] > 0.5
        pipeline.train()
        rows = torch.nonzero(scene.any(dim=1)).flatten()
        return float(scene.float().mean()), float(rows[-1] - rows[0] + 1) / 48 if len(rows) else 0.0, scene

    view = first_view(dataset.cameras, dataset.scene_box.get_center(), pipeline.model.occupancy_grid)
    distance = np.linalg.norm(view.position - view.look_at)
    assert abs(distance - float((centres - torch.tensor(view.look_at)).norm(dim=-1).median())) < 1e-6
    covered, height, scene = coverage(view.position, view.look_at, view.up, view.fov)
    assert covered > 0.15 and height > 0.6, (covered, height)
    assert float(scene[0].float().mean()) < 0.1 and float(scene[-1].float().mean()) < 0.1  # not cut off
    small, _, _ = coverage(view.position, view.look_at, view.up, np.radians(75.0))  # nerfstudio's first fov
    assert covered > 2.5 * small, (covered, small)


def _screenshot(page) -> np.ndarray:
    from PIL import Image

    data = page.screenshot(clip={"x": 0, "y": 60, "width": 860, "height": 730})  # the viewport, not the panel
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def _wait(condition, seconds: float, what: str, every: float = 0.5):
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"the browser did not show {what} within {seconds:.0f} s")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it with apt-get "
                                             "where it can): the viewer is not tested in a browser")
def test_the_viewer_in_a_browser_compares_the_student_with_its_teacher(viewed_student):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra").sync_playwright
    config_path, pipeline = viewed_student
    with socket.socket() as probe:  # a free port: a viewer left over from another run may hold any fixed one
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    viewer = subprocess.Popen([str(Path(sys.executable).parent / "ns-distill"), "view", "--student", str(config_path),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in viewer.stdout:  # type: ignore[union-attr]
            if f":{port}" in line:
                break
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://localhost:{port}")
            page.get_by_text("Connected").wait_for(timeout=120_000)
            max_res = page.locator("input[type=text][value='512']").element_handle()
            max_res.fill("128")  # small renders: a CPU renders student and teacher in a second
            max_res.press("Enter")

            def resolution():
                found = re.search(r"Resolution:\s*(\d+)\s*[x×]\s*(\d+)", page.inner_text("body"))
                return found and found.group(1) == "128"

            _wait(resolution, 120, "a 128-pixel render")
            time.sleep(3)
            student = _screenshot(page)
            # the first camera frames the object: large in the middle of the view (test_the_first_view_frames_the_scene)
            scene = student.mean(axis=-1) < 235  # the blender scene's background is white
            rows = np.nonzero(scene.mean(axis=1) > 0.01)[0]
            assert scene.mean() > 0.15 and (rows[-1] - rows[0] + 1) / len(scene) > 0.7, (scene.mean(), rows)
            # the panel of the conversion and its pools
            assert "conversion" in page.inner_text("body")
            assert re.search(r"hard-pose pool \d+ poses", page.inner_text("body"))

            page.locator("input[value='rgb']").first.click()
            options = page.get_by_role("option")
            names = {options.nth(i).inner_text() for i in range(options.count())}
            assert {"teacher_rgb", "error", "split"} <= names, names
            page.get_by_role("option", name="teacher_rgb", exact=True).click()
            # the camera stays still: after a moving, low-resolution render, the teacher at the full 128 pixels
            _wait(lambda: not resolution(), 60, "the moving, low-resolution render of teacher_rgb", every=0.1)
            _wait(resolution, 120, "the still, 128-pixel render of teacher_rgb")
            time.sleep(3)
            assert resolution() and np.abs(_screenshot(page) - student).mean() > 3.0  # the teacher, not the student

            # the hard-pose pool is in the browser's scene: viser's scene tree lists one frustum per pose
            page.locator("button:has(svg.tabler-icon-adjustments)").click()
            page.get_by_text("hard_poses").first.click()
            poses = len(pipeline.active_learning.hard_poses.poses)
            text = page.inner_text("body")
            assert all(f"pose_{i:03d}" in text for i in range(poses)), text[-500:]
            browser.close()
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)
