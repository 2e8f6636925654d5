"""Resume after a kill (issue #19): ``ns-train pvdal-hash-small --max-num-iterations 700`` killed with SIGKILL after
step 300, resumed with ``--load-dir``, against the same run uninterrupted.

    .venv/bin/python benchmarks/resume.py --teacher <config.yml> [--steps 700] [--kill-after 300]

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

    from pvdal_ns.runner import evaluate

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    return evaluate(pipeline).psnr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--kill-after", type=int, default=300)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-resume"))
    args = parser.parse_args()
    out, teacher = args.output_dir.resolve(), args.teacher.resolve()
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
