"""The 17 predictors of the paper (seed-spec §3.2) and how they are stored in the cube.

Every predictor has a modelling name (the column in the training table and the variable in the
predictor cube), units, a storage kind and whether it is categorical:

- ``monthly``: ``(time, y, x)`` float32 in the cube;
- ``annual``: MOD44B-like yearly layers, stored repeated per month as ``(time, y, x)``;
- ``series``: spatially constant monthly series, stored as ``(time,)`` (atmospheric CO2);
- ``static``: ``(y, x)``;
- ``calendar``: derived from the time coordinate (month), never stored.

The paper's 17 (:data:`PREDICTORS`) are the default **predictor set** of a model. A training
profile may drop some of them, reorder them or add predictors of the user's own
(:func:`select_predictors`): continuous cube variables declared in the ``build-cube``
configuration with their ``kind`` and ``units`` (:func:`user_predictor`), recognised in a cube by
their ``abz_kind`` attribute (:func:`cube_user_predictors`). A model card records its set with
:func:`predictor_record` (names, order, kinds, units) and :func:`predictors_from_record` reads it
back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BOOTSTRAP_PREDICTORS",
    "CATALOGUE",
    "CATEGORICAL",
    "FLUXES",
    "PREDICTORS",
    "PREDICTOR_NAMES",
    "STORED_KINDS",
    "VEG_CLASSES",
    "Predictor",
    "cube_user_predictors",
    "predictor_record",
    "predictors_from_record",
    "select_predictors",
    "user_predictor",
]

Kind = Literal["monthly", "annual", "series", "static", "calendar"]


@dataclass(frozen=True)
class Predictor:
    """Metadata of one predictor."""

    name: str
    long_name: str
    units: str
    kind: Kind
    categorical: bool = False


PREDICTORS: tuple[Predictor, ...] = (
    Predictor("month", "calendar month", "1", "calendar", categorical=True),
    Predictor("srad", "incident shortwave radiation", "W m-2", "monthly"),
    Predictor("vpd", "vapour pressure deficit", "kPa", "monthly"),
    Predictor("co2", "atmospheric CO2 mole fraction (Barrow-like)", "ppm", "series"),
    Predictor("vegtype", "vegetation type (ESA CCI + CAVM merged classes)", "1", "static",
              categorical=True),
    Predictor("snow_cover", "snow cover fraction", "1", "monthly"),
    Predictor("soil_temp", "soil temperature 0-7 cm", "degC", "monthly"),
    Predictor("soil_moisture", "volumetric soil water 0-7 cm", "m3 m-3", "monthly"),
    Predictor("ndvi", "normalised difference vegetation index", "1", "monthly"),
    Predictor("tair", "air temperature (2 m)", "degC", "monthly"),
    Predictor("cti", "compound topographic index", "1", "static"),
    Predictor("nontree_cover", "non-tree vegetation cover", "%", "annual"),
    Predictor("nonveg_cover", "non-vegetated cover", "%", "annual"),
    Predictor("tree_cover", "tree cover", "%", "annual"),
    Predictor("soil_ph", "soil pH 0-5 cm", "1", "static"),
    Predictor("soc", "soil organic carbon stock 0-2 m", "t ha-1", "static"),
    Predictor("permafrost_prob", "permafrost probability", "1", "static"),
)

PREDICTOR_NAMES: tuple[str, ...] = tuple(p.name for p in PREDICTORS)
CATEGORICAL: tuple[str, ...] = tuple(p.name for p in PREDICTORS if p.categorical)
#: DECISIONS 8: bootstrap models drop month and vegetation type (15 predictors).
BOOTSTRAP_PREDICTORS: tuple[str, ...] = tuple(p.name for p in PREDICTORS if not p.categorical)

#: Vegetation classes after the paper's recoding (seed-spec §3.2) with our reading of the legend.
VEG_CLASSES: dict[int, str] = {
    21: "graminoid tundra (CAVM G)",
    30: "sparse vegetation / barren",
    31: "prostrate shrub tundra (CAVM P)",
    33: "erect shrub tundra (CAVM S)",
    60: "deciduous broadleaf forest",
    70: "evergreen needleleaf forest",
    80: "deciduous needleleaf forest",
    120: "shrubland",
    160: "flooded tree cover / wetland",
}

#: Catalogue predictors by name.
CATALOGUE: dict[str, Predictor] = {p.name: p for p in PREDICTORS}
#: Storage kinds a user's own predictor may have (``calendar`` is the catalogue's month only).
STORED_KINDS: tuple[str, ...] = ("monthly", "annual", "static", "series")
#: Names a user predictor may not take (coordinates and training-table columns).
RESERVED_NAMES = frozenset({"time", "x", "y", "spatial_ref", "lat", "lon", "latitude",
                            "longitude", "site_id", "year", "month", "row", "col", "band"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def user_predictor(name: str, kind: str, units: str, long_name: str | None = None
                   ) -> Predictor:
    """A continuous predictor of the user's own (not in the catalogue).

    Parameters
    ----------
    name : str
        Variable name in the cube and column in the training table (letters, digits, ``_``).
    kind : {"monthly", "annual", "static", "series"}
        Storage kind (see the module docstring).
    units : str
        Units of the stored values.
    long_name : str, optional
        Description (default: the name).

    Returns
    -------
    Predictor

    Raises
    ------
    ValueError
        A catalogue or reserved name, a name that is not an identifier, or an unknown kind.
    """
    if name in CATALOGUE:
        raise ValueError(f"{name!r} is a catalogue predictor, not a user predictor")
    if name in RESERVED_NAMES or not _NAME.match(name):
        raise ValueError(f"{name!r} cannot name a predictor (letters, digits and '_', starting "
                         f"with a letter; not one of {sorted(RESERVED_NAMES)})")
    if kind not in STORED_KINDS:
        raise ValueError(f"{name}: kind {kind!r} is not one of {list(STORED_KINDS)}")
    return Predictor(name, long_name or name, units, kind)  # type: ignore[arg-type]


def predictor_record(predictors: Iterable[Predictor]) -> list[dict[str, Any]]:
    """JSON-ready record of a predictor set, in order (what a model card stores).

    Returns
    -------
    list of dict
        ``name``, ``kind``, ``units``, ``categorical`` and ``source`` (``"catalogue"`` or
        ``"user"``) of every predictor.
    """
    return [{"name": p.name, "kind": p.kind, "units": p.units, "categorical": p.categorical,
             "source": "catalogue" if CATALOGUE.get(p.name) == p else "user"}
            for p in predictors]


def predictors_from_record(record: Sequence[Mapping[str, Any]]) -> tuple[Predictor, ...]:
    """The predictor set of a :func:`predictor_record` (catalogue entries by name)."""
    out = []
    for r in record:
        name = str(r["name"])
        if name in CATALOGUE:
            out.append(CATALOGUE[name])
        else:
            out.append(user_predictor(name, str(r["kind"]), str(r.get("units", "")),
                                      r.get("long_name")))
    return tuple(out)


def cube_user_predictors(ds: Any) -> tuple[Predictor, ...]:
    """User predictors of a cube: data variables outside the catalogue with an ``abz_kind``.

    Parameters
    ----------
    ds : xr.Dataset
        Predictor cube (``build-cube`` writes ``abz_kind``, ``units``, ``long_name`` on every
        predictor variable).

    Returns
    -------
    tuple of Predictor
        In the cube's variable order.
    """
    out = []
    for name, var in ds.data_vars.items():
        kind = var.attrs.get("abz_kind")
        if str(name) in CATALOGUE or kind not in STORED_KINDS:
            continue
        out.append(user_predictor(str(name), str(kind), str(var.attrs.get("units", "")),
                                  var.attrs.get("long_name")))
    return tuple(out)


def select_predictors(names: Sequence[str] | None = None, *, drop: Sequence[str] = (),
                      add: Sequence[str] = (), available: Mapping[str, Predictor] | None = None
                      ) -> tuple[Predictor, ...]:
    """A predictor set: a full list of names, or the paper's 17 minus ``drop`` plus ``add``.

    Parameters
    ----------
    names : sequence of str, optional
        The whole set in model order (catalogue or available user names); excludes
        ``drop``/``add``.
    drop : sequence of str
        Catalogue predictors removed from the default set.
    add : sequence of str
        User predictors appended (in this order) to the default set.
    available : mapping, optional
        User predictors that may be named (name -> :class:`Predictor`, e.g. from
        :func:`cube_user_predictors`).

    Returns
    -------
    tuple of Predictor
        In model order; :data:`PREDICTORS` when nothing is given.

    Raises
    ------
    ValueError
        Unknown or duplicated names, ``add`` naming a catalogue predictor, or an empty set.
    """
    avail = dict(available or {})
    if names is not None and (drop or add):
        raise ValueError("predictors: give either a full list or drop/add, not both")

    def look(n: str, what: str) -> Predictor:
        if n in CATALOGUE:
            return CATALOGUE[n]
        if n in avail:
            return avail[n]
        have = f"; user predictors available: {sorted(avail)}" if avail else \
            " and no user predictor is available (declare it in build-cube's predictors)"
        raise ValueError(f"predictors: {what} {n!r} is neither a catalogue predictor "
                         f"({list(CATALOGUE)}) nor a user predictor of the data{have}")

    if names is not None:
        chosen = [look(n, "name") for n in names]
    else:
        bad = [n for n in drop if n not in CATALOGUE]
        if bad:
            raise ValueError(f"predictors.drop: {bad} are not catalogue predictors "
                             f"({list(CATALOGUE)})")
        cat = [n for n in add if n in CATALOGUE]
        if cat:
            raise ValueError(f"predictors.add: {cat} are catalogue predictors (already in the "
                             "default set; give a full list to reorder)")
        chosen = [p for p in PREDICTORS if p.name not in set(drop)]
        chosen += [look(n, "add") for n in add]
    seen = [p.name for p in chosen]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ValueError(f"predictors: {dup} named more than once")
    if not chosen:
        raise ValueError("predictors: the set is empty")
    return tuple(chosen)


#: Modelled fluxes, g C m-2 month-1; NEE = Reco - GPP (negative = uptake).
FLUXES: tuple[str, ...] = ("NEE", "GPP", "Reco")
