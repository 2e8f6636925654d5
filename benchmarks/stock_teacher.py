"""Benchmark (issue #5): a stock nerfstudio ``tensorf`` teacher trained on this machine, distilled into
every pvdal-* student, one after another and all four together from one teacher pass per batch.

    .venv/bin/python benchmarks/stock_teacher.py [--output-dir outputs/bench-stock] [--teacher-steps 600]

Trains the teacher with nerfstudio's own trainer and config (``stock_config``: blender dataparser, torch
implementation, 1024 rays a step), or reuses it from ``--output-dir``. Then times the four conversions
run separately and run together (setup, teacher load and training; evaluation excluded), evaluates every
student on the 10 test views and prints PSNRs against the targets (hash/vm/mlp ≥ teacher − 1.5 dB,
tensors ≥ teacher − 3 dB) and the time ratio (target ≤ 60 %).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pvdal_ns import EMBEDDED_SCENE
from pvdal_ns.engine.runner import evaluate, train, train_together
from pvdal_ns.experiments.convert import distillation_config, stock_config
from pvdal_ns.presets import demo_steps

STUDENTS = ("hash", "vm", "mlp", "tensors")


def teacher(out: Path, steps: int) -> Path:
    record = out / "teacher.json"
    if record.is_file():
        info = json.loads(record.read_text())
        print(f"teacher (cached): {info}")
        return Path(info["config"])
    run = train(stock_config("tensorf", EMBEDDED_SCENE, out, "teacher-tensorf", steps, rays_per_batch=1024),
                "tensorf teacher")
    result = evaluate(run.pipeline, "tensorf teacher: evaluating")
    info = {"config": str(run.config_path), "seconds": round(run.seconds, 1), "steps": steps,
            "psnr": round(result.psnr, 3), "ssim": round(result.ssim, 4)}
    record.write_text(json.dumps(info, indent=2) + "\n")
    print(f"teacher: {info}")
    return run.config_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-stock"))
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--modes", nargs="+", default=["separately", "together"], choices=["separately", "together"])
    args = parser.parse_args()
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher_path = teacher(out, args.teacher_steps)
    teacher_psnr = json.loads((out / "teacher.json").read_text())["psnr"]
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    for mode in args.modes:
        configs = [distillation_config(teacher_path, arch, "small", EMBEDDED_SCENE, out, mode, demo_steps()[arch])
                   for arch in STUDENTS]
        started = time.perf_counter()
        runs = (train_together(configs, "together") if mode == "together"
                else [train(c, f"{c.method_name}") for c in configs])
        wall = time.perf_counter() - started
        rows = {}
        for arch, run in zip(STUDENTS, runs):
            e = evaluate(run.pipeline, f"{arch}: evaluating")
            rows[arch] = {"psnr": round(e.psnr, 3), "ssim": round(e.ssim, 4), "train_seconds": round(run.seconds, 1),
                          "steps": run.steps}
        results[mode] = {"wall_seconds": round(wall, 1), "students": rows}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nteacher tensorf: {teacher_psnr:.2f} dB")
    for mode, r in results.items():
        print(f"{mode}: {r['wall_seconds']:.0f} s (setup, teacher load and training)")
        for arch, row in r["students"].items():
            target = teacher_psnr - (3.0 if arch == "tensors" else 1.5)
            print(f"  {arch:8s} {row['psnr']:6.2f} dB "
                  f"(target ≥ {target:.2f}: {'yes' if row['psnr'] >= target else 'NO'})"
                  f"  {row['steps']} steps, {row['train_seconds']:.0f} s")
    if {"separately", "together"} <= set(results):
        ratio = results["together"]["wall_seconds"] / results["separately"]["wall_seconds"]
        print(f"together / separately: {100 * ratio:.0f} % (target ≤ 60 %)")


if __name__ == "__main__":
    main()
