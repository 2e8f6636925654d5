"""Distillation on real input: the teacher stays frozen and out of the student, stages switch, the
student's PSNR against the teacher rises, and the student is a normal nerfstudio checkpoint."""

import os

import pytest
import torch

from pvdal_ns.engine.runner import evaluate
from pvdal_ns.teachers import load_teacher
from pvdal_ns.utils.errors import BadInputError


def test_teacher_loads_frozen_from_any_working_directory(tiny_teacher, tmp_path, monkeypatch):
    config_path, pipeline = tiny_teacher
    monkeypatch.chdir(tmp_path)
    teacher = load_teacher(config_path)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    trained = pipeline.model.state_dict()
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_distillation_raises_student_psnr_and_keeps_teacher_out(tiny_teacher, tmp_path, tiny_config, train_step_losses,
                                                                 view_psnr):
    teacher_path, teacher_pipeline = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=120, teacher=teacher_path, experiment="student")
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 20, 20
    config.pipeline.warm_start = False  # the student learns from the losses (warm, it starts as the teacher)
    config.pipeline.al.images_every_epochs = 2
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    teacher = pipeline.teacher
    assert teacher is not None

    # stages switch at the configured steps, with the loss terms of each stage
    keys = {s: set(train_step_losses(trainer, s)[1]) for s in (0, 25, 45)}
    assert keys[0] == {"volume_loss"}
    assert keys[25] == {"volume_loss", "density_loss", "colour_loss", "regularization"}
    assert keys[45] == {"volume_loss", "density_loss", "colour_loss", "regularization", "rgb_loss"}

    # pseudo-label batches are the teacher's renders, never real pixels
    _, batch = pipeline.datamanager.next_train(45)
    assert batch["teacher"].rgb.shape == (1024, 3) and "image" not in batch

    # the teacher is not part of the student's parameters or checkpoint, and stays in eval mode
    teacher_params = {id(p) for p in teacher.model.parameters()}
    assert not teacher_params & {id(p) for ps in pipeline.get_param_groups().values() for p in ps}
    assert all(not k.startswith("teacher") for k in pipeline.state_dict())
    pipeline.train()
    assert not teacher.model.training

    before = view_psnr(pipeline, teacher_pipeline)
    trainer.train()
    after = view_psnr(pipeline, teacher_pipeline)
    assert after > before + 5.0, (before, after)
    assert after > 20.0

    # active learning ran in stage 3: pools filled, images written, pools saved and restored on resume
    al = pipeline.active_learning
    assert al.hard_rays.warm and len(al.hard_poses.poses) > 0
    _, batch = pipeline.datamanager.next_train(119)
    assert int((batch["indices"][:, 0] == -1).sum()) == al.hard_rays.per_batch(1024)  # pool rays in the batch
    images = sorted(p.name for p in (config.get_base_dir() / "active_learning").iterdir())
    assert "epoch-0002-poses.png" in images and "epoch-0002-rays.png" in images
    resumed_config = tiny_config("vm", tmp_path, steps=120, teacher=teacher_path, experiment="student")
    resumed_config.load_dir = config.get_base_dir() / "nerfstudio_models"
    resumed = resumed_config.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert torch.equal(resumed.pipeline.active_learning.hard_poses.poses, al.hard_poses.poses)
    assert torch.equal(resumed.pipeline.active_learning.hard_rays.rays["origins"].cpu(),
                       al.hard_rays.rays["origins"].cpu())

    # the student checkpoint evaluates with no teacher present (test mode never loads it)
    from nerfstudio.utils.eval_utils import eval_setup

    config_path = config.get_base_dir() / "config.yml"
    _, student, _, _ = eval_setup(config_path, test_mode="test")
    assert student.teacher is None
    camera = student.datamanager.eval_dataset.cameras[0:1].to(student.device)
    first, second = (student.model.get_outputs_for_camera(camera)["rgb"] for _ in range(2))
    assert torch.equal(first, second)  # the checkpoint's load left the sampler in eval mode: no jitter
    result = evaluate(student)
    assert abs(result.psnr - evaluate(pipeline).psnr) < 0.5


def test_student_of_tensors_skips_stage_one(tiny_teacher, tmp_path, tiny_config, train_step_losses):
    teacher_path, _ = tiny_teacher
    config = tiny_config("tensors", tmp_path, steps=10, teacher=teacher_path, experiment="tensors")
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    assert not pipeline.model.distillation.align_volume
    assert pipeline.model.distillation.stages.stage_at(0) == 2
    assert "volume_loss" not in train_step_losses(trainer, 0)[1]


def test_students_train_together_from_one_teacher_pass(tiny_teacher, tmp_path, tiny_config):
    from pvdal_ns.engine.runner import train_together

    teacher_path, _ = tiny_teacher
    configs = [tiny_config(arch, tmp_path, steps=steps, teacher=teacher_path, experiment="together")
               for arch, steps in (("hash", 12), ("tensors", 8), ("mlp", 4))]
    configs[2].pipeline.datamanager.train_num_rays_per_batch = 256
    runs = train_together(configs, "three students")
    runs, other = runs[:2], runs[2].pipeline
    leader, follower = (r.pipeline for r in runs)
    assert leader.teacher is follower.teacher is other.teacher  # loaded once
    assert follower.datamanager.pseudo_labels is leader.datamanager.pseudo_labels  # the leader's batches
    assert leader.datamanager.leads and not follower.datamanager.leads  # the leader's errors drive active learning
    assert other.datamanager.pseudo_labels is not leader.datamanager.pseudo_labels  # other rays per batch: its own
    assert other.datamanager.leads  # batches, same teacher
    assert len(other.datamanager.next_train(100)[0]) == 256
    ray_bundle, batch = follower.datamanager.next_train(100)
    assert leader.datamanager.next_train(100)[1] is batch  # one teacher render for both students
    for run, steps in zip(runs, (12, 8)):
        assert run.steps == steps and run.config_path.is_file()
        ckpts = list((run.config_path.parent / "nerfstudio_models").glob("step-*.ckpt"))
        assert [int(c.stem.split("-")[1]) for c in ckpts] == [steps - 1]
        assert len(list(run.config_path.parent.glob("events.out.tfevents.*"))) == 1  # each its own log


