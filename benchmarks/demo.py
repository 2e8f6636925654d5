"""Benchmark: `ns-distill demo` end to end, with every figure issue #3 asks for.

    .venv/bin/python benchmarks/demo.py [--output-dir outputs/bench-demo] [--fresh]

Runs the demo in this process (so peak memory covers teacher, students and evaluation), then prints
wall time, peak resident memory, the teacher's PSNR, and each student's PSNR against the targets
(teacher ≥ 28 dB; hash/vm/mlp ≥ teacher − 1.5 dB; tensors ≥ teacher − 3 dB; whole run ≤ 20 min;
peak memory ≤ 8 GiB). ``--fresh`` deletes the cached teacher first so its training is timed too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from pvdal_ns.scripts.distill import main


def run(output_dir: Path, fresh: bool) -> None:
    if fresh and output_dir.exists():
        shutil.rmtree(output_dir)
    start = time.perf_counter()
    code = main(["demo", "--output-dir", str(output_dir)])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(code)
    report = json.loads((output_dir / "report.json").read_text())
    models = report["models"]
    teacher = next(m for m in models if m["role"] == "teacher")
    rows = [("whole run (min)", wall / 60, "≤ 20", wall / 60 <= 20),
            ("peak memory (GiB)", report["peak_memory_gib"], "≤ 8", report["peak_memory_gib"] <= 8),
            ("teacher PSNR (dB)", teacher["psnr"], "≥ 28", teacher["psnr"] >= 28)]
    for m in models:
        if m["role"] != "student":
            continue
        margin = 3.0 if m["architecture"] == "tensors" else 1.5
        target = teacher["psnr"] - margin
        rows.append((f"{m['architecture']} student PSNR (dB)", m["psnr"], f"≥ {target:.2f}", m["psnr"] >= target))
    print(f"\ndevice: {report['device']}\nversions: {report['versions']}")
    print(f"{'figure':32s} {'measured':>10s} {'target':>10s}  met")
    for name, value, target, met in rows:
        print(f"{name:32s} {value:10.2f} {target:>10s}  {'yes' if met else 'NO'}")
    for m in models:
        print(f"{m['name']:18s} train {m['train_seconds']:7.1f} s  steps {m['steps']:5d}  params {m['parameters']:>10,}"
              f"  SSIM {m['ssim']:.3f}  min/max view PSNR {min(m['per_view_psnr']):.2f}/{max(m['per_view_psnr']):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-demo"))
    parser.add_argument("--fresh", action="store_true", help="retrain the teacher (delete the cache)")
    args = parser.parse_args()
    run(args.output_dir.resolve(), args.fresh)
