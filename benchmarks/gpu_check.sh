#!/bin/bash
# The GPU check of issue #29, in one call of the device machine: tests/test_cuda.py (every CUDA path, short; its
# slow splatfacto case apart, under its own time limit) and, at the same time, the full `ns-distill demo`. Logs go
# to $OUT (what the `run` tool brings back: at most 8 files); a short table is printed last.
#
# 1. Here, in the project's root (no GPU needed; wheels for Python 3.12 from the package index):
#        ../shared/gpu/prepare.sh none && bash benchmarks/gpu_check.sh prepare
#    prepare.sh writes .whl/ (nerfstudio, nerfacc, gsplat, … and pvdal_ns itself) with .whl/install.sh; `prepare`
#    adds mediapy and IPython, which ns-render imports and the GPU image lacks (without them the ns-render part of
#    the test is skipped, saying so). .whl/ is git-ignored (.git/info/exclude), so it must be carried.
# 2. On the device machine, with the `run` tool (one call, ~10 minutes of the session's 15 of device time):
#        command: bash benchmarks/gpu_check.sh        carry: [".whl"]        timeout_s: 600
#    The command installs the wheels (source .whl/install.sh), puts this working tree's pvdal_ns first on the path,
#    and ends within BUDGET seconds (default 560): the demo is stopped there if it has not finished.
#    `bash benchmarks/gpu_check.sh tests` runs the tests alone, `… demo` the demo alone (each with the whole budget),
#    `… step` issue #31's step benchmark alone (benchmarks/gpu_step.py: the demo's teacher, then each architecture
#    distilled and from images, and the synchronisations of a step; STEP_ARGS adds its options).
#
# Files in $OUT: env.txt (GPU, versions, nerfacc's CUDA ops), test_cuda.log and test_cuda.xml (JUnit),
# test_splatfacto.log, demo.log, demo_report.json (the demo's report.json), gpu_step.log, table.txt (the table
# printed last).
set -uo pipefail
mode=${1:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ $mode == prepare ]]; then
  [[ -f .whl/install.sh ]] || { echo "run ../shared/gpu/prepare.sh none first"; exit 2; }
  py=${PYTHON:-.venv/bin/python}; [[ -x $py ]] || py=python3
  # ns-render's imports the GPU image lacks: mediapy, and IPython with what it imports (--no-deps: named one by one)
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl mediapy ipython ipython-pygments-lexers decorator jedi parso matplotlib-inline traitlets pexpect \
    ptyprocess prompt_toolkit wcwidth stack_data executing asttokens pure_eval
  du -sh --exclude=.git --exclude=.venv --exclude=outputs . | sed 's/\t.*/: what travels (limit 64 MiB)/'
  exit 0
fi

started=$(date +%s)
budget=${BUDGET:-560}
OUT=${OUT:-$root/outputs/gpu-check}
work=${WORK:-/tmp/gpu-check}
mkdir -p "$OUT" "$work"
left() { local l=$((budget - ($(date +%s) - started))); echo $((l > 1 ? l : 1)); }

if [[ -f .whl/install.sh ]]; then
  # shellcheck disable=SC1091
  source .whl/install.sh || { echo "the wheels did not install (/tmp/pip.log)" | tee "$OUT/table.txt"; exit 1; }
fi
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-6}  # two processes share the 16 cores: tests and demo
py=python3

{
  nvidia-smi -L 2>&1
  $py - <<'PY' 2>&1
import importlib.metadata as md, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda, "|", gpu)
print(" ".join(f"{p} {md.version(p)}" for p in ("nerfstudio", "nerfacc", "gsplat", "numpy", "pvdal_ns")))
PY
  # cheap where nerfacc 0.5.2 meets CUDA >= 13; elsewhere this compiles its ops, so it is given 90 s
  probe="from pvdal_ns.teachers.stock import nerfacc_cuda_problem as p; print('nerfacc CUDA ops:', p() or 'they load')"
  found=$(timeout 90 $py -c "$probe" 2>&1 | grep "^nerfacc CUDA ops:")
  echo "${found:-nerfacc CUDA ops: not probed (no answer within 90 s: it was building them)}"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

demo_pid=
if [[ $mode == all || $mode == demo ]]; then
  rm -rf "$work/demo"
  ( t0=$(date +%s)
    limit=$(( $(left) - 20 )); (( limit < 30 )) && limit=30
    timeout --signal=INT --kill-after=15 $limit $py -m pvdal_ns.scripts.distill demo --output-dir "$work/demo"
    echo "exit $? after $(( $(date +%s) - t0 )) s" ) > "$OUT/demo.log" 2>&1 &
  demo_pid=$!
