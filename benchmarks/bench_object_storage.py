"""The same run on object storage and on a local disk: wall time, bytes, and whether the
budgets are bit-identical.

Starts an S3-compatible server (moto's server mode) on 127.0.0.1, runs
``deploy/configs/twin-small.yaml`` (or ``--config``) once with its output on ``s3://`` (flux
store: Icechunk, the default for a URL) and once on a local disk (plain Zarr), both with
``--cluster local`` and 2 worker processes, and prints the time of each stage and the totals.

    python benchmarks/bench_object_storage.py [--config CONFIG] [--workers 2]

Last line (machine-readable): ``s3_s= local_s= ratio_time= s3_bytes= local_bytes=
budgets_identical=``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(cfg: dict, path: Path, workers: int) -> float:
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "abz_dask.cli", "run", str(path), "--cluster",
                        "local", "--workers", str(workers)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(r.stdout.strip())
    return dt


def _stage_seconds(records: dict[str, bytes]) -> dict[str, float]:
    return {name: json.loads(raw)["seconds"] for name, raw in sorted(records.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "deploy/configs/twin-small.yaml")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    base = yaml.safe_load(args.config.read_text())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            t_s3 = _run({**base, "output": "s3://bench/run"}, t / "s3.yaml", args.workers)
            t_local = _run({**base, "output": str(t / "local")}, t / "local.yaml", args.workers)
            fs.invalidate_cache()
            objs = fs.find("bench/run", detail=True)
            s3_bytes = sum(int(v["size"]) for v in objs.values())
            local_files = [p for p in (t / "local").rglob("*") if p.is_file()]
            local_bytes = sum(p.stat().st_size for p in local_files)
            same = fs.cat_file("bench/run/budgets.csv") == (t / "local/budgets.csv").read_bytes()
            s3_rec = _stage_seconds({k.rsplit("/", 1)[-1].split(".")[0]: fs.cat_file(k)
                                     for k in objs if k.endswith(".stage.json")})
            loc_rec = _stage_seconds({p.name.split(".")[0]: p.read_bytes()
                                      for p in (t / "local").glob("*.stage.json")})
    finally:
        srv.stop()
    print(f"\n{'stage':>10} {'s3_s':>8} {'local_s':>8}")
    for k in loc_rec:
        print(f"{k:>10} {s3_rec.get(k, float('nan')):8.1f} {loc_rec[k]:8.1f}")
    print(f"objects {len(objs):,} ({s3_bytes / 1e6:.1f} MB) on s3; files "
          f"{len(local_files):,} ({local_bytes / 1e6:.1f} MB) on the local disk")
    print(f"s3_s={t_s3:.1f} local_s={t_local:.1f} ratio_time={t_s3 / t_local:.2f} "
          f"s3_bytes={s3_bytes} local_bytes={local_bytes} budgets_identical={same}")


if __name__ == "__main__":
    main()
