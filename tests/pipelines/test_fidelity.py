"""Fidelity to the authors' method (issue #15): warm start from the teacher, what the teacher computes in
each stage, figures that leave the random stream alone, the ablation rows, and a validation split that is not
the test split."""

import json
import typing

import pytest
import torch

from pvdal_ns.utils.errors import BadInputError


def test_a_same_architecture_student_starts_as_the_teacher(tiny_teacher, tmp_path, capsys, tiny_config,
                                                           train_step_losses):
    teacher_path, teacher_pipeline = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=10, teacher=teacher_path, experiment="warm")
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    student, teacher = trainer.pipeline.model.field.state_dict(), teacher_pipeline.model.field.state_dict()
    assert student.keys() == teacher.keys()
    for key, value in teacher.items():
        assert torch.equal(student[key], value), key
    n = len(teacher) - 2  # all but the scene box and the contraction flag, which the student has already
    out = capsys.readouterr().out
    assert f"Warm start from the VMField teacher: {n} of {n} tensors copied (density_encoding" in out
    # it is its teacher: L_reg alone would move it off (Adam's normalised steps), so it distils without it
    assert "no L_reg while distilling" in out and "regularization" not in train_step_losses(trainer, 9)[1]

    # switched off, the student starts from its own initialisation
    config = tiny_config("vm", tmp_path, steps=10, teacher=teacher_path, experiment="cold")
    config.pipeline.warm_start = False
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    cold = trainer.pipeline.model.field.state_dict()
    assert not torch.equal(cold["density_encoding.plane_coef"], teacher["density_encoding.plane_coef"])
    assert "regularization" in train_step_losses(trainer, 9)[1]


def test_a_cross_architecture_student_takes_what_matches_by_name_and_shape(tiny_teacher, capsys):
    from nerfstudio.data.scene_box import SceneBox

    from pvdal_ns.method_configs import method_config

    _, teacher_pipeline = tiny_teacher
    teacher = teacher_pipeline.model.field.state_dict()  # VM: colour head of width 64 on PE directions
    scene_box = SceneBox(aabb=teacher["aabb"].clone())
    hash_student = method_config("hash", "small").pipeline.model.setup(scene_box=scene_box, num_train_data=1,
                                                                       metadata={})
    copied = hash_student.warm_start(teacher, "VMField")
    # the hash colour head is as wide and as deep, but its first layer reads SH directions (other width)
    assert copied == [f"colour.mlp.layers.{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]
    for key in copied:
        assert torch.equal(hash_student.field.state_dict()[key], teacher[key])
    logged = capsys.readouterr().out
    assert "Warm start from the VMField teacher: 4 of" in logged and "(colour (4/6))" in logged

    moved = {**teacher, "aabb": teacher["aabb"] + 1.0}  # a teacher of another scene box: nothing is copied
    assert hash_student.warm_start(moved, "VMField") == []
    assert "scene box differs" in capsys.readouterr().out


def test_the_teacher_computes_what_each_stage_needs_only(tiny_teacher, tmp_path, tiny_config, train_step_losses):
    teacher_path, _ = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=60, teacher=teacher_path, experiment="stages")
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 20, 20
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    for step, stage in ((0, 1), (25, 2), (45, 3)):
        outputs, losses, _ = train_step_losses(trainer, step)
        batch = trainer.pipeline.datamanager.next_train(step)[1]["teacher"]
        assert (batch.points.rgb is not None) == (stage >= 2), step  # ϕ² from stage 2
        assert (batch.rgb is not None) == (batch.weights is not None) == (stage == 3), step  # rendered in stage 3
        assert ("rgb_loss" in losses) == (stage == 3)


def test_figures_of_active_learning_draw_no_random_numbers(tiny_teacher):
    from pvdal_ns.teachers import load_teacher

    teacher_path, teacher_pipeline = tiny_teacher
    teacher = load_teacher(teacher_path)
    camera = teacher_pipeline.datamanager.train_dataset.cameras[0:1]
    state = torch.get_rng_state()
    first = teacher.render_camera(camera)
    assert torch.equal(state, torch.get_rng_state())
    assert first.shape == (100, 100, 3)
    torch.testing.assert_close(teacher.render_camera(camera), first)  # evenly spaced samples: the same image


def test_ablation_rows_switch_off_one_thing_and_keep_the_stage_three_budget():
    from pvdal_ns.experiments.ablation import ROWS
    from pvdal_ns.method_configs import method_config
    from pvdal_ns.presets import PAPER_ABLATION_ROWS, AblationRow

    assert set(typing.get_args(AblationRow)) == set(ROWS)
    assert PAPER_ABLATION_ROWS[0] == "all" and len(PAPER_ABLATION_ROWS) == 11
    assert "renders only" not in PAPER_ABLATION_ROWS

    def applied(row):
        config = method_config("mlp", "small")
        ROWS[row](config)
        return config.pipeline

    full = applied("all")
    stage3_start = full.stage1_steps + full.stage2_steps
    no_volume = applied("w/o L_v")
    assert no_volume.loss.volume_weight == 0 and no_volume.stage2_steps == stage3_start  # stage 1 is skipped
    no_blocks = applied("w/o block-wise")
    assert not no_blocks.blockwise and no_blocks.al.start_step == stage3_start
    assert applied("forward density clipping").loss.clip_mode == "forward"
    assert applied("normL2 losses").loss.form == "norm"
    assert not applied("w/o warm start").warm_start


