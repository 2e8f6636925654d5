"""Benchmark (issue #33, point 2): a teacher trained at a reduced image scale and its student.

    .venv/bin/python benchmarks/image_scale.py [--data ../shared/data/nerf_synthetic/lego] [--scale 0.125]
        [--teacher-steps 1500] [--student-steps 700] [--output-dir outputs/bench-image-scale] [--teacher <config.yml>]

Trains nerfstudio's stock ``tensorf`` on the full-size scene with ``--pipeline.datamanager.camera-res-scale-factor
<scale>`` (as the issue's user did), then runs ``ns-distill run --teacher … --student hash --steps <student-steps>``
and prints ``report.json``'s rows: the teacher and its student, both on the test views at the teacher's image scale
(the student inherits it). Run it alone on the machine: the seconds are figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LEGO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nerf_synthetic" / "lego"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=LEGO)
    parser.add_argument("--scale", type=float, default=0.125)
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--student-steps", type=int, default=700)
    parser.add_argument("--rays", type=int, default=1024, help="the teacher's rays a step")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-image-scale"))
    parser.add_argument("--teacher", type=Path, help="a teacher this script trained before (its config.yml): reused")
    args = parser.parse_args()

    from pvdal_ns.engine.resume import mark_finished
    from pvdal_ns.engine.runner import train
    from pvdal_ns.experiments.convert import stock_config
    from pvdal_ns.scripts.distill import main as ns_distill

    out = args.output_dir.resolve()
    teacher = args.teacher
    if teacher is None:
        config = stock_config("tensorf", args.data.resolve(), out, f"tensorf-scale-{args.scale}", args.teacher_steps,
                              rays_per_batch=args.rays)
        config.pipeline.datamanager.camera_res_scale_factor = args.scale
        started = time.perf_counter()
        run = train(config, f"stock tensorf at image scale {args.scale}: {args.teacher_steps} steps")
        mark_finished(run.config_path, run.seconds, run.steps, run.start_step)
        print(f"teacher trained in {time.perf_counter() - started:.0f} s: {run.config_path}")
        teacher = run.config_path
    code = ns_distill(["run", "--teacher", str(teacher), "--student", "hash", "--steps",
                       str(args.student_steps), "--output-dir", str(out / "students")])
    assert code == 0, f"ns-distill run exited with {code}"
    report = json.loads((out / "students" / "report.json").read_text())
    for row in report["models"]:
        ssim = row["ssim"] if row["ssim"] is not None else float("nan")
        print(f"{row['name']}: {row['psnr']:.2f} dB (SSIM {ssim:.3f}), {row['train_seconds']:.0f} s, "
              f"{row['steps']} steps")


if __name__ == "__main__":
    main()
