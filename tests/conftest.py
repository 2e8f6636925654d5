"""Shared fixtures: a tiny VM teacher trained once per session on the embedded lego scene."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)


def _tiny_config(architecture: str, output_dir: Path, steps: int, teacher: Path | None = None, experiment: str = "test",
                 data: Path | None = None):
    """A CPU-small config with fewer rays, for tests (on the embedded lego unless ``data`` is given)."""
    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import student_config

    config = student_config(architecture, "small", data or EMBEDDED_SCENE, output_dir, experiment, steps, teacher)
    config.pipeline.datamanager.train_num_rays_per_batch = 1024
    config.pipeline.datamanager.poses_per_epoch = 20
    config.pipeline.al.ray_pool_size = 2048  # full after 20 steps of stage 3
    return config


def _train_step_losses(trainer, step: int):
    """What training step ``step`` computes: the trainer's ``BEFORE_TRAIN_ITERATION`` callbacks (they set the
    stage and active learning, and write a teacher cache), then the pipeline's losses and metrics."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    return trainer.pipeline.get_train_loss_dict(step)


@pytest.fixture(scope="session")
def tiny_config():
    """:func:`_tiny_config`, the factory of CPU-small configs (session scope: module fixtures build with it)."""
    return _tiny_config


@pytest.fixture(scope="session")
def train_step_losses():
    """:func:`_train_step_losses`, what one training step computes."""
    return _train_step_losses


def _view_psnr(pipeline, reference, n: int = 3) -> float:
    """Mean PSNR (dB) of ``pipeline``'s renders of the first ``n`` eval views against ``reference``'s renders of them
    (a student against its teacher)."""
    import torch

    def views(p):
        p.eval()
        with torch.no_grad():
            out = [p.model.get_outputs_for_camera(camera)["rgb"]
                   for _, (camera, _) in zip(range(n), p.datamanager.fixed_indices_eval_dataloader)]
        p.train()
        return out

    psnrs = [float(-10 * torch.log10(torch.mean((a - b) ** 2))) for a, b in zip(views(pipeline), views(reference))]
    return sum(psnrs) / len(psnrs)


@pytest.fixture(scope="session")
def view_psnr():
    """:func:`_view_psnr`, as a factory fixture."""
    return _view_psnr


@pytest.fixture(autouse=True)
def _fresh_event_writers():
    """Each nerfstudio Trainer adds its writers to a global list: drop a test's writers when it ends, or
    the next test's Trainer writes into the previous test's (by then removed) folder."""
    yield
    writer = sys.modules.get("nerfstudio.utils.writer")  # imported by the tests that train
    if writer is not None:
        writer.EVENT_WRITERS.clear()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A pvdal-vm-small teacher trained for 200 steps: (config.yml path, trained pipeline)."""
    from pvdal_ns.engine.runner import train

    out = tmp_path_factory.mktemp("teacher")
    config = _tiny_config("vm", out, steps=200, experiment="teacher")
    run = train(config, "tiny teacher")
    return run.config_path, run.pipeline


SLOW_FIXTURES = {"tiny_teacher", "axe_teacher", "stock_teachers", "viewed_student"}
"""Fixtures that train a model before the test can run."""


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs a trained teacher (a fixture of :data:`SLOW_FIXTURES`) or trains one itself
    (``TRAINS`` in its module) ``slow``, so ``pytest -m "not slow"`` runs the quick ones."""
    for item in items:
        trains = item.name.split("[")[0] in getattr(item.module, "TRAINS", ())
        if trains or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
