"""Bad inputs as a property (issue #33): every file a command reads back — a run's config.yml and checkpoint, a teacher
cache, a scene folder, run.json, the demo's teacher-*.json, matrix.json, ablation.json — damaged in every way (cut
short, emptied, not YAML / JSON / a checkpoint, a field missing, a field of another type, a tensor missing or of
another shape) and read by every command that reads it (``ns-distill run``, ``run --resume``, ``demo``, ``matrix``,
``ablation``, ``compare``, ``view``, ``ns-train --pipeline.teacher-config`` and its ``--load-dir``): one line, exit
code 2, and every file already there left as it was (nerfstudio's own new run folder may stay).

Every variant of a file meets one of its readers in turn, and every reader meets the file: a covering of the
(variant, command) pairs that keeps the test to a few minutes."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
import yaml
from damaged_files import json_variants

from pvdal_ns import EMBEDDED_SCENE


@dataclass
class Workspace:
    """A teacher, its finished student (with a teacher cache), the demo's teacher record and a scene, in one folder."""

    root: Path
    teacher: Path
    student: Path
    cache: Path
    scene: Path

    def files(self) -> Dict[Path, str]:
        """Every file under the root and the SHA-1 of its bytes."""
        return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tiny_teacher, tmp_path_factory) -> Workspace:
    from pvdal_ns.scripts.distill import main

    root = tmp_path_factory.mktemp("damaged")
    teacher_config = tiny_teacher[0]
    recorded = yaml.load(teacher_config.read_text(), Loader=yaml.Loader)
    shutil.copytree(Path(recorded.output_dir), root / "teachers")  # the run's layout, so nerfstudio finds it there
    teacher = next((root / "teachers").rglob("config.yml"))
    recorded.output_dir = root / "teachers"
    teacher.write_text(yaml.dump(recorded))
    args = ["run", "--teacher", str(teacher), "--student", "hash", "--steps", "10", "--output-dir", str(root / "out"),
            "--teacher-cache", str(root / "cache")]
    assert main(args) == 0
    (root / "demo").mkdir()
    (root / "demo" / "teacher-vm-small-200.json").write_text(json.dumps(
        {"config": str(teacher), "method": "pvdal-vm-small", "seconds": 1.0, "data": str(EMBEDDED_SCENE)}))
    shutil.copytree(EMBEDDED_SCENE, root / "scene")
    return Workspace(root, teacher, next((root / "out").rglob("pvdal-hash-small/*/config.yml")), root / "cache",
                     root / "scene")


