"""Benchmark (issue #5): distilling with the live teacher vs from a teacher cache (serial mode).

    .venv/bin/python benchmarks/teacher_cache.py [--teacher-record outputs/bench-stock2/teacher.json]
        [--output-dir outputs/bench-cache] [--students hash vm mlp tensors] [--modes live write reuse live-same-al]
        [--seed N]

For each student (demo step counts) these runs, each in its own process so its peak memory is its own:

- ``live``:  the teacher in memory, rendering every batch (``ns-distill run``'s default);
- ``live-same-al``: live, with the active learning a cache allows (hard poses and hard rays off): the
  like-for-like quality comparison;
- ``write``: ``--teacher-cache`` to a new folder: the teacher renders the run's batches into it, is
  released, and the student distils from the cache (teacher and student in memory while writing);
- ``reuse``: the same cache again: the teacher is never loaded.

Prints and writes (``results.json``) per run: PSNR on the 10 test views, training time, peak resident
memory after training (``ru_maxrss``; before the evaluation), on a GPU also ``torch.cuda.max_memory_allocated``
(models and activations, the figure the memory target is meant for), and the cache size; and the targets:
cached students within 0.3 dB of the live ones, cached peak memory ≤ 60 % of the live one.
``--teacher-record`` is the ``teacher.json`` that ``benchmarks/stock_teacher.py`` writes. ``--seed``
(default: the config's, 42) measures run-to-run spread; other seeds' runs are recorded as ``MODE/seedN``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

STUDENTS = ("hash", "vm", "mlp", "tensors")
MODES = ("live", "write", "reuse", "live-same-al")


def child(teacher: Path, student: str, mode: str, out: Path, seed: Optional[int]) -> None:
    """One run in this process; prints a RESULT line."""
    import torch

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import evaluate, train
    from pvdal_ns.experiments.convert import distillation_config
    from pvdal_ns.experiments.report import peak_memory_gib
    from pvdal_ns.presets import demo_steps
    from pvdal_ns.teachers import cache_nbytes

    imported = peak_memory_gib()
    config = distillation_config(teacher, student, "small", EMBEDDED_SCENE, out, f"{student}-{mode}",
                                 demo_steps()[student])
    cache = out / f"cache-{student}"
    if mode in ("write", "reuse"):
        config.pipeline.teacher_cache = cache
    if mode == "live-same-al":
        config.pipeline.al.poses = config.pipeline.al.rays = False
    if seed is not None:
        config.machine.seed = seed
    started = time.perf_counter()
    run = train(config, f"{student} ({mode})")
    wall = time.perf_counter() - started
    trained = peak_memory_gib()
    result = evaluate(run.pipeline, f"{student} ({mode}): evaluating")
    line = {"student": student, "mode": mode, "seed": config.machine.seed, "psnr": round(result.psnr, 3),
            "ssim": round(result.ssim, 4), "train_seconds": round(wall, 1), "peak_gib_after_import": round(imported, 3),
            "peak_gib_training": round(trained, 3),
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
            "cache_bytes": cache_nbytes(cache) if mode in ("write", "reuse") else None}
    print("RESULT " + json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-record", type=Path, default=Path("outputs/bench-stock2/teacher.json"))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-cache"))
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seed", type=int, default=None, help="seed of every run (default: the config's)")
    parser.add_argument("--child", nargs=2, metavar=("STUDENT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.output_dir.resolve()
    record = json.loads(args.teacher_record.read_text())
    teacher = Path(record["config"])
    if args.child:
        child(teacher, args.child[0], args.child[1], out, args.seed)
        return
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for student in args.students:
        if "write" in args.modes:
            shutil.rmtree(out / f"cache-{student}", ignore_errors=True)
        for mode in args.modes:
            proc = subprocess.run([sys.executable, "-u", __file__, "--teacher-record", str(args.teacher_record),
                                   "--output-dir", str(out), "--child", student, mode]
                                  + ([] if args.seed is None else ["--seed", str(args.seed)]),
                                  stdout=subprocess.PIPE, text=True, check=True)
            line = next(json.loads(out_line[7:]) for out_line in proc.stdout.splitlines()
                        if out_line.startswith("RESULT "))
            print(line, flush=True)
            results[f"{student}/{mode}" + ("" if args.seed is None else f"/seed{args.seed}")] = line
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nteacher {teacher} ({record.get('psnr')} dB)")
    print(f"{'student':8} {'mode':18} {'PSNR':>7} {'Δ live':>7} {'train s':>8} {'peak GiB':>9} {'/ live':>7} "
          f"{'cache GiB':>9} {'GPU GiB':>8}")
    for student in args.students:
        live = results.get(f"{student}/live")
        if live is None:
            continue
        for key, r in sorted(results.items(), key=lambda kv: (MODES.index(kv[1]["mode"]), kv[0])):
            if r["student"] != student:
                continue
            mode = key.split("/", 1)[1]
            cache = f"{'':9}" if r["cache_bytes"] is None else f"{r['cache_bytes'] / 2**30:9.2f}"
            gpu = "" if r.get("gpu_peak_gib") is None else f"{r['gpu_peak_gib']:8.3f}"
            print(f"{student:8} {mode:18} {r['psnr']:7.2f} {r['psnr'] - live['psnr']:+7.2f} {r['train_seconds']:8.1f} "
                  f"{r['peak_gib_training']:9.2f} {r['peak_gib_training'] / live['peak_gib_training']:7.0%} "
                  f"{cache} {gpu}")
    print("targets: cached PSNR within 0.3 dB of live; cached peak memory ≤ 60 % of live")


if __name__ == "__main__":
    main()
