"""Peak memory of ``abz-dask build-cube`` on sources of growing size (issue 8).

A 50-km twin (2002, 12 months) is exported three times and a cube is built from each export in a
fresh process (``abz-dask build-cube CONFIG --workers 0``: Dask threads in that process, so its
peak RSS is the whole build):

* ``base``: lon/lat files at 0.25° covering 48–90°N (EPSG:3413 NetCDF at 12.5 km);
* ``finer``: 0.125° and 6.25 km — **4× the pixels** of every file, same extent;
* ``global``: 0.25° lon/lat files covering 90°S–90°N — 4.3× the pixels of the lon/lat files
  (only the part over the grid is ever read).

Peak RSS is the build process's own ``VmHWM`` (``/proc/self/status`` at exit; not the child's
``ru_maxrss``, which inherits this process's RSS at fork). The last line reads
``peak_base_mb=<a> peak_finer_mb=<b> ratio_finer=<b/a> peak_global_mb=<c> ratio_global=<c/a>``.

Usage::

    .venv/bin/python benchmarks/bench_build_cube.py [--work /tmp/bench_build_cube]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


#: Runs the CLI and writes the process's own high-water mark (VmHWM, kB) to argv[1] at exit.
#: VmHWM belongs to the address space created by exec, unlike ``ru_maxrss`` of a child, which
#: inherits the (large) RSS of this benchmark process at fork.
_WRAPPER = """
import atexit, sys
out = sys.argv.pop(1)
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(out, "w").write(line.split()[1])
atexit.register(_hwm)
sys.argv[0] = "abz-dask"
if sys.argv[1:]:
    from abz_dask.cli import app
    app()
else:
    import abz_dask.cli, abz_dask.cube_build, rasterio, netCDF4, xarray, zarr
"""


def _peak_mb(args: list[str], work: Path) -> tuple[float, float]:
    hwm = work / "vmhwm.txt"
    hwm.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-c", _WRAPPER, str(hwm), *args])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"failed: abz-dask {' '.join(args)}")
    return int(hwm.read_text()) / 1024.0, wall


def _build(config: Path, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".done"), ignore_errors=True)
    return _peak_mb(["build-cube", str(config), "--out", str(out), "--workers", "0",
                     "--no-progress"], out.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_build_cube"))
    ap.add_argument("--resolution", default="50km")
    args = ap.parse_args()
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    layout = generate_twin(work / "twin", resolution=args.resolution, start="2002-01",
                           end="2002-12", seed=0, n_sites=50, progress=False)
    variants = {"base": {"lonlat_res": 0.25, "polar_res": 12_500.0},
                "finer": {"lonlat_res": 0.125, "polar_res": 6_250.0},
                "global": {"lonlat_res": 0.25, "polar_res": 12_500.0, "lonlat_south": -90.0}}
    peaks: dict[str, float] = {}
    for name, kw in variants.items():
        exp = work / f"export_{name}"
        if not (exp / "build-cube.yaml").exists():
            export_twin(layout, exp, ndvi_gap=False, **kw)  # type: ignore[arg-type]
        one = next((exp / "srad").glob("*.tif"))
        peak, wall = _build(exp / "build-cube.yaml", work / f"cube_{name}.zarr")
        peaks[name] = peak
        print(f"{name:7s} export {_size_mb(exp):8.1f} MB on disk, one srad file "
              f"{one.stat().st_size / 1024:7.1f} KB compressed; build {wall:6.1f} s, "
              f"peak RSS {peak:7.1f} MB", flush=True)
    imp, _ = _peak_mb([], work)
    print(f"imports alone (abz_dask.cli, cube_build, rasterio, netCDF4, xarray, zarr): peak RSS "
          f"{imp:.1f} MB")
    b = peaks["base"]
    print(f"peak_base_mb={b:.1f} peak_finer_mb={peaks['finer']:.1f} "
          f"ratio_finer={peaks['finer'] / b:.3f} peak_global_mb={peaks['global']:.1f} "
          f"ratio_global={peaks['global'] / b:.3f}")


if __name__ == "__main__":
    main()
