"""Reading a run back (pvdal_ns.utils.run_config): a config.yml cut short anywhere is refused, a run moved to another
folder opens from there."""

import shutil

import pytest
import yaml

from pvdal_ns.method_configs import method_config
from pvdal_ns.utils.errors import TeacherLoadError
from pvdal_ns.utils.run_config import open_run, read_trainer_config


def test_a_config_cut_short_anywhere_is_refused_and_the_whole_one_is_read(tmp_path):
    config = method_config("hash", "small")
    config.set_timestamp()
    whole = yaml.dump(config)  # as ns-train writes it (TrainerConfig.save_config)
    path = tmp_path / "config.yml"
    path.write_text(whole)
    assert read_trainer_config(path, "student").method_name == "pvdal-hash-small"
    lines = whole.splitlines(keepends=True)
    accepted = []
    for n in range(1, len(lines)):  # cut after each line, and in the middle of the next one
        for cut in ("".join(lines[:n]), "".join(lines[:n]) + lines[n][: len(lines[n]) // 2]):
            path.write_text(cut)
            try:
                read_trainer_config(path, "student")
                accepted.append(n)
            except TeacherLoadError as error:
                assert str(error).startswith(f"student config {path} ")
    assert not accepted, f"cut after line {accepted[:5]} was read as a whole config"


def test_a_run_moved_to_another_folder_opens_from_there(tiny_teacher, tmp_path):
    config_path, _ = tiny_teacher
    moved = tmp_path / "moved"
    shutil.copytree(config_path.parent, moved)  # config.yml still names the old output_dir
    recorded = list((config_path.parent / "nerfstudio_models").glob("*.ckpt"))
    shutil.rmtree(config_path.parent / "nerfstudio_models")  # the old folder has no checkpoint any more
    try:
        config, pipeline, checkpoint, step = open_run(moved / "config.yml", "teacher")
        assert checkpoint.parent == moved / "nerfstudio_models"
        assert checkpoint.name == max(p.name for p in recorded) and step == int(checkpoint.stem.split("-")[-1])
        assert not pipeline.training
    finally:
        shutil.copytree(moved / "nerfstudio_models", config_path.parent / "nerfstudio_models")
    restored = (config_path.parent / "nerfstudio_models").iterdir()
    assert sorted(p.name for p in recorded) == sorted(p.name for p in restored)


def test_a_run_whose_scene_is_gone_is_refused_in_one_line(tiny_teacher, tmp_path):
    config_path, _ = tiny_teacher
    moved = tmp_path / "run"
    shutil.copytree(config_path.parent, moved)
    config = yaml.load((moved / "config.yml").read_text(), Loader=yaml.Loader)
    config.pipeline.datamanager.data = tmp_path / "gone"
    (moved / "config.yml").write_text(yaml.dump(config))
    with pytest.raises(TeacherLoadError, match=r"^teacher .* was trained on the scene .*gone, which is not on this "):
        open_run(moved / "config.yml", "teacher")
