"""The quickstart notebook runs end to end (nbmake, in a subprocess so the suite needs no flag)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path: Path) -> None:
    env = {**os.environ, "ABZ_QUICKSTART_OUT": str(tmp_path / "run")}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=600", "-q",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(NOTEBOOK)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "report.html").stat().st_size > 100_000
    assert (run / "table1.md").read_text().count("| ABZ |") >= 2  # estimate and truth
