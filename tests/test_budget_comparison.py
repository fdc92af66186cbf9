"""Estimate-vs-truth budget table of the demo: hand-computed errors, near-zero truths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abz_dask.cli import _print_budgets
from abz_dask.pipeline.demo import compare_budgets


@pytest.fixture
def table(tmp_path: Path) -> pd.DataFrame:
    truth = pd.DataFrame({
        "year": [2000, 2001, 2002] * 2,
        "domain": ["abz"] * 3 + ["tundra"] * 3,
        "flux": ["NEE"] * 6,
        # 2000 lies outside 2001..2002 and must not enter the means (-600, 2)
        "budget_tg_c_yr": [-9999.0, -500.0, -700.0, -9999.0, 1.0, 3.0],
    })
    truth.to_csv(tmp_path / "truth.csv", index=False)
    est = pd.DataFrame({"domain": ["tundra", "abz"], "flux": ["NEE", "NEE"],
                        "estimate_tg_c_yr": [52.0, -480.0], "boot_sd_tg_c_yr": [9.0, np.nan]})
    return compare_budgets(est, tmp_path / "truth.csv", 2001, 2002)


def test_errors_against_hand_values(table: pd.DataFrame) -> None:
    assert list(table["domain"]) == ["abz", "tundra"]
    assert list(table.columns) == ["domain", "flux", "estimate_tg_c_yr", "truth_tg_c_yr",
                                   "error_tg_c_yr", "rel_error", "boot_sd_tg_c_yr"]
    np.testing.assert_allclose(table["truth_tg_c_yr"], [-600.0, 2.0])
    np.testing.assert_allclose(table["error_tg_c_yr"], [120.0, 50.0])
    np.testing.assert_allclose(table["rel_error"], [0.2, 25.0])


def test_printed_table_omits_relative_error_of_a_near_zero_truth(
        table: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    _print_budgets(table)
    lines = capsys.readouterr().out.splitlines()
    abz = next(s for s in lines if "abz" in s)
    tundra = next(s for s in lines if "tundra" in s)
    assert "+120" in abz and "+20.0 %" in abz
    assert "+50" in tundra and "—" in tundra and "%" not in tundra
