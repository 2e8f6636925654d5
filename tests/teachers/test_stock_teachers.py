"""Stock nerfstudio models as teachers (issue #5): tiny teachers trained by nerfstudio's own trainer on
the CPU load through the same option as pvdal-* teachers, and each adapter says what the model itself
says: the same density and colour at any point, the same rendering of the same rays."""

import json
import math
from pathlib import Path

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.scene_colliders import AABBBoxCollider

from pvdal_ns import EMBEDDED_SCENE
from pvdal_ns.model_components.sampling import Sampling
from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers import load_teacher
from pvdal_ns.utils.errors import TeacherLoadError

SAMPLING = Sampling(SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), grid_resolution=32, num_samples=256)
TRAINED = {"tensorf": 3, "nerfacto": 2, "vanilla-nerf": 2}  # steps of ns-train's own trainer


def _untrained_checkpoint(config) -> Path:
    """Write ``config``'s config.yml and a checkpoint of its untrained model (for models nerfstudio
    cannot train on a CPU); returns the config.yml path."""
    from pvdal_ns.utils.library_internals import offline_lpips

    config.set_timestamp()
    config.save_config()
    with offline_lpips():
        model = config.pipeline.model.setup(scene_box=SAMPLING.scene_box, num_train_data=90, metadata={})
    config.get_checkpoint_dir().mkdir(parents=True)
    state = {"_model." + k: v for k, v in model.state_dict().items()}
    torch.save({"step": 0, "pipeline": state}, config.get_checkpoint_dir() / "step-000000000.ckpt")
    return config.get_base_dir() / "config.yml"


@pytest.fixture(scope="module")
def stock_teachers(tmp_path_factory):
    """config.yml of each stock family: trained for a few steps by ns-train's trainer, or untrained."""
    from pvdal_ns.engine.runner import train
    from pvdal_ns.experiments.convert import stock_config

    out = tmp_path_factory.mktemp("stock")
    paths = {m: train(stock_config(m, EMBEDDED_SCENE, out, m, steps, rays_per_batch=256), m).config_path
             for m, steps in TRAINED.items()}
    paths["instant-ngp"] = _untrained_checkpoint(
        stock_config("instant-ngp", EMBEDDED_SCENE, out, "instant-ngp", steps=1)
    )  # CUDA sampling
    return paths


@pytest.mark.parametrize("family,volume_feature", [("nerfacto", True), ("instant-ngp", True), ("tensorf", False),
                                                   ("vanilla-nerf", False)])
def test_adapter_points_are_the_fields_own(stock_teachers, family, volume_feature):
    from pvdal_ns.teachers.stock import point_samples

    teacher = load_teacher(stock_teachers[family], "cpu", SAMPLING)
    assert teacher.name == family and (Capability.VOLUME_FEATURE in teacher.capabilities) == volume_feature
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    torch.manual_seed(0)
    x = torch.rand(500, 3) * 2.4 - 1.2
    d = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    points = teacher.query_points(x, d)
    with torch.no_grad():
        own = teacher.field.forward(point_samples(x, d))
    density = own[FieldHeadNames.DENSITY].reshape(-1, 1)
    alive = density > 1e-6
    torch.testing.assert_close(points.density[alive], density[alive], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(points.rgb, own[FieldHeadNames.RGB].reshape(-1, 3))
    if volume_feature:  # ϕ¹ = [log σ, the 15 mlp_base features]: σ = exp(ϕ¹₀)
        assert points.phi1.shape == (500, 16)
        torch.testing.assert_close(points.phi1[:, :1], points.raw_density)
    else:
        assert points.phi1 is None


@pytest.mark.parametrize("family", list(TRAINED))
def test_adapter_renders_the_rays_as_the_model_does(stock_teachers, family):
    """The model's own renderer (collider set to the same box, white background) and the teacher's
    occupancy-masked rendering of the same rays agree far better than either agrees with the background."""
    teacher = load_teacher(stock_teachers[family], "cpu", SAMPLING)
    teacher.occupancy_grid.binaries[:] = True  # compare the field mapping, not the grid's pruning
    model = teacher.model
    model.collider = AABBBoxCollider(SAMPLING.scene_box, near_plane=0.0)
    model.renderer_rgb.background_color = "white"
    torch.manual_seed(0)
    n = 400
    origins = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1) * 4.0
    directions = torch.nn.functional.normalize(torch.rand(n, 3) - 0.5 - origins / 4.0, dim=-1)
    rays = RayBundle(origins=origins, directions=directions, pixel_area=torch.full((n, 1), 1e-4),
                     camera_indices=torch.zeros(n, 1, dtype=torch.long))
    with torch.no_grad():
        own = model(rays)
    own_rgb = own.get("rgb_fine", own.get("rgb"))
    mine = teacher.render(rays, torch.ones(n, 3)).rgb
    assert (own_rgb - 1).abs().mean() > 5e-3  # the rays see something
    assert (own_rgb - mine).abs().mean() < 0.25 * (own_rgb - 1).abs().mean()


