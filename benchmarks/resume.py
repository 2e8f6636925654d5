"""Resume after a kill (issue #19): ``ns-train pvdal-hash-small --max-num-iterations 700`` killed with SIGKILL after
step 300, resumed with ``--load-dir``, against the same run uninterrupted.

    .venv/bin/python benchmarks/resume.py --teacher <config.yml> [--steps 700] [--kill-after 300]
    .venv/bin/python benchmarks/resume.py --teacher <config.yml> --ns-distill   # ns-distill run … --resume

With ``--ns-distill``: ``ns-distill run --student hash --steps 700`` killed 2 s after its first checkpoint at or past
``--kill-after`` − a tenth of the steps, rerun with ``--resume`` (it continues in the killed run's folder), rerun
with ``--resume`` again (it finds the run finished and only evaluates), and run uninterrupted; the figures come
from each run's report.json.

The killed run is ``ns-train`` in a subprocess (on the embedded lego, its checkpoint every tenth of the run, the
default); it is killed once its step log passes ``--kill-after``. The resumed and the uninterrupted runs are
``ns-train`` too; each is then evaluated on the 10 test views. Prints the checkpoint resumed from, the last
step of each run, their PSNR and their seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def ns_train(teacher: Path, steps: int, out: Path, name: str, extra: list) -> list:
    from pvdal_ns import EMBEDDED_SCENE

    return [str(BIN / "ns-train"), "pvdal-hash-small", "--max-num-iterations", str(steps), "--vis", "tensorboard",
            "--output-dir", str(out), "--experiment-name", name, "--timestamp", "run",
            "--logging.steps-per-log", "10", "--pipeline.teacher-config", str(teacher), *extra,
            "blender-data", "--data", str(EMBEDDED_SCENE)]


def last_checkpoint(run: Path) -> Path:
    return sorted(run.glob("nerfstudio_models/step-*.ckpt"))[-1]


def psnr(config: Path) -> float:
    from nerfstudio.utils.eval_utils import eval_setup

    from pvdal_ns.engine.runner import evaluate

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    return evaluate(pipeline).psnr


def ns_distill(teacher: Path, steps: int, out: Path, kill_after: int) -> dict:
    """The ``--ns-distill`` figures: killed, resumed, rerun once finished, and uninterrupted."""
    def command(folder: str, *extra: str) -> list:
        return [str(BIN / "ns-distill"), "run", "--teacher", str(teacher), "--student", "hash", "--steps", str(steps),
                "--output-dir", str(out / folder), *extra]

    def report(folder: str) -> dict:
        return json.loads((out / folder / "report.json").read_text())["models"][0]

    start = time.monotonic()
    killed = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threshold = kill_after - steps // 10
    while not [p for p in out.glob("killed/*/*/*/nerfstudio_models/step-*.ckpt") if int(p.stem[5:]) >= threshold]:
        assert killed.poll() is None, "the run ended before the checkpoint"
        time.sleep(0.2)
    time.sleep(2.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    record: dict = {"killed_after_s": round(time.monotonic() - start, 1),
                    "checkpoint_left": last_checkpoint(next(out.glob("killed/*/*/*"))).name}
    for name, argv, folder in (("resumed", command("killed", "--resume"), "killed"),
                               ("rerun once finished", command("killed", "--resume"), "killed"),
                               ("uninterrupted", command("whole"), "whole")):
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True)
        model = report(folder)
        record[name] = {"process_s": round(time.monotonic() - start, 1), "psnr": model["psnr"], "steps": model["steps"],
                        "resumed_at": model["resumed_at"], "cached": model["cached"],
                        "train_seconds": model["train_seconds"], "config": model["config"]}
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--kill-after", type=int, default=300)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-resume"))
    parser.add_argument("--ns-distill", action="store_true", help="kill and resume ns-distill run instead of ns-train")
    args = parser.parse_args()
    out, teacher = args.output_dir.resolve(), args.teacher.resolve()
    if args.ns_distill:
        record = ns_distill(teacher, args.steps, out, args.kill_after)
        (out / "resume-ns-distill.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        return 0
    run = out / "killed" / "pvdal-hash-small" / "run"
    start = time.monotonic()
    killed = subprocess.Popen(ns_train(teacher, args.steps, out, "killed", []), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    for line in killed.stdout:  # type: ignore[union-attr]
        fields = line.split()
        if fields and fields[0].isdigit() and int(fields[0]) >= args.kill_after:  # nerfstudio's step table
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait()
    killed_s = time.monotonic() - start
    resumed_from = last_checkpoint(run)
    start = time.monotonic()
    subprocess.run(ns_train(teacher, args.steps, out, "resumed", ["--load-dir", str(run / "nerfstudio_models")]),
                   check=True, capture_output=True)
    resumed_s = time.monotonic() - start
    start = time.monotonic()
    subprocess.run(ns_train(teacher, args.steps, out, "whole", []), check=True, capture_output=True)
    whole_s = time.monotonic() - start
    resumed_run, whole_run = out / "resumed" / "pvdal-hash-small" / "run", out / "whole" / "pvdal-hash-small" / "run"
    record = {
        "killed_after_step": args.kill_after, "resumed_from": resumed_from.name,
        "resumed_last": last_checkpoint(resumed_run).name, "whole_last": last_checkpoint(whole_run).name,
        "resumed_psnr": psnr(resumed_run / "config.yml"), "whole_psnr": psnr(whole_run / "config.yml"),
        "seconds": {"killed": killed_s, "resumed": resumed_s, "whole": whole_s},
    }
    (out / "resume.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
