"""``ns-distill edit`` (issue #34; paper §4.5, Fig. 8): preview an edit on any run's renders, or write it into a
pvdal-tensors run's SH voxels, as the paper edits Plenoxels, giving a new run that then serves as a teacher
(docs/design.md, "Editing")."""

from __future__ import annotations

import copy
import shutil
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import torch
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from pvdal_ns.experiments.report import pyplot
from pvdal_ns.fields.tensors import TensorsField, TensorsFieldConfig
from pvdal_ns.models.pvd_model import PVDModelConfig
from pvdal_ns.pipelines.teacher_scene import resolve_data, teacher_edits
from pvdal_ns.teachers import load_teacher, teacher_contraction
from pvdal_ns.teachers.composed import open_edited_teacher
from pvdal_ns.teachers.edits import ERASED_RAW_DENSITY, SH_C0, SceneEdit, check_edit, within
from pvdal_ns.teachers.pvd import PVDTeacher
from pvdal_ns.utils.checkpoints import load_checkpoint
from pvdal_ns.utils.edit_config import SceneEditConfig
from pvdal_ns.utils.errors import BadInputError
from pvdal_ns.utils.files import save_figure, save_torch
from pvdal_ns.utils.run_config import newest_checkpoint, read_trainer_config


def check_editable(config: TrainerConfig, run: Path) -> None:
    """Refuse, in one line naming the conversion route, a run whose voxels cannot be edited directly.

    Raises:
        BadInputError: the run is not a pvdal-tensors one (a VM's density is a sum of plane × line products, a hash
            grid's and an MLP's are not stored voxel by voxel)."""
    model = getattr(config.pipeline, "model", None)
    field = getattr(model, "field", None)
    if isinstance(field, TensorsFieldConfig):
        return
    kind = {"VMFieldConfig": "a VM run's density is a sum of plane × line products",
            "HashFieldConfig": "a hash grid's voxels are hashed features, not densities",
            "MLPFieldConfig": "an MLP stores no voxels"}.get(type(field).__name__, f"a '{config.method_name}' run "
                                                                                  "stores no voxels")
    raise BadInputError(f"{run} cannot be edited voxel by voxel ({kind}): convert it with the edit "
                        f"(ns-distill run --teacher {run} --student <architecture> --erase …), or into tensors first "
                        f"(ns-distill run --teacher {run} --student tensors) and edit that run")


@torch.no_grad()
def edit_tensors_run(run: Path, edit: SceneEditConfig, output_dir: Path) -> Path:
    """Write ``edit`` into the SH voxels of the pvdal-tensors run whose config.yml is ``run``: a new run under
    ``output_dir`` (its config.yml records the edit last in ``pipeline.edits_before``; its checkpoint holds the
    edited grid). Returns the new run's config.yml.

    - erased (inside an erase box, or outside every keep box): raw density :data:`ERASED_RAW_DENSITY`, far below the
      occupancy threshold. The trilinear border: a point within one voxel of the region's faces reads a blend of the
      voxels on both sides, so the cut is exact to one voxel; a point deeper inside reads empty, one farther out reads
      as before. (Growing the emptied voxels by one, so that the inside reads empty to its faces, also ate the
      surfaces that touch the region from outside, such as the floor under the lego's bucket: against the edit made
      at points, 26.6 dB against 29.1 without growing; docs/benchmarks.md, "Editing");
    - recoloured ("replace" only): the SH coefficients of each channel set to the colour's constant term;
    - the occupancy grid's cells wholly emptied are unoccupied (:meth:`SceneEdit.empty_cells`).

    Raises:
        BadInputError: not a pvdal-tensors run (:func:`check_editable`), no edit, a malformed box, a box holding
            nothing the run renders, or ``recolor_mode`` "multiply" (a tint of view-dependent SH colours has no
            exact form in coefficients).
        TeacherLoadError: the run cannot be read."""
    config = read_trainer_config(run, "run")
    check_editable(config, run)
    if not edit.has_boxes:
        raise BadInputError("ns-distill edit writes boxes into voxels: give --erase, --keep or --recolor (compose "
                            "scenes by converting: ns-distill run --teacher … --compose …)")
    if edit.recolor and edit.recolor_mode == "multiply":
        raise BadInputError("--recolor-mode multiply cannot be written into SH voxels (a tint of view-dependent "
                            "colours): use replace, or convert with the edit (ns-distill run … --recolor-mode "
                            "multiply)")
    teacher = load_teacher(run, "cpu")
    assert isinstance(teacher, PVDTeacher)
    scene_edit = SceneEdit(edit)
    teacher.apply_edit(scene_edit)  # refuses a box that holds nothing; empties the grid's cells (the model's grid)
    model = teacher.model
    field = model.field
    assert isinstance(field, TensorsField)
    r = field.config.resolution
    positions = field.voxel_positions()
    emptied = scene_edit.emptied(positions)
    grid = field.grid.data
    grid[emptied, 0] = ERASED_RAW_DENSITY
    for box, rgb in scene_edit.recolor:
        inside = within(box, positions)
        coefficients = torch.zeros(3, field.num_sh)
        coefficients[:, 0] = torch.logit(rgb.clamp(1e-3, 1 - 1e-3)) / SH_C0
        grid[inside, 1:] = coefficients.flatten()
    CONSOLE.log(f"Edited {int(emptied.sum())} of {r ** 3} voxels emptied"
                + (f", {sum(int(within(b, positions).sum()) for b, _ in scene_edit.recolor)} recoloured"
                   if scene_edit.recolor else ""))
    return _write_edited_run(run, config, model.state_dict(), edit, output_dir)


