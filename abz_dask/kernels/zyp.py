"""zyp-exact Theil–Sen / Mann–Kendall trend kernels (numba gufuncs, no xarray, no dask).

Re-implements, to the last digit, what R **zyp 0.11-1** (``zyp.zhang``, ``zyp.yuepilon``,
``zyp.sen``, ``confint.zyp``) and **Kendall 2.2.1** (``Kendall``/``MannKendall``, Fortran
``TAUK2``) return, including the details that decide the last digits (seed-spec §4.10 and the
``ALGORITHM.md`` notes shipped with the zyp reference data):

* Kendall's tau and p-value are computed in **float32** (the Fortran receives ``as.single``
  copies), ties are found on the float32 values, and the p-value is always the continuity-corrected
  normal approximation (AS 66 in single precision);
* the mean inside R's lag-1 autocorrelation (``colMeans``) and the mean of the two middle values in
  R's ``median`` are taken in **x87 80-bit long double**; this module emulates that arithmetic
  exactly with error-free double transformations (``_ext_*`` helpers);
* confidence-interval ranks use R's ``round`` (half to even) and 1-based indices, including the
  ``slopes[c(0, hi)]`` recycling quirk (lbound = ubound) and R errors (all-NaN output here);
* the Zhang iteration keeps zyp's loop exits (the first break keeps the previous series; the second
  compares with the previous pass's ``c0``), and runs up to 500 passes. Exactly periodic orbits
  (bit-identical ``(trend, c0)`` state) are short-cut to the phase pass 500 would reach, which is
  bit-identical to running all passes.

* zyp 0.11-1's ``zyp.yuepilon`` re-estimates the Sen slope on the blended series and never divides
  the prewhitened residual by ``1 - ac``: its output matches only the undivided residual even with
  ``preserve.range.for.sig.test = TRUE``, so ``preserve_range`` has no effect on "yuepilon".

The time index is always ``t = 1..n`` (zyp's default ``x = 1:length(y)``), over the original
positions, missing values included.

Speed without changing a bit: the long-double means take an error-free double-double fast path
whenever it provably rounds like the x87 arithmetic (otherwise the x87 steps are emulated); the
slope median inside the Zhang loop starts from the previous trend's rank; Kendall uses a shortcut
for a strictly increasing time index. Tests compare all of this with a literal implementation.

All helpers are compiled with ``error_model="numpy"``: float division by zero gives ±Inf/NaN as in
R (zyp divides by a zero trend in its convergence test), never a ``ZeroDivisionError``.

Public API
----------
``zhang_gufunc``, ``yuepilon_gufunc``, ``none_gufunc``
    ``(y[n], preserve_range, z) -> 13 scalars`` in the order of :data:`FIELDS`.
:func:`zyp_trend`
    Convenience wrapper returning a :class:`ZypResult`.
``kendall``, ``mann_kendall``, ``sen_slope``, ``acf_lag1``, ``r_colmean``
    The building blocks as gufuncs (R semantics, NaN where R raises an error).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from abz_dask.kernels._numba import guvectorize, njit

__all__ = [
    "FIELDS",
    "GUFUNCS",
    "MAX_RUNS",
    "ZypResult",
    "acf_lag1",
    "apply_gufunc",
    "kendall",
    "mann_kendall",
    "none_gufunc",
    "normal_quantile",
    "r_colmean",
    "sen_slope",
    "yuepilon_gufunc",
    "zhang_gufunc",
    "zyp_trend",
]

#: Output fields of every trend gufunc, in order (zyp 0.11-1 names).
FIELDS: tuple[str, ...] = (
    "lbound",
    "trend",
    "trendp",
    "ubound",
    "tau",
    "sig",
    "nruns",
    "autocor",
    "valid_frac",
    "linear",
    "intercept",
    "lbound_intercept",
    "ubound_intercept",
)
N_FIELDS = len(FIELDS)

#: zyp.zhang's iteration limit (``while (k < 500)``).
MAX_RUNS = 500

Method = Literal["zhang", "yuepilon", "none"]

_NAN = np.nan
# Zhang iteration thresholds, exactly as in zyp (double literals).
_AC_THRESHOLD = 0.05
_AC_TOL = 0.0001
_TREND_TOL = 0.001
# Cycle detection for non-converging Zhang iterations.
_CYCLE_START = 8
_HASH_SIZE = 1024  # power of two > MAX_RUNS

# ----------------------------------------------------------------------------------------------
# float32 constants (Kendall 2.2.1 runs in REAL*4; every literal is a single-precision constant)
# ----------------------------------------------------------------------------------------------
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F5 = np.float32(5.0)
_F9 = np.float32(9.0)
_F18 = np.float32(18.0)
_FHALF = np.float32(0.5)
_F10 = np.float32(10.0)
_LTONE = np.float32(7.0)
_UTZERO = np.float32(18.66)
_CON = np.float32(1.28)
_A0 = np.float32(0.398942280385)
_A1 = np.float32(3.8052e-8)
_A2 = np.float32(1.00000615302)
_A3 = np.float32(3.98064794e-4)
_A4 = np.float32(1.98615381364)
_A5 = np.float32(0.151679116635)
_A6 = np.float32(5.29330324926)
_A7 = np.float32(4.8385912808)
_A8 = np.float32(15.1508972451)
_A9 = np.float32(0.742380924027)
_A10 = np.float32(30.789933034)
_A11 = np.float32(3.99019417011)
_B0 = np.float32(0.398942280444)
_B1 = np.float32(0.399903438504)
_B2 = np.float32(5.75885480458)
_B3 = np.float32(29.8213557808)
_B4 = np.float32(2.62433121679)
_B5 = np.float32(48.6959930692)
_B6 = np.float32(5.92885724438)


# ----------------------------------------------------------------------------------------------
# x87 80-bit long double emulation (64-bit significand, round to nearest even).
# An extended value V is held as an unevaluated pair (H, L) with H = fl64(V) and L = V - H.
# ----------------------------------------------------------------------------------------------
@njit(inline="always", error_model="numpy")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    """Knuth's error-free sum: ``a + b = s + e`` exactly, ``s = fl(a + b)``."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@njit(inline="always", error_model="numpy")
def _two_prod(a: float, b: float) -> tuple[float, float]:
    """Dekker's error-free product (no FMA): ``a * b = p + e`` exactly."""
    p = a * b
    c = 134217729.0 * a
    ah = c - (c - a)
    al = a - ah
    c = 134217729.0 * b
    bh = c - (c - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


@njit(error_model="numpy")
def _ext_round(x0: float, x1: float, x2: float, x3: float) -> tuple[float, float]:
    """Round the exact sum ``x0 + x1 + x2 + x3`` to a 64-bit significand (x87 ``long double``).

    Returns ``(H, L)`` with ``H = fl64(result)`` and ``L = result - H`` (exact).
    """
    # Distil into a non-overlapping expansion, largest first (error-free passes).
    for _ in range(10):
        x2, x3 = _two_sum(x2, x3)
        x1, x2 = _two_sum(x1, x2)
        x0, x1 = _two_sum(x0, x1)
        if x0 + x1 == x0 and x1 + x2 == x1 and x2 + x3 == x2:
            break
    if x0 == 0.0 or not math.isfinite(x0):
        return x0, 0.0
    if x1 == 0.0:
        return x0, 0.0
    # quantum of the 64-bit result: 2**(E - 63) with E = floor(log2 |V|)
    mant, ex = math.frexp(x0)
    q = math.ldexp(1.0, ex - 64)
    if abs(mant) == 0.5 and (x1 > 0.0) != (x0 > 0.0):
        q *= 0.5  # V lies just below a power of two
    r = x1 / q
    k = np.rint(r)
    f = r - k
    if f == 0.5 and x2 > 0.0:
        k += 1.0
    elif f == -0.5 and x2 < 0.0:
        k -= 1.0
    return _two_sum(x0, k * q)


@njit(inline="always", error_model="numpy")
def _ufp(p: float) -> float:
    """Unit in the first place, ``2**floor(log2 |p|)`` (Rump 2009; normal, finite ``p``)."""
    q = 4503599627370497.0 * p  # (2**52 + 1) * p
    return abs(q - 0.99999999999999989 * q)  # (1 - 2**-53) * q


@njit(inline="always", error_model="numpy")
def _ext_add(h: float, lo: float, d: float) -> tuple[float, float]:
    """``(h, lo) + d`` in long double (``(h, lo)`` a normalised 64-bit value)."""
    s, e = _two_sum(h, d)
    u, w = _two_sum(e, lo)
    t, r = _two_sum(s, u)
    # V = t + r + w with |r| <= ulp(t)/2; fast path when (t, r, w) is already normalised
    if w != 0.0 and r + w != r:
        return _ext_round(t, r, w, 0.0)
    if r == 0.0:
        if w == 0.0:
            return t, 0.0
        if t + w != t:
            return _ext_round(t, r, w, 0.0)
        r = w
        w = 0.0
    at = abs(t)
    if not (at > 2.0 ** -960 and at < 2.0 ** 960):
        return _ext_round(t, r, w, 0.0)
    f = _ufp(t)
    q = f * 1.0842021724855044e-19  # 2**-63: quantum of a 64-bit significand in [f, 2f)
    if at == f and (r > 0.0) != (t > 0.0):
        q *= 0.5  # V lies just below a power of two
    sigma = q * 6755399441055744.0  # 1.5 * 2**52 * q: adding it rounds r to a multiple of q
    kq = (r + sigma) - sigma
    rem = r - kq
    if w != 0.0 and abs(rem) == 0.5 * q and (rem > 0.0) == (w > 0.0):
        kq = kq + 2.0 * rem  # exact tie broken by the tail: away from kq
    return _two_sum(t, kq)


@njit(error_model="numpy")
def _ext_div(h: float, lo: float, n: float) -> tuple[float, float]:
    """``(h, lo) / n`` in long double, ``n`` a positive integer-valued double.

    A double-double quotient (error ~2**-104 relative) is rounded to 64 bits. The exact quotient of
    a 64-bit value by an integer is never exactly half-way between two 64-bit values, and it is at
    least ``ulp/(2n)`` away from one, so this rounding is always the correctly rounded one.
    """
    q1 = h / n
    p, pe = _two_prod(q1, n)
    r = ((h - p) - pe) + lo
    q2 = r / n
    return _ext_round(q1, q2, 0.0, 0.0)


@njit(error_model="numpy")
def _colmean_exact(v: npt.NDArray[np.float64], n: int) -> tuple[float, int]:
    """``_colmean_ld`` by step-by-step emulation of the x87 sum (slow, always exact)."""
    sh = 0.0
    sl = 0.0
    cnt = 0
    for i in range(n):
        x = v[i]
        if not math.isnan(x):
            cnt += 1
            sh, sl = _ext_add(sh, sl, x)
    if cnt == 0:
        return _NAN, 0
    mh, _ = _ext_div(sh, sl, float(cnt))
    return mh, cnt


@njit(inline="always", error_model="numpy")
def _rounds_safely(m: float, res: float, delta: float) -> bool:
    """True if every value within ``delta`` of ``m + res`` rounds to the double ``m``.

    ``m + res`` is a double-double (``|res| <= ulp(m)/2``); the test is that the distance to the
    nearest rounding midpoint around ``m`` exceeds ``delta``.
    """
    am = abs(m)
    if not (am > 2.0 ** -960 and am < 2.0 ** 960):
        return False
    f = _ufp(m)
    half_gap = f * 1.1102230246251565e-16  # ulp(m) / 2 = ufp(m) * 2**-53
    if am == f:
        half_gap *= 0.5  # the gap below a power of two is half as wide
    return half_gap - abs(res) > delta


@njit(error_model="numpy")
def _colmean_ld(v: npt.NDArray[np.float64], n: int) -> tuple[float, int]:
    """R ``colMeans(v, na.rm = TRUE)``: long-double sum of non-NaN values / count, to double.

    Fast path: the exact mean ``M`` (error-free double-double sum) is rounded to the double ``m``.
    R's x87 result ``A`` obeys ``|A - M| <= 2**-64 (sum_i |P_i| / cnt + |M|)`` (``P_i`` the
    partial sums, one half-ulp of a 64-bit significand per addition and one for the division),
    so if ``M`` lies farther than twice that bound from every rounding midpoint, ``A`` rounds to
    ``m`` too. Otherwise the x87 arithmetic is emulated step by step.
    """
    s = 0.0
    c = 0.0
    sabs = 0.0
    cnt = 0
    for i in range(n):
        x = v[i]
        if not math.isnan(x):
            cnt += 1
            s, e = _two_sum(s, x)
            c += e
            sabs += abs(s)
    if cnt == 0:
        return _NAN, 0
    fc = float(cnt)
    q1 = s / fc
    p, pe = _two_prod(q1, fc)
    q2 = (((s - p) - pe) + c) / fc
    m, res = _two_sum(q1, q2)
    delta = 1.0842021724855044e-19 * (sabs / fc + abs(m))  # 2**-63 (...)
    if _rounds_safely(m, res, delta):
        return m, cnt
    return _colmean_exact(v, n)


@njit(error_model="numpy")
def _r_mean2(a: float, b: float) -> float:
    """R ``mean(c(a, b))`` (long-double sum, divide, refinement pass, round to double)."""
    s, e = _two_sum(a, b)
    if e == 0.0:
        # a + b is exact: R's refinement adds exactly zero and the result is fl((a + b) / 2)
        return s * 0.5
    sh, sl = _ext_round(a, b, 0.0, 0.0)
    sh *= 0.5
    sl *= 0.5
    if not math.isfinite(sh):
        return sh
    th, tl = _ext_round(a, -sh, -sl, 0.0)
    uh, ul = _ext_round(b, -sh, -sl, 0.0)
    th, tl = _ext_round(th, tl, uh, ul)
    rh, _ = _ext_round(sh, sl, th * 0.5, tl * 0.5)
    return rh


@njit(error_model="numpy")
def _r_mean_exact(a: npt.NDArray[np.float64], m: int) -> float:
    """``_r_mean`` by step-by-step emulation of R's long-double arithmetic (slow, exact)."""
    sh = 0.0
    sl = 0.0
    for i in range(m):
        sh, sl = _ext_add(sh, sl, a[i])
    sh, sl = _ext_div(sh, sl, float(m))
    if not math.isfinite(sh):
        return sh
    th = 0.0
    tl = 0.0
    for i in range(m):
        dh, dl = _ext_round(a[i], -sh, -sl, 0.0)
        th, tl = _ext_round(th, tl, dh, dl)
    th, tl = _ext_div(th, tl, float(m))
    rh, _ = _ext_round(sh, sl, th, tl)
    return rh


@njit(error_model="numpy")
def _r_mean(a: npt.NDArray[np.float64], m: int) -> float:
    """R ``mean(a[:m])`` for finite values: long-double sum, divide, refinement pass.

    Fast path as in :func:`_colmean_ld`: R's result differs from the exact mean ``M`` by at most
    ``2**-64 (sum |x_i - s| + sum |T_i|) / m`` from the refinement pass (``T_i`` its partial sums)
    plus ``2**-64 |M|`` per rounding of the quotient and the final sum; if ``M`` is farther than
    twice that from every rounding midpoint the result is the correctly rounded ``M``.
    """
    s = 0.0
    c = 0.0
    for i in range(m):
        s, e = _two_sum(s, a[i])
        c += e
    fm = float(m)
    q1 = s / fm
    p, pe = _two_prod(q1, fm)
    q2 = (((s - p) - pe) + c) / fm
    mu, res = _two_sum(q1, q2)
    dev = 0.0
    tpart = 0.0
    tabs = 0.0
    for i in range(m):
        d = a[i] - mu
        dev += abs(d)
        tpart += d
        tabs += abs(tpart)
    delta = 1.0842021724855044e-19 * ((dev + tabs) / fm + 2.0 * abs(mu))
    if _rounds_safely(mu, res, delta):
        return mu
    return _r_mean_exact(a, m)


@njit(error_model="numpy")
def _r_sd(a: npt.NDArray[np.float64], m: int, xm: float) -> float:
    """R ``sqrt(var(a[:m]))`` given R's mean ``xm`` (compensated sum of squared deviations)."""
    if m < 2:
        return _NAN
    sh = 0.0
    sl = 0.0
    for i in range(m):
        d = a[i] - xm
        p, pe = _two_prod(d, d)
        s, e = _two_sum(sh, p)
        sh = s
        sl += e + pe
    return math.sqrt((sh + sl) / (m - 1))


# ----------------------------------------------------------------------------------------------
# R building blocks (double precision)
# ----------------------------------------------------------------------------------------------
@njit(error_model="numpy")
def _acf1(v: npt.NDArray[np.float64], n: int) -> float:
    """R ``acf(v, lag.max = 1, na.action = na.pass)$acf[2]`` (NaN where R gives NA/NaN)."""
    if n < 2:
        return _NAN
    m, cnt = _colmean_ld(v, n)
    if cnt == 0:
        return _NAN
    g0 = 0.0
    nu0 = 0
    for i in range(n):
        d = v[i] - m
        if not math.isnan(d):
            g0 += d * d
            nu0 += 1
    g1 = 0.0
    nu1 = 0
    for i in range(n - 1):
        a = v[i + 1] - m
        b = v[i] - m
        if not math.isnan(a) and not math.isnan(b):
            g1 += a * b
            nu1 += 1
    if nu0 == 0 or nu1 == 0:
        return _NAN
    g0 = g0 / nu0
    g1 = g1 / (nu1 + 1)
    se = math.sqrt(g0)
    r = g1 / (se * se)
    if r > 1.0:
        return 1.0
    if r < -1.0:
        return -1.0
    return r


@njit(error_model="numpy")
def _select(a: npt.NDArray[np.float64], lo: int, hi: int, k: int) -> None:
    """Partial sort of ``a[lo:hi+1]`` in place so that ``a[k]`` is its k-th smallest value.

    Afterwards ``a[lo:k] <= a[k] <= a[k+1:hi+1]`` (Numerical Recipes ``select``). No NaN allowed.
    """
    left = lo
    ir = hi
    while True:
        if ir <= left + 1:
            if ir == left + 1 and a[ir] < a[left]:
                a[left], a[ir] = a[ir], a[left]
            return
        mid = (left + ir) >> 1
        a[mid], a[left + 1] = a[left + 1], a[mid]
        if a[left] > a[ir]:
            a[left], a[ir] = a[ir], a[left]
        if a[left + 1] > a[ir]:
            a[left + 1], a[ir] = a[ir], a[left + 1]
        if a[left] > a[left + 1]:
            a[left], a[left + 1] = a[left + 1], a[left]
        i = left + 1
        j = ir
        piv = a[left + 1]
        while True:
            i += 1
            while a[i] < piv:
                i += 1
            j -= 1
            while a[j] > piv:
                j -= 1
            if j < i:
                break
            a[i], a[j] = a[j], a[i]
        a[left + 1] = a[j]
        a[j] = piv
        if j >= k:
            ir = j - 1
        if j <= k:
            left = i


@njit(error_model="numpy")
def _sort_inplace(a: npt.NDArray[np.float64], m: int) -> None:
    """Ascending shell sort of ``a[:m]`` (no NaN); small to compile, unlike ``ndarray.sort``."""
    gap = 1
    while gap < m // 3:
        gap = 3 * gap + 1
    while gap >= 1:
        for i in range(gap, m):
            v = a[i]
            j = i
            while j >= gap and a[j - gap] > v:
                a[j] = a[j - gap]
                j -= gap
            a[j] = v
        gap //= 3


@njit(error_model="numpy")
def _median_inplace(a: npt.NDArray[np.float64], m: int) -> float:
    """R ``median(a[:m])`` (no NaN): the middle value or R's mean of the two middle values."""
    if m == 0:
        return _NAN
    k = m // 2
    _select(a, 0, m - 1, k)
    hi = a[k]
    if m % 2 == 1:
        return hi
    lo = a[0]
    for i in range(1, k):
        if a[i] > lo:
            lo = a[i]
    return _r_mean2(lo, hi)


@njit(inline="always", error_model="numpy")
def _fill_slopes(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], m: int,
                 buf: npt.NDArray[np.float64]) -> int:
    """All pairwise slopes ``(y_i - y_j) / (x_i - x_j)``, ``i < j``, into ``buf``; returns count.

    Written row by row on slices so that LLVM vectorises the (IEEE-exact) divisions.
    """
    p = 0
    for i in range(m - 1):
        cnt = m - i - 1
        dst = buf[p:p + cnt]
        yr = ys[i + 1:m]
        xr = xs[i + 1:m]
        yi = ys[i]
        xi = xs[i]
        for j in range(cnt):
            dst[j] = (yi - yr[j]) / (xi - xr[j])
        p += cnt
    return p


