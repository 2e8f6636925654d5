"""Benchmark: `ns-distill ablation` (paper Table 3) and the figures issue #4 asks for.

    .venv/bin/python benchmarks/ablation.py [--output-dir outputs/bench-ablation]
        [--teacher-dir outputs/bench-demo] [--seeds 0 1 2] [--steps N] [--rows ROW ...]
    .venv/bin/python benchmarks/ablation.py --output-dir outputs/bench-ablation --merge DIR [DIR ...]

``--merge`` joins the ``ablation.json`` of ablations run side by side (one seed each, same settings) into one
table, plot and record under ``--output-dir``.

Runs (or completes: finished rows are reused) the ablation on the embedded scene, VM teacher → MLP
student, then prints, per seed and as a mean over seeds: the full method against "w/o active learning"
(target ≥ +0.3 dB mean PSNR, a higher minimum per-view PSNR) and the time per step that active
learning adds (target ≤ 15 %). Keep the machine otherwise idle: time per step is wall clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pvdal_ns.scripts.distill import main


def report(output_dir: Path) -> None:
    runs = json.loads((output_dir / "ablation.json").read_text())["runs"]
    by = {(r["row"], r["seed"]): r for r in runs}
    seeds = sorted({s for (row, s) in by if row == "all" and ("w/o active learning", s) in by})
    print(f"\n{'seed':>6s} {'all':>8s} {'no AL':>8s} {'Δ mean':>8s} {'min all':>8s} {'min noAL':>9s} "
          f"{'s/step':>7s} {'noAL':>7s} {'AL cost':>8s}")
    deltas, mins, costs = [], [], []
    for s in seeds:
        a, b = by[("all", s)], by[("w/o active learning", s)]
        cost = a["seconds_per_step"] / b["seconds_per_step"] - 1
        deltas.append(a["psnr"] - b["psnr"])
        mins.append(a["psnr_min"] - b["psnr_min"])
        costs.append(cost)
        print(f"{s:6d} {a['psnr']:8.2f} {b['psnr']:8.2f} {deltas[-1]:+8.2f} {a['psnr_min']:8.2f} {b['psnr_min']:9.2f} "
              f"{a['seconds_per_step']:7.3f} {b['seconds_per_step']:7.3f} {100 * cost:+7.1f}%")
    if not seeds:
        print("no seed has both 'all' and 'w/o active learning'")
        return
    d, m, c = statistics.mean(deltas), statistics.mean(mins), statistics.mean(costs)
    print(f"\nmean over {len(seeds)} seed(s): Δ PSNR {d:+.2f} dB (target ≥ +0.30: {'yes' if d >= 0.3 else 'NO'}); "
          f"Δ min view PSNR {m:+.2f} dB (target > 0: {'yes' if m > 0 else 'NO'}); "
          f"AL time per step {100 * c:+.1f} % (target ≤ 15 %: {'yes' if c <= 0.15 else 'NO'})")


def merge(output_dir: Path, parts: list) -> None:
    from pvdal_ns.experiments.ablation import ROWS, AblationSettings, markdown_table, plot_per_view, summarise
    from pvdal_ns.utils.files import write_atomic

    records = [json.loads((Path(p) / "ablation.json").read_text()) for p in parts]
    if any(r["settings"] != records[0]["settings"] for r in records):
        raise SystemExit("the ablations to merge were run with other settings")
    runs = [run for r in records for run in r["runs"]]
    seeds = sorted({r["seed"] for r in runs})
    rows = [row for row in ROWS if any(r["row"] == row for r in runs)]
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {**records[0], "runs": runs, "merged_from": [str(p) for p in parts]}
    write_atomic(output_dir / "ablation.json", lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))
    table = markdown_table(summarise(runs, rows), AblationSettings(**records[0]["settings"]), seeds)
    write_atomic(output_dir / "ablation.md", lambda p: p.write_text(table))
    plot_per_view(runs, rows, output_dir / "ablation.png")
    print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-ablation"))
    parser.add_argument("--teacher-dir", type=Path, default=Path("outputs/bench-demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=None, help="subset of rows (default: all of Table 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (default: the preset's)")
    parser.add_argument("--merge", nargs="+", default=None, help="output folders of ablations to join")
    args = parser.parse_args()
    if args.merge:
        merge(args.output_dir.resolve(), args.merge)
        report(args.output_dir.resolve())
        raise SystemExit(0)
    argv = ["ablation", "--output-dir", str(args.output_dir), "--teacher-dir", str(args.teacher_dir),
            "--seeds", *map(str, args.seeds)]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.rows:
        argv += ["--rows", *args.rows]
    code = main(argv)
    if code != 0:
        raise SystemExit(code)
    report(args.output_dir.resolve())