# --- the damaged variants of each kind of file -------------------------------------------------------------------
def config_variants(good: bytes) -> Dict[str, bytes]:
    """A config.yml cut short (in the middle, by its last line), emptied, not YAML, its model's block missing, a field
    of another type (a nested one, a top-level one)."""
    config = yaml.load(good.decode(), Loader=yaml.Loader)
    no_model = copy.deepcopy(config)
    del no_model.pipeline.__dict__["model"]
    nested, top = copy.deepcopy(config), copy.deepcopy(config)
    nested.pipeline.datamanager.train_num_rays_per_batch = [1, 2]
    top.max_num_iterations = "many"
    return {"truncated": good[: len(good) // 2], "its last line missing": good[: good.rstrip(b"\n").rfind(b"\n") + 1],
            "emptied": b"", "not YAML": b"\x89PNG\r\n{{{: [",
            "the model's block missing": yaml.dump(no_model).encode(),
            "a nested field of another type": yaml.dump(nested).encode(),
            "a field of another type": yaml.dump(top).encode()}


def _saved(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def checkpoint_variants(good: bytes) -> Dict[str, bytes]:
    """A checkpoint cut short, emptied, not a checkpoint, a list, no pipeline state, a tensor of the model missing,
    a tensor of another shape, a step that is not an integer."""
    import io

    loaded = torch.load(io.BytesIO(good), map_location="cpu", weights_only=False)
    key = next(k for k, v in loaded["pipeline"].items() if k.startswith("_model.field.") and v.ndim >= 2)
    missing, reshaped, step = copy.deepcopy(loaded), copy.deepcopy(loaded), copy.deepcopy(loaded)
    del missing["pipeline"][key]
    tensor = loaded["pipeline"][key]
    reshaped["pipeline"][key] = torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])
    step["step"] = "late"
    return {"truncated": good[: len(good) // 3], "emptied": b"", "not a checkpoint": b"not a checkpoint\n",
            "a list": _saved([1, 2]), "no pipeline state": _saved({k: v for k, v in loaded.items() if k != "pipeline"}),
            "a tensor missing": _saved(missing), "a tensor of another shape": _saved(reshaped),
            "a step of another type": _saved(step)}


def state_variants(good: bytes) -> Dict[str, bytes]:
    """A state-dict file (the cache's occupancy.pt, field.pt) cut short, emptied, a list, a tensor of another shape."""
    import io

    state = torch.load(io.BytesIO(good), map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if v.ndim >= 1)
    reshaped = {**state, key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:], dtype=state[key].dtype)}
    return {"truncated": good[: len(good) // 3], "emptied": b"", "a list": _saved([1, 2]),
            "a tensor of another shape": _saved(reshaped)}


def binary_variants(good: bytes) -> Dict[str, bytes]:
    """A raw array file cut short, emptied."""
    return {"truncated": good[: len(good) // 3], "emptied": b""}


# --- the commands --------------------------------------------------------------------------------------------------
@dataclass
class Command:
    """A command line and, optionally, what to arrange before it runs (undone after)."""

    name: str
    argv: Callable[[Workspace], List[str]]
    arrange: Optional[Callable[[Workspace], Callable[[], None]]] = None


def _killed(ws: Workspace) -> Callable[[], None]:
    """The student as a killed run: its run.json moved aside (a rerun resumes it from its checkpoint)."""
    record = ws.student.parent / "run.json"
    aside = ws.root / "run.json.aside"
    record.rename(aside)
    return lambda: aside.rename(record)


RUN = Command("run", lambda ws: ["run", "--teacher", str(ws.teacher), "--student", "hash", "--steps", "2",
                                 "--output-dir", str(ws.root / "fresh")])
RESUME = Command("run --resume", lambda ws: ["run", "--teacher", str(ws.teacher), "--student", "hash", "--steps", "10",
                                             "--teacher-cache", str(ws.cache), "--output-dir", str(ws.root / "out"),
                                             "--resume"])
RESUME_KILLED = Command("run --resume (killed)", RESUME.argv, _killed)
DEMO = Command("demo", lambda ws: ["demo", "--output-dir", str(ws.root / "demo"), "--teacher-steps", "200",
                                   "--students", "hash", "--student-steps.hash", "2"])
MATRIX = Command("matrix", lambda ws: ["matrix", "--output-dir", str(ws.root / "matrix"), "--teacher-dir",
                                       str(ws.root / "demo"), "--teachers", "vm", "--students", "hash",
                                       "--teacher-steps", "vm", "200", "--student-steps", "hash", "2"])
MATRIX_SCENE = Command("matrix --data", lambda ws: [*MATRIX.argv(ws), "--data", str(ws.scene)])
ABLATION = Command("ablation", lambda ws: ["ablation", "--teacher", str(ws.teacher), "--student", "hash",
                                           "--steps", "2", "--rows", "all", "--output-dir", str(ws.root / "ablation")])
COMPARE = Command("compare", lambda ws: ["compare", "--teacher", str(ws.teacher), "--student", "hash", "--steps", "2",
                                         "--budget-seconds", "30", "--evaluations", "1", "--stock",
                                         "--output-dir", str(ws.root / "compare")])
VIEW = Command("view", lambda ws: ["view", "--student", str(ws.student), "--teacher", str(ws.teacher)])
CACHED = Command("run --teacher-cache", lambda ws: [*RUN.argv(ws), "--teacher-cache", str(ws.cache)])
SCENE = Command("run --data", lambda ws: [*RUN.argv(ws), "--data", str(ws.scene)])
NS_TRAIN = Command("ns-train --pipeline.teacher-config", lambda ws: [
    "pvdal-hash-small", "--max-num-iterations", "2", "--vis", "tensorboard", "--output-dir", str(ws.root / "ns-train"),
    "--pipeline.teacher-config", str(ws.teacher), "blender-data", "--data", str(EMBEDDED_SCENE)])
NS_TRAIN_LOAD = Command("ns-train --load-dir", lambda ws: [
    *NS_TRAIN.argv(ws)[:-3], "--load-dir", str(ws.student.parent / "nerfstudio_models"), *NS_TRAIN.argv(ws)[-3:]])

ALL_TEACHER_READERS = [RUN, RESUME, DEMO, MATRIX, ABLATION, COMPARE, VIEW, NS_TRAIN]

FILES = {  # name: (the file in the workspace, its variants, the commands that read it)
    "teacher config.yml": (lambda ws: ws.teacher, config_variants, ALL_TEACHER_READERS),
    "teacher checkpoint": (lambda ws: next((ws.teacher.parent / "nerfstudio_models").glob("*.ckpt")),
                           checkpoint_variants, ALL_TEACHER_READERS),
    "student config.yml": (lambda ws: ws.student, config_variants, [VIEW]),
    "student checkpoint": (lambda ws: next((ws.student.parent / "nerfstudio_models").glob("*.ckpt")),
                           checkpoint_variants, [VIEW, RESUME, RESUME_KILLED, NS_TRAIN_LOAD]),
    "run.json": (lambda ws: ws.student.parent / "run.json", json_variants, [RESUME]),
    "teacher cache meta.json": (lambda ws: ws.cache / "meta.json", json_variants, [CACHED]),
    "teacher cache occupancy.pt": (lambda ws: ws.cache / "occupancy.pt", state_variants, [CACHED]),
    "teacher cache field.pt": (lambda ws: ws.cache / "field.pt", state_variants, [CACHED]),
    "teacher cache outputs": (lambda ws: ws.cache / "outputs.f16", binary_variants, [CACHED]),
    "scene transforms_train.json": (lambda ws: ws.scene / "transforms_train.json", json_variants,
                                    [SCENE, MATRIX_SCENE]),
    "demo teacher-*.json": (lambda ws: ws.root / "demo" / "teacher-vm-small-200.json", json_variants, [DEMO, MATRIX]),
    "matrix.json": (lambda ws: ws.root / "matrix" / "matrix.json", json_variants, [MATRIX]),
    "ablation.json": (lambda ws: ws.root / "ablation" / "ablation.json", json_variants, [ABLATION]),
}

GOOD_RECORDS = {  # files the workspace does not hold until a command writes them: a good one to damage
    "matrix.json": {"teachers": {}, "pairs": [{"teacher": "vm", "student": "vm", "settings": {}}]},
    "ablation.json": {"settings": {}, "runs": [{"row": "all", "seed": 0, "psnr": 20.0}]},
}


def _run(command: Command, ws: Workspace, capsys, monkeypatch) -> tuple:
    """Run ``command`` in this process: (exit code, the lines it printed to stderr as errors)."""
    import nerfstudio.scripts.viewer.run_viewer as run_viewer

    from pvdal_ns.utils.errors import PVDError

    def served(*_args, **_kwargs):
        raise AssertionError("the viewer was started: nothing was refused")

    monkeypatch.setattr(run_viewer, "_start_viewer", served)
    capsys.readouterr()
    if command in (NS_TRAIN, NS_TRAIN_LOAD):  # nerfstudio's parser and main; its hook prints a PVDError in one line
        import tyro
        from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
        from nerfstudio.scripts import train as ns_train

        config = tyro.cli(AnnotatedBaseConfigUnion, args=command.argv(ws))
        try:
            ns_train.main(config)
        except PVDError as error:
            return 2, [f"ns-train: error: {line}" for line in str(error).splitlines()]
        return 0, []
    from pvdal_ns.scripts.distill import main

    code = main(command.argv(ws))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, errors


@pytest.mark.parametrize("name", list(FILES))
def test_every_damaged_file_is_refused_in_one_line_by_every_command_that_reads_it(name, workspace, capsys,
                                                                                    monkeypatch):
    where, variants_of, readers = FILES[name]
    path = where(workspace)
    if name in GOOD_RECORDS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(GOOD_RECORDS[name]))
    good = path.read_bytes()
    variants = list(variants_of(good).items())
    failures = []
    for i in range(max(len(variants), len(readers))):
        (variant, damaged), command = variants[i % len(variants)], readers[i % len(readers)]
        undo = command.arrange(workspace) if command.arrange else (lambda: None)
        path.write_bytes(damaged)
        before = workspace.files()
        try:
            code, errors = _run(command, workspace, capsys, monkeypatch)
        except BaseException as error:  # noqa: BLE001 — a traceback is the failure this test looks for
            code, errors = f"raised {type(error).__name__}: {str(error)[:200]}", []
        finally:
            after = workspace.files()
            path.write_bytes(good)
            undo()
        changed = [str(p.relative_to(workspace.root)) for p, digest in before.items() if after.get(p) != digest]
        if code != 2 or len(errors) != 1 or changed:
            failures.append(f"{variant} × {command.name}: exit {code}, {len(errors)} error lines "
                            f"{errors[-1:] if errors else ''}, changed {changed}")
    if name in GOOD_RECORDS:
        path.unlink()
    assert not failures, "\n".join(failures)
