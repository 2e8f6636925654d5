"""Benchmark (issue #16): fine-tuning on the real images after distillation (paper Table 6), on the embedded scene.

    .venv/bin/python benchmarks/finetune.py [--teacher-dir outputs/demo] [--output-dir outputs/bench-finetune]
        [--cases vm:1000:tensors:400:100 mlp:600:vm:500:150] [--seed 0]

A case is ``teacher:teacher_steps:student:steps:finetune_steps``. The teacher (CPU preset, trained from the
images for ``teacher_steps``) is cached in ``--teacher-dir`` as ``ns-distill demo`` caches its teacher. The
student runs ``steps`` steps twice, same seed: distilled throughout, and with the last ``finetune_steps`` on the
training images (``--pipeline.finetune-steps``). The defaults are the paper's two cases: a strong teacher into a
weak student (the demo's VM → the SH grid) and a weak teacher (an MLP trained for 600 steps) into a strong
student (VM). Prints and writes ``results.json``: teacher and student PSNR on the 10 test views.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-finetune"))
    parser.add_argument("--cases", nargs="+", default=["vm:1000:tensors:400:100", "mlp:600:vm:500:150"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import distillation_config, run_and_evaluate, train_or_reuse_teacher
    from pvdal_ns.utils.files import write_atomic

    out = args.output_dir.resolve()
    record = out / "results.json"
    results = json.loads(record.read_text()) if record.is_file() else []
    for case in args.cases:
        teacher_arch, teacher_steps, student, steps, finetune = case.split(":")
        teacher = train_or_reuse_teacher(teacher_arch, "small", EMBEDDED_SCENE, args.teacher_dir.resolve(),
                                         int(teacher_steps)).report
        for n in (0, int(finetune)):
            name = f"{teacher_arch}{teacher_steps}-to-{student}-{steps}-ft{n}-seed{args.seed}"
            if any(r["run"] == name for r in results):
                continue
            config = distillation_config(Path(teacher.config), student, "small", EMBEDDED_SCENE, out, name, int(steps))
            config.pipeline.finetune_steps, config.machine.seed = n, args.seed
            trained = run_and_evaluate(config, name, "student")
            results.append({"run": name, "teacher": teacher_arch, "teacher_steps": int(teacher_steps),
                            "student": student, "steps": int(steps), "finetune_steps": n, "seed": args.seed,
                            "teacher_psnr": round(teacher.psnr, 3), "psnr": round(trained.report.psnr, 3),
                            "ssim": round(trained.report.ssim, 4),
                            "vs_teacher": round(trained.report.psnr - teacher.psnr, 3),
                            "train_seconds": round(trained.report.train_seconds, 1)})
            write_atomic(record, lambda p: p.write_text(json.dumps(results, indent=2) + "\n"))
    print("| teacher (steps) | teacher PSNR | student | steps | of them fine-tuning | student PSNR | SSIM "
          "| vs teacher |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['teacher']} ({r['teacher_steps']}) | {r['teacher_psnr']:.2f} | {r['student']} | {r['steps']} | "
              f"{r['finetune_steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['vs_teacher']:+.2f} |")


if __name__ == "__main__":
    main()