@njit(error_model="numpy")
def _sen_median(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], m: int,
                buf: npt.NDArray[np.float64]) -> float:
    """zyp.sen slope: median of the finite pairwise slopes ``(y_i - y_j) / (x_i - x_j)``."""
    p = _fill_slopes(xs, ys, m, buf)
    nf = 0
    for i in range(p):
        if math.isfinite(buf[i]):
            buf[nf] = buf[i]
            nf += 1
    return _median_inplace(buf, nf)


@njit(error_model="numpy")
def _median_near(a: npt.NDArray[np.float64], nb: int, guess: float) -> float:
    """R ``median(a[:nb])`` (finite values), using ``guess`` to find the middle rank(s) quickly.

    One branch-free pass counts the values below ``guess`` and keeps the two largest values below
    and the two smallest values at or above it (a min/max insertion network, duplicates kept).
    That resolves the median whenever its rank is within two of ``guess``'s, which is the common
    case inside the Zhang iteration; otherwise quickselect. Same result either way.
    """
    if nb == 0:
        return _NAN
    below = 0
    lo1 = -np.inf  # largest value < guess
    lo2 = -np.inf  # second largest
    hi1 = np.inf  # smallest value >= guess
    hi2 = np.inf  # second smallest
    for i in range(nb):
        v = a[i]
        is_lo = v < guess
        below += is_lo
        b = v if is_lo else -np.inf
        c = np.inf if is_lo else v
        lo2 = max(lo2, min(lo1, b))
        lo1 = max(lo1, b)
        hi2 = min(hi2, max(hi1, c))
        hi1 = min(hi1, c)
    k = nb // 2
    r_lo = k - 1 if nb % 2 == 0 else k  # ranks needed: r_lo..k (0-based)
    if r_lo < below - 2 or k > below + 1:
        return _median_inplace(a, nb)
    # values at ranks below-2, below-1, below, below+1
    v_k = lo2 if k == below - 2 else (lo1 if k == below - 1 else (hi1 if k == below else hi2))
    if nb % 2 == 1:
        return v_k
    v_lo = (lo2 if r_lo == below - 2 else
            (lo1 if r_lo == below - 1 else (hi1 if r_lo == below else hi2)))
    return _r_mean2(v_lo, v_k)


