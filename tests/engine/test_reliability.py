"""Crash safety (issue #19): checkpoints written whole or not at all, a checkpoint that cannot be read refused
in one line, steps with non-finite gradients skipped and too many in a row stopping the run."""

from __future__ import annotations

import os

import pytest
import torch

from pvdal_ns.utils.errors import BadInputError, StorageError, TrainingStoppedError
from pvdal_ns.utils.library_internals import trainer_start_step


def _hidden_files(folder):
    return [p.name for p in folder.rglob(".*")]


def test_a_checkpoint_is_written_whole_or_not_at_all(tiny_teacher, tmp_path, monkeypatch, capsys, tiny_config):
    from pvdal_ns.engine.runner import _setup_trainer

    trainer = _setup_trainer(tiny_config("hash", tmp_path, steps=10, teacher=tiny_teacher[0]))
    trainer.save_checkpoint(1)
    first = trainer.checkpoint_dir / "step-000000001.ckpt"
    before = first.read_bytes()
    save = torch.save

    def disk_full(obj, path, *args, **kwargs):  # half a checkpoint, then the disk is full
        save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(StorageError) as stopped:
        trainer.save_checkpoint(2)
    lines = str(stopped.value).splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and f"{first.name} is kept" in lines[0], lines
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == [first.name]  # no part of step 2
    assert first.read_bytes() == before
    assert not _hidden_files(trainer.checkpoint_dir.parent)  # nor a temporary file


