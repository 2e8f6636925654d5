"""Benchmark (issue #16): `ns-distill matrix` (paper Table 2) and its per-pair targets.

    .venv/bin/python benchmarks/matrix.py [--output-dir outputs/bench-matrix] [-- ns-distill matrix options]
    .venv/bin/python benchmarks/matrix.py --output-dir outputs/bench-matrix --merge DIR [DIR ...]

The first form runs (or completes) the matrix; ``--merge`` joins the ``matrix.json`` of matrices run side by
side (other teachers each, the same settings) into one matrix.json, matrix.md and matrix.png. Both then print
each pair against its target: same architecture ≥ teacher − 0.1 dB; hash and VM students ≥ teacher − 0.5;
MLP ≥ teacher − 1.0; tensors ≥ teacher − 1.5. Train seconds are timings only when the matrix ran alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pvdal_ns.presets import ARCHITECTURES

MARGIN = {"hash": 0.5, "vm": 0.5, "mlp": 1.0, "tensors": 1.5}
SAME = 0.1


def targets(record: dict) -> None:
    print(f"\n{'teacher':>8s} {'student':>8s} {'teacher':>8s} {'student':>8s} {'Δ':>6s} {'target':>7s} met  {'s':>6s}")
    for p in record["pairs"]:
        margin = SAME if p["teacher"] == p["student"] else MARGIN[p["student"]]
        met = p["delta"] >= -margin
        print(f"{p['teacher']:>8s} {p['student']:>8s} {p['teacher_psnr']:8.2f} {p['psnr']:8.2f} {p['delta']:+6.2f} "
              f"{-margin:+7.2f} {'yes' if met else 'NO '}  {p['train_seconds']:6.0f}")
    for t, info in record["teachers"].items():
        print(f"teacher {t}: {info['psnr']:.2f} dB, {info['steps']} steps, {info['train_seconds']:.0f} s")


def merge(output_dir: Path, parts: list) -> dict:
    from pvdal_ns.experiments.matrix import markdown_table, plot_matrix
    from pvdal_ns.utils.files import write_atomic

    records = [json.loads((Path(p) / "matrix.json").read_text()) for p in parts]
    merged = {**records[0], "teachers": {}, "pairs": [], "merged_from": [str(p) for p in parts]}
    for r in records:
        merged["teachers"].update(r["teachers"])
        merged["pairs"] += r["pairs"]
    teachers = [a for a in ARCHITECTURES if a in merged["teachers"]]
    students = [a for a in ARCHITECTURES if any(p["student"] == a for p in merged["pairs"])]
    merged["pairs"].sort(key=lambda p: (teachers.index(p["teacher"]), students.index(p["student"])))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / "matrix.json", lambda p: p.write_text(json.dumps(merged, indent=2) + "\n"))
    write_atomic(output_dir / "matrix.md", lambda p: p.write_text(markdown_table(merged, teachers, students)))
    plot_matrix(merged, teachers, students, output_dir / "matrix.png")
    print(markdown_table(merged, teachers, students))
    return merged


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-matrix"))
    parser.add_argument("--merge", nargs="+", default=None, help="output folders of matrices to join")
    args, rest = parser.parse_known_args()
    if args.merge:
        targets(merge(args.output_dir.resolve(), args.merge))
        raise SystemExit(0)
    from pvdal_ns.scripts.distill import main

    code = main(["matrix", "--output-dir", str(args.output_dir), *[a for a in rest if a != "--"]])
    if code != 0:
        raise SystemExit(code)
    targets(json.loads((args.output_dir / "matrix.json").read_text()))