@njit(error_model="numpy")
def _sen_median_near(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], m: int,
                     buf: npt.NDArray[np.float64], guess: float) -> float:
    """:func:`_sen_median` for a slope median expected close to ``guess`` (same result)."""
    p = _fill_slopes(xs, ys, m, buf)
    finite = True
    for i in range(p):
        if not math.isfinite(buf[i]):
            finite = False
            break
    if not finite:
        nf = 0
        for i in range(p):
            if math.isfinite(buf[i]):
                buf[nf] = buf[i]
                nf += 1
        return _median_inplace(buf, nf)
    if not math.isfinite(guess):
        return _median_inplace(buf, p)
    return _median_near(buf, p, guess)


@njit(error_model="numpy")
def _ols_slope(data: npt.NDArray[np.float64], n: int) -> float:
    """Slope of ``lm(data ~ t)`` with ``t = 1..n`` and rows with NaN dropped."""
    cnt = 0
    st = 0.0
    sy = 0.0
    for i in range(n):
        if not math.isnan(data[i]):
            cnt += 1
            st += i + 1.0
            sy += data[i]
    if cnt < 2:
        return _NAN
    mt = st / cnt
    my = sy / cnt
    sxx = 0.0
    sxy = 0.0
    for i in range(n):
        if not math.isnan(data[i]):
            dt = (i + 1.0) - mt
            sxx += dt * dt
            sxy += dt * (data[i] - my)
    if sxx == 0.0:
        return _NAN
    return sxy / sxx


