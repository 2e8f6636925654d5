"""One writer at a time: a second process given the same output folder or teacher cache is refused in one line, and a
killed holder leaves no lock behind (issue #33)."""

import subprocess
import sys
import time

import pytest
from damaged_files import json_variants

from pvdal_ns.utils.errors import BadInputError
from pvdal_ns.utils.files import exclusive

HOLD = """
import sys, time
from pathlib import Path
from pvdal_ns.utils.files import exclusive
with exclusive(Path(sys.argv[1]), "it"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path):
    """Another process holding ``path``'s lock until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_folder_or_a_cache_another_process_writes_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path):
    from pvdal_ns.scripts.distill import main
    from pvdal_ns.teachers.cache import write_cache

    out, cache = tmp_path / "out", tmp_path / "cache"
    teacher = tmp_path / "teacher" / "config.yml"  # refused before it is read
    teacher.parent.mkdir()
    teacher.write_text("{}")
    holders = [_holder(out), _holder(tmp_path / ".cache.lock")]
    try:
        with pytest.raises(BadInputError, match="another process is writing it"):
            with exclusive(out, "it"):
                pass
        with pytest.raises(BadInputError, match=f"another process is writing the teacher cache {cache}"):
            write_cache(cache, None, [], {}, 1 << 20)  # refused before anything is read or written
        assert not cache.exists()
        started = time.perf_counter()
        code = main(["run", "--teacher", str(teacher), "--student", "hash", "--output-dir", str(out)])
        assert code == 2 and time.perf_counter() - started < 60 and not any(out.iterdir())
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    with exclusive(out, "it"):  # the kernel dropped the killed holder's lock
        pass
    with exclusive(tmp_path / "new" / "folder", "it"):  # made for the lock ...
        assert (tmp_path / "new" / "folder").is_dir()
    assert not (tmp_path / "new").exists()  # ... and removed, left empty: a refused command leaves no folder


def test_every_record_a_command_reads_back_is_refused_in_one_line_when_damaged(tmp_path):
    """run.json, the demo's teacher-*.json, matrix.json, ablation.json and a scene's transforms files, damaged in each
    way: one line naming the file, and the file left as it is (issue #33: they ended in tracebacks)."""
    import json
    import shutil

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.resume import read_finished
    from pvdal_ns.experiments.ablation import AblationSettings, run_ablation
    from pvdal_ns.experiments.convert import dataparser_for, train_or_reuse_teacher
    from pvdal_ns.experiments.matrix import MatrixSettings, run_matrix

    run = tmp_path / "run"  # every reader refuses before it reads a run's config.yml
    run.mkdir()
    teacher = run / "config.yml"
    teacher.write_text("{}")
    scene = tmp_path / "scene"
    shutil.copytree(EMBEDDED_SCENE, scene)
    demo = tmp_path / "demo"
    demo.mkdir()
    readers = {  # file, its good text, and the call that reads it back
        run / "run.json": (json.dumps({"seconds": 1.0, "steps": 10, "start_step": 0}),
                           lambda: read_finished(run / "config.yml")),
        demo / "teacher-vm-small-10.json": (json.dumps({"config": str(teacher), "seconds": 1.0, "data": "x"}),
                                            lambda: train_or_reuse_teacher("vm", "small", EMBEDDED_SCENE, demo, 10)),
        tmp_path / "matrix" / "matrix.json": (
            json.dumps({"teachers": {}, "pairs": [{"teacher": "vm", "student": "vm", "settings": {}}]}),
            lambda: run_matrix(MatrixSettings(str(EMBEDDED_SCENE), True, {"vm": 1}, {"vm": 1}), ["vm"], ["vm"],
                               tmp_path / "matrix", None)),
        tmp_path / "ablation" / "ablation.json": (
            json.dumps({"settings": {}, "runs": [{"row": "all", "seed": 0, "psnr": 20.0}]}),
            lambda: run_ablation(AblationSettings(str(teacher), "mlp", 1, True, str(EMBEDDED_SCENE)), ["all"], [0],
                                 tmp_path / "ablation")),
        scene / "transforms_train.json": ((EMBEDDED_SCENE / "transforms_train.json").read_text(),
                                          lambda: dataparser_for(scene)),
    }
    for path, (good, read) in readers.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        for variant, damaged in json_variants(good.encode()).items():
            text = damaged.decode()
            path.write_text(text)
            with pytest.raises(BadInputError) as refused:
                read()
            message = str(refused.value)
            assert len(message.splitlines()) == 1 and str(path) in message and "damaged" in message, (path, variant)
            assert path.read_text() == text, (path, variant)  # nothing rewritten
