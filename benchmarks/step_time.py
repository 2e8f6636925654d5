"""Benchmark: the time of a distillation step, per stage, from one teacher (issue #30: a refactor's step no slower).

    .venv/bin/python benchmarks/step_time.py --teacher outputs/demo/teacher-vm-small-1000/pvdal-vm-small/<ts>/config.yml
        [--student vm] [--steps 200] [--output-dir outputs/bench-step-time]

Distils ``--student`` (its CPU preset, with the tests' small batches: 1024 rays, 20 poses an epoch, a 2048-ray
hard-ray pool, so that active learning's pools fill and are fed within the run) for ``--steps`` steps, stages at
15 % and 25 % of them, and prints the median wall time of a step in each stage (``runner.train``'s
``step_seconds``: from the end of one step to the end of the next, batch, teacher, student, losses, backward,
optimiser and callbacks; the first 5 steps of each stage left out). To compare two versions of the code, run it
alternately from each checkout (A B A B …) on an idle machine and compare the medians; one line of figures per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", default="vm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import train
    from pvdal_ns.experiments.convert import distillation_config

    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="step-time-"))
    config = distillation_config(args.teacher.resolve(), args.student, "small", EMBEDDED_SCENE, output_dir,
                                 "step-time", args.steps)
    config.pipeline.datamanager.train_num_rays_per_batch = 1024
    config.pipeline.datamanager.poses_per_epoch = 20
    config.pipeline.al.ray_pool_size = 2048
    config.pipeline.al.images_every_epochs = 0  # figures are not a step's work
    run = train(config, f"{args.student}: {args.steps} steps")
    stage1, stage2 = config.pipeline.stage1_steps, config.pipeline.stage2_steps
    starts = {1: 0, 2: stage1, 3: stage1 + stage2, 4: args.steps}
    medians = {}
    for stage in (1, 2, 3):
        # step_seconds[i] is step i + 1 (from the end of step i)
        span = run.step_seconds[max(0, starts[stage] + 5 - 1): starts[stage + 1] - 1]
        medians[f"stage{stage}_ms"] = round(1000 * statistics.median(span), 2) if span else None
    print(json.dumps({"student": args.student, "steps": args.steps, **medians,
                      "all_ms": round(1000 * statistics.median(run.step_seconds), 2)}))


if __name__ == "__main__":
    main()
