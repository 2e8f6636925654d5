"""Teacher cache (serial mode): what is read back is what the live teacher rendered, the size bound,
interrupted writes and a full disk leave nothing half-written, a student distils from the cache with no teacher loaded,
and a cache of another run is refused."""

import gc
import json
import os
import shutil
import subprocess
import weakref

import pytest
import torch

from pvdal_ns.model_components.teacher_batch import Capability
from pvdal_ns.teachers.cache import TeacherCache, _partial_path, batch_nbytes, write_cache
from pvdal_ns.utils.errors import BadInputError, StorageError, TeacherLoadError


def _trainer(tiny_config, teacher_path, tmp_path, steps, experiment="student", cache_name="cache", with_teacher=True,
             rays=None):
    config = tiny_config("hash", tmp_path, steps=steps, teacher=teacher_path if with_teacher else None,
                         experiment=experiment)
    config.pipeline.teacher_cache = tmp_path / cache_name
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = steps // 5, steps // 5
    if rays:
        config.pipeline.datamanager.train_num_rays_per_batch = rays
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_cache_reads_back_the_live_teachers_batches_and_bounds_its_size(tiny_teacher, tmp_path, tiny_config):
    pipeline = _trainer(tiny_config, tiny_teacher[0], tmp_path, steps=10).pipeline
    teacher = pipeline.teacher  # live until the first step writes the cache
    batches = list(pipeline.datamanager.pseudo_labels.writer.render_batches(3))
    cache = write_cache(tmp_path / "c", teacher, batches, pipeline.batch_key, max_bytes=1 << 30)
    assert len(cache) == 3 and Capability.VOLUME_FEATURE in cache.capabilities
    assert torch.equal(cache.occupancy_grid.binaries, teacher.occupancy_grid.binaries)
    for i, (live_rays, batch) in enumerate(batches):
        live = batch["teacher"]
        rays, cached = cache.recorded_batch(i, live.background, torch.device("cpu"))
        assert torch.equal(rays.origins, live_rays.origins) and torch.equal(rays.directions, live_rays.directions)
        assert torch.equal(cached.samples.dense_mask(), live.samples.dense_mask())
        assert torch.equal(cached.samples.ray_indices, live.samples.ray_indices)
        assert torch.allclose(cached.samples.positions, live.samples.positions, atol=1e-5)
        # float16 field outputs: raw density within 0.1 % of its range, colour and ϕ¹ to ~1e-3
        assert torch.allclose(cached.points.raw_density, live.points.raw_density, atol=1e-2, rtol=1e-3)
        assert torch.allclose(cached.points.rgb, live.points.rgb, atol=1e-3)
        assert torch.allclose(cached.points.phi1, live.points.phi1, atol=1e-2, rtol=1e-3)
        assert (cached.rgb - live.rgb).abs().max() < 5e-3  # recomposited on the same background
        assert (cached.weights - live.weights).abs().max() < 5e-3

    # a cache cut short (a copy interrupted, a disk that filled after it was written) is refused in one line
    shutil.copytree(tmp_path / "c", tmp_path / "cut-short")
    outputs = tmp_path / "cut-short" / "outputs.f16"
    outputs.write_bytes(outputs.read_bytes()[: outputs.stat().st_size // 3])
    with pytest.raises(TeacherLoadError, match=r"cut-short is damaged \(outputs.f16 has \d+ bytes, not \d+\)"):
        TeacherCache(tmp_path / "cut-short")
    shutil.rmtree(tmp_path / "cut-short")

    # so is any other damage to what the cache reads back: meta.json not JSON, emptied, a field missing or of
    # another type; an occupancy grid of another shape
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    damaged_meta = {"not-json": "{ not json", "emptied": "", "a-list": "[1, 2]",
                    "field-missing": json.dumps({k: v for k, v in meta.items() if k != "num_samples"}),
                    "wrong-type": json.dumps({**meta, "written_for": "a string"}),
                    "wrong-number": json.dumps({**meta, "rays_per_batch": "many"})}
    for name, text in damaged_meta.items():
        shutil.copytree(tmp_path / "c", tmp_path / name)
        (tmp_path / name / "meta.json").write_text(text)
    shutil.copytree(tmp_path / "c", tmp_path / "other-grid")
    torch.save({"binaries": torch.zeros(1, 4, 4, 4, dtype=torch.bool)}, tmp_path / "other-grid" / "occupancy.pt")
    for name in [*damaged_meta, "other-grid"]:
        with pytest.raises(TeacherLoadError) as refused:
            TeacherCache(tmp_path / name)
        assert len(str(refused.value).splitlines()) == 1 and str(tmp_path / name) in str(refused.value), name
        shutil.rmtree(tmp_path / name)

    # the bound keeps whole batches; below one batch it refuses and leaves nothing behind
    sizes = [batch_nbytes(1024, b["teacher"].samples.samples_per_ray, len(b["teacher"].points.raw_density), 20)
             for _, b in batches]
    assert len(write_cache(tmp_path / "two", teacher, batches, pipeline.batch_key, sizes[0] + sizes[1] + 1)) == 2
    with pytest.raises(BadInputError, match="smaller than one batch"):
        write_cache(tmp_path / "none", teacher, batches, pipeline.batch_key, sizes[0] - 1)

    def interrupted():
        yield batches[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "cut", teacher, interrupted(), pipeline.batch_key, 1 << 30)

    def disk_full():
        yield batches[0]
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="No space left on device.*nothing of it is kept"):
        write_cache(tmp_path / "full", teacher, disk_full(), pipeline.batch_key, 1 << 30)
    assert not list(tmp_path.glob("none*")) and not list(tmp_path.glob("cut*")) and not list(tmp_path.glob("full*"))

    # what a killed writer left is removed by the next write; a running writer's folder is kept
    ended = subprocess.Popen(["true"])
    ended.wait()
    abandoned, running = _partial_path(tmp_path / "w", ended.pid), _partial_path(tmp_path / "w", os.getppid())
    abandoned.mkdir(), running.mkdir()
    write_cache(tmp_path / "w", teacher, batches[:1], pipeline.batch_key, 1 << 30)
    assert not abandoned.exists() and running.exists()
    with pytest.raises(BadInputError, match="already exists"):
        write_cache(tmp_path / "c", teacher, batches, pipeline.batch_key, 1 << 30)


def test_student_distils_from_the_cache_without_the_teacher(tiny_teacher, tmp_path, tiny_config, train_step_losses,
                                                            view_psnr):
    teacher_path, teacher_pipeline = tiny_teacher
    trainer = _trainer(tiny_config, teacher_path, tmp_path, steps=80)
    pipeline = trainer.pipeline
    live_teacher = weakref.ref(pipeline.teacher)
    before = view_psnr(pipeline, teacher_pipeline)
    trainer.train()
    after = view_psnr(pipeline, teacher_pipeline)
    assert after > before + 5.0, (before, after)
    # the cache holds one batch per step, and the live teacher was released after writing it
    assert isinstance(pipeline.teacher, TeacherCache) and len(pipeline.teacher) == 80
    gc.collect()
    assert live_teacher() is None  # nothing holds the live teacher any more
    assert pipeline.active_learning.config.points and not pipeline.active_learning.config.rays

    # a later run reuses it with no teacher config at all; it cycles through the 80 batches
    reuse_trainer = _trainer(tiny_config, teacher_path, tmp_path, steps=100, experiment="reuse", with_teacher=False)
    reuse = reuse_trainer.pipeline
    assert isinstance(reuse.teacher, TeacherCache) and reuse.teacher.source == teacher_path.resolve()
    first = reuse.datamanager.next_train(0)[0].origins
    assert torch.equal(reuse.datamanager.next_train(80)[0].origins, first)
    assert set(train_step_losses(reuse_trainer, 99)[1]) >= {"rgb_loss", "density_loss"}

    # a cache of another run (here: other rays per batch) is refused with the reason
    with pytest.raises(TeacherLoadError, match="rays_per_batch"):
        _trainer(tiny_config, teacher_path, tmp_path, steps=10, experiment="other", rays=512)
    with pytest.raises(TeacherLoadError, match="does not exist and no --pipeline.teacher-config"):
        _trainer(tiny_config, teacher_path, tmp_path, steps=10, experiment="none", cache_name="missing",
                 with_teacher=False)