def test_student_renders_with_ns_render_and_no_teacher(tiny_teacher, tmp_path, monkeypatch, tiny_config):
    """``ns-render interpolate`` (video) and ``ns-render spiral`` (images) on a student's config.yml, with
    teacher loading made impossible; ffmpeg is the binary of the imageio-ffmpeg wheel."""
    import imageio_ffmpeg
    from nerfstudio.scripts.render import RenderInterpolated, SpiralRender

    import pvdal_ns.pipelines.distillation_pipeline
    import pvdal_ns.teachers.composed
    from pvdal_ns.engine.runner import train

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    run = train(tiny_config("hash", tmp_path, steps=3, teacher=tiny_teacher[0], experiment="render"), "student")

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(pvdal_ns.pipelines.distillation_pipeline, "open_edited_teacher", no_teacher)
    monkeypatch.setattr(pvdal_ns.teachers.composed, "load_teacher", no_teacher)
    video = tmp_path / "interpolate.mp4"
    RenderInterpolated(load_config=run.config_path, output_path=video, interpolation_steps=1, frame_rate=4).main()
    reader = imageio_ffmpeg.read_frames(str(video))
    assert tuple(next(reader)["size"]) == (100, 100)
    assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] >= 9  # 10 eval views, one frame between each pair
    spiral = tmp_path / "spiral"
    SpiralRender(load_config=run.config_path, output_path=spiral, seconds=1.0, frame_rate=3, output_format="images",
                 image_format="png").main()
    assert len(list(spiral.glob("*.png"))) == 3


def test_renders_only_distils_from_the_teachers_images(tiny_teacher, tmp_path, capsys, tiny_config, train_step_losses,
                                                        view_psnr):
    """--pipeline.teacher-renders-only (what splatfacto teachers always get): batches are pixels of the
    teacher's images of the epoch's poses, only L_rgb applies from the first step, and PSNR rises."""
    teacher_path, teacher_pipeline = tiny_teacher
    config = tiny_config("vm", tmp_path, steps=100, teacher=teacher_path, experiment="renders-only")
    config.pipeline.teacher_renders_only, config.pipeline.warm_start = True, False
    config.pipeline.datamanager.poses_per_epoch = 8
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    assert "Distilling from the renders of VMField only" in capsys.readouterr().out
    distillation, levels = pipeline.model.distillation, pipeline.active_learning.config
    assert distillation.stages.stage_at(0) == 3 and not distillation.align_volume
    assert not levels.rays and not levels.points and levels.poses

    dm = pipeline.datamanager
    images = dm.pseudo_labels.images
    assert images.rgb.shape == (8, 100, 100, 3) and images.accumulation.shape == (8, 100, 100, 1)
    ray_bundle, batch = dm.next_train(0)
    pixels = batch["indices"]
    expected, _ = images.composite(pixels, batch["teacher"].background)
    torch.testing.assert_close(batch["teacher"].rgb, expected)
    assert batch["teacher"].points is None
    live = pipeline.teacher.render(ray_bundle, batch["teacher"].background).rgb  # the same rays, rendered per ray
    assert float((live - batch["teacher"].rgb).abs().mean()) < 0.01

    assert set(train_step_losses(trainer, 1)[1]) == {"rgb_loss", "regularization"}
    before = view_psnr(pipeline, teacher_pipeline)
    trainer.train()
    after = view_psnr(pipeline, teacher_pipeline)
    assert after > before + 3.0, (before, after)
    # the teacher never imaged a hard-ray pool's rays: none entered a batch (tiny_config has hard rays on)
    assert len(pipeline.active_learning.hard_rays) == 0
    assert (dm.next_train(100)[1]["indices"][:, 0] >= 0).all()

    # a teacher cache stores the teacher at points, which renders-only distillation has no use for
    config = tiny_config("vm", tmp_path, steps=10, teacher=teacher_path, experiment="renders-only-cache")
    config.pipeline.teacher_renders_only, config.pipeline.teacher_cache = True, tmp_path / "cache"
    with pytest.raises(BadInputError, match="renders only does not use"):
        config.setup(local_rank=0, world_size=1).setup()
    assert not (tmp_path / "cache").exists()


def test_evaluation_at_half_size_renders_half_size_views_against_box_filtered_photographs(tiny_teacher):
    """``evaluate(…, downscale=2)`` (for models too slow to render full-size views on a CPU): 50×50 renders of the
    100×100 test views, a PSNR near the full-size one, and one clear error where the size does not divide."""
    _, pipeline = tiny_teacher
    full, half = evaluate(pipeline), evaluate(pipeline, downscale=2)
    assert half.images[0].shape == (50, 50, 3) and half.gt[0].shape == (50, 50, 3)
    assert abs(half.psnr - full.psnr) < 1.5
    with pytest.raises(ValueError, match="100×100 view cannot be downscaled by 3"):
        evaluate(pipeline, downscale=3)
