"""What each bad input gets (issue #19): runs ``ns-distill run`` and ``ns-train`` on wrong files and folders and
prints, per case, the exit code, whether a traceback was printed, and the line that names the problem.

    .venv/bin/python benchmarks/bad_inputs.py --teacher <a pvdal-* teacher's config.yml>
        [--output-dir outputs/bench-bad]

Each case is a separate process with 2 distillation steps; the inputs are made in ``--output-dir``. Prints a
markdown table (for docs/benchmarks.md) and writes it, with every case's full output, to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def make_cases(teacher: Path, work: Path) -> list:
    """(name, argv) for every bad input; files are made under ``work``."""
    from pvdal_ns import EMBEDDED_CAPTURE, EMBEDDED_SCENE

    work.mkdir(parents=True, exist_ok=True)
    run = teacher.parent
    text = teacher.read_text()

    def teacher_copy(name: str, config_text: str = text, checkpoints: bool = True) -> Path:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run, folder, ignore=None if checkpoints else shutil.ignore_patterns("*.ckpt"))
        (folder / "nerfstudio_models").mkdir(exist_ok=True)
        (folder / "config.yml").write_text(config_text)
        return folder / "config.yml"

    empty = work / "empty.yml"
    empty.write_text("")
    not_yaml = work / "not-yaml.yml"
    not_yaml.write_bytes(b"\x89PNG\r\n\x1a\n{{{: [")
    unknown = teacher_copy("unknown-method", re.sub(r"method_name: \S+", "method_name: my-method", text).replace(
        "pvdal_ns.models.pvd_model.PVDModelConfig", "my_plugin.MyModelConfig"))
    vanilla = teacher_copy("vanilla-pipeline", re.sub(r"pvdal_ns\.pipeline\.DistillationPipelineConfig",
                                                      "nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig", text))
    no_ckpt = teacher_copy("no-checkpoint", checkpoints=False)
    truncated = teacher_copy("truncated-checkpoint")
    for ckpt in truncated.parent.glob("nerfstudio_models/*.ckpt"):
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 3])
    not_ckpt = teacher_copy("not-a-checkpoint")
    for ckpt in not_ckpt.parent.glob("nerfstudio_models/*.ckpt"):
        ckpt.write_text("this is not a checkpoint\n")
    no_cameras = work / "no-cameras"
    no_cameras.mkdir(exist_ok=True)
    no_images = work / "no-images"
    shutil.rmtree(no_images, ignore_errors=True)
    shutil.copytree(EMBEDDED_SCENE, no_images, ignore=shutil.ignore_patterns("*.png"))
    a_file = work / "a-file"
    a_file.write_text("")
    cuda = teacher_copy("cuda-teacher", text.replace("device_type: cpu", "device_type: cuda"))
    other_scene = _turned_copy(EMBEDDED_SCENE, work / "other-blender-scene")
    cache = work / "cache"
    if not cache.exists():  # a teacher cache of this teacher, for the cache cases
        subprocess.run([str(BIN / "ns-distill"), "run", "--teacher", str(teacher), "--student", "hash", "--steps", "2",
                        "--output-dir", str(work / "cache-run"), "--teacher-cache", str(cache)], check=True,
                       capture_output=True)
    other_teacher = teacher_copy("other-teacher")  # another run folder: another teacher for the cache
    cut_cache = work / "truncated-cache"
    shutil.rmtree(cut_cache, ignore_errors=True)
    shutil.copytree(cache, cut_cache)
    outputs = next(p for p in cut_cache.iterdir() if p.name.startswith("outputs"))
    outputs.write_bytes(outputs.read_bytes()[: outputs.stat().st_size // 3])
    full_ckpt, full_cache = _small_disk(work / "full-disk-checkpoint"), _small_disk(work / "full-disk-cache")

    distill = [str(BIN / "ns-distill"), "run", "--student", "hash", "--steps", "2", "--output-dir", str(work / "out")]
    cases = [
        ("teacher config missing", distill + ["--teacher", str(work / "missing" / "config.yml")]),
        ("teacher config empty", distill + ["--teacher", str(empty)]),
        ("teacher config not YAML", distill + ["--teacher", str(not_yaml)]),
        ("teacher of an unknown method", distill + ["--teacher", str(unknown)]),
        ("teacher with nerfstudio's default pipeline", distill + ["--teacher", str(vanilla)]),
        ("teacher's checkpoint folder empty", distill + ["--teacher", str(no_ckpt)]),
        ("teacher's checkpoint truncated", distill + ["--teacher", str(truncated)]),
        ("teacher's checkpoint not a checkpoint", distill + ["--teacher", str(not_ckpt)]),
        ("teacher of another scene than --data",
         distill + ["--teacher", str(teacher), "--data", str(EMBEDDED_CAPTURE)]),
        ("student architecture that does not exist", [str(BIN / "ns-distill"), "run", "--teacher", str(teacher),
                                                      "--student", "octree", "--steps", "2"]),
        ("--steps 0", [a if a != "2" else "0" for a in distill] + ["--teacher", str(teacher)]),
        ("--steps -5", [a if a != "2" else "-5" for a in distill] + ["--teacher", str(teacher)]),
        ("output folder that cannot be written", [str(BIN / "ns-distill"), "run", "--teacher", str(teacher),
                                                  "--student", "hash", "--steps", "2", "--output-dir",
                                                  str(a_file / "out")]),
        ("data folder with no cameras", distill + ["--teacher", str(teacher), "--data", str(no_cameras)]),
        ("data folder with its images missing", distill + ["--teacher", str(teacher), "--data", str(no_images)]),
        ("CUDA teacher (device_type cuda) without CUDA", distill + ["--teacher", str(cuda)]),
        ("another scene of the same kind (blender, other cameras)",
         distill + ["--teacher", str(teacher), "--data", str(other_scene)]),
        ("teacher cache of another teacher",
         distill + ["--teacher", str(other_teacher), "--teacher-cache", str(cache)]),
        ("teacher cache truncated", distill + ["--teacher", str(teacher), "--teacher-cache", str(cut_cache)]),
        ("disk full while the teacher cache is written (2 MiB tmpfs)",
         distill + ["--teacher", str(teacher), "--teacher-cache", str(full_cache / "cache")]),
        ("ns-train: disk full while a checkpoint is written (2 MiB tmpfs)", [
            str(BIN / "ns-train"), "pvdal-hash-small", "--max-num-iterations", "2", "--output-dir", str(full_ckpt),
            "--vis", "tensorboard", "--pipeline.teacher-config", str(teacher), "blender-data", "--data",
            str(EMBEDDED_SCENE)]),
        ("ns-train: teacher config missing", [str(BIN / "ns-train"), "pvdal-hash-small", "--max-num-iterations", "2",
                                              "--output-dir", str(work / "out"), "--vis", "tensorboard",
                                              "--pipeline.teacher-config", str(work / "missing.yml"), "blender-data",
                                              "--data", str(EMBEDDED_SCENE)]),
        ("ns-train: teacher config not YAML", [str(BIN / "ns-train"), "pvdal-hash-small", "--max-num-iterations", "2",
                                               "--output-dir", str(work / "out"), "--vis", "tensorboard",
                                               "--pipeline.teacher-config", str(not_yaml), "blender-data", "--data",
                                               str(EMBEDDED_SCENE)]),
        ("ns-train: --load-dir with a truncated checkpoint", [
            str(BIN / "ns-train"), "pvdal-hash-small", "--max-num-iterations", "2", "--output-dir", str(work / "out"),
            "--vis", "tensorboard", "--pipeline.teacher-config", str(teacher), "--load-dir",
            str(truncated.parent / "nerfstudio_models"), "blender-data", "--data", str(EMBEDDED_SCENE)]),
    ]
    return cases


def _turned_copy(scene: Path, folder: Path) -> Path:
    """A blender scene whose cameras are turned by half a radian about the vertical: another scene of the same kind
    (same box, other cameras)."""
    import math

    import numpy as np

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(scene, folder)
    c, s = math.cos(0.5), math.sin(0.5)
    turn = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    for name in ("transforms_train.json", "transforms_val.json", "transforms_test.json"):
        meta = json.loads((folder / name).read_text())
        for frame in meta["frames"]:
            frame["transform_matrix"] = (turn @ np.array(frame["transform_matrix"])).tolist()
        (folder / name).write_text(json.dumps(meta))
    return folder


def _small_disk(folder: Path) -> Path:
    """``folder`` as a fresh 2 MiB tmpfs (needs root; the case then fails to write, as on a full disk), or the
    plain folder where it cannot be mounted (the case then says so by succeeding)."""
    subprocess.run(["umount", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        print(f"note: {folder} is not a small disk ({mounted.stderr.decode().strip()})", file=sys.stderr)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-bad"))
    parser.add_argument("--only", nargs="*", default=[], help="run the cases whose name contains one of these")
    args = parser.parse_args()
    work = args.output_dir.resolve()
    rows, full = [], {}
    for name, argv in make_cases(args.teacher.resolve(), work / "inputs"):
        if args.only and not any(part in name for part in args.only):
            continue
        start = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        out = done.stdout + done.stderr
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        said = next((line for line in lines if line.startswith("error:") or "error:" in line[:20]),
                    lines[-1] if lines else "")
        rows.append((name, done.returncode, "Traceback" in out, said[:220], time.monotonic() - start))
        full[name] = {"argv": argv, "returncode": done.returncode, "output": out[-6000:]}
        print(f"| {name} | {done.returncode} | {'yes' if 'Traceback' in out else 'no'} | {said[:220]} |", flush=True)
    table = ["| bad input | exit code | traceback | what it says |", "|---|---:|---|---|"]
    table += [f"| {n} | {rc} | {'yes' if tb else 'no'} | {said.replace('|', '/')} |" for n, rc, tb, said, _ in rows]
    for disk in ("full-disk-checkpoint", "full-disk-cache"):
        left = sorted(f"{p.relative_to(work / 'inputs' / disk)} ({p.stat().st_size} B)"
                      for p in (work / "inputs" / disk).rglob("*") if p.is_file())
        print(f"files left on {disk} after its case: {left}")
        subprocess.run(["umount", str(work / "inputs" / disk)], capture_output=True)
    (work / "bad_inputs.md").write_text("\n".join(table) + "\n")
    (work / "bad_inputs.json").write_text(json.dumps(full, indent=2) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
