"""Cold numba cache shared by processes that import the trend kernels at the same moment.

That is what a fresh install does when several Dask worker processes start together. numba's
gufunc cache races there (numba/numba#10128): two processes compiling the same gufunc can leave
a kernel and its ``guf-`` wrapper that do not match, and the next call segfaults. The kernels
are therefore built under an inter-process lock (:func:`abz_dask.kernels._numba.compile_lock`).
This test shows that every cache file is written by exactly one process and that every process,
including a later one that loads the cache, gives the results of this one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

#: Every gufunc (3 methods x 2 dtypes) on one fixed input; run here and in each child process.
COMPUTE = """
import numpy as np
from abz_dask.kernels.zyp import GUFUNCS, apply_gufunc
a = np.random.default_rng(0).normal(size=(40, 20)).cumsum(axis=1)
out = {f"{m}/{dt}": [float(np.nansum(v)) for v in apply_gufunc(a.astype(dt), m, True, 1.96)]
       for m in sorted(GUFUNCS) for dt in ("float64", "float32")}
"""
CHILD = COMPUTE + 'import json\nprint("RESULT " + json.dumps(out))\n'


def _start(cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "NUMBA_DEBUG_CACHE": "1",
           "ABZ_NUMBA_CACHE": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[dict[str, list[float]], set[str]]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-3000:]}"
    result = json.loads(next(line for line in out.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    saved = set(re.findall(r"data saved to '([^']+)'", out))
    return result, saved


@pytest.mark.timeout(900)
def test_concurrent_cold_start_writes_each_cache_file_once(tmp_path: Path) -> None:
    ns: dict[str, object] = {}
    exec(COMPUTE, ns)
    ref = ns["out"]

    procs = [_start(tmp_path) for _ in range(3)]  # all three find the cache empty
    runs = [_finish(p) for p in procs]
    writers = Counter(path for _, saved in runs for path in saved)
    assert writers, "no cache file was written"
    assert any(Path(p).name.startswith("zyp.zhang_gufunc") for p in writers), sorted(writers)
    assert max(writers.values()) == 1, {p: n for p, n in writers.items() if n > 1}
    late, late_saved = _finish(_start(tmp_path))  # loads what the three wrote
    assert not late_saved
    for result, _ in [*runs, (late, set())]:
        assert result == ref
