"""Plausibility and consistency checks of the ABCflux reader: real users' own data, nothing silent.

Every malformed case is a small CSV in ``tmp_path`` derived from one valid file with a planted
bad value at a known line and column; the tests assert that :class:`InputError` names the file,
the line (header = line 1), the column and the value as written in the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pydantic
import pytest

from abz_dask.io.abcflux import DEFAULT_FLUX_RANGES, FluxChecks, InputError, read_abcflux
from abz_dask.twin.sites import ABCFLUX_COLUMNS

FI = (61.85, 24.29)
AK = (64.87, -147.85)


def _row(site: str, year: int, month: int, *, plot: str = "tower1",
         lat_lon: tuple[float, float] = FI, nee: object = -10.0, gpp: object = -60.0,
         reco: object = 50.0, method: str = "EC", gap: object = 10.0) -> dict[str, object]:
    r: dict[str, object] = dict.fromkeys(ABCFLUX_COLUMNS, -9999)
    r.update({"study_id": site, "site_name": site, "site_reference": plot,
              "latitude": lat_lon[0], "longitude": lat_lon[1], "country": "FI",
              "biome": "Boreal", "veg_type": "forest", "meas_year": year,
              "interval_month": month, "nee": nee, "gpp": gpp, "reco": reco,
              "flux_method": method, "gap_fill_perc": gap, "disturbance": "No"})
    return r


def _valid_rows() -> list[dict[str, object]]:
    """Lines 2-4: site A, May-July 2015; lines 5-6: site B, two chamber plots, July 2016.

    GPP is stored negative (ABCflux) and NEE = Reco - GPP (GPP positive) in every row.
    """
    rows = [_row("A", 2015, m, nee=-5 * m, gpp=-10 * m, reco=5 * m) for m in (5, 6, 7)]
    rows += [_row("B", 2016, 7, plot="plot1", lat_lon=AK, method="Ch", gap=-9999,
                  nee=-20, gpp=-80, reco=60),
             _row("B", 2016, 7, plot="plot2", lat_lon=AK, method="Ch", gap=-9999,
                  nee=-10, gpp=-9999, reco=40)]
    return rows


def _write(tmp_path: Path, rows: list[dict[str, object]], name: str = "my_abcflux.csv") -> Path:
    p = tmp_path / name
    pd.DataFrame(rows, columns=list(rows[0])).to_csv(p, index=False)
    return p


def _planted(tmp_path: Path, line: int, column: str, value: str) -> Path:
    """The valid file with ``value`` written verbatim at ``line`` (header = 1), ``column``."""
    rows = _valid_rows()
    rows[line - 2][column] = value
    return _write(tmp_path, rows)


def _assert_located(err: InputError, path: Path, line: int, column: str, value: str) -> None:
    """The error and its message name the file, the line, the column and the value."""
    msg = str(err)
    assert err.file == str(path) and path.name in msg
    assert err.row == line and f"line {line}" in msg
    assert err.column == column and repr(column) in msg
    assert value in str(err.value) and value in msg


def test_valid_file_passes_every_check(tmp_path: Path) -> None:
    df = read_abcflux(_write(tmp_path, _valid_rows()))
    assert len(df) == 4
    assert (df["GPP"] > 0).all()
    info = df.attrs["abcflux"]
    assert info["checks"]["ranges"]["NEE"] == [-400.0, 300.0]
    assert info["checks"]["nee_balance_abs"] == 5.0


def test_twin_csv_passes_every_check(twin100) -> None:  # type: ignore[no-untyped-def]
    df = read_abcflux(twin100.sites)
    assert len(df) > 1000
    sign = df.attrs["abcflux"]["gpp_sign"]
    assert sign["stored"] == "negative" and sign["flipped"] is True
    assert sign["sites_positive"] == 0 and sign["sites_negative"] > 100
    lo, hi = DEFAULT_FLUX_RANGES["NEE"]
    assert df["NEE"].between(lo, hi).all()


# --- planted single bad values: (line, column, value as written, words of the message) ---
PLANTED = [
    pytest.param(3, "nee", "1e30", "outside the plausible range", id="nee-1e30"),
    pytest.param(4, "nee", "-1e6", "outside the plausible range", id="nee-minus-1e6"),
    pytest.param(5, "nee", "5e4", "outside the plausible range", id="nee-5e4"),
    pytest.param(2, "nee", "inf", "not a finite number", id="nee-inf"),
    pytest.param(3, "gpp", "1e400", "not a finite number", id="gpp-1e400-overflow"),
    pytest.param(6, "reco", "nan", "not a finite number", id="reco-nan"),
    pytest.param(4, "latitude", "-inf", "not a finite number", id="latitude-inf"),
    pytest.param(3, "gap_fill_perc", "250", "gap-filled share outside 0-100", id="gap-250"),
    pytest.param(2, "gap_fill_perc", "-5", "gap-filled share outside 0-100", id="gap-neg"),
    pytest.param(5, "gpp", "-1500", "GPP 1500 outside the plausible range", id="gpp-1500"),
    pytest.param(6, "reco", "-120", "Reco -120 outside the plausible range", id="reco-neg"),
    pytest.param(4, "reco", "950", "Reco 950 outside the plausible range", id="reco-950"),
    pytest.param(3, "nee", "40", "does not match Reco - GPP", id="nee-vs-reco-gpp"),
    pytest.param(5, "nee", "20", "does not match Reco - GPP", id="nee-wrong-sign"),
]


@pytest.mark.parametrize(("line", "column", "value", "words"), PLANTED)
def test_planted_bad_value_is_located(tmp_path: Path, line: int, column: str, value: str,
                                      words: str) -> None:
    path = _planted(tmp_path, line, column, value)
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, line, column, value)
    assert words in str(e.value)


def test_nee_times_1000_is_a_unit_error(tmp_path: Path) -> None:
    rows = _valid_rows()
    for r in rows:
        r["nee"] = f"{float(r['nee']) * 1000:g}"  # type: ignore[arg-type]
    path = _write(tmp_path, rows)
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 2, "nee", "-25000")
    msg = str(e.value)
    assert "5 of 5 NEE values (100 %)" in msg and "1000" in msg and "units" in msg
    # the first few offending rows are listed, not only the first
    assert [p[0] for p in e.value.problems] == [2, 3, 4, 5, 6]
    for line, value in ((3, "-30000"), (6, "-10000")):
        assert f"line {line}, column 'nee'" in msg and value in msg


def test_several_problems_are_listed_by_line(tmp_path: Path) -> None:
    rows = _valid_rows()
    rows[4]["reco"] = "5e4"  # line 6
    rows[1]["gap_fill_perc"] = "250"  # line 3
    rows[2]["nee"] = "1e30"  # line 4
    path = _write(tmp_path, rows)
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 3, "gap_fill_perc", "250")
    assert [(p[0], p[1], p[2]) for p in e.value.problems] == [
        (3, "gap_fill_perc", "250"), (4, "nee", "1e30"), (6, "reco", "5e4")]
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "line 4, column 'nee'" in msg and "line 6, column 'reco'" in msg


def test_gpp_sign_mixed_across_sites_names_the_sites(tmp_path: Path) -> None:
    path = _planted(tmp_path, 5, "gpp", "80")  # site B stores GPP positive, site A negative
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 5, "gpp", "80")
    msg = str(e.value)
    assert "GPP sign conventions differ between sites" in msg
    assert "mostly > 0: 'B'" in msg and "mostly < 0: 'A'" in msg


def test_duplicated_column_name_in_header(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_rows())
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    header[header.index("precip_int")] = "nee"  # a second 'nee' column
    path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 1, "nee", "nee")
    assert "duplicated column name" in str(e.value) and "nee.1" in str(e.value)


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    rows = _valid_rows()
    rows[2]["site_name"] = "Sodankylä"  # line 4
    path = tmp_path / "latin1.csv"
    pd.DataFrame(rows).to_csv(path, index=False, encoding="latin-1")
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 4, "site_name", "Sodankyl\\xe4")
    assert e.value.value == b"Sodankyl\xe4"
    assert "not utf-8 text" in str(e.value) and "latin-1" in str(e.value)
    # the encoding option reads it
    df = read_abcflux(path, encoding="latin-1")
    assert "Sodankylä" in set(df["site_name"])


def test_binary_file_with_nul_bytes_is_located(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_rows())
    data = path.read_bytes().replace(b"\nA,A,", b"\nA,A\x00\x00,", 2)  # lines 2 and 3
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 2, "site_name", "A\\x00\\x00")
    assert e.value.value == b"A\x00\x00" and "binary file" in str(e.value)


def test_spreadsheet_given_as_csv(tmp_path: Path) -> None:
    path = tmp_path / "abcflux.csv"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    with pytest.raises(InputError, match=r"binary file.*xlsx") as e:
        read_abcflux(path)
    assert e.value.file == str(path) and e.value.row == 1 and "abcflux.csv" in str(e.value)


def test_folder_instead_of_csv(tmp_path: Path) -> None:
    folder = tmp_path / "ABCflux_v1"
    folder.mkdir()
    _write(folder, _valid_rows(), name="ABCflux_v1.csv")
    with pytest.raises(InputError, match="is a folder, not a CSV file") as e:
        read_abcflux(folder)
    assert e.value.file == str(folder) and "ABCflux_v1.csv" in str(e.value)


def test_ragged_row_is_located(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_rows())
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]  # line 4 loses its last field
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="the row has 24 fields, the header has 25") as e:
        read_abcflux(path)
    assert e.value.row == 4 and e.value.value == 24


def test_line_numbers_follow_the_editor_with_multiline_fields(tmp_path: Path) -> None:
    rows = _valid_rows()
    rows[0]["citation"] = "Author et al.\nJournal\n2015"  # line 2 spans three lines
    rows[2]["nee"] = "1e30"  # record 4 starts on editor line 6
    path = _write(tmp_path, rows)
    with pytest.raises(InputError) as e:
        read_abcflux(path)
    _assert_located(e.value, path, 6, "nee", "1e30")
    assert path.read_text().splitlines()[5].startswith("A,A,tower1")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    pd.DataFrame(_valid_rows()).to_csv(path, index=False, encoding="utf-8-sig")
    assert len(read_abcflux(path)) == 4


# --- GPP sign rule ---

def test_gpp_sign_decision_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    path = _write(tmp_path, _valid_rows())
    with caplog.at_level(logging.INFO, logger="abz_dask.io.abcflux"):
        df = read_abcflux(path)
    sign = df.attrs["abcflux"]["gpp_sign"]
    assert sign == {"option": "auto", "stored": "negative", "flipped": True,
                    "basis": "the GPP of all 2 site(s) with values |GPP| >= 30 is mostly < 0",
                    "sites_negative": 2, "sites_positive": 0, "sites_without_vote": 0}
    assert df.attrs["abcflux"]["gpp_flipped"] is True
    assert any("GPP stored negative" in r.getMessage() and path.name in r.getMessage()
               for r in caplog.records)


def test_gpp_sign_declared_positive(tmp_path: Path) -> None:
    rows = _valid_rows()
    for r in rows:
        if r["gpp"] != -9999:
            r["gpp"] = -float(r["gpp"])  # type: ignore[arg-type]
    path = _write(tmp_path, rows)
    df = read_abcflux(path, gpp_sign="positive")
    sign = df.attrs["abcflux"]["gpp_sign"]
    assert sign["option"] == "positive" and sign["stored"] == "positive"
    assert sign["flipped"] is False and "declared" in sign["basis"]
    assert df.loc[df["site_id"] == "B", "GPP"].item() == 80.0
    assert read_abcflux(path).attrs["abcflux"]["gpp_sign"]["stored"] == "positive"  # auto


def test_gpp_sign_declared_wrongly_fails_on_the_range(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_rows())  # GPP stored negative
    with pytest.raises(InputError) as e:
        read_abcflux(path, gpp_sign="positive")
    # line 2 (GPP -50, at the bound) breaks the NEE balance, lines 3-5 the GPP range
    _assert_located(e.value, path, 2, "nee", "-25")
    assert [(p[0], p[1]) for p in e.value.problems] == [
        (2, "nee"), (3, "gpp"), (4, "gpp"), (5, "gpp")]
    msg = str(e.value)
    assert "line 3, column 'gpp': GPP -60 outside the plausible range [-50, 1000]" in msg
    assert "would be inside with the other sign" in msg and "gpp_sign" in msg


def test_gpp_sign_auto_falls_back_to_the_median_without_votes(tmp_path: Path) -> None:
    rows = [_row("W", 2015, m, nee=2.0, gpp=-1.0, reco=3.0) for m in (1, 2, 12)]
    df = read_abcflux(_write(tmp_path, rows))
    sign = df.attrs["abcflux"]["gpp_sign"]
    assert sign["stored"] == "negative" and sign["sites_without_vote"] == 1
    assert "median" in sign["basis"]


def test_unknown_gpp_sign_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gpp_sign"):
        read_abcflux(_write(tmp_path, _valid_rows()), gpp_sign="flip")  # type: ignore[arg-type]


# --- configurable checks ---

def test_ranges_are_configurable_per_flux(tmp_path: Path) -> None:
    assert FluxChecks(ranges={"NEE": (-20.0, 300.0)}).ranges["GPP"] == DEFAULT_FLUX_RANGES["GPP"]
    path = _write(tmp_path, _valid_rows())
    with pytest.raises(InputError) as e:
        read_abcflux(path, checks=FluxChecks(ranges={"NEE": (-20.0, 300.0)}))
    _assert_located(e.value, path, 2, "nee", "-25")
    assert "[-20, 300]" in str(e.value)
    bad = _planted(tmp_path, 3, "nee", "5e4")
    read_abcflux(bad, checks={"ranges": {"NEE": None}, "nee_balance_abs": None})


def test_nee_balance_tolerance(tmp_path: Path) -> None:
    # line 2: GPP 50, Reco 25 → Reco - GPP = -25; tolerance max(5, 0.2 · 50) = 10
    read_abcflux(_planted(tmp_path, 2, "nee", "-16"))
    with pytest.raises(InputError) as e:
        read_abcflux(_planted(tmp_path, 2, "nee", "-14"))
    assert "|difference| 11 > tolerance 10" in str(e.value)
    read_abcflux(_planted(tmp_path, 2, "nee", "-14"), checks={"nee_balance_rel": 0.3})
    read_abcflux(_planted(tmp_path, 2, "nee", "40"), checks={"nee_balance_abs": None})


def test_nan_is_missing_option(tmp_path: Path) -> None:
    path = _planted(tmp_path, 6, "reco", "NaN")
    df = read_abcflux(path, checks=FluxChecks(nan_is_missing=True))
    assert df.loc[df["site_id"] == "B", "Reco"].item() == 60.0  # plot2 missing


def test_max_reported_limits_the_list(tmp_path: Path) -> None:
    rows = _valid_rows()
    for r in rows:
        r["gap_fill_perc"] = 300
    with pytest.raises(InputError) as e:
        read_abcflux(_write(tmp_path, rows), checks={"max_reported": 2})
    assert [p[0] for p in e.value.problems] == [2, 3]
    assert "5 problem(s)" in str(e.value)


@pytest.mark.parametrize("bad", [
    {"ranges": {"NEE": (300.0, -400.0)}},
    {"ranges": {"GPP": (0.0, float("inf"))}},
    {"nee_balance_rel": -0.1},
    {"unknown_option": 1},
])
def test_invalid_checks_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        FluxChecks.model_validate(bad)



def test_gpp_sign_decision_is_recorded_in_the_model_card(twin100: Any, tmp_path: Path) -> None:
    """The reader's GPP sign decision travels with the training table (through its Parquet
    file, as the runner passes it) into card.json."""
    import dask
    import xarray as xr

    from abz_dask.geo.grid import Grid
    from abz_dask.training import resolve_profile, run_training
    from abz_dask.training.extract import (
        extract_training_table,
        read_training_table,
        write_training_table,
    )
    from tests.conftest import TINY_PROFILE

    cube = xr.open_zarr(twin100.cube, consolidated=False)
    zones = xr.open_zarr(twin100.zones, consolidated=False)
    grid = Grid.of_dataset(cube)
    obs = read_abcflux(twin100.sites, grid=grid, zones=zones, years=(1990, 2020))
    table, _ = extract_training_table(obs, cube, grid)
    paths = write_training_table(table, tmp_path / "training")
    back = read_training_table(paths["parquet"])
    assert back.attrs["gpp_sign"] == obs.attrs["abcflux"]["gpp_sign"]
    with dask.config.set(scheduler="threads"):
        bundle = run_training(back, tmp_path, profile=resolve_profile(TINY_PROFILE),
                              fluxes=("GPP",), progress=False)
    card = json.loads((tmp_path / "models" / "card.json").read_text())
    assert card["observations"]["gpp_sign"] == obs.attrs["abcflux"]["gpp_sign"]
    assert card["observations"]["gpp_sign"]["flipped"] is True  # the twin stores GPP negative
    assert bundle.card["observations"] == card["observations"]
