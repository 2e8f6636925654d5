"""An edited conversion (issue #34): the student of an erased teacher is empty inside the box, as good as its teacher
outside, scored against the edited teacher's renders, and the edit is recorded in its config and report."""

import json

import torch
import yaml

from pvdal_ns.utils.edit_config import SceneEditConfig


def test_a_student_of_an_erased_teacher_is_empty_in_the_box_and_learns_the_rest(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main
    from pvdal_ns.utils.run_config import open_run

    teacher_config, teacher = tiny_teacher
    occupied = teacher.model.occupancy_grid.occupied_centres()
    cut = float(occupied[:, 0].median())  # erase the half of the object beyond x = cut
    box = [cut, -2.0, -2.0, 2.0, 2.0, 2.0]
    out = tmp_path / "edited"
    assert main(["run", "--teacher", str(teacher_config), "--student", "hash", "--steps", "300",
                 "--output-dir", str(out), "--erase", *map(str, box)]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["edit"]["erase"] == [box] and report["edit"]["description"] == "erase 1 box"
    student_config = next(out.rglob("pvdal-hash-small/*/config.yml"))
    saved = yaml.load(student_config.read_text(), Loader=yaml.Loader)
    assert isinstance(saved.pipeline.edit, SceneEditConfig) and list(saved.pipeline.edit.erase[0]) == box

    _, student, _, _ = open_run(student_config, "student")
    with torch.no_grad():
        sigma_student = student.model.field.query(occupied).density[:, 0]
        sigma_teacher = teacher.model.field.query(occupied).density[:, 0]
    inside = occupied[:, 0] > cut + 0.1
    surface = sigma_teacher > 5.0  # where the teacher has matter
    erased, kept = inside & surface, ~inside & (occupied[:, 0] < cut - 0.1) & surface
    assert erased.sum() > 20 and kept.sum() > 20
    # inside the box the student is empty where the teacher had matter; outside, it has kept most of it
    assert float(sigma_student[erased].median()) < 0.05 * float(sigma_teacher[erased].median())
    assert float(sigma_student[kept].median()) > 0.2 * float(sigma_teacher[kept].median())
    student_row = next(m for m in report["models"] if m["role"] == "student")
    assert student_row["psnr"] > 20.0, student_row  # against the edited teacher's renders, not the photographs


def test_an_empty_box_and_a_box_holding_nothing_are_refused_in_one_line(tiny_teacher, tmp_path, capsys):
    from pvdal_ns.scripts.distill import main

    teacher_config, _ = tiny_teacher
    run = ["run", "--teacher", str(teacher_config), "--student", "hash", "--steps", "5", "--output-dir"]
    capsys.readouterr()
    assert main([*run, str(tmp_path / "a"), "--erase", "1", "0", "0", "0", "1", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "--erase 1 0 0 0 1 1 is an empty box" in errors[0], errors
    assert not (tmp_path / "a").exists()  # refused before anything is written
    assert main([*run, str(tmp_path / "b"), "--erase", "9", "9", "9", "10", "10", "10"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "holds nothing the teacher renders" in errors[0], errors
    assert not list((tmp_path / "b").rglob("*.ckpt"))


def test_an_edit_written_into_a_tensors_runs_voxels_is_a_new_run_that_teaches_the_edited_scene(tiny_config, tmp_path,
                                                                                                 capsys):
    from pvdal_ns.engine.runner import train
    from pvdal_ns.scripts.distill import main
    from pvdal_ns.teachers import load_teacher
    from pvdal_ns.teachers.edits import ERASED_RAW_DENSITY

    config = tiny_config("tensors", tmp_path / "runs", steps=60, experiment="tensors")
    config.pipeline.model.field.resolution = 32
    run = train(config, "tensors run").config_path
    before = load_teacher(run)
    box = [0.0, -2.0, -2.0, 2.0, 2.0, 2.0]  # the half of the scene beyond x = 0
    assert main(["edit", "--run", str(run), "--erase", *map(str, box), "--output-dir", str(tmp_path / "out")]) == 0
    edited_config = next((tmp_path / "out").rglob("config.yml"))
    assert edited_config != run and run.is_file()  # a new run; the original is left as it was
    chain = yaml.load(edited_config.read_text(), Loader=yaml.Loader).pipeline.edits_before
    assert [list(b) for b in chain[-1]["erase"]] == [box] and "SH voxels" in chain[-1]["applied"]

    after = load_teacher(edited_config)  # it serves as a teacher
    points = torch.rand(4000, 3) * 3.0 - 1.5
    voxel = 3.0 / 31  # the box of the embedded lego, 32 voxels corner to corner
    inside, outside = points[:, 0] > voxel, points[:, 0] < -voxel  # beyond the one-voxel trilinear border
    raw_before = before.query_points(points).raw_density[:, 0]
    raw_after = after.query_points(points).raw_density[:, 0]
    assert float(raw_after[inside].max()) <= ERASED_RAW_DENSITY + 1e-3  # the box reads empty
    assert torch.equal(raw_after[outside], raw_before[outside])  # and nothing else changed
    centres = after.occupancy_grid.occupied_centres()
    assert float(centres[:, 0].max()) < 0.1  # the box's cells are unoccupied (those cut by x = 0 may stay)

    capsys.readouterr()
    assert main(["edit", "--run", str(run), "--erase", *map(str, box), "--preview", "--views", "2",
                 "--output-dir", str(tmp_path / "preview")]) == 0
    assert (tmp_path / "preview" / "preview.png").stat().st_size > 1000


def test_a_vm_run_is_refused_voxel_editing_with_the_conversion_route(tiny_teacher, tmp_path, capsys):
    from pvdal_ns.scripts.distill import main

    teacher_config, _ = tiny_teacher
    capsys.readouterr()
    assert main(["edit", "--run", str(teacher_config), "--erase", "0", "0", "0", "1", "1", "1",
                 "--output-dir", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "plane × line products" in errors[0] and "--student tensors" in errors[0], errors
    assert not any(tmp_path.iterdir())


def test_a_student_of_two_composed_teachers_holds_both_in_its_grown_box(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main
    from pvdal_ns.utils.run_config import open_run

    teacher_config, _ = tiny_teacher
    out = tmp_path / "composed"
    assert main(["run", "--teacher", str(teacher_config), "--student", "hash", "--steps", "30", "--output-dir",
                 str(out), "--compose", str(teacher_config), "--offset", "2", "0", "0", "--scale", "0.5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["edit"]["compose"] == {"teacher": str(teacher_config.resolve()), "offset": [2.0, 0.0, 0.0],
                                         "scale": 0.5}
    student_config = next(out.rglob("pvdal-hash-small/*/config.yml"))
    _, student, _, _ = open_run(student_config, "student")  # as ns-render / ns-viewer open it: no teacher
    model = student.model
    assert model.scene_box.aabb[1, 0].item() == 2.75 and model.field.aabb[1, 0].item() == 2.75  # 2 + 1.5 · 0.5
    occupied = model.occupancy_grid.occupied_centres()
    assert (occupied[:, 0] > 1.6).any() and (occupied[:, 0] < 1.4).any()  # the second teacher's cells, and the first's
