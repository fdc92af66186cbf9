"""The aggregation core: zonal reductions with flox (budgets, per-area means, domain and
regional totals) and the complete-year rule.

- :mod:`~abz_dask.aggregation.zonal` — zone layers and flox reductions over them;
- :mod:`~abz_dask.aggregation.budgets` — annual domain budgets and period means;
- :mod:`~abz_dask.aggregation.periods` — complete years of a monthly series.
"""
