"""The layer contract of pyproject.toml (docs/design.md, "Layers"): the package imports downward only, and
an upward import, even one hidden inside a function, breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_package_imports_downward_only():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "pvdal_ns", tmp_path / "pvdal_ns", ignore=shutil.ignore_patterns("__pycache__", "scenes"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "pvdal_ns" / "models" / "pvd_model.py"
    model.write_text(model.read_text() + "\n\ndef _dodge():\n"
                     "    from pvdal_ns.pipelines.distillation_pipeline import DistillationPipeline\n")
    result = _lint(tmp_path)  # lint-imports puts its working directory first on the path: it reads the copy
    assert result.returncode == 1
    assert ("BROKEN" in result.stdout
            and "pvdal_ns.models.pvd_model -> pvdal_ns.pipelines.distillation_pipeline" in result.stdout)