def _test_camera(size: int = 20) -> Cameras:
    """The first test view of the embedded scene, at ``size`` × ``size`` pixels."""
    meta = json.loads((EMBEDDED_SCENE / "transforms_test.json").read_text())
    c2w = torch.tensor(meta["frames"][0]["transform_matrix"])[None, :3]
    focal = 0.5 * size / math.tan(0.5 * meta["camera_angle_x"])
    return Cameras(camera_to_worlds=c2w, fx=focal, fy=focal, cx=size / 2, cy=size / 2, width=size, height=size)


@pytest.mark.parametrize("family", ["pvdal-*", "nerfacto", "instant-ngp", "tensorf", "vanilla-nerf", "splatfacto"])
def test_no_teacher_is_asked_an_empty_query(family, stock_teachers, tiny_teacher, tmp_path):
    """``ns-distill run --teacher <a tensorf run> --student hash mlp`` died on an active-learning image with
    rays of no occupied sample: nerfstudio's ``NeRFEncoding`` cannot reshape an empty chunk. Every family
    answers an empty query with empty outputs, and renders an image with nothing in it as the background."""
    if family == "splatfacto":
        if not torch.cuda.is_available():
            pytest.skip("splatfacto renders with gsplat, which needs CUDA")
        teacher = load_teacher(_splatfacto_checkpoint(tmp_path), "cuda", SAMPLING)
    else:
        teacher = load_teacher(tiny_teacher[0] if family == "pvdal-*" else stock_teachers[family], "cpu", SAMPLING)
        nowhere = torch.zeros(0, 3)
        points = teacher.query_points(nowhere, nowhere)
        assert points.raw_density.shape == (0, 1) and points.rgb.shape == (0, 3)
        has_phi1 = Capability.VOLUME_FEATURE in teacher.capabilities
        assert (points.phi1.shape == (0, 16)) if has_phi1 else points.phi1 is None
        assert teacher.query_points(nowhere).rgb is None
    camera = _test_camera().to(teacher.occupancy_grid.binaries.device)
    if teacher.proposal_sampler is not None:  # nerfacto: its own proposal fields place S samples on every ray
        assert teacher.render_images(camera).rgb.shape == (1, 20, 20, 3)
        return
    teacher.occupancy_grid.binaries[:] = False  # nothing occupied: no ray of the image has a sample
    if family == "splatfacto":  # its images are gsplat's own: look away from every Gaussian instead
        teacher.model.gauss_params["opacities"].data[:] = -20.0
    images = teacher.render_images(camera)
    assert images.rgb.shape == (1, 20, 20, 3) and float(images.accumulation.abs().max()) < 1e-6
    torch.testing.assert_close(teacher.render_camera(camera), torch.ones(20, 20, 3))


def test_stock_teacher_distils_with_the_losses_it_can_feed(stock_teachers, tmp_path, capsys, tiny_config,
                                                           train_step_losses):
    config = tiny_config("vm", tmp_path, steps=40, teacher=stock_teachers["tensorf"], experiment="from-tensorf")
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 10, 10
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    assert pipeline.teacher.name == "tensorf"
    assert "Stage 1 and L_v skipped: the teacher (tensorf) has no ϕ¹ volume feature" in capsys.readouterr().out
    assert set(train_step_losses(trainer, 0)[1]) == {"density_loss", "colour_loss", "regularization"}
    assert "rgb_loss" in train_step_losses(trainer, 15)[1]

    config = tiny_config("hash", tmp_path, steps=40, teacher=stock_teachers["nerfacto"], experiment="from-nerfacto")
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 10, 10
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses = train_step_losses(trainer, 0)[1]
    # contracted as nerfacto: the student samples with proposals and distils its proposal fields from the first step
    assert set(losses) == {"volume_loss", "interlevel_loss"} and torch.isfinite(losses["volume_loss"])


