"""Benchmark (issue #15): time per step of stages 1 and 2 when the teacher computes only what the stage needs
(no ϕ² in stage 1, no compositing before stage 3) against a teacher that evaluates and renders everything
every step (the behaviour before issue #15), in one process.

    .venv/bin/python benchmarks/stage_time.py [--teacher-dir outputs/demo] [--students mlp hash vm]
        [--steps 40] [--repeats 2]

The teacher is the demo's (cached in ``--teacher-dir``, trained if missing). Each student runs ``2 × --steps``
steps (stage 1, then stage 2, of ``--steps`` each) with the full teacher and with the staged one, alternating
(full, staged, full, staged, … ``--repeats`` pairs) so that drift of the machine cancels. A step is timed from
its ``BEFORE_TRAIN_ITERATION`` callbacks to its ``AFTER_TRAIN_ITERATION`` ones (batch, teacher, student
forward and backward, optimiser); the first 5 steps of each stage are left out. Prints the median seconds per
step of each stage and variant, and the ratio staged / full.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-stage-time"))
    parser.add_argument("--students", nargs="+", default=["mlp", "hash", "vm"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.data.pseudo_labels import RenderedLabels as PseudoLabels
    from pvdal_ns.engine.runner import set_seed
    from pvdal_ns.experiments.convert import distillation_config, train_or_reuse_teacher
    from pvdal_ns.presets import DEMO_TEACHER, DEMO_TEACHER_STEPS

    teacher = train_or_reuse_teacher(DEMO_TEACHER, "small", EMBEDDED_SCENE, args.teacher_dir.resolve(),
                                     DEMO_TEACHER_STEPS).report
    staged_stage_at = PseudoLabels.stage_at
    n, skip = args.steps, 5
    times = {}
    for student in args.students:
        for repeat in range(args.repeats):
            for variant in ("full", "staged"):
                config = distillation_config(Path(teacher.config), student, "small", EMBEDDED_SCENE,
                                             args.output_dir.resolve(), f"{student}-{variant}-{repeat}", 2 * n)
                config.pipeline.stage1_steps = config.pipeline.stage2_steps = n
                config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_save = 10**6
                PseudoLabels.stage_at = (lambda self, step: 3) if variant == "full" else staged_stage_at
                set_seed(config.machine.seed)
                config.set_timestamp()
                trainer = config.setup(local_rank=0, world_size=1)
                trainer.setup()
                started, steps = {}, {}
                before, after = ([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                                 [TrainingCallbackLocation.AFTER_TRAIN_ITERATION])
                trainer.callbacks.insert(0, TrainingCallback(
                    before, lambda step: started.__setitem__(step, time.perf_counter())))
                trainer.callbacks.append(TrainingCallback(
                    after, lambda step: steps.__setitem__(step, time.perf_counter() - started[step])))
                trainer.train()
                trainer.shutdown()
                for stage, first in ((1, 0), (2, n)):
                    times.setdefault((student, variant, stage), []).extend(
                        steps[s] for s in range(first + skip, first + n))
                print(f"{student} {variant} #{repeat}: "
                      f"stage 1 {statistics.median(steps[s] for s in range(skip, n)):.4f} s, "
                      f"stage 2 {statistics.median(steps[s] for s in range(n + skip, 2 * n)):.4f} s a step", flush=True)
    PseudoLabels.stage_at = staged_stage_at
    print("| student | stage | full teacher (s/step) | staged teacher (s/step) | staged / full |")
    print("|---|---:|---:|---:|---:|")
    for student in args.students:
        for stage in (1, 2):
            full = statistics.median(times[student, "full", stage])
            staged = statistics.median(times[student, "staged", stage])
            print(f"| {student} | {stage} | {full:.4f} | {staged:.4f} | {staged / full:.3f} |")


if __name__ == "__main__":
    main()