def _write_edited_run(run: Path, config: TrainerConfig, state: dict, edit: SceneEditConfig,
                      output_dir: Path) -> Path:
    """The new run's folder: config.yml (``edits_before`` extended with ``edit``), the checkpoint of ``run`` with the
    model's ``state``, its dataparser transforms; written whole or not at all."""
    checkpoint = newest_checkpoint(run, config)
    loaded = load_checkpoint(checkpoint)
    for key, value in state.items():
        if f"_model.{key}" in loaded["pipeline"]:
            loaded["pipeline"][f"_model.{key}"] = value
    edited = copy.deepcopy(config)
    edited.pipeline.edits_before = [*teacher_edits(config, run),
                                    {**edit.key(), "applied": f"written into the SH voxels of {run}"}]
    edited.output_dir = output_dir
    edited.experiment_name = f"edited-{config.experiment_name}"
    edited.timestamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    base = Path(edited.get_base_dir())
    staging = base.with_name(f".{base.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / edited.relative_model_dir).mkdir(parents=True)
    save_torch(loaded, staging / edited.relative_model_dir / checkpoint.name)
    for extra in ("dataparser_transforms.json", "run.json"):
        if (run.parent / extra).is_file():
            shutil.copy2(run.parent / extra, staging / extra)
    (staging / "config.yml").write_text(yaml.dump(edited), "utf8")
    staging.rename(base)
    CONSOLE.log(f"Wrote the edited run {base / 'config.yml'}")
    return base / "config.yml"


@torch.no_grad()
def preview(run: Path, edit: SceneEditConfig, output_dir: Path, data: Optional[Path] = None,
            views: int = 4) -> Path:
    """Render the run (any teacher family) and the run edited by ``edit`` at its scene's first ``views`` test views,
    without training: ``output_dir/preview.png`` (a row a view: the run, edited), for finding the box. Returns the
    figure's path.

    Raises:
        BadInputError: no edit, a malformed box, a box holding nothing the run renders, the scene not found.
        TeacherLoadError: the run cannot be loaded."""
    if edit.empty:
        raise BadInputError("--preview shows an edit: give --erase, --keep or --recolor")
    config = read_trainer_config(run)
    scene = resolve_data(config, run, data)
    dataparser = copy.deepcopy(config.pipeline.datamanager.dataparser)
    dataparser.data = scene
    outputs = dataparser.setup().get_dataparser_outputs(split="test")
    cameras = outputs.cameras[: views]
    factor = getattr(config.pipeline.datamanager, "camera_res_scale_factor", 1.0)
    cameras.rescale_output_resolution(factor)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    contracted = teacher_contraction(run)
    sampling = PVDModelConfig().sampling(outputs.scene_box, bool(contracted))
    check_edit(edit)
    teacher = load_teacher(run, device, sampling)
    before = [teacher.render_camera(cameras[i : i + 1].to(device)) for i in range(len(cameras))]
    teacher = open_edited_teacher(run, edit, device, sampling)
    after = [teacher.render_camera(cameras[i : i + 1].to(device)) for i in range(len(cameras))]
    path = output_dir / "preview.png"
    _save_preview(path, before, after, edit.describe())
    CONSOLE.log(f"Wrote {path}")
    return path


def _save_preview(path: Path, before: List[torch.Tensor], after: List[torch.Tensor], title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(before), 2, figsize=(4.4, 2.2 * len(before)), squeeze=False)
    for row, (a, b) in enumerate(zip(before, after)):
        for col, (img, name) in enumerate(((a, "run"), (b, f"edited: {title}"))):
            axes[row, col].imshow(img.clamp(0, 1).numpy())
            if row == 0:
                axes[row, col].set_title(name, fontsize=8)
            axes[row, col].set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(path, fig)