def test_checkpoint_layouts_and_moved_data(stock_teachers, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(stock_teachers["nerfacto"].parent, run)
    (ckpt,) = (run / "nerfstudio_models").glob("*.ckpt")
    loaded = torch.load(ckpt, weights_only=False)
    # a checkpoint written where LPIPS could be built carries its weights: they are not the field's
    loaded["pipeline"]["_model.lpips.net.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(loaded, ckpt)
    # the scene moved away: a teacher never reads its images
    config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.data = Path("no/longer/here")
    (run / "config.yml").write_text(yaml.dump(config))
    assert load_teacher(run / "config.yml", "cpu", SAMPLING).name == "nerfacto"

    # a GPU-trained nerfacto (tiny-cuda-nn layout) on a machine without tinycudann: one clear line
    state = loaded["pipeline"]
    torch_layout = [k for k in state if k.startswith("_model.field.mlp_base.model.")]
    state["_model.field.mlp_base.model.params"] = torch.cat([state.pop(k).flatten() for k in torch_layout])
    torch.save(loaded, ckpt)
    from nerfstudio.utils.external import TCNN_EXISTS

    if not TCNN_EXISTS:
        with pytest.raises(TeacherLoadError, match="tiny-cuda-nn"):
            load_teacher(run / "config.yml", "cpu", SAMPLING)


def test_chain_nerfacto_to_tensors_to_mlp(stock_teachers, tmp_path, tiny_config):
    """A student is a normal checkpoint: it can teach the next conversion, with no teacher of its own loaded."""
    from pvdal_ns.engine.runner import train

    first = train(tiny_config("tensors", tmp_path, steps=6, teacher=stock_teachers["nerfacto"], experiment="tensors"),
                  "nerfacto → tensors")
    assert first.pipeline.teacher.name == "nerfacto"
    assert not any(k.startswith("teacher") for k in first.pipeline.state_dict())
    second = train(tiny_config("mlp", tmp_path, steps=4, teacher=first.config_path, experiment="mlp"), "tensors → mlp")
    second_teacher = second.pipeline.teacher
    assert second_teacher.name == "TensorsField" and Capability.VOLUME_FEATURE not in second_teacher.capabilities
    assert second.config_path.is_file()


def _splatfacto_checkpoint(out: Path, num_gaussians: int = 500) -> Path:
    """config.yml + checkpoint of an untrained splatfacto model (gsplat cannot train it on a CPU)."""
    import copy

    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    config = copy.deepcopy(method_configs["splatfacto"])
    config.pipeline.datamanager.data = EMBEDDED_SCENE
    config.pipeline.datamanager.dataparser = BlenderDataParserConfig()
    config.pipeline.model.num_random = num_gaussians
    config.output_dir, config.experiment_name = out, "splatfacto"
    return _untrained_checkpoint(config)


def test_gsplat_kernels_that_cannot_load_refuse_a_splatfacto_teacher_in_one_line(monkeypatch):
    """On a GPU whose gsplat kernels cannot be built or loaded, a splatfacto teacher is refused before anything is
    built, in one line naming gsplat and the cause: here gsplat found no nvcc (it then disables itself, ``_C`` None);
    a failed build gives its first compiler error."""
    import sys
    import types

    from pvdal_ns.teachers import stock

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", types.SimpleNamespace(_C=None))
    stock._extension_problem.cache_clear()
    try:
        with pytest.raises(TeacherLoadError) as refused:
            stock.load_splatfacto_teacher(None, {}, 0, "cuda", Path("splat/config.yml"), SAMPLING)
    finally:
        stock._extension_problem.cache_clear()
    message = str(refused.value)
    assert message == ("teacher splat/config.yml is a splatfacto model, which renders with gsplat, and gsplat found no "
                       "CUDA toolkit (nvcc) to build its CUDA kernels")
    build = RuntimeError("Error building extension 'gsplat_cuda': [1/9] /usr/bin/nvcc -c /v/csrc/a.cu -o a.cuda.o\n"
                         "FAILED: a.cuda.o\n/usr/bin/nvcc -c /v/csrc/a.cu -o a.cuda.o\n"
                         '/v/gsplat/cuda/csrc/a.cu(12): error: namespace "cub" has no member "Equality"\n1 error')
    assert stock._compile_error(build) == ("Error building extension 'gsplat_cuda': "
                                           'a.cu(12): error: namespace "cub" has no member "Equality"')


def test_splatfacto_teacher_needs_cuda_and_samples_where_its_gaussians_are(tmp_path, capsys):
    """splatfacto loads through the same option, renders only; on a CPU it is refused in one line. Its
    shared sample points lie in the cells of its visible Gaussians."""
    from pvdal_ns.teachers.stock import SplatfactoTeacher, build_stock_model
    from pvdal_ns.utils.checkpoints import load_checkpoint, model_state
    from pvdal_ns.utils.run_config import newest_checkpoint, read_trainer_config

    path = _splatfacto_checkpoint(tmp_path)
    with pytest.raises(TeacherLoadError, match="splatfacto model: it renders with gsplat, which needs CUDA"):
        load_teacher(path, "cpu", SAMPLING)
    if not torch.cuda.is_available():
        from pvdal_ns.scripts.distill import main

        capsys.readouterr()
        assert main(["run", "--teacher", str(path), "--student", "hash", "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ns-distill: error: teacher") and "needs CUDA" in err and err.count("\n") == 0

    config = read_trainer_config(path)
    model = build_stock_model(config, model_state(load_checkpoint(newest_checkpoint(path, config))), path, SAMPLING)
    assert model.num_points == 500  # resized to the checkpoint's Gaussians
    torch.manual_seed(0)
    visible = torch.rand(400, 3) * 0.4 + 0.2  # a cluster in [0.2, 0.6]³
    hidden = torch.rand(100, 3) * 0.4 - 1.0  # transparent Gaussians in [-1, -0.6]³
    with torch.no_grad():
        model.gauss_params["means"][:] = torch.cat([visible, hidden])
        model.gauss_params["scales"][:] = torch.log(torch.tensor(0.01))
        model.gauss_params["opacities"][:] = torch.cat([torch.full((400, 1), 2.0), torch.full((100, 1), -8.0)])
    teacher = SplatfactoTeacher(model, path, SAMPLING)
    assert teacher.capabilities == Capability.IMAGES and teacher.name == "splatfacto"  # renders only
    grid = teacher.occupancy_grid
    assert grid.occupied(visible).all() and not grid.occupied(hidden).any()
    assert not grid.occupied(torch.tensor([[0.0, 0.0, 0.0], [1.2, -1.2, 1.2]])).any()
    cell = 3.0 / 32
    assert grid.occupied_fraction <= ((0.4 + 4 * cell) / 3.0) ** 3  # the cluster's box grown by one cell


@pytest.mark.parametrize("family", list(TRAINED))
def test_a_stock_run_reopens_with_the_datamanager_it_trained_with(stock_teachers, family):
    """``ns-distill`` trains stock methods with nerfstudio's ``VanillaDataManager``; nerfstudio's ``eval_setup`` sets
    the method's registered datamanager class (tensorf: the parallel one, which cannot take that config), so the
    teacher row of ``report.json`` ended in an AttributeError for such a teacher. ``open_run`` opens it as it
    trained."""
    from pvdal_ns.utils.library_internals import offline_lpips
    from pvdal_ns.utils.run_config import open_run

    with offline_lpips():  # as ns-distill reopens a stock run: no LPIPS weights to fetch
        config, pipeline, checkpoint, step = open_run(stock_teachers[family], "teacher")
    assert type(pipeline.datamanager) is config.pipeline.datamanager._target
    assert checkpoint.is_file() and step == TRAINED[family] - 1