def test_the_embedded_scene_tunes_on_views_it_neither_trains_on_nor_reports(tiny_teacher):
    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import split_dataloader

    frames = {s: {f["file_path"] for f in json.loads((EMBEDDED_SCENE / f"transforms_{s}.json").read_text())["frames"]}
              for s in ("train", "val", "test")}
    assert len(frames["val"]) == len(frames["test"]) == 10 and len(frames["train"]) == 80
    assert not frames["val"] & frames["test"] and not frames["val"] & frames["train"]
    assert not frames["test"] & frames["train"]

    _, pipeline = tiny_teacher  # trained with nerfstudio's "val" eval split; reports read "test"
    names = {s: [p.stem for p in
                 split_dataloader(pipeline.datamanager, s).input_dataset._dataparser_outputs.image_filenames]
             for s in ("val", "test")}
    assert names["test"] == [f"r_{i}" for i in range(90, 100)]
    assert set(names["val"]) == {p.split("/")[-1] for p in frames["val"]}


def test_the_authors_forward_clamp_trains(tiny_teacher, tmp_path, tiny_config, train_step_losses):
    teacher_path, _ = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=10, teacher=teacher_path, experiment="forward-clamp")
    config.pipeline.stage1_steps = config.pipeline.stage2_steps = 0
    config.pipeline.loss.clip_mode, config.pipeline.loss.form = "forward", "norm"
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    outputs, losses, _ = train_step_losses(trainer, 0)
    a, b = config.pipeline.loss.density_clip
    assert outputs["points"].raw_density.min() >= a and outputs["points"].raw_density.max() <= b
    assert outputs["teacher_points"].raw_density.min() >= a
    assert {"volume_loss", "density_loss", "colour_loss", "rgb_loss"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_ablation_table_gives_the_spread_over_seeds():
    from pvdal_ns.experiments.ablation import AblationSettings, markdown_table, summarise

    def run(row, seed, psnr):
        return {"row": row, "seed": seed, "psnr": psnr, "psnr_min": psnr - 1, "psnr_max": psnr + 1, "ssim": 0.9,
                "ssim_min": 0.8, "ssim_max": 0.95, "seconds_per_step": 0.1}

    runs = [run("all", 0, 28.0), run("all", 1, 28.4), run("all", 2, 28.2),
            run("w/o L_v", 0, 27.5), run("w/o L_v", 1, 28.1), run("w/o L_v", 2, 27.6)]
    summary = {s["row"]: s for s in summarise(runs, ["all", "w/o L_v"])}
    assert summary["all"]["psnr"] == pytest.approx(28.2) and summary["all"]["psnr_sd"] == pytest.approx(0.2)
    assert "delta" not in summary["all"]
    assert summary["w/o L_v"]["delta"] == pytest.approx(-1.4 / 3)  # −0.5, −0.3, −0.6 per seed
    assert summary["w/o L_v"]["delta_sd"] == pytest.approx(0.1527, abs=1e-3)
    table = markdown_table(list(summary.values()), AblationSettings("t/a/b/config.yml", "mlp", 10, True, "s"),
                           [0, 1, 2])
    assert "| w/o L_v | 27.73 ± 0.32 | -0.47 ± 0.15 |" in table


def test_fine_tuning_trains_the_last_steps_on_the_real_images(tiny_teacher, tmp_path, tiny_config, train_step_losses):
    """Paper Table 6: after distilling, the last ``finetune_steps`` steps train on the training images with the
    image loss; before them the batches are the teacher's."""
    teacher_path, _ = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=12, teacher=teacher_path, experiment="finetune")
    config.pipeline.stage1_steps = config.pipeline.stage2_steps = 2
    config.pipeline.finetune_steps = 4
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    datamanager = trainer.pipeline.datamanager
    assert datamanager.finetune_from == 8
    _, distilling, _ = train_step_losses(trainer, 7)
    assert {"volume_loss", "density_loss", "rgb_loss"} <= set(distilling)  # stage 3 of distillation
    ray_bundle, batch = datamanager.next_train(8)
    assert "teacher" not in batch and batch["image"].shape[-1] in (3, 4)  # real pixels of the training images
    camera, y, x = (int(v) for v in batch["indices"][0])
    assert torch.allclose(batch["image"][0], datamanager.train_dataset[camera]["image"][y, x])
    _, finetuning, _ = train_step_losses(trainer, 9)
    assert set(finetuning) <= {"rgb_loss", "regularization"} and "rgb_loss" in finetuning

    config.pipeline.finetune_steps = 12
    with pytest.raises(BadInputError, match="leaves none of the run's 12 steps to distil"):
        config.setup(local_rank=0, world_size=1).setup()
