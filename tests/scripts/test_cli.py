"""The user's commands: ns-train of every pvdal-* method, ns-eval on a checkpoint, ns-distill errors
and reports."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pvdal_ns import EMBEDDED_SCENE

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _run(*args, cwd=None, timeout=600):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


def test_methods_are_registered_with_nerfstudio():
    from nerfstudio.configs.method_configs import all_methods

    for arch in ("hash", "vm", "mlp", "tensors"):
        assert f"pvdal-{arch}" in all_methods and f"pvdal-{arch}-small" in all_methods
    assert "pvdal-mlp-compressed" in all_methods and "pvdal-tensors-compressed" in all_methods


@pytest.mark.parametrize("architecture", ["hash", "vm", "mlp", "tensors"])
def test_ns_train_two_steps(architecture, tmp_path):
    result = _run(
        BIN / "ns-train", f"pvdal-{architecture}-small", "--max-num-iterations", "2", "--vis", "tensorboard",
        "--output-dir", tmp_path,  # no --machine.device-type: without CUDA it trains on the CPU by itself
        "--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.model.grid-warmup-steps", "1",
        "blender-data", "--data", EMBEDDED_SCENE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    if not torch.cuda.is_available():
        assert re.search(r"training\s+on\s+the\s+CPU", result.stdout), result.stdout[-2000:]
    checkpoints = list(tmp_path.glob(f"*/pvdal-{architecture}-small/*/nerfstudio_models/step-*.ckpt"))
    assert len(checkpoints) == 1
    if architecture == "vm":  # ns-eval reads the checkpoint with torch's weights_only loader
        config = next(tmp_path.glob("*/pvdal-vm-small/*/config.yml"))
        out = tmp_path / "eval.json"
        result = _run(BIN / "ns-eval", "--load-config", config, "--output-path", out)
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = json.loads(out.read_text())["results"]
        assert {"psnr", "ssim"} <= set(metrics) and metrics["psnr"] > 5


def test_bad_teacher_is_one_line_and_exit_code_2(tmp_path):
    missing = _run(BIN / "ns-distill", "run", "--teacher", tmp_path / "nope" / "config.yml", "--student", "mlp")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
    bad = tmp_path / "config.yml"
    bad.write_text("this: [is not a nerfstudio config\n")
    unreadable = _run(BIN / "ns-distill", "run", "--teacher", bad, "--student", "mlp")
    assert unreadable.returncode == 2
    assert "Traceback" not in unreadable.stderr and "not a readable nerfstudio config" in unreadable.stderr
    assert unreadable.stderr.strip().count("\n") == 0


def test_an_interrupted_ns_train_of_nerfstudios_default_pipeline_is_refused_in_one_line(tmp_path):
    """What an interrupted ``ns-train`` of another method leaves: nerfstudio's default pipeline (no dataparser) and an
    empty checkpoint folder (issue #33: it ended in an AttributeError from resolve_data)."""
    from nerfstudio.engine.trainer import TrainerConfig

    run = tmp_path / "run"
    config = TrainerConfig(method_name="something", output_dir=tmp_path, experiment_name="run")
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text(yaml.dump(config))
    result = _run(BIN / "ns-distill", "run", "--teacher", run / "config.yml", "--student", "hash")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert "supported teacher families" in result.stderr


def test_teacher_without_checkpoint_is_reported(tiny_teacher, tmp_path):
    import shutil

    from pvdal_ns.teachers import load_teacher
    from pvdal_ns.utils.errors import TeacherLoadError

    config_path, _ = tiny_teacher
    copy = tmp_path / "run"
    shutil.copytree(config_path.parent, copy, ignore=shutil.ignore_patterns("*.ckpt"))
    with pytest.raises(TeacherLoadError, match="has no checkpoint"):
        load_teacher(copy / "config.yml")


def test_ns_distill_run_writes_report(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main

    config_path, _ = tiny_teacher
    out = tmp_path / "distill"
    assert main(["run", "--teacher", str(config_path), "--student", "tensors", "--steps", "30",
                 "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    teacher, model = report["models"]  # the teacher on the same test views at the same size, then the student
    assert teacher["role"] == "teacher" and teacher["config"] == str(config_path.resolve()) and teacher["psnr"] > 15
    assert len(teacher["per_view_psnr"]) == 10
    assert model["architecture"] == "tensors" and model["steps"] == 30 and model["parameters"] > 0
    assert len(model["per_view_psnr"]) == 10
    assert model["psnr"] == pytest.approx(sum(model["per_view_psnr"]) / 10, abs=1e-2)
    assert model["lpips"] is None or 0 <= model["lpips"] <= 1
    assert {"device", "versions", "peak_memory_gib", "total_train_time", "resources_utilization"} <= set(report)
    assert report["total_train_time"] == model["train_seconds"] > 0  # nerfbaselines' names: seconds, MiB
    use = report["resources_utilization"]
    assert abs(use["memory"] / 1024 - report["peak_memory_gib"]) < 0.01
    if not torch.cuda.is_available():  # the GPU's peak memory and name only where CUDA was used
        assert set(use) == {"memory"} and "peak_gpu_memory_gib" not in report
    assert report["command"].startswith("ns-distill run --teacher")
    assert (out / "comparison.png").stat().st_size > 10_000


def test_a_student_inherits_its_teachers_image_scale(tiny_teacher, tmp_path):
    """A teacher trained at a reduced image scale (``--pipeline.datamanager.camera-res-scale-factor``) holds the detail
    of that scale: its students distil novel poses at it and are evaluated at it (issue #33: at full size they came
    out blurred against a teacher row there was none of)."""
    import shutil

    from pvdal_ns.experiments.convert import distillation_config
    from pvdal_ns.utils.run_config import read_trainer_config

    config_path, _ = tiny_teacher
    run = tmp_path / "half"
    shutil.copytree(config_path.parent, run)
    config = read_trainer_config(run / "config.yml")
    config.pipeline.datamanager.camera_res_scale_factor = 0.5
    (run / "config.yml").write_text(yaml.dump(config))
    student = distillation_config(run / "config.yml", "hash", "small", EMBEDDED_SCENE, tmp_path, "s", 10)
    assert student.pipeline.datamanager.camera_res_scale_factor == 0.5
    student.machine.device_type = "cpu"
    trainer = student.setup(local_rank=0, world_size=1)
    trainer.setup()
    datamanager = trainer.pipeline.datamanager
    assert datamanager.pseudo_labels.image_size == (50, 50)  # novel poses at the teacher's 50×50 of the 100×100 views
    from pvdal_ns.engine.runner import split_dataloader

    camera, batch = next(iter(split_dataloader(datamanager, "test")))  # evaluated there too
    assert int(camera.width[0]) == 50 and batch["image"].shape[:2] == (50, 50)


def test_ns_train_with_a_teacher_takes_its_image_scale_into_the_runs_config(tiny_teacher, tmp_path, tiny_config):
    """``ns-train … --pipeline.teacher-config`` writes the run's config.yml before the trainer is set up, with the
    command line's image scale: the trainer gives the student its teacher's scale and writes config.yml again, so
    ``ns-eval`` evaluates where it trained; ``--pipeline.teacher-image-scale False`` keeps the run's own."""
    import shutil

    from pvdal_ns.utils.run_config import read_trainer_config

    run = tmp_path / "half"
    shutil.copytree(tiny_teacher[0].parent, run)
    teacher = read_trainer_config(run / "config.yml")
    teacher.pipeline.datamanager.camera_res_scale_factor = 0.5
    (run / "config.yml").write_text(yaml.dump(teacher))
    for takes in (True, False):
        config = tiny_config("hash", tmp_path, 10, teacher=run / "config.yml", experiment=f"takes-{takes}")
        config.pipeline.teacher_image_scale = takes
        config.machine.device_type = "cpu"
        config.set_timestamp()
        config.save_config()  # as ns-train's main does, before the trainer
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        saved = read_trainer_config(config.get_base_dir() / "config.yml", "student")
        expected = 0.5 if takes else 1.0
        assert saved.pipeline.datamanager.camera_res_scale_factor == expected
        side = int(trainer.pipeline.datamanager.train_dataset.cameras[0].width)
        assert side == int(100 * expected)


def test_ns_distill_run_with_teacher_cache_writes_then_reuses_it(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main

    config_path, _ = tiny_teacher
    cache = tmp_path / "cache"
    args = ["run", "--teacher", str(config_path), "--student", "tensors", "--steps", "20",
            "--teacher-cache", str(cache)]
    assert main([*args, "--output-dir", str(tmp_path / "first")]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["batches"] == 20 and meta["written_for"]["teacher"] == str(config_path.resolve())
    assert main([*args, "--output-dir", str(tmp_path / "second")]) == 0  # reused, not rewritten
    assert json.loads((cache / "meta.json").read_text()) == meta
    for run in ("first", "second"):
        report = json.loads((tmp_path / run / "report.json").read_text())
        assert report["teacher_cache"]["bytes"] > 0 and report["models"][1]["psnr"] > 10
    not_a_cache = tmp_path / "first"
    result = _run(BIN / "ns-distill", *args[:-1], not_a_cache)
    assert result.returncode == 2 and "is not a finished pvdal teacher cache" in result.stderr
    assert "Traceback" not in result.stderr


def test_ns_distill_ablation_writes_table_and_reuses_finished_rows(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main

    config_path, _ = tiny_teacher
    out = tmp_path / "ablation"
    args = ["ablation", "--teacher", str(config_path), "--steps", "12", "--rows", "all", "w/o active learning",
            "--output-dir", str(out)]
    assert main(args) == 0
    record = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in record["runs"]] == ["all", "w/o active learning"]
    for run in record["runs"]:
        assert len(run["per_view_psnr"]) == 10 and run["psnr_min"] <= run["psnr"] <= run["psnr_max"]
    table = (out / "ablation.md").read_text()
    assert "| all |" in table and "| w/o active learning |" in table and "Δ vs all" in table
    assert (out / "ablation.png").stat().st_size > 10_000
    runs_before = sorted(p.name for p in out.iterdir())
    assert main(args) == 0  # a rerun with the same settings trains nothing new
    assert sorted(p.name for p in out.iterdir()) == runs_before
    assert json.loads((out / "ablation.json").read_text())["runs"] == record["runs"]


def test_ablation_bad_input_is_one_line(tmp_path):
    result = _run(BIN / "ns-distill", "ablation", "--steps", "0")
    assert result.returncode == 2 and "--steps must be at least 1" in result.stderr
    result = _run(BIN / "ns-distill", "ablation", "--teacher", tmp_path / "missing.yml")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def _ns_train_config(*args):
    """The config ``ns-train`` builds from ``args`` (tyro over every registered method), without training."""
    import tyro
    from nerfstudio.configs.method_configs import all_descriptions, all_methods

    methods = tyro.extras.subcommand_type_from_defaults(defaults=all_methods, descriptions=all_descriptions)
    return tyro.cli(tyro.conf.SuppressFixed[tyro.conf.FlagConversionOff[methods]], args=[str(a) for a in args])


def test_max_num_iterations_is_the_one_setting_of_a_runs_length(tiny_teacher):
    teacher = tiny_teacher[0]
    config = _ns_train_config("pvdal-hash-small", "--max-num-iterations", 700, "--pipeline.teacher-config", teacher)
    # the preset's stages (15 % and 25 % of 3000) and schedules follow the run's 700 steps: stage 3 from step 280
    assert (config.pipeline.stage1_steps, config.pipeline.stage2_steps) == (105, 175)
    assert {group["scheduler"].max_steps for group in config.optimizers.values()} == {700}
    assert config.steps_per_save == 70  # a kill loses at most a tenth of the run
    # the registered method is left as it was
    from nerfstudio.configs.method_configs import all_methods

    assert {g["scheduler"].max_steps for g in all_methods["pvdal-hash-small"].optimizers.values()} == {3000}
    # stage lengths given on the command line are kept; ones that leave no stage 3 are refused
    config = _ns_train_config("pvdal-hash-small", "--max-num-iterations", 700, "--pipeline.stage1-steps", 50,
                              "--pipeline.stage2-steps", 100, "--pipeline.teacher-config", teacher)
    assert (config.pipeline.stage1_steps, config.pipeline.stage2_steps) == (50, 100)
    from pvdal_ns.utils.errors import BadInputError

    unreachable = _ns_train_config("pvdal-hash-small", "--max-num-iterations", 700, "--pipeline.stage1-steps", 400,
                                   "--pipeline.stage2-steps", 400, "--pipeline.teacher-config", teacher)
    with pytest.raises(BadInputError, match="leave no step of stage 3 in a run of 700 steps"):
        unreachable.setup(local_rank=0, world_size=1)  # refused as its trainer is set up, before any work


def test_a_resumed_run_ends_at_the_step_it_was_planned_to_end_at(tiny_teacher, tmp_path, tiny_config):
    from pvdal_ns.engine.runner import train

    config = tiny_config("vm", tmp_path, steps=30, teacher=tiny_teacher[0], experiment="student")
    config.steps_per_save, config.save_only_latest_checkpoint = 20, False
    first = train(config, "student")
    models = first.config_path.parent / "nerfstudio_models"
    (models / "step-000000029.ckpt").unlink()  # as if killed after the checkpoint of step 20
    resumed = tiny_config("vm", tmp_path, steps=30, teacher=tiny_teacher[0], experiment="student")
    resumed.steps_per_save, resumed.load_dir = 20, models
    train(resumed, "resumed")
    steps = sorted(int(p.stem.split("-")[-1]) for p in resumed.get_base_dir().glob("nerfstudio_models/step-*.ckpt"))
    assert steps[-1] == 29, steps  # nerfstudio alone would run 30 more steps, to step 50


def test_a_run_continues_on_another_device():
    """The device is not a setting of a run (docs/design.md, "Resume on CUDA, and on another device"): a run killed on a
    CPU is continued on a GPU; any other change is another run."""
    from pvdal_ns.engine.resume import same_settings
    from pvdal_ns.experiments.convert import student_config

    def config(device, steps=30):
        made = student_config("vm", "small", EMBEDDED_SCENE, Path("out"), "student", steps, None)
        made.machine.device_type = device
        return made

    assert same_settings(config("cpu"), config("cuda")) and same_settings(config("cuda"), config("cpu"))
    assert not same_settings(config("cpu"), config("cuda", steps=40))


def test_ns_train_takes_an_edit_as_pipeline_edit_options():
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    config = tyro.cli(AnnotatedBaseConfigUnion, args=[
        "pvdal-hash-small", "--pipeline.edit.erase", "0", "0", "0", "1", "1", "1",
        "--pipeline.edit.erase", "0", "0", "0", "0", "0", "0.5", "1", "1", "1",
        "--pipeline.edit.recolor", "0", "0", "0", "1", "1", "1", "1", "0", "0", "--pipeline.edit.recolor-mode",
        "multiply", "blender-data"])
    edit = config.pipeline.edit
    assert [list(b) for b in edit.erase] == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0.5, 1, 1, 1]]
    assert edit.recolor_mode == "multiply" and edit.describe() == "erase 2 boxes, recolor 1 box (multiply)"