# ----------------------------------------------------------------------------------------------
# Kendall 2.2.1 (Fortran TAUK2 / ALNORM) in single precision
# ----------------------------------------------------------------------------------------------
@njit(error_model="numpy")
def _alnorm_lower(x: np.float32) -> np.float32:
    """AS 66 ``ALNORM(X, .FALSE.)`` (lower tail of the standard normal), REAL*4 arithmetic."""
    alnorm = _F1
    if x > _F0:
        alnorm = _F0
    if abs(x) < _F10:
        up = False
        z = x
        if z < _F0:
            up = True
            z = -z
        if z <= _LTONE or (up and z <= _UTZERO):
            y = _FHALF * z * z
            if z > _CON:
                den = z + _A11
                den = (z + _A9) + _A10 / den
                den = (z + _A7) - _A8 / den
                den = (z - _A5) + _A6 / den
                den = (z + _A3) + _A4 / den
                den = (z - _A1) + _A2 / den
                alnorm = _A0 * np.exp(-y) / den
            else:
                den = y + _B6
                den = (y + _B4) + _B5 / den
                den = (y + _B2) - _B3 / den
                alnorm = _FHALF - z * (_B0 - _B1 * y / den)
        else:
            alnorm = _F0
        if not up:
            alnorm = _F1 - alnorm
        return alnorm
    return _F1 - alnorm


@njit(inline="always", error_model="numpy")
def _scorek(x1: np.float32, y1: np.float32, x2: np.float32, y2: np.float32) -> int:
    if (x1 > x2 and y1 < y2) or (x1 < x2 and y1 > y2):
        return -1
    if x1 == x2 or y1 == y2:
        return 0
    return 1


@njit(error_model="numpy")
def _tie_sums(x: npt.NDArray[np.float32], nn: int) -> tuple[np.float32, np.float32, np.float32]:
    """Σt(t-1), Σt(t-1)(2t+5), Σt(t-1)(t-2) over tie groups (float32; a group counts once)."""
    s1 = _F0
    s2 = _F0
    s3 = _F0
    for i in range(nn - 1):
        first = True
        for k in range(i):
            if x[k] == x[i]:
                first = False
                break
        tmp = _F1
        if first:
            for j in range(i + 1, nn):
                if x[i] == x[j]:
                    tmp = tmp + _F1
        s1 = s1 + tmp * (tmp - _F1)
        s2 = s2 + tmp * (tmp - _F1) * (_F2 * tmp + _F5)
        s3 = s3 + tmp * (tmp - _F1) * (tmp - _F2)
    return s1, s2, s3


@njit(error_model="numpy")
def _tauk2_tail(nn: int, s: np.float32, sumt: np.float32, suma1: np.float32, suma2: np.float32,
                sumu: np.float32, sumb1: np.float32,
                sumb2: np.float32) -> tuple[float, float, float, float, float, int]:
    """TAUK2 after the score and the tie sums (REAL*4, in the Fortran's order of operations)."""
    tau = _F1
    sltau = _F1
    vars_ = _F0
    denom = _F0
    cn = np.float32(nn) * np.float32(nn - 1)
    dn = _FHALF * cn
    d1 = np.sqrt(dn - _FHALF * sumt)
    d2 = np.sqrt(dn - _FHALF * sumu)
    if d1 <= _F0 or d2 <= _F0:
        return float(tau), float(sltau), float(s), float(vars_), float(denom), 30
    denom = d1 * d2
    tau = s / denom
    vars1 = (cn * np.float32(2 * nn + 5) - suma1 - sumb1) / _F18
    vars2 = suma2 * sumb2 / (_F9 * cn * np.float32(nn - 2))
    vars3 = sumt * sumu / (cn + cn)
    vars_ = vars1 + vars2 + vars3
    sds = np.sqrt(vars_)
    if nn > 3:
        scor = _F0
        if s > _F0:
            scor = s - _F1
        if s < _F0:
            scor = s + _F1
        zscore = scor / sds
        prob = _alnorm_lower(zscore)
        sltau = _F2 * prob
        if prob >= _FHALF:
            sltau = _F2 * (_F1 - prob)
        return float(tau), float(sltau), float(s), float(vars_), float(denom), 0
    return float(tau), float(sltau), float(s), float(vars_), float(denom), 12


