"""Benchmark: one student distilled from one teacher with several seeds (``machine.seed``), its held-out PSNR per
seed: the spread a change of random draws or rounding is measured against (issue #30).

    .venv/bin/python benchmarks/seeds.py --teacher <config.yml> [--student hash] [--seeds 0 1 2]
        [--output-dir outputs/bench-seeds]

The student is the CPU preset at the demo's steps, distilled and evaluated as ``ns-distill demo`` does (the test
views of the embedded scene). Prints one JSON line: the PSNR and SSIM of each seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", default="hash")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import distillation_config, run_and_evaluate
    from pvdal_ns.presets import demo_steps

    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="seeds-"))
    results = {}
    for seed in args.seeds:
        config = distillation_config(args.teacher.resolve(), args.student, "small", EMBEDDED_SCENE, output_dir,
                                     f"seed{seed}", demo_steps()[args.student])
        config.machine.seed = seed
        trained = run_and_evaluate(config, f"{args.student} seed {seed}", "student")
        results[seed] = {"psnr": round(trained.result.psnr, 4), "ssim": round(trained.result.ssim, 4)}
    print(json.dumps({"student": args.student, "teacher": str(args.teacher), "seeds": results}))


if __name__ == "__main__":
    main()