fi

if [[ $mode == step ]]; then
  # shellcheck disable=SC2086
  timeout --signal=INT --kill-after=15 $(( $(left) - 10 )) $py benchmarks/gpu_step.py --output-dir "$work/step" \
    ${STEP_ARGS:-} > "$OUT/gpu_step.log" 2>&1
  echo "exit $?" >> "$OUT/gpu_step.log"
  grep -v "^\s*$" "$OUT/gpu_step.log" | tail -n 8 | tee "$OUT/table.txt"
  exit 0
fi

if [[ $mode == all || $mode == tests ]]; then
  limit=$(( $(left) - 150 )); (( limit > 400 )) && limit=400; (( limit < 60 )) && limit=60
  timeout --kill-after=10 $limit $py -m pytest tests/test_cuda.py -k "not splatfacto" -q -rs --durations=0 \
    --junitxml="$OUT/test_cuda.xml" > "$OUT/test_cuda.log" 2>&1
  echo "exit $?" >> "$OUT/test_cuda.log"
  limit=$(( $(left) - 25 )); (( limit > 150 )) && limit=150
  if (( limit > 30 )); then
    timeout --kill-after=10 $limit $py -m pytest tests/test_cuda.py -k splatfacto -q -rs -s \
      > "$OUT/test_splatfacto.log" 2>&1
    echo "exit $?" >> "$OUT/test_splatfacto.log"
  else
    echo "not run: no time left" > "$OUT/test_splatfacto.log"
  fi
fi
[[ -n $demo_pid ]] && wait "$demo_pid"
[[ -f $work/demo/report.json ]] && cp "$work/demo/report.json" "$OUT/demo_report.json"
for f in "$OUT"/*.log; do  # the run tool brings back files of at most 16 MiB
  [[ -f $f ]] || continue
  (( $(stat -c %s "$f") > 8000000 )) && { tail -c 8000000 "$f" > "$f.tail"; mv "$f.tail" "$f"; }
done

$py - "$OUT" "$mode" "$(( $(date +%s) - started ))" <<'PY' | tee "$OUT/table.txt"
import json, re, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, mode, wall = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = []


def last_line(path, pattern):
    text = path.read_text(errors="replace") if path.is_file() else ""
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    return found[-1].strip() if found else "-"


if mode in ("all", "tests"):
    xml = out / "test_cuda.xml"
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rows.append(("tests/test_cuda.py", f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
                     f"{counts['skipped']} skipped", f"{float(suite.get('time', 0)):.0f}"))
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            skip = case.find("skipped")
            status = "FAILED" if bad is not None else "skipped" if skip is not None else "ok"
            note = bad if bad is not None else skip
            note = "" if note is None else (note.get("message") or "")[:70]
            rows.append((f"  {case.get('name')[:52]}", f"{status} {note}".strip(), f"{float(case.get('time', 0)):.0f}"))
    else:
        rows.append(("tests/test_cuda.py", "no result: " + last_line(out / "test_cuda.log", r"exit|Error"), "-"))
    splat = last_line(out / "test_splatfacto.log", r"\b(passed|failed|skipped|error)\b|not run")
    if splat == "-":  # stopped before pytest's summary
        splat = last_line(out / "test_splatfacto.log", r"^exit")
    rows.append(("  splatfacto test", splat, "-"))
if mode in ("all", "demo"):
    report = out / "demo_report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        use = r.get("resources_utilization", {})
        result = (f"done; peak GPU {r.get('peak_gpu_memory_gib', '-')} GiB, host {r.get('peak_memory_gib')} GiB; "
                  f"{use.get('gpu_name', '-')}")
        rows.append(("ns-distill demo", result, f"{r.get('total_seconds', '-')}"))
        for m in r["models"]:
            rows.append((f"  {m['role']} {m['architecture']}", f"PSNR {m['psnr']:.2f} dB, {m['steps']} steps",
                         f"{m['train_seconds']:.0f}"))
    else:
        rows.append(("ns-distill demo", "unfinished: " + last_line(out / "demo.log", r"exit|Error|error"), "-"))
rows.append(("whole check", last_line(out / "env.txt", r"nerfacc CUDA ops"), wall))
width = max(len(a) for a, _, _ in rows)
print(f"\n{'check':{width}s}  {'result':70s}  seconds")
for name, result, seconds in rows:
    print(f"{name:{width}s}  {result[:70]:70s}  {seconds:>7s}")
PY