@njit(error_model="numpy")
def _tauk2(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
           nn: int) -> tuple[float, float, float, float, float, int]:
    """Fortran ``TAUK2`` on float32 data: ``(tau, sl, S, varS, D, ifault)`` (float32 values)."""
    if nn < 2:
        return 1.0, 1.0, 0.0, 0.0, 0.0, 10
    swx = True
    swy = True
    for i in range(1, nn):
        if x[i] != x[i - 1]:
            swx = False
        if y[i] != y[i - 1]:
            swy = False
    if swx or swy:
        return 1.0, 1.0, 0.0, 0.0, 0.0, 12
    is_ = 0
    for i in range(nn - 1):
        xi = x[i]
        yi = y[i]
        for j in range(i + 1, nn):
            is_ += _scorek(xi, yi, x[j], y[j])
    sumt, suma1, suma2 = _tie_sums(x, nn)
    sumu, sumb1, sumb2 = _tie_sums(y, nn)
    return _tauk2_tail(nn, np.float32(is_), sumt, suma1, suma2, sumu, sumb1, sumb2)


@njit(error_model="numpy")
def _tauk2_increasing(y: npt.NDArray[np.float32],
                      nn: int) -> tuple[float, float, float, float, float, int]:
    """``TAUK2`` when x is strictly increasing (a time index): same result, less work."""
    if nn < 2:
        return 1.0, 1.0, 0.0, 0.0, 0.0, 10
    swy = True
    for i in range(1, nn):
        if y[i] != y[i - 1]:
            swy = False
            break
    if swy:
        return 1.0, 1.0, 0.0, 0.0, 0.0, 12
    is_ = 0
    ties = 0
    for i in range(nn - 1):
        yi = y[i]
        for j in range(i + 1, nn):
            yj = y[j]
            is_ += int(yj > yi) - int(yj < yi)
            ties += int(yj == yi)
    if ties > 0:
        sumu, sumb1, sumb2 = _tie_sums(y, nn)
    else:
        sumu = _F0
        sumb1 = _F0
        sumb2 = _F0
    return _tauk2_tail(nn, np.float32(is_), _F0, _F0, _F0, sumu, sumb1, sumb2)


@njit(error_model="numpy")
def _kendall_f64(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
                 m: int) -> tuple[float, float, float, float, float, int]:
    """``Kendall::Kendall(xs[:m], ys[:m])`` on complete data (inputs rounded to float32)."""
    y32 = np.empty(m, np.float32)
    increasing = True
    prev = np.float32(-np.inf)
    for i in range(m):
        y32[i] = np.float32(ys[i])
        xi = np.float32(xs[i])
        if not xi > prev:
            increasing = False
        prev = xi
    if increasing:
        return _tauk2_increasing(y32, m)
    x32 = np.empty(m, np.float32)
    for i in range(m):
        x32[i] = np.float32(xs[i])
    return _tauk2(x32, y32, m)


# ----------------------------------------------------------------------------------------------
# zyp.sen + confint.zyp + Kendall on a final (compacted) series
# ----------------------------------------------------------------------------------------------
@njit(error_model="numpy")
def _order_stat(a: npt.NDArray[np.float64], nb: int, r: int, p1: int, p2: int) -> float:
    """``sort(a[:nb])[r]`` (0-based) when ``a`` is already partitioned around ``p1`` and ``p2``.

    ``p1``/``p2`` are indices at which a selection left ``a`` partitioned (``a[:p] <= a[p] <=
    a[p+1:]``), or -1; only the block between the nearest partition points is searched.
    """
    lo = 0
    hi = nb - 1
    for p in (p1, p2):
        if p < 0:
            continue
        if p == r:
            return a[r]
        if p < r and p + 1 > lo:
            lo = p + 1
        if p > r and p - 1 < hi:
            hi = p - 1
    _select(a, lo, hi, r)
    return a[r]


@njit(error_model="numpy")
def _finish(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], m: int, z: float,
            sbuf: npt.NDArray[np.float64],
            ibuf: npt.NDArray[np.float64]) -> tuple[float, float, float, float, float, float,
                                                    float, float, bool]:
    """Sen slope, intercept, CI, intercept bounds and Kendall tau/sl of the final series.

    Returns ``(lbound, trend, ubound, tau, sig, intercept, lb_int, ub_int, ok)``; ``ok`` is False
    where R raises an error (Kendall with fewer than 3 values, a negative CI index, or an empty
    replacement in ``confint.zyp``).
    """
    nan = _NAN
    if m < 3:
        return nan, nan, nan, nan, nan, nan, nan, nan, False
    # all pairwise slopes; NaN dropped (sort), non-finite dropped for the median
    ns = _fill_slopes(xs, ys, m, sbuf)
    all_finite = True
    for i in range(ns):
        if not math.isfinite(sbuf[i]):
            all_finite = False
            break
    pk = -1  # sbuf is partitioned around index pk (-1: not partitioned)
    if all_finite:
        slope = _median_inplace(sbuf, ns)
        pk = ns // 2
    else:
        fbuf = np.empty(ns)
        nf = 0
        nn_ = 0
        for i in range(ns):
            v = sbuf[i]
            if math.isfinite(v):
                fbuf[nf] = v
                nf += 1
            if not math.isnan(v):
                sbuf[nn_] = v
                nn_ += 1
        ns = nn_
        slope = _median_inplace(fbuf, nf)
    # intercepts y - slope * x: their median (NA if any is NA), and mean -/+ z * sd of
    # sort(intercepts), which drops NA
    mi = 0
    for i in range(m):
        v = ys[i] - slope * xs[i]
        if not math.isnan(v):
            ibuf[mi] = v
            mi += 1
    lb_int = nan
    ub_int = nan
    intercept = nan
    if mi > 0:
        _sort_inplace(ibuf, mi)
        if mi == m:
            h = m // 2
            intercept = ibuf[h] if m % 2 == 1 else _r_mean2(ibuf[h - 1], ibuf[h])
        imean = _r_mean(ibuf, mi)
        isd = _r_sd(ibuf, mi, imean)
        lb_int = imean + (-isd * z)
        ub_int = imean + isd * z
    # Kendall on the same series (float32)
    tau, sl, _s, vars_, _d, _ier = _kendall_f64(xs, ys, m)
    # confint.zyp: ranks round((N -/+ C) / 2), 1-based, R round = half to even
    c_alpha = math.sqrt(vars_) * z
    lo_f = np.rint((ns - c_alpha) / 2.0)
    hi_f = np.rint((ns + c_alpha) / 2.0)
    lbound = nan
    ubound = nan
    ok = True
    if math.isnan(lo_f) or math.isnan(hi_f):
        pass  # slopes[NA] -> NA
    elif lo_f < 0.0:
        ok = False  # R: negative subscripts mixed with positive ones / wrong replacement length
    elif lo_f == 0.0 and hi_f == 0.0:
        ok = False  # replacement has length zero
    else:
        lo = int(lo_f)
        hi = int(hi_f)
        if hi >= 1 and hi <= ns:
            ubound = _order_stat(sbuf, ns, hi - 1, pk, -1)
            # lo = 0: slopes[c(0, hi)] has length 1 and is recycled (lbound = ubound)
            lbound = ubound if lo == 0 else _order_stat(sbuf, ns, lo - 1, pk, hi - 1)
        elif lo >= 1 and lo <= ns:
            # hi out of range gives NA; lo still valid
            lbound = _order_stat(sbuf, ns, lo - 1, pk, -1)
    if not ok:
        return nan, nan, nan, nan, nan, nan, nan, nan, False
    return lbound, slope, ubound, tau, sl, intercept, lb_int, ub_int, True


