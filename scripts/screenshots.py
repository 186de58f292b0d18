"""Screenshots for the README: the HTML report and the dashboard's study page, via headless Chromium.

    python scripts/screenshots.py results/small.db --data-dir ../shared/data
    # writes docs/report.png and docs/dashboard.png

The report is written to a temporary directory (``ressearch report``); the dashboard is started on a
copy of the study (``ressearch dashboard`` stores its figures in the study) on a free local port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 500_000


def chromium_shot(chromium: str, url: str, out: Path, size: tuple[int, int], profile: Path,
                  budget_ms: int) -> None:
    """Screenshot ``url`` at ``size`` (width, height) after ``budget_ms`` of virtual time."""
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url],
        check=True, capture_output=True, timeout=180)
    shrink(out)


def shrink(path: Path) -> None:
    """Re-save optimised; fall back to a 256-colour palette if still over MAX_BYTES."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    img.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ressearch.cli", *args]


def report_shot(study: Path, data_dir: str | None, out: Path, chromium: str, tmp: Path) -> None:
    extra = ["--data-dir", data_dir] if data_dir else []
    subprocess.run(cli("report", str(study), "--out", str(tmp / "report"), *extra), check=True)
    chromium_shot(chromium, (tmp / "report" / "report.html").as_uri(), out, (1200, 2400),
                  tmp / "profile", 10000)


def dashboard_shot(study: Path, out: Path, chromium: str, tmp: Path) -> None:
    copy = tmp / study.name
    shutil.copy(study, copy)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(cli("dashboard", str(copy), "--port", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise SystemExit(f"ressearch dashboard exited with code {server.returncode}")
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not answer within 60 s") from None
                time.sleep(0.5)
        # The study page: the dashboard's own Pareto front, history, importance, timeline, then the
        # attached "pareto-front" and "hypervolume" figures.
        chromium_shot(chromium, f"{base}/dashboard/studies/{studies[0]['study_id']}", out,
                      (1200, 2300), tmp / "profile-dashboard", 15000)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="A study file, e.g. results/small.db.")
    parser.add_argument("--data-dir", default=os.environ.get("RESSEARCH_DATA_DIR"),
                        help="MNIST directory (for the report's confusion matrix).")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="Where the PNGs go.")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report_shot(args.study, args.data_dir, args.out / "report.png", args.chromium, Path(tmp))
        dashboard_shot(args.study, args.out / "dashboard.png", args.chromium, Path(tmp))
    for name in ("report.png", "dashboard.png"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    main()
