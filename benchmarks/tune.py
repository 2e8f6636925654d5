"""Benchmark: re-tune a student preset on the validation views, report the pick on the test views.

    .venv/bin/python benchmarks/tune.py --student mlp --steps 2400 --seed 0 \
        --variant "" --variant "lr_scale=0.5" --variant "stages=0.15,0.25" --variant "rays=1024,steps=1200" \
        [--teacher-dir outputs/demo] [--output-dir outputs/bench-tune-mlp]

Each ``--variant`` is a comma-free list of ``key=value`` settings joined by ``;`` or ``,`` between keys
(``""`` is the preset itself): ``lr_scale`` (every learning rate × this), ``stages`` (stage 1 and stage 2 as
fractions of the steps), ``rays`` (rays a step), ``steps`` (steps of this variant). Every variant distils the
demo's teacher (trained and cached under ``--teacher-dir`` if missing) and is evaluated on the embedded
scene's **val** views (training views held out from training; what a preset is chosen on) and on its
**test** views (r_90–r_99; what is reported). Finished variants are kept in ``tune.json`` and not rerun.
The script prints every variant's val and test PSNR and marks the one val picks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

KEYS = ("lr_scale", "stages", "rays", "steps")


def parse_variant(text: str) -> Dict[str, str]:
    """``"rays=1024,steps=1200"`` → {"rays": "1024", "steps": "1200"}; ``stages=a,b`` keeps its comma."""
    settings: Dict[str, str] = {}
    key = None
    for part in [p for p in text.replace(";", ",").split(",") if p]:
        if "=" in part:
            key, value = part.split("=", 1)
            if key not in KEYS:
                raise SystemExit(f"tune.py: unknown setting {key!r} in --variant {text!r}; use {', '.join(KEYS)}")
            settings[key] = value
        elif key == "stages":
            settings[key] += "," + part
        else:
            raise SystemExit(f"tune.py: cannot read --variant {text!r}: write key=value pairs")
    return settings


def build(teacher: Path, student: str, steps: int, seed: int, settings: Dict[str, str], output_dir: Path, name: str):
    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import distillation_config
    from pvdal_ns.method_configs import set_steps

    config = distillation_config(teacher, student, "small", EMBEDDED_SCENE, output_dir, name, steps)
    config.machine.seed = seed
    if "rays" in settings:
        config.pipeline.datamanager.train_num_rays_per_batch = int(settings["rays"])
    fractions: Tuple[float, float] = (  # type: ignore[assignment]
        tuple(float(f) for f in settings["stages"].split(",")) if "stages" in settings else None)
    set_steps(config, int(settings.get("steps", steps)), fractions)
    for group in config.optimizers.values():
        scale = float(settings.get("lr_scale", 1.0))
        group["optimizer"].lr *= scale
        if group["scheduler"] is not None:
            group["scheduler"].learning_rate_alpha /= scale  # the same final learning rate
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="mlp", choices=("hash", "vm", "mlp", "tensors"))
    parser.add_argument("--steps", type=int, default=None, help="steps of every variant (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--teacher-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variant if args.variant is not None else [""]
    parsed = [parse_variant(v) for v in variants]

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.engine.runner import evaluate, train
    from pvdal_ns.experiments.convert import train_or_reuse_teacher
    from pvdal_ns.presets import DEMO_TEACHER, DEMO_TEACHER_STEPS, PRESETS
    from pvdal_ns.utils.files import write_atomic

    steps = args.steps or PRESETS[args.student, "small"].steps
    out = (args.output_dir or Path(f"outputs/bench-tune-{args.student}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = train_or_reuse_teacher(DEMO_TEACHER, "small", EMBEDDED_SCENE, args.teacher_dir.resolve(),
                                     DEMO_TEACHER_STEPS)
    record = out / "tune.json"
    runs: List[dict] = json.loads(record.read_text())["runs"] if record.is_file() else []
    for text, settings in zip(variants, parsed):
        key = {"student": args.student, "steps": steps, "seed": args.seed, "variant": text or "preset",
               "teacher": teacher.report.config}
        if any(all(r[k] == v for k, v in key.items()) for r in runs):
            continue
        name = f"tune-{args.student}-s{args.seed}-{len(runs)}"
        config = build(Path(teacher.report.config), args.student, steps, args.seed, settings, out, name)
        result = train(config, f"{key['variant']}: training")
        val = evaluate(result.pipeline, "val", split="val")
        test = evaluate(result.pipeline, "test", split="test")
        runs.append({**key, "val_psnr": val.psnr, "test_psnr": test.psnr, "test_ssim": test.ssim,
                     "seconds": result.seconds, "teacher_psnr": teacher.report.psnr})
        write_atomic(record, lambda p: p.write_text(json.dumps({"runs": runs}, indent=2) + "\n"))
    mine = [r for r in runs if r["student"] == args.student and r["steps"] == steps and r["seed"] == args.seed]
    best = max(mine, key=lambda r: r["val_psnr"])
    print(f"\n{args.student}, {steps} steps, seed {args.seed}, teacher {mine[0]['teacher_psnr']:.2f} dB (test)")
    print(f"{'variant':32s} {'val PSNR':>9s} {'test PSNR':>10s}")
    for r in mine:
        print(f"{r['variant']:32s} {r['val_psnr']:9.2f} {r['test_psnr']:10.2f}{'   ← val picks' if r is best else ''}")


if __name__ == "__main__":
    main()