@njit(error_model="numpy")
def _compact_raw(data: npt.NDArray[np.float64], n: int, ybuf: npt.NDArray[np.float64],
                 tbuf: npt.NDArray[np.float64]) -> int:
    m = 0
    for i in range(n):
        v = data[i]
        if not math.isnan(v):
            ybuf[m] = v
            tbuf[m] = i + 1.0
            m += 1
    return m


@njit(error_model="numpy")
def _prewhiten(data: npt.NDArray[np.float64], n: int, c: float, divide: bool,
               ybuf: npt.NDArray[np.float64], tbuf: npt.NDArray[np.float64]) -> int:
    """``(data[i+1] - c * data[i]) [/ (1 - c)]`` paired with time ``t_i``, NaN dropped."""
    m = 0
    omc = 1.0 - c
    for i in range(n - 1):
        v = data[i + 1] - c * data[i]
        if divide:
            v = v / omc
        if not math.isnan(v):
            ybuf[m] = v
            tbuf[m] = i + 1.0
            m += 1
    return m


@njit(error_model="numpy")
def _give_up(ybuf: npt.NDArray[np.float64], m: int, n: int) -> bool:
    """zyp's "throw out crappy data" rule: ≤ 3 values, < 3 non-zero, or < 10 % valid."""
    nz = 0
    for i in range(m):
        if ybuf[i] != 0.0:
            nz += 1
    return n == 0 or m <= 3 or nz < 3 or m / n < 0.1


@njit(error_model="numpy")
def _nan_result() -> tuple[float, float, float, float, float, float, float, float, float, float,
                           float, float, float]:
    nan = _NAN
    return nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan


@njit(error_model="numpy")
def _state_hash(c: float, mask: int) -> int:
    v = np.int64((c + 2.0) * 1125899906842624.0)  # 2**50, c in [-1, 1]
    v = v ^ (v >> 21)
    v = v ^ (v >> 37)
    return int(v & mask)


