"""ABCflux reader (validation, GPP sign, plots, filters) and site extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.io.abcflux import MODELDATA_COLUMN_MAP, InputError, read_abcflux
from abz_dask.io.predictors import PREDICTOR_NAMES
from abz_dask.training.extract import (
    extract_training_table,
    read_training_table,
    write_training_table,
)
from abz_dask.training.synthetic import synthetic_cube
from abz_dask.twin.sites import ABCFLUX_COLUMNS

GRID = Grid.from_preset("100km")
# two land sites (Finland, Alaska) and a point in the Arctic Ocean
FI = (61.85, 24.29)
AK = (64.87, -147.85)
SEA = (85.0, 0.0)


def _row(site: str, year: int, month: int, *, plot: str = "tower1", lat_lon=FI,
         nee: float = -10.0, gpp: float = -60.0, reco: float = 50.0, method: str = "EC",
         gap: float = 10.0, dist: str = "No", dyear: int = -9999) -> dict[str, object]:
    r: dict[str, object] = dict.fromkeys(ABCFLUX_COLUMNS, -9999)
    r.update({"study_id": site, "site_name": site, "site_reference": plot,
              "latitude": lat_lon[0], "longitude": lat_lon[1], "country": "FI",
              "biome": "Boreal", "veg_type": "forest", "meas_year": year,
              "interval_month": month, "nee": nee, "gpp": gpp, "reco": reco,
              "flux_method": method, "gap_fill_perc": gap, "disturbance": dist,
              "disturb_year": dyear})
    return r


def _base_rows() -> list[dict[str, object]]:
    rows = [_row("A", 2015, m, nee=-5.0 * m, gpp=-10.0 * m, reco=5.0 * m) for m in (5, 6, 7)]
    rows += [_row("B", 2016, 7, plot="plot1", lat_lon=AK, method="Ch", gap=-9999,
                  nee=-20, gpp=-80, reco=60),
             _row("B", 2016, 7, plot="plot2", lat_lon=AK, method="Ch", gap=-9999,
                  nee=-10, gpp=-9999, reco=40)]
    return rows


def _write(tmp_path: Path, rows: list[dict[str, object]], name: str = "abc.csv") -> Path:
    p = tmp_path / name
    pd.DataFrame(rows, columns=list(rows[0])).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def zones() -> xr.Dataset:
    """Land everywhere in the grid except cells north of 80°N (the 'ocean')."""
    _, lat = GRID.lonlat()
    land = np.where(lat > 80, 0.0, 1.0).astype(np.float32)
    biome = np.where(lat > 66, 1, 2).astype(np.int8)
    return xr.Dataset({"land_fraction": (("y", "x"), land), "biome": (("y", "x"), biome)},
                      coords=GRID.coords())


def test_reads_one_row_per_site_month_with_gpp_positive(tmp_path: Path) -> None:
    df = read_abcflux(_write(tmp_path, _base_rows()))
    assert len(df) == 4
    for c in ("site_id", "year", "month", "latitude", "longitude", "flux_method", "disturbance",
              "disturb_year", "biome", "NEE", "GPP", "Reco"):
        assert c in df
    a = df[df["site_id"] == "A"].set_index("month")
    assert a.loc[6, "GPP"] == 60.0 and a.loc[6, "NEE"] == -30.0
    assert df.attrs["abcflux"]["gpp_flipped"] is True
    assert df["disturb_year"].isna().all()  # -9999 -> NaN
    assert list(df["site_id"]) == ["A", "A", "A", "B"]


def test_gpp_already_positive_is_not_flipped(tmp_path: Path) -> None:
    rows = _base_rows()
    for r in rows:
        if r["gpp"] != -9999:
            r["gpp"] = -float(r["gpp"])  # type: ignore[arg-type]
    df = read_abcflux(_write(tmp_path, rows))
    assert df.attrs["abcflux"]["gpp_flipped"] is False
    assert (df["GPP"].dropna() > 0).all()


def test_plots_of_a_site_month_are_averaged(tmp_path: Path) -> None:
    df = read_abcflux(_write(tmp_path, _base_rows()))
    b = df[df["site_id"] == "B"].iloc[0]
    assert b["n_plots"] == 2
    assert b["NEE"] == pytest.approx(-15.0)
    assert b["Reco"] == pytest.approx(50.0)
    assert b["GPP"] == pytest.approx(80.0)  # the plot without GPP is ignored


def test_identical_duplicates_are_dropped(tmp_path: Path) -> None:
    rows = _base_rows()
    rows.append(dict(rows[0]))
    df = read_abcflux(_write(tmp_path, rows))
    assert len(df) == 4
    assert df.attrs["abcflux"]["identical_duplicates_dropped"] == 1
    assert df.loc[(df["site_id"] == "A") & (df["month"] == 5), "n_plots"].item() == 1


def test_conflicting_duplicate_names_lines_and_column(tmp_path: Path) -> None:
    rows = _base_rows()
    dup = dict(rows[1])
    dup["nee"] = 99.0
    rows.append(dup)
    with pytest.raises(InputError) as e:
        read_abcflux(_write(tmp_path, rows))
    assert e.value.row == 7 and e.value.column == "nee" and e.value.value == 99.0
    assert "line 3" in str(e.value) and "conflicting duplicate" in str(e.value)


def _mutate(tmp_path: Path, line: int, column: str, value: object) -> Path:
    rows = _base_rows()
    rows[line - 2][column] = value
    return _write(tmp_path, rows)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("nee", "abc", "not a number"),
    ("latitude", 91.0, "latitude outside"),
    ("longitude", -181.0, "longitude outside"),
    ("interval_month", 13, "month outside 1-12"),
    ("interval_month", 0, "month outside 1-12"),
    ("interval_month", 6.5, "month outside 1-12"),
    ("meas_year", 1980, "year outside the predictor cube"),
    ("study_id", "", "missing value"),
    ("latitude", -9999, "missing value"),
])
def test_bad_values_are_located(tmp_path: Path, column: str, value: object,
                                message: str) -> None:
    path = _mutate(tmp_path, 4, column, value)
    with pytest.raises(InputError) as e:
        read_abcflux(path, years=(1990, 2020))
    assert message in str(e.value)
    assert e.value.file == str(path) and e.value.row == 4 and e.value.column == column
    assert f"line 4, column {column!r}" in str(e.value)


def test_site_outside_grid(tmp_path: Path) -> None:
    path = _mutate(tmp_path, 3, "latitude", 20.0)
    read_abcflux(path)  # no grid: a valid coordinate
    with pytest.raises(InputError, match="outside the 100km grid") as e:
        read_abcflux(path, grid=GRID)
    assert e.value.row == 3


def test_site_at_sea(tmp_path: Path, zones: xr.Dataset) -> None:
    rows = _base_rows()
    rows[2]["latitude"], rows[2]["longitude"] = SEA
    path = _write(tmp_path, rows)
    read_abcflux(path, grid=GRID)  # inside the grid
    with pytest.raises(InputError, match="not on land") as e:
        read_abcflux(path, grid=GRID, zones=zones)
    assert e.value.row == 4


def test_missing_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "interval_month"} for r in _base_rows()]
    with pytest.raises(InputError, match="missing column") as e:
        read_abcflux(_write(tmp_path, rows))
    assert e.value.column == "interval_month" and e.value.row is None


@pytest.mark.parametrize("content", ["", ",".join(ABCFLUX_COLUMNS) + "\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    p = tmp_path / "empty.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=r"empty file|no data rows") as e:
        read_abcflux(p)
    assert e.value.file == str(p)


def test_filters(tmp_path: Path) -> None:
    rows = _base_rows()
    rows.append(_row("C", 2016, 2, method="Diffusion", gap=-9999))
    rows.append(_row("D", 2016, 6, gap=80.0, dist="Fire", dyear=2010))
    path = _write(tmp_path, rows)
    assert set(read_abcflux(path)["site_id"]) == {"A", "B", "D"}
    assert set(read_abcflux(path, exclude_diffusion=False)["site_id"]) == {"A", "B", "C", "D"}
    assert set(read_abcflux(path, methods=["ec"])["site_id"]) == {"A", "D"}
    df = read_abcflux(path, max_gap_fill=50)
    assert set(df["site_id"]) == {"A", "B"}  # chambers have no gap fill and are kept
    assert df.attrs["abcflux"]["dropped_gap_fill"] == 1
    assert set(read_abcflux(path, exclude_disturbed=True)["site_id"]) == {"A", "B"}


def test_column_map_for_the_authors_table_and_extra_response(tmp_path: Path,
                                                             zones: xr.Dataset) -> None:
    inverse = {v: k for k, v in MODELDATA_COLUMN_MAP.items()}
    rows = []
    for r in _base_rows()[:3]:
        rows.append({inverse["site_id"]: r["study_id"], inverse["year"]: r["meas_year"],
                     inverse["month"]: r["interval_month"], inverse["latitude"]: r["latitude"],
                     inverse["longitude"]: r["longitude"], inverse["NEE"]: r["nee"],
                     inverse["GPP"]: r["gpp"], inverse["Reco"]: r["reco"],
                     inverse["flux_method"]: "EC", "CH4_flux": 0.5})
    path = _write(tmp_path, rows)
    df = read_abcflux(path, grid=GRID, zones=zones,
                      column_map={**MODELDATA_COLUMN_MAP, "CH4_flux": "CH4"})
    assert df["CH4"].tolist() == [0.5, 0.5, 0.5]
    assert df.attrs["abcflux"]["responses"] == ["NEE", "GPP", "Reco", "CH4"]
    assert (df["GPP"] > 0).all()
    assert (df["biome"] == "Boreal").all()  # from the zones: no biome column in the file


def test_extraction_picks_the_site_cell_and_month(tmp_path: Path) -> None:
    cube = synthetic_cube(GRID, start="2015-01", periods=24, seed=3)
    df = read_abcflux(_write(tmp_path, _base_rows()), grid=GRID, years=(2015, 2016))
    table, report = extract_training_table(df, cube, GRID)
    assert len(table) == 4
    x, y = GRID.project(np.array([FI[1]]), np.array([FI[0]]))
    r, c = GRID.index_of(x, y)
    a = table[(table["site_id"] == "A") & (table["month"] == 6)].iloc[0]
    assert (a["row"], a["col"]) == (r[0], c[0])
    assert a["ndvi"] == cube["ndvi"].values[5, r[0], c[0]]  # 2015-06 is time step 5
    assert a["soc"] == cube["soc"].values[r[0], c[0]]
    assert a["co2"] == cube["co2"].values[5]
    assert list(table.columns[-16:]) == [p for p in PREDICTOR_NAMES if p != "month"]
    assert report.set_index("flux").loc["GPP", "observed"] == 4
    # a predictor gap at site B's cell drops its row from every flux, counted in the report
    rb, cb = table.loc[table["site_id"] == "B", ["row", "col"]].iloc[0]
    cube["tair"][:, rb, cb] = np.nan
    table2, report2 = extract_training_table(df, cube, GRID)
    assert set(table2["site_id"]) == {"A"}
    rep = report2.set_index("flux")
    assert rep.loc["NEE", "missing_predictor"] == 1 and rep.loc["NEE", "na_tair"] == 1
    assert rep.loc["NEE", "kept"] == 3 and rep.loc["NEE", "na_ndvi"] == 0


def test_training_table_files_carry_units_and_read_back(tmp_path: Path) -> None:
    cube = synthetic_cube(GRID, start="2015-01", periods=24, seed=3)
    df = read_abcflux(_write(tmp_path, _base_rows()), grid=GRID)
    table, _ = extract_training_table(df, cube, GRID)
    paths = write_training_table(table, tmp_path / "out")
    header = pd.read_csv(paths["csv"], nrows=0).columns
    assert "NEE [g C m-2 month-1]" in header and "srad [W m-2]" in header
    assert "site_id" in header and "soil_temp [degC]" in header
    text = [c for c in table.columns if table[c].dtype == object]
    for p in paths.values():
        back = read_training_table(p)
        pd.testing.assert_frame_equal(back[table.columns].drop(columns=text),
                                      table.drop(columns=text), check_dtype=False)
        for c in text:  # None and NaN both read back as missing
            assert (back[c].isna() == table[c].isna()).all()
            assert (back[c].dropna() == table[c].dropna()).all()
        assert back["ndvi"].dtype == np.float32