@pytest.mark.parametrize("content", ["truncated", "callable", "empty folder"])
def test_a_checkpoint_that_cannot_be_read_is_refused_in_one_line(tiny_teacher, tmp_path, capsys, content, tiny_config):
    from pvdal_ns.engine.runner import _setup_trainer

    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    if content == "truncated":
        torch.save({"step": 3, "pipeline": {"w": torch.zeros(1000)}}, folder / "step-000000003.ckpt")
        data = (folder / "step-000000003.ckpt").read_bytes()
        (folder / "step-000000003.ckpt").write_bytes(data[: len(data) // 2])
    elif content == "callable":  # a pickle that would run code when loaded without weights_only
        torch.save({"step": 3, "pipeline": os.system}, folder / "step-000000003.ckpt")
    config = tiny_config("hash", tmp_path, steps=10, teacher=tiny_teacher[0])
    config.load_dir = folder
    with pytest.raises(BadInputError) as refused:
        _setup_trainer(config)
    lines = str(refused.value).splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], lines


def test_non_finite_gradients_skip_the_step_and_too_many_stop_the_run(tiny_teacher, tmp_path, monkeypatch, capsys,
                                                                       tiny_config):
    from pvdal_ns.engine.runner import train
    from pvdal_ns.models.pvd_model import PVDModel

    calls = {"n": 0}
    get_loss_dict = PVDModel.get_loss_dict

    def poisoned(self, *args, **kwargs):  # from the 7th step on, every loss is NaN
        losses = get_loss_dict(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 6:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(PVDModel, "get_loss_dict", poisoned)
    config = tiny_config("hash", tmp_path, steps=40, teacher=tiny_teacher[0])
    config.steps_per_save, config.max_nonfinite_steps = 4, 5
    with pytest.raises(TrainingStoppedError) as stopped:
        train(config, "poisoned")
    out = capsys.readouterr().out
    assert "step skipped" in out
    lines = str(stopped.value).splitlines()
    assert len(lines) == 1 and "5 steps in a row up to step 10" in lines[0], lines
    saved = sorted(config.get_base_dir().glob("nerfstudio_models/step-*.ckpt"))
    assert saved and saved[-1].name == "step-000000008.ckpt"  # saved during the streak: the model before it
    from pvdal_ns.utils.checkpoints import load_checkpoint

    state = load_checkpoint(saved[-1])["pipeline"]
    assert all(v.isfinite().all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


RUN = """
import pickle
import torch
from pvdal_ns.engine.runner import train
torch.set_num_threads(1)
with open({config!r}, "rb") as f:
    config = pickle.load(f)
config.steps_per_save = 40
train(config, "to be killed")
"""


def test_a_distillation_killed_after_a_checkpoint_resumes_from_it_and_ends_as_an_uninterrupted_one(
    tiny_teacher, tmp_path, tiny_config
):
    """SIGKILL after the checkpoint of step 40 (of 60); ``--load-dir`` continues at step 41 with the checkpoint's
    stage, pools, epoch and random stream, and ends at step 59 with the weights of the same run uninterrupted. On one
    thread: on two, torch's CPU sums are in no fixed order and two uninterrupted runs differ by ~1e-3."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill_resume_and_compare(tiny_teacher[0], tmp_path, tiny_config)
    finally:
        torch.set_num_threads(threads)


def _kill_resume_and_compare(teacher, tmp_path, tiny_config):
    import pickle
    import signal
    import subprocess
    import sys
    import time

    from pvdal_ns.engine.runner import _setup_trainer, evaluate, train
    from pvdal_ns.utils.checkpoints import load_checkpoint

    killed_config = tmp_path / "killed-config.pkl"  # built here, where the tiny_config fixture is, for the subprocess
    killed_config.write_bytes(pickle.dumps(tiny_config("hash", str(tmp_path), steps=60, teacher=str(teacher),
                                                       experiment="killed")))
    code = RUN.format(config=str(killed_config))
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob("killed/*/*/nerfstudio_models/step-000000040.ckpt")):
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    models = next(tmp_path.glob("killed/*/*/nerfstudio_models"))
    assert [p.name for p in models.iterdir()] == ["step-000000040.ckpt"]
    saved = load_checkpoint(models / "step-000000040.ckpt")["pipeline"]

    config = tiny_config("hash", tmp_path, steps=60, teacher=teacher, experiment="resumed")
    config.steps_per_save, config.load_dir = 40, models
    trainer = _setup_trainer(config)
    assert trainer_start_step(trainer) == 41
    pool = trainer.pipeline.active_learning.hard_poses
    assert torch.equal(pool.poses, saved["active_learning.hard_poses._extra_state"]["poses"]) and len(pool.poses) > 0
    trainer.train()
    assert trainer.pipeline.model.stage == 3
    assert sorted(p.name for p in config.get_base_dir().glob("nerfstudio_models/*.ckpt")) == ["step-000000059.ckpt"]

    whole = train(tiny_config("hash", tmp_path, steps=60, teacher=teacher, experiment="whole"), "uninterrupted")
    resumed, uninterrupted = trainer.pipeline.model.state_dict(), whole.pipeline.model.state_dict()
    largest = max(float((resumed[k] - uninterrupted[k]).abs().max()) for k in uninterrupted
                  if uninterrupted[k].is_floating_point() and uninterrupted[k].numel())
    psnrs = evaluate(trainer.pipeline).psnr, evaluate(whole.pipeline).psnr
    assert largest < 1e-6 and abs(psnrs[0] - psnrs[1]) < 1e-4, (largest, psnrs)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    from pvdal_ns.scripts.distill import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as refused:
        main(["run", "--teacher", str(a_file), "--student", "hash", "--output-dir", str(a_file / "out")])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written" in err and "a file" in err


def test_a_scene_folder_with_missing_images_is_refused_in_one_line(tmp_path):
    import shutil

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import dataparser_for
    from pvdal_ns.utils.errors import BadInputError

    scene = tmp_path / "lego"
    shutil.copytree(EMBEDDED_SCENE, scene)
    dataparser_for(scene)  # whole: read as blender
    (scene / "train" / "r_3.png").unlink()
    with pytest.raises(BadInputError, match=r"1 of the \d+ images .* missing \(first: \./train/r_3\)"):
        dataparser_for(scene)


def test_a_teacher_of_another_kind_of_scene_than_data_is_refused(tiny_teacher, tmp_path):
    from pvdal_ns import EMBEDDED_CAPTURE
    from pvdal_ns.experiments.convert import distillation_config
    from pvdal_ns.utils.errors import BadInputError

    with pytest.raises(BadInputError,
                       match="is a nerfstudio-data scene, but the teacher was trained on a blender-data one"):
        distillation_config(tiny_teacher[0], "hash", "small", EMBEDDED_CAPTURE, tmp_path, "wrong", 10)


def test_another_scene_of_the_same_kind_is_refused_and_a_copy_of_the_teachers_scene_is_not(tiny_teacher, tmp_path):
    """Two blender scenes share their box, not their cameras: a copy of the teacher's scene whose cameras are turned
    by half a radian about the vertical stands for another one."""
    import json
    import math
    import shutil

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import distillation_config
    from pvdal_ns.utils.errors import BadInputError

    copy, other = tmp_path / "copy", tmp_path / "other"
    shutil.copytree(EMBEDDED_SCENE, copy)
    distillation_config(tiny_teacher[0], "hash", "small", copy, tmp_path, "copy", 10)  # same cameras: accepted

    shutil.copytree(EMBEDDED_SCENE, other)
    turn = torch.tensor([[math.cos(0.5), -math.sin(0.5), 0, 0], [math.sin(0.5), math.cos(0.5), 0, 0], [0, 0, 1, 0],
                         [0, 0, 0, 1]])
    for name in ("transforms_train.json", "transforms_val.json", "transforms_test.json"):
        meta = json.loads((other / name).read_text())
        for frame in meta["frames"]:
            frame["transform_matrix"] = (turn @ torch.tensor(frame["transform_matrix"])).tolist()
        (other / name).write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="shares no training camera with the teacher's scene"):
        distillation_config(tiny_teacher[0], "hash", "small", other, tmp_path, "other", 10)


def test_a_student_set_up_with_a_teacher_of_another_scene_or_world_frame_is_refused(tiny_teacher, tmp_path,
                                                                                     tiny_config):
    """``ns-train … --pipeline.teacher-config`` sets the pipeline up without ``ns-distill``'s checks: the pipeline runs
    them (issue #33): another kind of scene, and the teacher's scene read in another world frame."""
    from pvdal_ns import EMBEDDED_CAPTURE
    from pvdal_ns.utils.errors import BadInputError

    other_kind = tiny_config("hash", tmp_path, 10, teacher=tiny_teacher[0], experiment="kind", data=EMBEDDED_CAPTURE)
    with pytest.raises(BadInputError, match="nerfstudio-data scene, but the teacher was trained on a blender-data"):
        other_kind.setup(local_rank=0, world_size=1).setup()
    other_frame = tiny_config("hash", tmp_path, 10, teacher=tiny_teacher[0], experiment="frame")
    other_frame.pipeline.datamanager.dataparser.scale_factor = 0.5
    with pytest.raises(BadInputError, match=r"in another world frame than its teacher's .*scale_factor 1\.0→0\.5"):
        other_frame.setup(local_rank=0, world_size=1).setup()


def test_ns_train_with_a_teacher_that_cannot_be_loaded_is_refused_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from pvdal_ns import EMBEDDED_SCENE

    missing = tmp_path / "missing" / "config.yml"
    done = subprocess.run([str(Path(sys.executable).parent / "ns-train"), "pvdal-hash-small",
                           "--max-num-iterations", "2", "--vis", "tensorboard", "--output-dir", str(tmp_path),
                           "--pipeline.teacher-config", str(missing),
                           "blender-data", "--data", str(EMBEDDED_SCENE)], capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out, out[-2000:]
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1 and "does not exist" in lines[0], lines


def test_a_teacher_config_of_a_plugin_not_installed_is_refused_in_one_line(tiny_teacher, tmp_path):
    from pvdal_ns.utils.errors import TeacherLoadError
    from pvdal_ns.utils.run_config import read_trainer_config

    other = tmp_path / "config.yml"
    other.write_text(tiny_teacher[0].read_text().replace("pvdal_ns.models.pvd_model.PVDModelConfig",
                                                         "my_plugin.MyModelConfig"))
    with pytest.raises(TeacherLoadError,
                       match="names my_plugin, which cannot be imported here: install the nerfstudio"):
        read_trainer_config(other)


def test_ns_distill_reruns_continue_killed_students_and_reuse_finished_ones(tiny_teacher, tmp_path, monkeypatch):
    """Two students trained together are killed at step 15 (checkpoints every tenth: VM of 30 steps at 12, hash of
    20 at 14). The rerun continues each in its own folder from the step after its checkpoint to its planned end; the
    next rerun trains nothing and gives the same figures; another step count is another run."""
    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.trainer import PVDTrainer
    from pvdal_ns.experiments.convert import convert

    def rerun(steps):
        return convert(tiny_teacher[0], ["hash", "vm"], "small", EMBEDDED_SCENE, tmp_path, steps, "students",
                       together=True, resume=True)

    steps = {"hash": 20, "vm": 30}
    iteration = PVDTrainer.train_iteration

    def killed_at_15(self, step):
        if step == 15:
            raise KeyboardInterrupt
        return iteration(self, step)

    monkeypatch.setattr(PVDTrainer, "train_iteration", killed_at_15)
    with pytest.raises(KeyboardInterrupt):
        rerun(steps)
    monkeypatch.setattr(PVDTrainer, "train_iteration", iteration)
    runs = {arch: next(tmp_path.glob(f"students/pvdal-{arch}-small/*")) for arch in steps}
    assert [p.name for p in (runs["vm"] / "nerfstudio_models").iterdir()] == ["step-000000012.ckpt"]
    assert not (runs["hash"] / "run.json").exists()

    resumed = {m.report.architecture: m.report for m in rerun(steps)}
    assert (resumed["hash"].resumed_at, resumed["vm"].resumed_at) == (15, 13)
    for arch, run in runs.items():
        assert resumed[arch].config == str(run / "config.yml") and not resumed[arch].cached
        assert [p.name for p in (run / "nerfstudio_models").iterdir()] == [f"step-{steps[arch] - 1:09d}.ckpt"]
        assert (run / "run.json").is_file()

    again = {m.report.architecture: m.report for m in rerun(steps)}
    for arch in steps:
        assert again[arch].cached and again[arch].config == resumed[arch].config
        assert again[arch].psnr == pytest.approx(resumed[arch].psnr, abs=1e-4)
        assert again[arch].train_seconds == resumed[arch].train_seconds
    assert len(list(tmp_path.glob("students/pvdal-*-small/*"))) == 2

    other = convert(tiny_teacher[0], ["hash", "vm"], "small", EMBEDDED_SCENE, tmp_path, {"hash": 10, "vm": 10},
                    "students", resume=True)  # one after another
    assert not any(m.report.cached or m.report.resumed_at for m in other)
    assert len(list(tmp_path.glob("students/pvdal-*-small/*"))) == 4


def _guarded(tmp_path, max_norm=None, max_in_a_row=10):
    """Two parameter groups ("grids", "networks") of plain SGD (lr 0.1, so a step shows the gradient it used) behind
    :class:`~pvdal_ns.engine.trainer.GuardedOptimizers`."""
    from nerfstudio.engine.optimizers import OptimizerConfig

    from pvdal_ns.engine.trainer import GuardedOptimizers

    sgd = OptimizerConfig(_target=lambda params, lr, eps: torch.optim.SGD(params, lr=lr), lr=0.1, max_norm=max_norm)
    groups = {"grids": [torch.nn.Parameter(torch.ones(4))], "networks": [torch.nn.Parameter(torch.ones(3))]}
    config = {group: {"optimizer": sgd, "scheduler": None} for group in groups}
    return GuardedOptimizers(config, groups, max_in_a_row, tmp_path)


def _scaled_step(optimizers, grad_scaler, loss_of):
    """One step as nerfstudio's ``Trainer.train_iteration`` takes it: zero, scaled backward, the optimisers' step
    through the scaler, the scaler's update."""
    optimizers.zero_grad_all()
    params = [p for group in optimizers.parameters.values() for p in group]
    grad_scaler.scale(loss_of(*params)).backward()
    optimizers.optimizer_scaler_step_some(grad_scaler, list(optimizers.parameters))
    grad_scaler.update()


def test_an_overflowing_step_under_mixed_precision_is_the_grad_scalers_to_skip_and_is_not_counted(tmp_path):
    """Under ``--mixed-precision`` an Inf in the scaled gradients is AMP's ordinary business: the scaler skips the
    step of that optimiser and halves its scale; the run goes on (max_in_a_row=1 would stop at a counted step)."""
    optimizers = _guarded(tmp_path, max_in_a_row=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    grids, networks = (group[0] for group in optimizers.parameters.values())
    for step in range(3):
        optimizers.step = step
        _scaled_step(optimizers, scaler, lambda g, n: (g * float("inf")).sum() + (n * 2.0).sum())
        assert scaler.get_scale() == 2.0 ** (9 - step)
    assert torch.equal(grids.detach(), torch.ones(4))  # the overflowing optimiser never stepped
    assert torch.allclose(networks.detach(), torch.full((3,), 1 - 3 * 0.1 * 2.0))  # the other one did, unscaled
    assert optimizers.skipped == 0 and optimizers.overflowed == 3

    before = networks.detach().clone()
    _scaled_step(optimizers, scaler, lambda g, n: (g * float("nan")).sum() + (n * float("nan")).sum())
    assert torch.equal(networks.detach(), before) and torch.equal(grids.detach(), torch.ones(4))  # NaN everywhere
    assert optimizers.skipped == 0 and scaler.get_scale() == 2.0**6


def test_a_finite_step_under_mixed_precision_is_the_unscaled_step_and_clips_unscaled_gradients(tmp_path):
    """The gradients are unscaled once before clipping (nerfstudio unscales before clipping; a second unscale would
    raise) and the step is the one without a scaler."""
    loss = lambda g, n: (g * torch.arange(4.0)).sum() + (n * 3.0).sum()  # noqa: E731 — gradient norms 3.7 and 5.2
    for max_norm in (None, 1.0):
        steps = {}
        for enabled in (True, False):
            optimizers = _guarded(tmp_path, max_norm=max_norm)
            _scaled_step(optimizers, torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=enabled), loss)
            steps[enabled] = [group[0].detach() for group in optimizers.parameters.values()]
        clip = (lambda g: g) if max_norm is None else (lambda g: g / g.norm())  # noqa: E731
        expected = [1 - 0.1 * clip(torch.arange(4.0)), 1 - 0.1 * clip(torch.full((3,), 3.0))]
        for scaled, unscaled, want in zip(steps[True], steps[False], expected):
            assert torch.allclose(scaled, unscaled) and torch.allclose(scaled, want, atol=1e-6), (max_norm, scaled)


def test_a_run_whose_gradients_stay_nan_under_mixed_precision_stops_when_the_scale_falls_below_the_floor(
        tmp_path, capsys):
    from pvdal_ns.engine.trainer import AMP_SCALE_FLOOR

    optimizers = _guarded(tmp_path)
    (tmp_path / "step-000000002.ckpt").write_bytes(b"")
    scaler = torch.amp.GradScaler("cpu", init_scale=AMP_SCALE_FLOOR * 2**12)
    with pytest.raises(TrainingStoppedError) as stopped:
        for step in range(100):
            optimizers.step = step
            _scaled_step(optimizers, scaler, lambda g, n: (g * float("nan")).sum() + n.sum())
    assert step == 12  # the 13th overflow would halve the scale below the floor
    lines = str(stopped.value).splitlines()
    assert len(lines) == 1 and "13 steps in a row up to step 12" in lines[0], lines
    assert "step-000000002.ckpt" in lines[0]


def test_without_a_grad_scaler_a_non_finite_step_is_skipped_for_every_group_and_counted(tmp_path, capsys):
    optimizers = _guarded(tmp_path, max_in_a_row=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # as nerfstudio's Trainer without --mixed-precision
    _scaled_step(optimizers, scaler, lambda g, n: (g * float("inf")).sum() + n.sum())
    assert all(torch.equal(group[0].detach(), torch.ones_like(group[0])) for group in optimizers.parameters.values())
    assert optimizers.skipped == 1
    with pytest.raises(TrainingStoppedError, match="2 steps in a row"):
        _scaled_step(optimizers, scaler, lambda g, n: (g * float("inf")).sum() + n.sum())


def test_fused_optimisers_skip_non_finite_steps_on_the_device_and_stop_a_run_of_them_at_a_read(tmp_path, capsys):
    """The presets' optimiser on CUDA (a fused Adam; fused on the CPU here): a NaN or Inf gradient skips the step of
    every group on the device (parameters, moments and step count unchanged), the counts are read every
    ``max_in_a_row // 2`` steps, and a run of ``max_in_a_row`` stops the run at the read that finds it."""
    from pvdal_ns.engine.trainer import FusedAdamOptimizerConfig, GuardedOptimizers

    groups = {"grids": [torch.nn.Parameter(torch.ones(4))], "networks": [torch.nn.Parameter(torch.ones(3))]}
    config = {group: {"optimizer": FusedAdamOptimizerConfig(lr=0.1, eps=1e-15), "scheduler": None}
              for group in groups}
    optimizers = GuardedOptimizers(config, groups, 4, tmp_path)
    assert optimizers.read_every == 2
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    params = [group[0] for group in groups.values()]
    finite = lambda g, n: g.sum() + n.sum()  # noqa: E731
    poisoned = lambda g, n: (g * float("inf")).sum() + n.sum()  # noqa: E731

    _scaled_step(optimizers, scaler, finite)
    after = [p.detach().clone() for p in params]
    assert all((a < 1).all() for a in after)
    _scaled_step(optimizers, scaler, poisoned)  # skipped for both groups; the second step reads the counts
    assert all(torch.equal(p.detach(), a) for p, a in zip(params, after))
    assert all(float(optimizers.optimizers[g].state[groups[g][0]]["step"]) == 1 for g in groups)
    assert optimizers.skipped == 1 and "1 had a NaN or Inf gradient" in capsys.readouterr().out
    _scaled_step(optimizers, scaler, finite)
    after = [p.detach().clone() for p in params]
    with pytest.raises(TrainingStoppedError) as stopped:
        for step in range(10):
            optimizers.step = step
            _scaled_step(optimizers, scaler, poisoned)
    assert step == 4  # the fifth in a row is read: a run of four or more
    assert "5 steps in a row up to step 4" in str(stopped.value)
    assert all(torch.equal(p.detach(), a) for p, a in zip(params, after))  # the model before the run


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compositing_low_precision_point_outputs_is_done_in_float32(dtype):
    """Under ``--mixed-precision`` a field's MLPs compute in 16 bits: the fields still give float32 outputs, and
    points of 16-bit values are composited in float32, as their float32 values would be."""
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.model_components.renderers import RGBRenderer

    from pvdal_ns.fields import PointOutputs
    from pvdal_ns.method_configs import field_config
    from pvdal_ns.model_components.sampling import PackedSamples, Sampling, visible

    aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])
    sampling = Sampling(SceneBox(aabb=aabb), num_samples=64)
    torch.manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1) * 4.0
    directions = torch.nn.functional.normalize(-origins + 0.3 * torch.randn(32, 3), dim=-1)
    rays = sampling.collider()(RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(32, 1)))
    samples = PackedSamples.pack(sampling.sampler(stratified=False)(rays), torch.rand(32, 64) < 0.8)
    positions, view = samples.positions, samples.directions
    renderer = RGBRenderer(background_color="white")
    for architecture in ("hash", "vm", "mlp", "tensors"):
        field = field_config(architecture, "small").setup(aabb=aabb)
        with torch.no_grad():
            exact = field.query(positions, view)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast computes in bfloat16 only
                autocast = field.query(positions, view)
                rendered = samples.composite(autocast, renderer)
            reference = samples.composite(exact, renderer)
        low = [autocast.raw_density, autocast.rgb] + ([] if autocast.phi1 is None else [autocast.phi1])
        assert all(t.dtype == torch.float32 for t in low), architecture
        for key, value in rendered.items():
            assert value.dtype == torch.float32, (architecture, key)
            assert torch.allclose(value, reference[key], atol=2e-3), (architecture, key)

        points = PointOutputs(raw_density=exact.raw_density.to(dtype), rgb=exact.rgb.to(dtype))
        rounded = PointOutputs(raw_density=points.raw_density.float(), rgb=points.rgb.float())
        out, expected = samples.composite(points, renderer), samples.composite(rounded, renderer)
        for key, value in out.items():
            assert value.dtype == torch.float32 and torch.allclose(value, expected[key], atol=1e-6), (architecture, key)
        assert torch.equal(visible(samples, points.density.to(dtype), 1e-4), visible(samples, rounded.density, 1e-4))


def test_a_config_yml_of_pvdal_ns_before_its_layer_folders_is_refused_in_one_line(tmp_path):
    """Nothing was released before the modules moved into layer folders: such a run is refused, not aliased."""
    from pvdal_ns.utils.errors import TeacherLoadError
    from pvdal_ns.utils.run_config import read_trainer_config

    config = tmp_path / "config.yml"
    old_path = "pvdal_ns" + ".pipeline.DistillationPipelineConfig"  # the pipeline's class path before the move
    config.write_text("!!python/object:nerfstudio.engine.trainer.TrainerConfig\npipeline: !!python/object:"
                      f"{old_path}\n  teacher_config: null\n")
    with pytest.raises(TeacherLoadError, match=r"names pvdal_ns\.pipeline.*before its modules moved into layer "
                                               r"folders.*train the run again") as refused:
        read_trainer_config(config)
    assert "\n" not in str(refused.value)


def test_importing_the_method_configs_installs_no_hook_and_allows_no_pickles():
    """nerfstudio imports every plugin's method configs whenever ns-train starts: that changes neither
    sys.excepthook nor torch's weights-only allow-list; setting up a pvdal trainer or pipeline does."""
    import subprocess
    import sys

    code = ("import sys, torch; hook = sys.excepthook; safe = list(torch.serialization.get_safe_globals()); "
            "from nerfstudio.configs.method_configs import all_methods; assert 'pvdal-vm-small' in all_methods; "
            "assert sys.excepthook is hook, 'hook'; "
            "assert not [g for g in torch.serialization.get_safe_globals() if g not in safe and 'numpy' in str(g)], "
            "'safe'; "
            "from pvdal_ns.utils.errors import install_refusal_hook; install_refusal_hook(); "
            "assert sys.excepthook is not hook; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_pvd_error_nobody_catches_is_one_line_and_exit_code_2():
    """Under ns-train (no caller catches it) the hook prints a PVDError as one error line, exit code 2."""
    import subprocess
    import sys

    code = ("from pvdal_ns.utils.errors import BadInputError, install_refusal_hook; install_refusal_hook(); "
            "raise BadInputError('--pipeline.stage1-steps 400 leaves no step of stage 3: shorten it')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "Traceback" not in result.stderr
