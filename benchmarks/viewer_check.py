"""Check what a user sees in the browser viewer: serve a checkpoint with ``ns-viewer`` and open it in a
real headless Chromium (docs/design.md, "nerfstudio 1.1.5"), wait for the first render and save a screenshot.

    .venv/bin/python benchmarks/viewer_check.py --load-config outputs/…/config.yml [--out docs/viewer.png]

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` Python package (not installed by
``make``: ``.venv/bin/pip install playwright``). Prints the panel text it found and the seconds until
the render's resolution appeared; exits 1 when nothing rendered within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--port", type=int, default=7017)
    parser.add_argument("--out", type=Path, default=Path("outputs/viewer.png"))
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    viewer = subprocess.Popen([str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(args.load_config),
                               "--viewer.websocket-port", str(args.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    try:
        for line in viewer.stdout:  # type: ignore[union-attr]
            if "Viewer running locally" in line or f":{args.port}" in line:
                break
        served = time.perf_counter() - started
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://localhost:{args.port}")
            opened = time.perf_counter()
            text = ""
            while time.perf_counter() - opened < args.timeout:
                text = page.inner_text("body")
                if re.search(r"Resolution:\s*[1-9]\d*\s*[x×]\s*[1-9]\d*", text):
                    break
                time.sleep(2)
            rendered = time.perf_counter() - opened
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
        match = re.search(r"Resolution:\s*[1-9]\d*\s*[x×]\s*[1-9]\d*\s*px", text)
        print(f"ns-viewer serving after {served:.0f} s; browser: {match.group(0) if match else 'no render'} "
              f"{rendered:.0f} s after opening; screenshot {args.out}")
        return 0 if match else 1
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
