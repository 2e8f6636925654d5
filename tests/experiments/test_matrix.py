"""``ns-distill matrix`` (paper Table 2): every teacher into every student, its files, and a rerun that only
runs the missing pairs."""

import json
import subprocess
import sys
from pathlib import Path

from pvdal_ns import EMBEDDED_SCENE

BIN = Path(sys.executable).parent


def _cache_teacher(config_path: Path, teacher_dir: Path, steps: int) -> None:
    """Leave ``config_path`` where ``train_or_reuse_teacher`` looks for the VM teacher of ``steps`` steps."""
    record = {"config": str(config_path), "method": "pvdal-vm-small", "seconds": 1.0,
              "data": str(EMBEDDED_SCENE.resolve())}
    teacher_dir.mkdir(parents=True)
    (teacher_dir / f"teacher-vm-small-{steps}.json").write_text(json.dumps(record))


def test_matrix_measures_every_pair_and_a_rerun_only_adds_the_missing_one(tiny_teacher, tmp_path):
    from pvdal_ns.scripts.distill import main

    config_path, _ = tiny_teacher
    teachers, out = tmp_path / "teachers", tmp_path / "matrix"
    _cache_teacher(config_path, teachers, 200)
    args = ["matrix", "--teachers", "vm", "--teacher-steps", "vm", "200", "--teacher-dir", str(teachers),
            "--output-dir", str(out), "--student-steps", "vm", "10", "tensors", "10", "mlp", "10"]
    assert main([*args, "--students", "vm", "tensors"]) == 0
    record = json.loads((out / "matrix.json").read_text())
    teacher = record["teachers"]["vm"]
    assert teacher["psnr"] > 20 and teacher["steps"] == 200 and teacher["config"] == str(config_path)
    pairs = {(p["teacher"], p["student"]): p for p in record["pairs"]}
    assert set(pairs) == {("vm", "vm"), ("vm", "tensors")}
    for pair in pairs.values():
        assert pair["steps"] == 10 and pair["parameters"] > 0 and len(pair["per_view_psnr"]) == 10
        assert abs(pair["delta"] - (pair["psnr"] - teacher["psnr"])) < 1e-9 and "lpips" in pair
    assert pairs["vm", "vm"]["delta"] > -0.3  # warm-started from the teacher: a same-architecture student keeps it
    assert pairs["vm", "tensors"]["delta"] < pairs["vm", "vm"]["delta"]  # 10 steps from an empty grid
    table = (out / "matrix.md").read_text()
    assert "| teacher | teacher PSNR | → vm | → tensors |" in table
    assert (f"| vm | {teacher['psnr']:.2f} | {pairs['vm', 'vm']['psnr']:.2f} "
            f"({pairs['vm', 'vm']['delta']:+.2f}) |" in table)
    assert (out / "matrix.png").stat().st_size > 10_000

    assert main([*args, "--students", "vm", "tensors", "mlp"]) == 0  # only the MLP is new
    again = json.loads((out / "matrix.json").read_text())
    assert [(p["teacher"], p["student"]) for p in again["pairs"]] == [("vm", "vm"), ("vm", "tensors"), ("vm", "mlp")]
    assert again["pairs"][:2] == record["pairs"]
    assert len(list((out / "from-vm").glob("pvdal-*-small/*/config.yml"))) == 3
    assert "→ mlp |" in (out / "matrix.md").read_text()


def test_matrix_bad_input_is_one_line(tmp_path):
    def run(*args):
        return subprocess.run([str(BIN / "ns-distill"), "matrix", *map(str, args)], capture_output=True, text=True)

    for args, message in [
        (("--student-steps", "nerf", "10"), "--student-steps names 'nerf', not one of hash, vm, mlp, tensors"),
        (("--teacher-steps", "vm", "0"), "--teacher-steps vm must be at least 1, got 0"),
        (("--data", tmp_path), "is not a scene folder nerfstudio reads: it has no transforms_train.json"),
    ]:
        result = run(*args, "--output-dir", tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
