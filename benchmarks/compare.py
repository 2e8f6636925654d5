"""Benchmark (issue #16): `ns-distill compare` and its targets.

    .venv/bin/python benchmarks/compare.py --output-dir outputs/bench-compare-mlp --
        --teacher <config.yml> --student mlp
    .venv/bin/python benchmarks/compare.py --output-dir outputs/bench-compare-mlp --report   # the targets again

Runs the comparison (every option after ``--`` goes to ``ns-distill compare``), then prints each run's final
PSNR, steps, seconds and rays per second, and the targets against the from-scratch run: the distilled run
reaches its final PSNR at least 10× sooner and ends at least 0.8 dB above it; distillation's throughput is at
least 0.7 of training from scratch; and where a stock method ran, the distilled run's final PSNR against it. Run
it alone on the machine: its figures are timings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def targets(record: dict) -> None:
    runs = record["runs"]
    scratch, distilled, *stock = list(runs)
    s, d = runs[scratch], runs[distilled]
    print(f"\n{record['device']}; budget {record['settings']['budget_seconds']:.0f} s, "
          f"size {record['settings'].get('size')}")
    for name, r in runs.items():
        print(f"{name:36s} {r['psnr']:6.2f} dB  {r['steps']:6d} steps  {r['seconds']:7.1f} s  "
              f"{r['rays_per_second']:8.0f} rays/s"
              f"  {r['parameters']:>10,} params")
    speedup = record["speedup"]
    rows = [("distilled reaches from-scratch's final PSNR sooner (×)", speedup, "≥ 10",
             speedup is not None and speedup >= 10),
            ("distilled − from scratch, final PSNR (dB)", d["psnr"] - s["psnr"], "≥ 0.8",
             d["psnr"] - s["psnr"] >= 0.8),
            ("throughput distilled / from scratch", record["throughput_ratio"], "≥ 0.7",
             record["throughput_ratio"] >= 0.7)]
    for name in stock:
        reach = d["time_to_reach"][name]
        rows.append((f"distilled − {name}, final PSNR (dB)", d["psnr"] - runs[name]["psnr"], "> 0",
                     d["psnr"] > runs[name]["psnr"]))
        rows.append((f"{name}'s final PSNR reached by distilled at (s)", reach, f"< {runs[name]['seconds']:.0f}",
                     reach is not None and reach < runs[name]["seconds"]))
    print(f"\n{'figure':58s} {'measured':>9s} {'target':>8s}  met")
    for name, value, target, met in rows:
        shown = "never" if value is None else f"{value:.2f}"
        print(f"{name:58s} {shown:>9s} {target:>8s}  {'yes' if met else 'NO'}")
    for name, why in record["skipped"].items():
        print(f"{name}: skipped ({why})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--report", action="store_true", help="print the targets of an existing compare.json")
    args, rest = parser.parse_known_args()
    if not args.report:
        from pvdal_ns.scripts.distill import main

        code = main(["compare", "--output-dir", str(args.output_dir), *[a for a in rest if a != "--"]])
        if code != 0:
            raise SystemExit(code)
    targets(json.loads((args.output_dir / "compare.json").read_text()))
