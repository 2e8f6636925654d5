"""Benchmark (issue #15): students warm-started from their teacher's weights against the same students from
their own initialisation, on the embedded scene.

    .venv/bin/python benchmarks/warm_start.py [--teacher-dir outputs/demo] [--output-dir outputs/bench-warm]
        [--pairs vm:vm hash:hash vm:hash] [--seed 0]

Each teacher (CPU preset, trained from the images for the demo's teacher steps) is trained once and cached in
``--teacher-dir`` as ``ns-distill demo`` caches its teacher, so the VM teacher is the demo's. Each pair runs the
student for its demo steps twice, ``--pipeline.warm-start`` on and off, same seed. Prints and writes
``results.json``: the teacher's PSNR, each student's PSNR on the 10 test views, its difference from the
teacher, and its training time; the target is student ≥ teacher − 0.1 dB for same-architecture pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-warm"))
    parser.add_argument("--pairs", nargs="+", default=["vm:vm", "hash:hash", "vm:hash"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import distillation_config, run_and_evaluate, train_or_reuse_teacher
    from pvdal_ns.presets import DEMO_TEACHER_STEPS, demo_steps
    from pvdal_ns.utils.files import write_atomic

    out = args.output_dir.resolve()
    record = out / "results.json"
    results = json.loads(record.read_text()) if record.is_file() else []
    teachers = {}
    for pair in args.pairs:
        teacher_arch, student = pair.split(":")
        if teacher_arch not in teachers:
            teachers[teacher_arch] = train_or_reuse_teacher(teacher_arch, "small", EMBEDDED_SCENE,
                                                            args.teacher_dir.resolve(), DEMO_TEACHER_STEPS)
        teacher = teachers[teacher_arch].report
        for warm in (True, False):
            name = f"{teacher_arch}-to-{student}-{'warm' if warm else 'cold'}-seed{args.seed}"
            if any(r["run"] == name for r in results):
                continue
            config = distillation_config(Path(teacher.config), student, "small", EMBEDDED_SCENE, out, name,
                                         demo_steps()[student])
            config.pipeline.warm_start, config.machine.seed = warm, args.seed
            trained = run_and_evaluate(config, name, "student")
            results.append({"run": name, "teacher": teacher_arch, "student": student, "warm_start": warm,
                            "seed": args.seed, "steps": trained.report.steps, "teacher_psnr": round(teacher.psnr, 3),
                            "psnr": round(trained.report.psnr, 3),
                            "vs_teacher": round(trained.report.psnr - teacher.psnr, 3),
                            "train_seconds": round(trained.report.train_seconds, 1)})
            write_atomic(record, lambda p: p.write_text(json.dumps(results, indent=2) + "\n"))
    print("| teacher | student | warm start | steps | teacher PSNR | student PSNR | vs teacher | train s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['teacher']} | {r['student']} | {'on' if r['warm_start'] else 'off'} | {r['steps']} | "
              f"{r['teacher_psnr']:.2f} | {r['psnr']:.2f} | {r['vs_teacher']:+.2f} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
