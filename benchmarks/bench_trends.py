"""Throughput of the zyp-exact Zhang trend kernel against per-series Python baselines.

Single thread. For n = 20 and n = 31 (years), times:

* ``abz_dask`` Zhang kernel (``zhang_gufunc``, preserve_range=True) on a batch of random-walk +
  trend series (one gufunc call; compilation excluded by a warm-up call);
* ``pymannkendall.pre_whitening_modification_test`` (prewhitening + Sen slope + Mann-Kendall, the
  closest analogue of Zhang) and ``pymannkendall.original_test`` (Sen slope + Mann-Kendall), called
  per series in a Python loop on fewer series;
* ``scipy.stats.theilslopes`` + ``scipy.stats.kendalltau`` per series.

Rates are series per CPU-second of the benchmarking thread (``time.thread_time``), i.e. per core,
the best of ``--repeat`` runs (as ``timeit``) taken round-robin over all contenders, which keeps
them largely independent of other load on the machine; wall-clock rates (also best of the runs)
are printed as well. The last
line reads ``series_per_s_per_core_n20=<n> ratio_vs_pymannkendall=<x>`` where the ratio is our
Zhang rate over ``pre_whitening_modification_test``'s at n = 20.

Usage::

    .venv/bin/python benchmarks/bench_trends.py [--series 20000] [--baseline-series 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt
import pymannkendall
import scipy.stats

from abz_dask.kernels import zyp

#: Land pixels of the 1-km circumpolar grid (number of series in a full trend map).
LAND_SERIES = 20_700_000


@dataclass
class Timing:
    """Result of one timed run."""

    name: str
    n: int
    series: int
    cpu_s: float
    wall_s: float

    @property
    def rate(self) -> float:
        """Series per CPU-second (per core)."""
        return self.series / self.cpu_s

    @property
    def wall_rate(self) -> float:
        """Series per wall-clock second."""
        return self.series / self.wall_s


def random_walks(rng: np.random.Generator, count: int, n: int) -> npt.NDArray[np.float64]:
    """Random walk (unit steps) plus a linear trend of random slope in [-0.3, 0.3] per step."""
    steps = rng.normal(size=(count, n))
    slope = rng.uniform(-0.3, 0.3, size=(count, 1))
    return np.cumsum(steps, axis=1) + slope * np.arange(n) + 10.0


def timed_once(func: Callable[[], object]) -> tuple[float, float]:
    """Thread CPU time and wall time of one call of ``func``."""
    c0 = time.thread_time()
    w0 = time.perf_counter()
    func()
    return time.thread_time() - c0, time.perf_counter() - w0


@dataclass
class Contender:
    """A timed workload."""

    name: str
    n: int
    series: int
    func: Callable[[], object]


def contenders_for(rng: np.random.Generator, n: int, n_series: int, n_base: int,
                   zhang_out: dict[int, tuple[npt.NDArray[np.float64], ...]]) -> list[Contender]:
    """The four workloads for one series length (data drawn here, compilation warmed up)."""
    data = random_walks(rng, n_series, n)
    base = data[:n_base]
    t = np.arange(1.0, n + 1)
    z = zyp.normal_quantile(0.05)
    zyp.apply_gufunc(data[:50], "zhang", True, z)  # warm-up (compilation / cache load)

    def ours() -> None:
        zhang_out[n] = zyp.apply_gufunc(data, "zhang", True, z)

    def pmk_pw() -> None:
        for y in base:
            pymannkendall.pre_whitening_modification_test(y)

    def pmk_orig() -> None:
        for y in base:
            pymannkendall.original_test(y)

    def scipy_ts() -> None:
        for y in base:
            scipy.stats.theilslopes(y, t)
            scipy.stats.kendalltau(t, y)

    pmk_pw()  # warm-up of the Python paths (imports, caches)
    scipy_ts()
    return [
        Contender("abz_dask zyp.zhang kernel", n, n_series, ours),
        Contender("pymannkendall pre_whitening_modification_test", n, n_base, pmk_pw),
        Contender("pymannkendall original_test", n, n_base, pmk_orig),
        Contender("scipy theilslopes + kendalltau", n, n_base, scipy_ts),
    ]


def run_rounds(contenders: list[Contender], rounds: int) -> list[Timing]:
    """Time every contender once per round, round-robin; keep each one's fastest run."""
    best = {id(c): (float("inf"), float("inf")) for c in contenders}
    for _ in range(rounds):
        for c in contenders:
            cpu, wall = timed_once(c.func)
            b_cpu, b_wall = best[id(c)]
            best[id(c)] = (min(b_cpu, cpu), min(b_wall, wall))
    return [Timing(c.name, c.n, c.series, *best[id(c)]) for c in contenders]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20_000, help="series for our kernel")
    parser.add_argument("--baseline-series", type=int, default=500,
                        help="series for the per-series Python baselines")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds of timed runs (interleaved); the fastest counts (as timeit)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); single thread; best of "
          f"{args.repeat} interleaved runs; numpy {np.__version__}, scipy {scipy.__version__}")
    zhang_out: dict[int, tuple[npt.NDArray[np.float64], ...]] = {}
    contenders: list[Contender] = []
    for n in (20, 31):
        contenders.extend(contenders_for(rng, n, args.series, args.baseline_series, zhang_out))
    results = run_rounds(contenders, args.repeat)
    for n, out in zhang_out.items():
        nruns = out[zyp.FIELDS.index("nruns")]
        print(f"n={n}: Zhang nruns mean {np.nanmean(nruns):.1f}, "
              f"{np.mean(nruns == zyp.MAX_RUNS) * 100:.1f}% reach {zyp.MAX_RUNS} passes, "
              f"{np.mean(np.isnan(nruns)) * 100:.1f}% all-NaN")

    ours = {r.n: r for r in results if r.name.startswith("abz_dask")}
    print()
    header = (f"| {'method':<46} | {'n':>2} | {'series':>6} | {'CPU s':>7} | "
              f"{'series/s/core':>13} | {'wall series/s':>13} | {'ours / this':>11} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        ratio = ours[r.n].rate / r.rate
        print(f"| {r.name:<46} | {r.n:>2} | {r.series:>6} | {r.cpu_s:>7.3f} | {r.rate:>13,.0f} | "
              f"{r.wall_rate:>13,.0f} | {ratio:>10.1f}x |")
    print()
    for n, r in ours.items():
        hours = LAND_SERIES / r.rate / 3600
        print(f"projection n={n}: {LAND_SERIES / 1e6:.1f} M land series on one core: "
              f"{hours:.2f} h ({hours * 60:.0f} min); on 2 cores {hours / 2:.2f} h")
    pmk20 = next(r for r in results
                 if r.n == 20 and r.name == "pymannkendall pre_whitening_modification_test")
    print(f"series_per_s_per_core_n20={ours[20].rate:.0f} "
          f"ratio_vs_pymannkendall={ours[20].rate / pmk20.rate:.1f}")


if __name__ == "__main__":
    main()
