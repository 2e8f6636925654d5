"""Benchmark (issue #17): pvdal-* on a real capture with a background (the socketed axe: 48 photographs, 648×432,
a white backdrop and a foam block beyond any box around the object).

    .venv/bin/python benchmarks/capture.py step-time [--capture ../shared/data/socketed_axe] [--arch vm] [--steps 400]
    .venv/bin/python benchmarks/capture.py teacher --arch vm --steps 1500 [--contraction auto|on|off] [--background …]
                                           [--resolution N] [--distortion W]
    .venv/bin/python benchmarks/capture.py stock --method nerfacto --minutes 10 [--rays 1024]
    .venv/bin/python benchmarks/capture.py convert --teacher <config.yml> --students mlp hash vm tensors [--steps …]
    .venv/bin/python benchmarks/capture.py evaluate --configs <config.yml> … [--eval-downscale 2]

``step-time`` trains the ``-small`` preset from the images for ``--steps`` on the embedded lego and then on the
capture (same rays a step) and prints the median seconds a step over the last half of each run, the ratio, and
the evaluated samples a ray. ``teacher`` / ``stock`` train a teacher from the capture's images and print its
PSNR on the views the dataparser holds out (and its training seconds). ``convert`` distils the teacher into each
student (together, as ``ns-distill run``) and prints each student's PSNR on the held-out real views and against
the teacher's renders of ``--novel`` novel poses (the pseudo-label pose sampler, seed 0). ``evaluate`` gives
trained runs' held-out PSNR.
With ``--eval-downscale 2`` the held-out views are also rendered at half size (324×216) against the box-filtered
photographs: a torch nerfacto takes many minutes a full-size view on a CPU. Results go to ``--output-dir`` as JSON.
Run it alone on the machine: the figures are times.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

CAPTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "socketed_axe"


def step_time(args) -> dict:
    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import train
    from pvdal_ns.experiments.convert import student_config

    out = {}
    for name, data in (("lego", EMBEDDED_SCENE), ("capture", args.capture.resolve())):
        config = student_config(args.arch, "small", data, args.output_dir.resolve(), f"step-time-{name}", args.steps,
                                None)
        config.steps_per_save = 10**6
        if name == "capture":
            config.pipeline.model.sampler = args.sampler
        run = train(config, f"{name}: {args.steps} steps")
        seconds = run.step_seconds
        late = seconds[len(seconds) // 2:]
        model = run.pipeline.model
        sampler = type(model.sampler).__name__
        occupied = None if model.proposal_networks is not None else model.occupancy_grid.occupied_fraction
        out[name] = {"median_s_per_step": statistics.median(late), "mean_s_per_step": statistics.mean(seconds),
                     "sampler": sampler, "occupied_fraction": occupied,
                     "rays_per_step": config.pipeline.datamanager.train_num_rays_per_batch}
        grid = "" if occupied is None else f", grid {occupied:.1%} occupied"
        print(f"{name}: median {out[name]['median_s_per_step']:.3f} s a step over steps "
              f"{len(seconds) // 2}–{len(seconds)}, mean {out[name]['mean_s_per_step']:.3f} s, {sampler}{grid}")
    out["ratio"] = out["capture"]["median_s_per_step"] / out["lego"]["median_s_per_step"]
    print(f"capture / lego: {out['ratio']:.2f}×")
    return out


def teacher(args) -> dict:
    from pvdal_ns.experiments.convert import run_and_evaluate, student_config

    experiment = (f"teacher-{args.arch}-{args.contraction}-{args.background}-{args.resolution}-{args.distortion}"
                  + (f"-tv{args.tv}" if args.tv is not None else ""))
    config = student_config(args.arch, "small", args.capture.resolve(), args.output_dir.resolve(), experiment,
                            args.steps, None)
    if args.resolution is not None:
        config.pipeline.model.field.resolution = args.resolution
    if args.tv is not None:
        config.pipeline.model.field.tv_weight = args.tv
    if args.distortion is not None:
        config.pipeline.model.proposal.distortion_loss_mult = args.distortion
    config.pipeline.model.scene_contraction = args.contraction
    config.pipeline.model.background_color = args.background
    config.pipeline.model.sampler = args.sampler
    trained = run_and_evaluate(config, f"teacher ({args.arch}, contraction {args.contraction}, background "
                               f"{args.background})", "teacher")
    r = trained.report
    print(f"{r.name}: {r.psnr:.2f} dB on the held-out views, {r.train_seconds:.0f} s, {r.steps} steps, "
          f"config {r.config}")
    return {"config": r.config, "psnr": r.psnr, "ssim": r.ssim, "seconds": r.train_seconds, "steps": r.steps,
            **evaluate_small(Path(r.config), args.eval_downscale)}


def evaluate_small(config: Path, downscale: int) -> dict:
    """Held-out PSNR of the run at ``config``, its views rendered at 1/downscale size ({} at 1: done already)."""
    return {} if downscale == 1 else evaluate_run(config, downscale)


def evaluate_run(config: Path, downscale: int) -> dict:
    from nerfstudio.utils.eval_utils import eval_setup

    from pvdal_ns.engine.runner import evaluate

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    result = evaluate(pipeline, f"{config.parent.name}: evaluating at 1/{downscale} size", downscale=downscale)
    print(f"{config}: {result.psnr:.2f} dB on the held-out views at 1/{downscale} size")
    return {f"psnr_downscale_{downscale}": result.psnr, f"ssim_downscale_{downscale}": result.ssim}


def evaluate_runs(args) -> dict:
    return {str(config): evaluate_run(config.resolve(), args.eval_downscale) for config in args.configs}


def stock(args) -> dict:
    from pvdal_ns.engine.runner import train_timed
    from pvdal_ns.experiments.convert import stock_config

    config = stock_config(args.method, args.capture.resolve(), args.output_dir.resolve(), f"stock-{args.method}", 10**6,
                          rays_per_batch=args.rays)
    run, curve = train_timed(config, f"{args.method}: {args.minutes} min", args.minutes * 60, [], args.eval_downscale)
    end = curve[-1]  # train_timed evaluates once at the end: evaluating again would double the slowest part
    print(f"{args.method}: {end.psnr:.2f} dB on the held-out views at 1/{args.eval_downscale} size after "
          f"{run.seconds:.0f} s ({run.steps} steps), config {run.config_path}")
    return {"config": str(run.config_path), "psnr": end.psnr, "ssim": end.ssim, "seconds": run.seconds,
            "steps": run.steps}


def novel_view_psnr(teacher_config: Path, student_config: Path, count: int, downscale: int, renders: list) -> float:
    """Mean PSNR of the student against the teacher's renders of ``count`` novel poses (seed 0), rendered at
    1/downscale of the training views' size. ``renders``: the teacher's renders, filled by the first call and reused
    by the next students (same teacher, same cameras, same poses)."""
    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    from pvdal_ns.cameras.poses import PoseSampler
    from pvdal_ns.teachers import load_teacher
    from pvdal_ns.utils.metrics import image_metrics

    _, pipeline, _, _ = eval_setup(student_config, test_mode="test")
    model = pipeline.model.eval()
    cameras = pipeline.datamanager.train_dataset.cameras
    sampler = PoseSampler(cameras.camera_to_worlds, pipeline.datamanager.train_dataset.scene_box.get_center(),
                          pipeline.config.datamanager)
    poses = sampler.sample(count, torch.Generator().manual_seed(0))
    teacher = None if renders else load_teacher(teacher_config, "cpu", model.sampling)
    psnrs = []
    for i, pose in enumerate(poses):
        camera = copy.deepcopy(cameras[0:1])
        camera.camera_to_worlds = pose[None]
        camera.rescale_output_resolution(1.0 / downscale)
        with torch.no_grad():
            if teacher is not None:
                renders.append(teacher.render_camera(camera))
            render = model.get_outputs_for_camera(camera)["rgb"].cpu()
        psnrs.append(image_metrics(render, renders[i])["psnr"])
    return float(sum(psnrs) / len(psnrs))


def convert_capture(args) -> dict:
    from pvdal_ns.experiments.convert import convert

    steps = {arch: s for arch, s in zip(args.students, args.steps_each)} if args.steps_each else {}
    students = convert(args.teacher.resolve(), args.students, "small", args.capture.resolve(),
                       args.output_dir.resolve(), steps, "students", together=not args.separately)
    out, teacher_renders = {}, []
    for arch, trained in zip(args.students, students):
        r = trained.report
        novel = novel_view_psnr(args.teacher.resolve(), Path(r.config), args.novel, args.eval_downscale,
                                teacher_renders)
        out[arch] = {"config": r.config, "psnr": r.psnr, "ssim": r.ssim, "psnr_vs_teacher_novel": novel,
                     "seconds": r.train_seconds, "steps": r.steps,
                     **evaluate_small(Path(r.config), args.eval_downscale)}
        print(f"{arch}: {r.psnr:.2f} dB on the held-out views, {novel:.2f} dB against the teacher on {args.novel} "
              f"novel poses, {r.train_seconds:.0f} s, {r.steps} steps")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["step-time", "teacher", "stock", "convert", "evaluate"])
    parser.add_argument("--capture", type=Path, default=CAPTURE)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-capture"))
    parser.add_argument("--arch", default="vm")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--contraction", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--background", default="white", choices=["white", "black", "random"])
    parser.add_argument("--sampler", default="auto", choices=["auto", "occupancy", "proposal"],
                        help="step-time (the capture's run) and teacher: --pipeline.model.sampler")
    parser.add_argument("--resolution", type=int, help="teacher: the field's grid resolution (default: the preset's)")
    parser.add_argument("--distortion", type=float,
                        help="teacher: the distortion loss's weight (--pipeline.model.proposal.distortion-loss-mult)")
    parser.add_argument("--tv", type=float, help="teacher: the field's total-variation weight (VM, tensors)")
    parser.add_argument("--method", default="nerfacto")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--students", nargs="+", default=["mlp", "hash", "vm", "tensors"])
    parser.add_argument("--steps-each", type=int, nargs="*",
                        help="distillation steps per student (default: the demo's)")
    parser.add_argument("--configs", type=Path, nargs="*", default=[], help="evaluate: the runs' config.yml")
    parser.add_argument("--eval-downscale", type=int, default=1, choices=[1, 2, 4],
                        help="also evaluate at 1/N size (stock: only at 1/N)")
    parser.add_argument("--separately", action="store_true", help="convert: one student after another (default: "
                        "together, one teacher pass per batch, as ns-distill run)")
    parser.add_argument("--novel", type=int, default=8,
                        help="novel poses the students are compared with the teacher on")
    args = parser.parse_args()
    run = {"step-time": step_time, "teacher": teacher, "stock": stock, "convert": convert_capture,
           "evaluate": evaluate_runs}[args.mode]
    result = run(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "result": result}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
