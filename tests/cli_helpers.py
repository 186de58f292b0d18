"""Running the real ``ressearch`` command in a subprocess, shared by the CLI test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ressearch.data import DATA_DIR_ENV


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m ressearch.cli ARGS`` with one thread per process and no inherited
    $RESSEARCH_DATA_DIR; ``env`` adds variables."""
    environ = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    environ.update({"OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "ressearch.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, one line on stderr containing every needle, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    return lines[0]