@njit(error_model="numpy")
def _zhang_core(data: npt.NDArray[np.float64], preserve: bool, z: float) -> Any:
    """``zyp.zhang(data, preserve.range.for.sig.test = preserve)`` -> 13 fields (see FIELDS)."""
    n = data.shape[0]
    c = _acf1(data, n)
    if math.isnan(c):
        return _nan_result()
    npairs = max(n * (n - 1) // 2, 1)
    ybuf = np.empty(n)
    tbuf = np.empty(n)
    sbuf = np.empty(npairs)
    if c < _AC_THRESHOLD:
        mode = 0
        m = _compact_raw(data, n, ybuf, tbuf)
    else:
        mode = 2 if preserve else 1
        m = _prewhiten(data, n, c, preserve, ybuf, tbuf)
    if _give_up(ybuf, m, n):
        return _nan_result()
    trend = _sen_median(tbuf, ybuf, m, sbuf)
    k = 1
    c0 = c
    fin_c = c
    if c >= _AC_THRESHOLD:
        xbuf = np.empty(n)
        trend0 = trend
        hist_t = np.empty(0)
        hist_c = np.empty(0)
        table = np.empty(0, np.int32)
        mask = _HASH_SIZE - 1
        while k < MAX_RUNS:
            for i in range(n):
                xbuf[i] = data[i] - trend * (i + 1.0)
            c = _acf1(xbuf, n)
            if math.isnan(c):
                return _nan_result()  # R: "missing value where TRUE/FALSE needed"
            if c < _AC_THRESHOLD and abs(c - c0) <= _AC_TOL:
                break
            m = _prewhiten(data, n, c, True, ybuf, tbuf)
            trend = _sen_median_near(tbuf, ybuf, m, sbuf, trend)
            fin_c = c
            mode = 2
            k += 1
            tpdiff = abs((trend - trend0) / trend)
            if not math.isnan(tpdiff) and tpdiff <= _TREND_TOL and abs(c - c0) <= _AC_TOL:
                break
            trend0 = trend
            c0 = c
            # exact cycle detection on the state (trend, c0); never on the k = 1 state
            if k >= _CYCLE_START:
                if table.shape[0] == 0:
                    hist_t = np.empty(MAX_RUNS + 1)
                    hist_c = np.empty(MAX_RUNS + 1)
                    table = np.full(_HASH_SIZE, -1, np.int32)
                b = _state_hash(c0, mask)
                found = -1
                while table[b] >= 0:
                    j = table[b]
                    if hist_c[j] == c0 and hist_t[j] == trend:
                        found = j
                        break
                    b = (b + 1) & mask
                if found >= 0:
                    period = k - found
                    kf = found + (MAX_RUNS - found) % period
                    trend = hist_t[kf]
                    c0 = hist_c[kf]
                    fin_c = c0
                    k = MAX_RUNS
                    break
                table[b] = k
                hist_t[k] = trend
                hist_c[k] = c0
    # rebuild the final series
    if mode == 0:
        m = _compact_raw(data, n, ybuf, tbuf)
        length = n
    else:
        m = _prewhiten(data, n, fin_c, mode == 2, ybuf, tbuf)
        length = n - 1
    ibuf = np.empty(n)
    lb, tr, ub, tau, sl, icpt, lbi, ubi, ok = _finish(tbuf, ybuf, m, z, sbuf, ibuf)
    if not ok:
        return _nan_result()
    return (lb, tr, tr * n, ub, tau, sl, float(k), c0, m / length, _ols_slope(data, n), icpt,
            lbi, ubi)


@njit(error_model="numpy")
def _yuepilon_core(data: npt.NDArray[np.float64], preserve: bool, z: float) -> Any:
    """``zyp.yuepilon(data)`` (zyp 0.11-1) -> 13 fields; ``preserve`` has no effect."""
    n = data.shape[0]
    npairs = max(n * (n - 1) // 2, 1)
    ybuf = np.empty(n)
    tbuf = np.empty(n)
    sbuf = np.empty(npairs)
    m = _compact_raw(data, n, ybuf, tbuf)
    if _give_up(ybuf, m, n):
        return _nan_result()
    trend = _sen_median(tbuf, ybuf, m, sbuf)
    xbuf = np.empty(n)
    for i in range(n):
        xbuf[i] = data[i] - trend * (i + 1.0)
    ac = _acf1(xbuf, n)
    if math.isnan(ac):
        return _nan_result()
    # zyp 0.11-1 does not rescale by 1/(1 - ac) here, whatever preserve.range.for.sig.test says
    # (the reference output matches only the undivided residual; the trend is added back anyway)
    m2 = 0
    for i in range(n - 1):
        v = (xbuf[i + 1] - ac * xbuf[i]) + trend * (i + 1.0)
        if not math.isnan(v):
            ybuf[m2] = v
            tbuf[m2] = i + 1.0
            m2 += 1
    ibuf = np.empty(n)
    lb, tr, ub, tau, sl, icpt, lbi, ubi, ok = _finish(tbuf, ybuf, m2, z, sbuf, ibuf)
    if not ok:
        return _nan_result()
    return (lb, tr, tr * n, ub, tau, sl, 1.0, ac, m / n, _ols_slope(data, n), icpt, lbi, ubi)


@njit(error_model="numpy")
def _none_core(data: npt.NDArray[np.float64], preserve: bool, z: float) -> Any:
    """Plain Theil–Sen + Mann–Kendall on the raw series (no prewhitening) -> 13 fields."""
    n = data.shape[0]
    npairs = max(n * (n - 1) // 2, 1)
    ybuf = np.empty(n)
    tbuf = np.empty(n)
    sbuf = np.empty(npairs)
    m = _compact_raw(data, n, ybuf, tbuf)
    if _give_up(ybuf, m, n):
        return _nan_result()
    ibuf = np.empty(n)
    lb, tr, ub, tau, sl, icpt, lbi, ubi, ok = _finish(tbuf, ybuf, m, z, sbuf, ibuf)
    if not ok:
        return _nan_result()
    return (lb, tr, tr * n, ub, tau, sl, 1.0, _acf1(data, n), m / n, _ols_slope(data, n), icpt,
            lbi, ubi)


# ----------------------------------------------------------------------------------------------
# gufuncs
# ----------------------------------------------------------------------------------------------
_LAYOUT = "(n),(),()->" + ",".join(["()"] * N_FIELDS)
_OUTS = ", ".join(["float64[:]"] * N_FIELDS)
_SIGS = [f"void({dt}[:], boolean, float64, {_OUTS})" for dt in ("float64", "float32")]


def _gufunc(signatures: list[str], layout: str) -> Callable[[Callable[..., Any]], Any]:
    """:func:`abz_dask.kernels._numba.guvectorize`, typed as producing a NumPy gufunc (``Any``).

    (``guvectorize`` is typed ``F -> F``, which would give the gufuncs the kernel's signature,
    output arguments included.)
    """
    return guvectorize(signatures, layout)


@njit(error_model="numpy")
def _to_f64(y: Any) -> npt.NDArray[np.float64]:
    n = y.shape[0]
    data = np.empty(n)
    for i in range(n):
        data[i] = y[i]
    return data


@_gufunc(_SIGS, _LAYOUT)
def zhang_gufunc(y, preserve, z, o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11,
                 o12):
    """zyp.zhang over the last axis: ``(y, preserve_range, z) -> 13 fields`` (see FIELDS)."""
    r = _zhang_core(_to_f64(y), preserve, z)
    o0[0] = r[0]
    o1[0] = r[1]
    o2[0] = r[2]
    o3[0] = r[3]
    o4[0] = r[4]
    o5[0] = r[5]
    o6[0] = r[6]
    o7[0] = r[7]
    o8[0] = r[8]
    o9[0] = r[9]
    o10[0] = r[10]
    o11[0] = r[11]
    o12[0] = r[12]


@_gufunc(_SIGS, _LAYOUT)
def yuepilon_gufunc(y, preserve, z, o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11,
                    o12):
    """zyp.yuepilon (0.11-1) over the last axis: ``(y, preserve_range, z) -> 13 fields``.

    ``preserve_range`` has no effect (zyp 0.11-1 never rescales the Yue-Pilon residual).
    """
    r = _yuepilon_core(_to_f64(y), preserve, z)
    o0[0] = r[0]
    o1[0] = r[1]
    o2[0] = r[2]
    o3[0] = r[3]
    o4[0] = r[4]
    o5[0] = r[5]
    o6[0] = r[6]
    o7[0] = r[7]
    o8[0] = r[8]
    o9[0] = r[9]
    o10[0] = r[10]
    o11[0] = r[11]
    o12[0] = r[12]


@_gufunc(_SIGS, _LAYOUT)
def none_gufunc(y, preserve, z, o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11,
                o12):
    """Theil–Sen + Mann–Kendall without prewhitening: ``(y, preserve_range, z) -> 13 fields``.

    ``preserve_range`` is ignored.
    """
    r = _none_core(_to_f64(y), preserve, z)
    o0[0] = r[0]
    o1[0] = r[1]
    o2[0] = r[2]
    o3[0] = r[3]
    o4[0] = r[4]
    o5[0] = r[5]
    o6[0] = r[6]
    o7[0] = r[7]
    o8[0] = r[8]
    o9[0] = r[9]
    o10[0] = r[10]
    o11[0] = r[11]
    o12[0] = r[12]


#: Trend gufunc per method name.
GUFUNCS: dict[str, Any] = {"zhang": zhang_gufunc, "yuepilon": yuepilon_gufunc,
                           "none": none_gufunc}

_K_SIGS_1 = [f"void({dt}[:], {', '.join(['float64[:]'] * 5)})" for dt in ("float64", "float32")]
_K_SIGS_2 = [f"void({dt}[:], {dt}[:], {', '.join(['float64[:]'] * 5)})"
             for dt in ("float64", "float32")]


@njit(error_model="numpy")
def _kendall_r(x: Any, y: Any, tau: Any, sl: Any, s: Any, d: Any, vs: Any) -> None:
    n = x.shape[0]
    if n < 3:  # R: stop("length(x)<3"), checked before NA removal
        tau[0] = _NAN
        sl[0] = _NAN
        s[0] = _NAN
        d[0] = _NAN
        vs[0] = _NAN
        return
    xs = np.empty(n)
    ys = np.empty(n)
    m = 0
    for i in range(n):
        if not (math.isnan(x[i]) or math.isnan(y[i])):
            xs[m] = x[i]
            ys[m] = y[i]
            m += 1
    t_, l_, s_, v_, d_, _ier = _kendall_f64(xs, ys, m)
    tau[0] = t_
    sl[0] = l_
    s[0] = s_
    d[0] = d_
    vs[0] = v_


@_gufunc(_K_SIGS_2, "(n),(n)->(),(),(),(),()")
def kendall(x, y, tau, sl, s, d, var_s):
    """``Kendall::Kendall(x, y)`` over the last axis -> ``(tau, sl, S, D, varS)``.

    float32 arithmetic as in the Fortran; pairs with a NaN are dropped; NaN output where R raises
    an error (length < 3, checked before dropping NaN). Constant input gives tau = sl = 1
    (IFAULT 12), fewer than 2 complete pairs tau = sl = 1 (IFAULT 10), like R.
    """
    _kendall_r(x, y, tau, sl, s, d, var_s)


@_gufunc(_K_SIGS_1, "(n)->(),(),(),(),()")
def mann_kendall(y, tau, sl, s, d, var_s):
    """``Kendall::MannKendall(y)`` = ``Kendall(1:n, y)`` over the last axis -> 5 values."""
    n = y.shape[0]
    t = np.empty(n)
    for i in range(n):
        t[i] = i + 1.0
    _kendall_r(t, y, tau, sl, s, d, var_s)


@_gufunc([f"void({dt}[:], float64[:], float64[:])" for dt in ("float64", "float32")],
             "(n)->(),()")
def sen_slope(y, slope, intercept):
    """``zyp.sen(y ~ t)`` on the non-missing values (t = original positions 1..n).

    Returns ``(slope, intercept)``; NaN where fewer than 2 values are present.
    """
    data = _to_f64(y)
    n = data.shape[0]
    ybuf = np.empty(n)
    tbuf = np.empty(n)
    m = _compact_raw(data, n, ybuf, tbuf)
    if m < 2:
        slope[0] = _NAN
        intercept[0] = _NAN
        return
    sbuf = np.empty(max(m * (m - 1) // 2, m))
    b = _sen_median(tbuf, ybuf, m, sbuf)
    anynan = False
    for i in range(m):
        v = ybuf[i] - b * tbuf[i]
        sbuf[i] = v
        if math.isnan(v):
            anynan = True
    slope[0] = b
    intercept[0] = _NAN if anynan else _median_inplace(sbuf, m)


@_gufunc([f"void({dt}[:], float64[:])" for dt in ("float64", "float32")], "(n)->()")
def acf_lag1(y, out):
    """R ``acf(y, lag.max = 1, na.action = na.pass)$acf[2]`` over the last axis (NaN for NA)."""
    out[0] = _acf1(_to_f64(y), y.shape[0])


@_gufunc([f"void({dt}[:], float64[:])" for dt in ("float64", "float32")], "(n)->()")
def r_colmean(y, out):
    """R ``colMeans(y, na.rm = TRUE)``: x87 long-double sum and division, rounded to double."""
    m, _ = _colmean_ld(_to_f64(y), y.shape[0])
    out[0] = m


# ----------------------------------------------------------------------------------------------
# Python-level convenience
# ----------------------------------------------------------------------------------------------
class ZypResult(NamedTuple):
    """The 13 zyp output fields, each an array over the non-core dimensions."""

    lbound: npt.NDArray[np.float64]
    trend: npt.NDArray[np.float64]
    trendp: npt.NDArray[np.float64]
    ubound: npt.NDArray[np.float64]
    tau: npt.NDArray[np.float64]
    sig: npt.NDArray[np.float64]
    nruns: npt.NDArray[np.float64]
    autocor: npt.NDArray[np.float64]
    valid_frac: npt.NDArray[np.float64]
    linear: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]
    lbound_intercept: npt.NDArray[np.float64]
    ubound_intercept: npt.NDArray[np.float64]


def normal_quantile(alpha: float) -> float:
    """Upper ``1 - alpha/2`` standard-normal quantile as R's ``qnorm`` computes it.

    ``statistics.NormalDist.inv_cdf`` implements Wichura's AS 241 like R, so
    ``normal_quantile(0.05)`` is bit-identical to R's ``qnorm(0.975)`` = 1.9599639845400536
    (``scipy.special.ndtri`` differs by one ulp). zyp computes ``1 - (1 - level) / 2``.

    Parameters
    ----------
    alpha : float
        Two-sided significance level of the confidence interval, in (0, 1).

    Returns
    -------
    float
        The quantile ``z`` used for the Sen-slope confidence bounds.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    level = 1.0 - alpha
    return statistics.NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)


def _as_float_array(y: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]:
    arr = np.asarray(y)
    if arr.dtype not in (np.float64, np.float32):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"trend kernels need numeric input, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def zyp_trend(y: npt.ArrayLike, method: Method = "zhang", *, preserve_range: bool = True,
              alpha: float = 0.05, axis: int = -1) -> ZypResult:
    """Run a zyp trend procedure along one axis of a NumPy array.

    Parameters
    ----------
    y : array_like
        Series along ``axis`` (float64 or float32; other numeric types are cast to float64).
        NaN marks a missing value.
    method : {"zhang", "yuepilon", "none"}
        ``zyp.zhang``, ``zyp.yuepilon`` (zyp 0.11-1), or Theil–Sen + Mann–Kendall on the raw
        series.
    preserve_range : bool
        zyp's ``preserve.range.for.sig.test``. Default True (the paper's setting; note that
        zyp 0.11-1's own default is FALSE).
    alpha : float
        Confidence-interval level ``1 - alpha`` of the Sen-slope bounds (zyp: 0.95).
    axis : int
        Time axis.

    Returns
    -------
    ZypResult
        The 13 fields of :data:`FIELDS` as float64 arrays of ``y``'s shape without ``axis``.

    References
    ----------
    .. [1] Bronaugh, D. & Werner, A. (2023). zyp: Zhang + Yue-Pilon Trends Package. R package
       version 0.11-1.
    .. [2] Zhang, X., Vincent, L. A., Hogg, W. D. & Niitsoo, A. (2000). Temperature and
       precipitation trends in Canada during the 20th century. Atmosphere-Ocean 38(3), 395-429.
    .. [3] Yue, S., Pilon, P., Phinney, B. & Cavadias, G. (2002). The influence of autocorrelation
       on the ability to detect trend in hydrological series. Hydrol. Process. 16, 1807-1829.
    .. [4] McLeod, A. I. (2022). Kendall: Kendall rank correlation and Mann-Kendall trend test.
       R package version 2.2.1.
    """
    if method not in GUFUNCS:
        raise ValueError(f"method must be one of {sorted(GUFUNCS)}, got {method!r}")
    arr = np.moveaxis(_as_float_array(y), axis, -1)
    return ZypResult(*apply_gufunc(arr, method, preserve_range, normal_quantile(alpha)))


def apply_gufunc(arr: npt.NDArray[np.floating[Any]], method: str, preserve_range: bool,
                 z: float) -> tuple[npt.NDArray[np.float64], ...]:
    """Run the trend gufunc of ``method`` over the last axis of ``arr``.

    Floating-point warnings are silenced: NaN results are the documented outcome where R returns
    NA or raises an error (0/0 in the autocorrelation of a constant series, for example).

    Parameters
    ----------
    arr : ndarray
        float64 or float32 array, time on the last axis.
    method : {"zhang", "yuepilon", "none"}
        Procedure.
    preserve_range : bool
        zyp's ``preserve.range.for.sig.test`` (used by "zhang" only).
    z : float
        Normal quantile of the Sen-slope confidence interval (see :func:`normal_quantile`).

    Returns
    -------
    tuple of ndarray
        The 13 fields of :data:`FIELDS`, float64, shape ``arr.shape[:-1]``.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        outs = GUFUNCS[method](arr, bool(preserve_range), float(z))
    return tuple(outs)
