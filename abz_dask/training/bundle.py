"""Trained models and their bundle on disk: skops files (no pickle) + a JSON model card.

Layout of a bundle directory::

    card.json                   # written last: its presence marks a complete bundle
    cv_predictions.csv          # pooled held-out predictions of every flux
    NEE/central.skops           # one folder per flux
    NEE/bootstrap_01.skops ...  # replicate b = 1..n_bootstrap

The card records, per flux, the predictors in column order, the categorical encoding with every
category → code, mtry, the tree settings, seeds, rows and sites, the tuning table and pooled CV
metrics, plus the profile, library versions, the training-table hash and the SHA-256 of every
model file. :func:`load_bundle` verifies the hashes, loads the forests with skops trusting only
the scikit-learn forest types, and — given a predictor cube — refuses a cube whose variables or
categories do not match the card (:class:`BundleMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.ensemble import RandomForestRegressor

from abz_dask.encoding import CategoricalEncoding
from abz_dask.predictors import CATEGORICAL, PREDICTOR_NAMES

__all__ = ["BundleMismatchError", "FluxModel", "ModelBundle", "check_cube", "load_bundle"]

CARD_FORMAT = "abz_dask.model_bundle"
CARD_VERSION = 1
#: Types a bundle may contain; anything else in a skops file is refused.
TRUSTED_TYPES = ("sklearn.ensemble._forest.RandomForestRegressor",
                 "sklearn.tree._classes.DecisionTreeRegressor", "sklearn.tree._tree.Tree")


class BundleMismatchError(ValueError):
    """A model bundle does not fit the data it is applied to, or is corrupt."""


@dataclass
class FluxModel:
    """One fitted forest and what is needed to build its design matrix.

    Attributes
    ----------
    flux : str
        Response.
    estimator : RandomForestRegressor
        The fitted forest.
    predictors : tuple of str
        Names of the design-matrix columns, in order.
    encoding : CategoricalEncoding
        Encoding of the categorical predictors (empty for bootstrap models).
    mtry : int
        Predictors tried per split (``max_features``).
    seed : int
        ``random_state`` of the forest (bootstrap models: also the row-resampling seed).
    """

    flux: str
    estimator: RandomForestRegressor
    predictors: tuple[str, ...]
    encoding: CategoricalEncoding = field(default_factory=CategoricalEncoding)
    mtry: int = 0
    seed: int = 0

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The forest's input matrix for the rows of ``frame``.

        Parameters
        ----------
        frame : DataFrame
            Raw predictor columns (at least :attr:`predictors`; categorical ones as their
            integer levels).

        Returns
        -------
        ndarray of float32, shape (n_rows, len(predictors))
            Categorical columns encoded with :attr:`encoding`, columns in model order.
        """
        return self.encoding.transform(frame, self.predictors)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions (float64, g C m⁻² month⁻¹) for the rows of ``frame``."""
        return np.asarray(self.estimator.predict(self.design_matrix(frame)), dtype=np.float64)


@dataclass
class ModelBundle:
    """Central and bootstrap models of every flux, with their card and CV results.

    Attributes
    ----------
    models : dict
        Flux → central :class:`FluxModel` (17 predictors).
    bootstraps : dict
        Flux → list of bootstrap :class:`FluxModel` (15 predictors), replicate 1 first.
    card : dict
        The model card (JSON-ready).
    cv_predictions : dict
        Flux → DataFrame of pooled held-out predictions (``obs``, ``pred``, ``fold``, …).
    metrics : DataFrame
        Pooled CV metrics per flux (index ``flux``; columns ``n, n_sites, mtry, R2, RMSE, MAE,
        MBE``).
    """

    models: dict[str, FluxModel]
    bootstraps: dict[str, list[FluxModel]]
    card: dict[str, Any]
    cv_predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def fluxes(self) -> list[str]:
        """Modelled fluxes, in training order."""
        return list(self.models)

    def save(self, directory: str | Path) -> Path:
        """Write the bundle (atomically: into a temporary folder renamed at the end).

        Parameters
        ----------
        directory : path
            Bundle folder; replaced if it exists.

        Returns
        -------
        Path
            The bundle folder.
        """
        import skops.io as sio

        out = Path(directory)
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        card = json.loads(json.dumps(self.card))
        for flux in self.fluxes:
            (tmp / flux).mkdir()
            entry = card["models"][flux]
            files = [("central", self.models[flux], entry["central"])]
            files += [(f"bootstrap_{i + 1:02d}", m, e) for i, (m, e) in
                      enumerate(zip(self.bootstraps.get(flux, []), entry["bootstraps"],
                                    strict=True))]
            for stem, model, meta in files:
                rel = f"{flux}/{stem}.skops"
                sio.dump(model.estimator, tmp / rel)
                meta["file"] = rel
                meta["sha256"] = _sha256(tmp / rel)
        if self.cv_predictions:
            cv = pd.concat([d.assign(flux=f) for f, d in self.cv_predictions.items()],
                           ignore_index=True)
            cv.to_csv(tmp / "cv_predictions.csv", index=False)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, allow_nan=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        self.card = card
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_estimator(directory: Path, meta: dict[str, Any]) -> RandomForestRegressor:
    path = directory / meta["file"]
    if not path.exists():
        raise BundleMismatchError(f"{directory}: model file {meta['file']} is missing")
    if _sha256(path) != meta["sha256"]:
        raise BundleMismatchError(f"{path}: SHA-256 differs from the model card (file changed)")
    return load_forest(path)


def load_forest(path: Path) -> RandomForestRegressor:
    """A forest from a skops file, refusing any type outside :data:`TRUSTED_TYPES`.

    Raises
    ------
    BundleMismatchError
        The file holds other types, or not a ``RandomForestRegressor``.
    """
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    bad = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if bad:
        raise BundleMismatchError(f"{path}: refuses to load unexpected types {bad}")
    est = sio.load(path, trusted=list(untrusted))
    if not isinstance(est, RandomForestRegressor):
        raise BundleMismatchError(f"{path}: not a RandomForestRegressor ({type(est).__name__})")
    return est


def _model_from_card(directory: Path, flux: str, meta: dict[str, Any]) -> FluxModel:
    est = _load_estimator(directory, meta)
    predictors = tuple(meta["predictors"])
    if est.n_features_in_ != len(predictors):
        raise BundleMismatchError(f"{directory / meta['file']}: the forest has "
                                  f"{est.n_features_in_} inputs, the card lists "
                                  f"{len(predictors)} predictors")
    enc = CategoricalEncoding.from_json(meta["encoding"]) if meta.get("encoding") else \
        CategoricalEncoding()
    return FluxModel(flux, est, predictors, enc, int(meta["mtry"]), int(meta["seed"]))


def load_bundle(directory: str | Path, cube: xr.Dataset | None = None) -> ModelBundle:
    """Load a bundle written by :meth:`ModelBundle.save`.

    Parameters
    ----------
    directory : path
        Bundle folder.
    cube : xr.Dataset, optional
        Predictor cube the models will be applied to; checked with :func:`check_cube`.

    Returns
    -------
    ModelBundle

    Raises
    ------
    BundleMismatchError
        Missing/changed files, unexpected types, or a cube that does not match the card.
    """
    directory = Path(directory)
    card_path = directory / "card.json"
    if not card_path.exists():
        raise BundleMismatchError(f"{directory}: no card.json (not a complete model bundle)")
    card = json.loads(card_path.read_text())
    if card.get("format") != CARD_FORMAT or card.get("version") != CARD_VERSION:
        raise BundleMismatchError(f"{card_path}: not an abz_dask model card v{CARD_VERSION}")
    if cube is not None:
        check_cube(card, cube)
    models: dict[str, FluxModel] = {}
    boots: dict[str, list[FluxModel]] = {}
    for flux in card["fluxes"]:
        entry = card["models"][flux]
        models[flux] = _model_from_card(directory, flux, entry["central"])
        boots[flux] = [_model_from_card(directory, flux, m) for m in entry["bootstraps"]]
    cv: dict[str, pd.DataFrame] = {}
    if (directory / "cv_predictions.csv").exists():
        allcv = pd.read_csv(directory / "cv_predictions.csv", dtype={"site_id": str})
        cv = {str(f): d.drop(columns="flux").reset_index(drop=True)
              for f, d in allcv.groupby("flux", sort=False)}
    metrics = pd.DataFrame.from_records(
        [{"flux": f, **card["models"][f]["cv_metrics"]} for f in card["fluxes"]]
    ).set_index("flux")
    return ModelBundle(models, boots, card, cv, metrics)


def check_cube(card: dict[str, Any], cube: xr.Dataset) -> None:
    """Refuse a predictor cube that does not match a model card.

    Checks that every predictor of every model is a variable of the cube (``month`` comes from
    ``time``) and that every category present in the cube (vegetation-type codes, calendar
    months) has a code in the model's encoding. Categories that the training rows lacked but the
    legend holds (coded with the encoding's fallback) are accepted with a warning.

    Parameters
    ----------
    card : dict
        Model card.
    cube : xr.Dataset
        Predictor cube.

    Raises
    ------
    BundleMismatchError
        Naming the missing variables or the unknown categories.
    """
    needed: set[str] = set()
    for flux in card["fluxes"]:
        entry = card["models"][flux]
        for m in (entry["central"], *entry["bootstraps"]):
            needed.update(m["predictors"])
    absent = sorted(p for p in needed if p != "month" and p not in cube)
    if "month" in needed and "time" not in cube.coords:
        absent.append("time (for month)")
    if absent:
        have = sorted(map(str, cube.data_vars))
        raise BundleMismatchError(f"the predictor cube lacks variable(s) {absent} that the "
                                  f"models use (cube variables: {have})")
    unknown = [p for p in needed if p not in PREDICTOR_NAMES]
    if unknown:
        raise BundleMismatchError(f"the model card uses predictors unknown to abz_dask: {unknown}")
    present = {name: _cube_levels(cube, name) for name in CATEGORICAL if name in needed}
    unseen: dict[str, set[int]] = {}
    unseen_in: dict[str, set[str]] = {}
    for flux in card["fluxes"]:
        meta = card["models"][flux]["central"]
        enc = meta.get("encoding") or {"codes": {}}
        for name in CATEGORICAL:
            if name not in meta["predictors"]:
                continue
            codes = {int(c) for c in enc["codes"].get(name, {})}
            extra = sorted(present[name] - codes)
            if extra:
                raise BundleMismatchError(
                    f"{flux} model: {name} categories {extra} are present in the predictor cube "
                    f"but absent from the model encoding (knows {sorted(codes)}); recode the "
                    f"cube (e.g. ESA CCI 1->31, 90->30, 41->160) or retrain")
            lacking = present[name] & set(meta.get("unseen_levels", {}).get(name, []))
            if lacking:
                unseen.setdefault(name, set()).update(lacking)
                unseen_in.setdefault(name, set()).add(flux)
    for name, levels in unseen.items():
        warnings.warn(f"{name} categories {sorted(levels)} occur in the predictor cube but not in "
                      f"the training rows of the {'/'.join(sorted(unseen_in[name]))} model(s); "
                      "they get the fallback (middle) code", stacklevel=3)


def _cube_levels(cube: xr.Dataset, name: str) -> set[int]:
    if name == "month":
        return {int(m) for m in np.unique(pd.DatetimeIndex(cube["time"].values).month)}
    import dask.array as da

    data = cube[name].data
    levels = da.unique(data).compute() if isinstance(data, da.Array) else np.unique(data)
    levels = np.asarray(levels, dtype=np.float64)
    levels = levels[np.isfinite(levels)]
    odd = levels[levels != np.round(levels)]
    if len(odd):
        raise BundleMismatchError(f"the cube's {name} holds non-integer categories "
                                  f"{odd[:5].tolist()}")
    return {int(v) for v in levels}
