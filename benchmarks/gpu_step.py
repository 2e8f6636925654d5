"""Benchmark (issue #31): the step of each architecture distilled and trained from the images, and the host-device
synchronisations of a distillation step.

    python benchmarks/gpu_step.py [--teacher <a pvdal-* teacher's config.yml>] [--data <its scene>]
        [--architectures hash vm mlp tensors] [--size small|paper] [--steps 1300] [--rays 4096] [--sync-steps 100]

Without ``--teacher`` it first trains (or reuses, in ``--output-dir``) the demo's teacher on the embedded lego.

Per architecture, one run each, one after another in this process:

- **distilled**: the preset distilled from ``--teacher`` for ``--steps`` steps (stages at the preset's fractions,
  active learning on as the preset has it, figures off), ``--rays`` rays a step;
- **from images**: the same preset and batch trained from the teacher's scene for ``--steps`` steps;
- **syncs**: a distillation run with every active-learning level on from its start (pools of one batch: warm at
  once), taken to stage 3, then ``--sync-steps`` steps under ``torch.cuda.set_sync_debug_mode("warn")``: each
  synchronising CUDA call warns once; their count over the steps, a step's mean, and the most frequent places.

A step's time is ``runner.train``'s ``step_seconds`` (synchronised clock, end of one step to the end of the next);
figures are medians over the steps after the first 100 (steady state: the grid of a run from images has settled,
the sample capacity has been resized), and of distilled stage 3 alone. Prints one JSON line per architecture and a
table last. Needs CUDA (on a CPU it runs, slowly, and counts no synchronisation).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import warnings
from pathlib import Path


def _median_ms(seconds, start: int, stop=None) -> float:
    span = seconds[start:stop]
    return round(1000 * statistics.median(span), 3) if span else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None, help="the teacher's scene (default: from its config)")
    parser.add_argument("--scene", type=Path, default=None,
                        help="without --teacher: the scene the teacher is trained on (default: the embedded lego; "
                             "pvdal_ns/scenes/room_128: a capture that fills the view, sampled with proposals)")
    parser.add_argument("--architectures", nargs="+", default=["hash", "vm", "mlp", "tensors"])
    parser.add_argument("--size", default="small", choices=["small", "paper"])
    parser.add_argument("--steps", type=int, default=1300)
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--sync-steps", type=int, default=100)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine import runner
    from pvdal_ns.experiments.convert import distillation_config, student_config, train_or_reuse_teacher
    from pvdal_ns.pipelines.teacher_scene import resolve_data
    from pvdal_ns.presets import DEMO_TEACHER, DEMO_TEACHER_STEPS
    from pvdal_ns.utils.run_config import read_trainer_config

    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="gpu-step-"))
    if args.teacher is None:
        trained = train_or_reuse_teacher(DEMO_TEACHER, "small", (args.scene or EMBEDDED_SCENE).resolve(), output_dir,
                                         DEMO_TEACHER_STEPS)
        args.teacher = Path(trained.report.config)
    teacher = args.teacher.resolve()
    data = resolve_data(read_trainer_config(teacher), teacher, args.data)
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "CPU"
    warm_up = 100
    rows = []
    for architecture in args.architectures:
        def sized(config):
            config.pipeline.datamanager.train_num_rays_per_batch = args.rays
            config.steps_per_save = 10**9
            if hasattr(config.pipeline, "al"):
                config.pipeline.al.images_every_epochs = 0  # figures are not a step's work
            return config

        distilled = sized(distillation_config(teacher, architecture, args.size, data, output_dir, "distilled",
                                              args.steps))
        run = runner.train(distilled, f"{architecture} distilled")
        stage3 = distilled.pipeline.stage1_steps + distilled.pipeline.stage2_steps
        distilled_ms = _median_ms(run.step_seconds, warm_up)
        stage3_ms = _median_ms(run.step_seconds, max(stage3, warm_up))
        del run

        scratch = sized(student_config(architecture, args.size, data, output_dir, "from-images", args.steps, None))
        scratch.pipeline.datamanager.dataparser = distilled.pipeline.datamanager.dataparser
        run = runner.train(scratch, f"{architecture} from images")
        images_ms = _median_ms(run.step_seconds, warm_up)
        del run

        syncs, places = _count_syncs(distilled, architecture, args, output_dir) if cuda else (None, {})
        row = {"architecture": architecture, "size": args.size, "rays": args.rays, "steps": args.steps,
               "distilled_ms": distilled_ms, "distilled_stage3_ms": stage3_ms, "from_images_ms": images_ms,
               "ratio": round(distilled_ms / images_ms, 3), "rays_per_second": round(args.rays / distilled_ms * 1000),
               "syncs_per_step": None if syncs is None else round(syncs / args.sync_steps, 2),
               "sync_places": places, "device": device_name}
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\n{device_name}, {args.size} presets, {args.rays} rays a step, medians past step {warm_up}")
    print(f"{'arch':8s} {'distilled ms':>12s} {'stage 3 ms':>10s} {'images ms':>9s} {'ratio':>6s} {'rays/s':>9s} "
          f"{'syncs/step':>10s}")
    for r in rows:
        syncs = "-" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}"
        print(f"{r['architecture']:8s} {r['distilled_ms']:12.2f} {r['distilled_stage3_ms']:10.2f} "
              f"{r['from_images_ms']:9.2f} {r['ratio']:6.2f} {r['rays_per_second']:9d} {syncs:>10s}")


def _count_syncs(distilled, architecture: str, args, output_dir: Path):
    """Synchronising CUDA calls over ``args.sync_steps`` stage-3 steps with every active-learning level on."""
    import copy

    import torch

    from pvdal_ns.engine import runner

    config = copy.deepcopy(distilled)
    config.experiment_name = "syncs"
    steps = 40 + args.sync_steps
    config.max_num_iterations = steps
    config.pipeline.stage1_steps, config.pipeline.stage2_steps = 10, 10
    config.pipeline.al.poses = config.pipeline.al.rays = config.pipeline.al.points = True
    config.pipeline.al.start_step = None  # from stage 3
    config.pipeline.al.ray_pool_size = args.rays  # warm after one batch
    config.logging.steps_per_log = 10**9
    trainer = runner._setup_trainer(config)
    for step in range(40):
        runner._train_step(trainer, step)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in range(40, steps):
                runner._train_step(trainer, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [w for w in caught if "synchroniz" in str(w.message)]
    places = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in found)
    return len(found), dict(places.most_common(8))


if __name__ == "__main__":
    main()
