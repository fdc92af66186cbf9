"""Trained models and their bundle on disk: skops files (no pickle) + a JSON model card.

Layout of a bundle directory::

    card.json                   # written last: its presence marks a complete bundle
    cv_predictions.csv          # pooled held-out predictions of every flux
    blocked_cv.csv              # held-out predictions over spatial-cluster folds (interval:
                                # blocked_cv profiles only; with each row's grid cell)
    NEE/central.skops           # one folder per flux
    NEE/bootstrap_01.skops ...  # replicate b = 1..n_bootstrap

The card records, per flux, the predictors in column order, the categorical encoding with every
category → code, mtry, the tree settings, seeds, rows and sites, the tuning table and pooled CV
metrics, plus the profile, library versions, the training-table hash and the SHA-256 of every
model file. :func:`load_bundle` verifies the hashes, loads the forests with skops trusting only
the scikit-learn forest types, and — given a predictor cube — refuses a cube whose variables or
categories do not match the card (:class:`BundleMismatchError`).

Nothing in a bundle is trusted silently:

* **Seal.** :meth:`ModelBundle.save` records, per model, the forest's own ``n_features_in``
  (and ``feature_names_in`` when the forest has them) and seals the card: ``card["seal"]`` holds
  the SHA-256 of the canonical JSON (sorted keys, no spaces) of every model-defining field —
  format, version, fluxes, categorical predictors, the predictor set (``predictors``: names in
  model order, kinds, units; cards written before predictor sets existed lack it) and, per
  model, the predictor names in order,
  the encoding (every category → code), the unseen levels, mtry, seed, tree count, file name,
  file SHA-256 and the forest's input count/names — one SHA-256 per field and the sealed values.
  :func:`load_bundle` recomputes them and names each changed field with its sealed and current
  values (e.g. ``codes.vegtype.30: 5.0 → 0.0``), so swapping predictor names, reordering them or
  editing a vegetation-type code is refused instead of silently changing the predictions. The
  forests' own input counts/names are compared with the card as each file is loaded. The seal
  detects edits; it is not a signature (whoever can write the folder can also write a new
  seal).
* **Paths.** A model ``file`` must be a relative path that resolves inside the bundle folder.
* **Format.** A model file must be a zip archive with skops' ``schema.json`` describing a
  ``RandomForestRegressor`` (a pickle, a random or a truncated file is refused with one message
  naming it) and hash to the card's SHA-256; it is then loaded with skops trusting only
  :data:`TRUSTED_TYPES`.

Bundles written before the seal existed are refused (retrain them, or run the documented re-seal
step :func:`reseal_bundle` once on a bundle you trained yourself and did not edit).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.ensemble import RandomForestRegressor

from abz_dask.io.encoding import CategoricalEncoding
from abz_dask.io.location import (
    Location,
    as_path,
    publish,
    remove,
    staging,
    url,
    write_atomic,
    write_with,
)
from abz_dask.io.predictors import (
    CATEGORICAL,
    PREDICTOR_NAMES,
    PREDICTORS,
    Predictor,
    predictors_from_record,
)

__all__ = ["BundleMismatchError", "FluxModel", "ModelBundle", "card_predictors", "check_cube",
           "check_skops_file", "load_bundle", "load_forest", "read_cv_tables",
           "reseal_bundle"]

CARD_FORMAT = "abz_dask.model_bundle"
CARD_VERSION = 1
#: Types a bundle may contain; anything else in a skops file is refused.
TRUSTED_TYPES = ("sklearn.ensemble._forest.RandomForestRegressor",
                 "sklearn.tree._classes.DecisionTreeRegressor", "sklearn.tree._tree.Tree")
#: The one top-level type a bundle's skops file may hold.
FOREST_TYPE = "sklearn.ensemble._forest.RandomForestRegressor"
#: Hash of the card's seal (:func:`load_bundle`).
SEAL_ALGORITHM = "sha256"
#: Top-level card fields covered by the seal.
SEALED_CARD_FIELDS = ("format", "version", "fluxes", "categorical", "predictors")
#: Per-model card fields covered by the seal (those present when the bundle was saved).
SEALED_MODEL_FIELDS = ("predictors", "encoding", "unseen_levels", "mtry", "seed",
                       "n_estimators", "file", "sha256", "n_features_in", "feature_names_in")


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
    blocked_cv : dict
        Flux → held-out predictions over folds of spatial clusters of sites, with each row's
        grid cell (``cell_row``, ``cell_col``); empty unless the profile's interval is
        ``blocked_cv`` (:func:`abz_dask.training.fit.blocked_cv`).
    """

    models: dict[str, FluxModel]
    bootstraps: dict[str, list[FluxModel]]
    card: dict[str, Any]
    cv_predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    blocked_cv: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def fluxes(self) -> list[str]:
        """Modelled fluxes, in training order."""
        return list(self.models)

    @property
    def predictors(self) -> tuple[Predictor, ...]:
        """The predictor set of the card in model order (the paper's 17 for older cards)."""
        return card_predictors(self.card)

    def save(self, directory: str | Path) -> Path:
        """Write the bundle (atomically: into a temporary folder renamed at the end).

        Each model entry of the card gets its ``file``, the file's ``sha256`` and the forest's
        own ``n_features_in`` (and ``feature_names_in`` when the forest has them); the card is
        then sealed (``card["seal"]``, verified by :func:`load_bundle`).

        Parameters
        ----------
        directory : path
            Bundle folder; replaced if it exists.

        Returns
        -------
        Path
            The bundle folder.

        Raises
        ------
        BundleMismatchError
            A forest's number (or names) of inputs differs from its predictor list (nothing is
            written).
        """
        import skops.io as sio

        out = as_path(directory)
        tmp = staging(out)
        remove(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        card = json.loads(json.dumps(self.card))
        card.pop("seal", None)
        for flux in self.fluxes:
            (tmp / flux).mkdir(parents=True, exist_ok=True)
            entry = card["models"][flux]
            files = [("central", self.models[flux], entry["central"])]
            files += [(f"bootstrap_{i + 1:02d}", m, e) for i, (m, e) in
                      enumerate(zip(self.bootstraps.get(flux, []), entry["bootstraps"],
                                    strict=True))]
            for stem, model, meta in files:
                rel = f"{flux}/{stem}.skops"

                def dump(f: IO[bytes], m: FluxModel = model) -> None:
                    sio.dump(m.estimator, f)

                write_with(tmp / rel, dump)
                meta["file"] = rel
                meta["sha256"] = _sha256(tmp / rel)
                meta.update(_estimator_record(model.estimator))
                names = meta.get("feature_names_in", meta["predictors"])
                if meta["n_features_in"] != len(meta["predictors"]) or \
                        names != meta["predictors"]:
                    remove(tmp)
                    raise BundleMismatchError(
                        f"{flux} {stem} model: the forest's {meta['n_features_in']} inputs "
                        f"{_short(names)} do not match the card's predictors "
                        f"{_short(meta['predictors'])}; not saved")
        card["seal"] = _seal(card)
        for name, tables in (("cv_predictions", self.cv_predictions),
                             ("blocked_cv", self.blocked_cv)):
            if tables:
                pd.concat([d.assign(flux=f) for f, d in tables.items()], ignore_index=True
                          ).to_csv(url(tmp / f"{name}.csv"), index=False)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, allow_nan=True))
        publish(out)
        self.card = card
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- seal of the card


def _canonical_json(value: object) -> bytes:
    """Canonical JSON of ``value``: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def _digest(value: object) -> str:
    return hashlib.sha256(_canonical_json(value)).hexdigest()


def _estimator_record(est: RandomForestRegressor) -> dict[str, Any]:
    """What a forest says about its own inputs (independent of the card's predictor list)."""
    record: dict[str, Any] = {"n_features_in": int(est.n_features_in_)}
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        record["feature_names_in"] = [str(n) for n in names]
    return record


def _model_entries(card: dict[str, Any], card_path: Path | str = "card.json"
                   ) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(where, flux, meta)`` of every model of a card, ``where`` like ``models.NEE.central``.

    Raises
    ------
    BundleMismatchError
        The card's ``models`` section is not shaped as :meth:`ModelBundle.save` writes it.
    """
    models = card.get("models")
    if not isinstance(models, dict):
        raise BundleMismatchError(f"{card_path}: field 'models' is missing or not an object")
    for flux, entry in models.items():
        central = entry.get("central") if isinstance(entry, dict) else None
        boots = entry.get("bootstraps", []) if isinstance(entry, dict) else None
        if not isinstance(central, dict) or not isinstance(boots, list) or \
                not all(isinstance(b, dict) for b in boots):
            raise BundleMismatchError(f"{card_path}: field models.{flux} lacks a 'central' model "
                                      "object or a 'bootstraps' list of model objects")
        yield f"models.{flux}.central", str(flux), central
        for i, meta in enumerate(boots):
            yield f"models.{flux}.bootstraps[{i}]", str(flux), meta


def _sealed_fields(card: dict[str, Any], card_path: Path | str = "card.json"
                   ) -> dict[str, Any]:
    """Field path → value of every model-defining field present in ``card``."""
    out = {k: card[k] for k in SEALED_CARD_FIELDS if k in card}
    for where, _, meta in _model_entries(card, card_path):
        out.update({f"{where}.{k}": meta[k] for k in SEALED_MODEL_FIELDS if k in meta})
    return out


def _seal(card: dict[str, Any]) -> dict[str, Any]:
    """The seal of a (JSON-normalised) card.

    ``digest`` hashes the canonical JSON of all model-defining fields, ``fields`` maps each
    field to the hash of its value and ``values`` keeps every distinct sealed value once (keyed
    by its hash; most models share predictor lists), so a changed field can be shown with its
    sealed and its current value.
    """
    fields = _sealed_fields(card)
    digests = {k: _digest(v) for k, v in fields.items()}
    return {"algorithm": SEAL_ALGORITHM,
            "canonical_json": "sort_keys, separators (',', ':'), ASCII",
            "covers": [*SEALED_CARD_FIELDS, *(f"models.<flux>.<model>.{k}"
                                              for k in SEALED_MODEL_FIELDS)],
            "fields": digests,
            "values": {digests[k]: v for k, v in fields.items()},
            "digest": _digest(fields)}


def _difference(old: object, new: object, at: str = "", limit: int = 4) -> list[str]:
    """Where ``new`` differs from ``old`` (nested keys / list positions), as ``at: old → new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{at}.{k}" if at else str(k)
            if k not in new:
                out.append(f"{sub}: {_short(old[k], 60)} → (removed)")
            elif k not in old:
                out.append(f"{sub}: (absent) → {_short(new[k], 60)}")
            elif _digest(old[k]) != _digest(new[k]):
                out += _difference(old[k], new[k], sub, limit)
        return out[:limit]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                if _digest(a) != _digest(b) for d in _difference(a, b, f"{at}[{i}]", limit)
                ][:limit]
    return [f"{at + ': ' if at else ''}{_short(old, 80)} → {_short(new, 80)}"]


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _reseal_hint(directory: Path) -> str:
    return ("retrain the bundle (abz-dask train), or — only if you trained it yourself and did "
            "not edit card.json — re-seal it once: python -c \"from abz_dask.training.bundle "
            f"import reseal_bundle; reseal_bundle('{directory}')\"")


def _verify_seal(card: dict[str, Any], card_path: Path) -> None:
    """Refuse a card whose model-defining fields differ from its seal (see :func:`load_bundle`)."""
    seal = card.get("seal")
    if seal is None:
        raise BundleMismatchError(
            f"{card_path}: field 'seal' is missing — the card was written before abz_dask sealed "
            "model bundles, so its predictor names, order and encodings cannot be verified "
            f"against the models; {_reseal_hint(card_path.parent)}")
    if not isinstance(seal, dict) or not isinstance(seal.get("fields"), dict) or \
            not isinstance(seal.get("digest"), str):
        raise BundleMismatchError(f"{card_path}: field 'seal' is malformed (needs 'fields' and "
                                  f"'digest'); {_reseal_hint(card_path.parent)}")
    if seal.get("algorithm") != SEAL_ALGORITHM:
        raise BundleMismatchError(f"{card_path}: field seal.algorithm is "
                                  f"{seal.get('algorithm')!r}, expected {SEAL_ALGORITHM!r}")
    sealed: dict[str, Any] = seal["fields"]
    known: dict[str, Any] = seal["values"] if isinstance(seal.get("values"), dict) else {}
    current = _sealed_fields(card, card_path)
    changed: list[str] = []
    whole: set[str] = set()  # models added or removed as a whole: reported once
    for path in [*current, *(p for p in sealed if p not in current)]:
        model = path.rsplit(".", 1)[0] if path.startswith("models.") else ""
        if model in whole:
            continue
        if path not in sealed:
            if model and not any(p.startswith(model + ".") for p in sealed):
                whole.add(model)
                changed.append(f"model {model} is not covered by the seal (added after the "
                               "bundle was saved)")
                continue
            changed.append(f"field {path} = {_short(current[path])} is not covered by the seal "
                           "(added after the bundle was saved)")
        elif path not in current:
            if model and not any(p.startswith(model + ".") for p in current):
                whole.add(model)
                changed.append(f"model {model} (sealed with the bundle) is missing from the "
                               "card")
                continue
            changed.append(f"field {path} (sealed SHA-256 {str(sealed[path])[:16]}…) is missing "
                           "from the card")
        elif (now := _digest(current[path])) != sealed[path]:
            if sealed[path] in known and _digest(known[sealed[path]]) == sealed[path]:
                diff = ", ".join(_difference(known[sealed[path]], current[path]))
                changed.append(f"field {path} was changed (sealed → card): {diff}")
            else:
                changed.append(f"field {path} was changed: sealed SHA-256 "
                               f"{str(sealed[path])[:16]}…, card now {_short(current[path])} "
                               f"(SHA-256 {now[:16]}…)")
    if changed:
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise BundleMismatchError(
            f"{card_path}: the model-defining fields differ from the bundle's seal, so the card "
            "no longer describes its models (predictions would change silently): "
            + "; ".join(changed[:3]) + more + ". Restore the card or retrain the bundle.")
    if (now := _digest(current)) != seal["digest"]:
        raise BundleMismatchError(f"{card_path}: field seal.digest is {seal['digest']} but the "
                                  f"sealed fields hash to {now} (the seal was edited)")


# ---------------------------------------------------------------- model files


def _model_path(directory: Path, card_path: Path, where: str, meta: dict[str, Any]) -> Path:
    """The model file of one card entry, refusing any path that leaves the bundle folder.

    Raises
    ------
    BundleMismatchError
        ``file`` is missing, absolute, contains ``..`` or resolves (e.g. through a symbolic
        link) outside ``directory``; the message names the card, the model and the path.
    """
    rel = meta.get("file")
    what = f"{card_path}: field {where}.file"
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise BundleMismatchError(f"{what} is {rel!r}, not a file name inside the bundle")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.anchor:
        raise BundleMismatchError(f"{what} is the absolute path {rel!r}; model files must be "
                                  f"relative paths inside the bundle folder {directory}")
    if ".." in posix.parts or ".." in win.parts:
        raise BundleMismatchError(f"{what} is {rel!r}, which leaves the bundle folder "
                                  f"{directory} ('..'); model files must stay inside it")
    path = directory / rel
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise BundleMismatchError(f"{what} is {rel!r}, which resolves to {path.resolve()}, "
                                  f"outside the bundle folder {root}")
    return path


def _load_estimator(directory: Path, card_path: Path, where: str, meta: dict[str, Any]
                    ) -> RandomForestRegressor:
    path = _model_path(directory, card_path, where, meta)
    if not path.is_file():
        raise BundleMismatchError(f"{card_path}: field {where}.file names {meta['file']!r}, "
                                  f"which is missing from the bundle {directory}")
    if (actual := _sha256(path)) != meta.get("sha256"):
        raise BundleMismatchError(f"{path}: SHA-256 {actual} differs from the model card "
                                  f"({card_path} field {where}.sha256 = {meta.get('sha256')!r}); "
                                  "the file changed")
    return load_forest(path)


def _looks_like(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(1, 6)}:
        return "a Python pickle, which abz_dask never loads"
    if head[:2] in {b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b"}:
        return "a compressed stream (e.g. a joblib pickle), which abz_dask never loads"
    return "not a zip archive (random bytes, or a truncated or damaged skops file)"


def check_skops_file(path: str | Path | Location, data: bytes | None = None) -> None:
    """Refuse a file that is not a skops archive of a ``RandomForestRegressor``.

    Checks, without unpickling or constructing anything, that ``path`` is a zip archive whose
    ``schema.json`` is skops' schema (``__class__``, ``__module__``, ``protocol``) of a
    ``RandomForestRegressor``.

    Parameters
    ----------
    path : path
        Model file.

    Raises
    ------
    BundleMismatchError
        Naming the file and what it is instead (a pickle, random bytes, a truncated archive, an
        archive without skops' schema, another type).
    """
    path = as_path(path)
    raw = path.read_bytes() if data is None else data
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise BundleMismatchError(f"{path}: not a skops model file ({_looks_like(raw[:8])}); "
                                  "refusing to load it")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            if "schema.json" not in z.namelist():
                raise BundleMismatchError(f"{path}: not a skops model file (a zip archive "
                                          "without skops' schema.json); refusing to load it")
            schema = json.loads(z.read("schema.json"))
    except BundleMismatchError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, UnicodeDecodeError,
            ValueError, RuntimeError) as exc:
        raise BundleMismatchError(f"{path}: not a readable skops model file (damaged zip "
                                  f"archive or schema.json: {type(exc).__name__}: {exc}); "
                                  "refusing to load it") from exc
    keys = ("__class__", "__module__", "protocol")
    if not isinstance(schema, dict) or not all(k in schema for k in keys):
        raise BundleMismatchError(f"{path}: not a skops model file (schema.json lacks "
                                  f"{', '.join(keys)}); refusing to load it")
    kind = f"{schema['__module__']}.{schema['__class__']}"
    if kind != FOREST_TYPE:
        raise BundleMismatchError(f"{path}: the skops file holds a {kind}, not a "
                                  "RandomForestRegressor; refusing to load it")


def load_forest(path: str | Path | Location) -> RandomForestRegressor:
    """A forest from a skops file, refusing any type outside :data:`TRUSTED_TYPES`.

    The file is first checked with :func:`check_skops_file` (so a pickle or any non-skops file
    is refused before skops reads it); any error skops raises on a damaged file is re-raised as
    one :class:`BundleMismatchError` naming the file.

    Parameters
    ----------
    path : path
        Model file.

    Returns
    -------
    RandomForestRegressor

    Raises
    ------
    BundleMismatchError
        The file is not a skops file of a forest, cannot be read by skops, holds other types, or
        not a ``RandomForestRegressor``.
    """
    import skops.io as sio

    path = as_path(path)
    raw = path.read_bytes()
    check_skops_file(path, raw)
    try:
        untrusted = sio.get_untrusted_types(data=raw)
    except Exception as exc:  # skops raises many types on damaged files
        raise BundleMismatchError(f"{path}: skops cannot read this model file "
                                  f"({type(exc).__name__}: {exc}); refusing to load it") from exc
    bad = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if bad:
        raise BundleMismatchError(f"{path}: refuses to load unexpected types {bad}")
    try:
        est = sio.loads(raw, trusted=list(untrusted))
    except Exception as exc:
        raise BundleMismatchError(f"{path}: skops cannot load this model file "
                                  f"({type(exc).__name__}: {exc}); refusing to load it") from exc
    if not isinstance(est, RandomForestRegressor):
        raise BundleMismatchError(f"{path}: not a RandomForestRegressor ({type(est).__name__})")
    return est


def _check_estimator(est: RandomForestRegressor, path: Path, card_path: Path, where: str,
                     meta: dict[str, Any]) -> None:
    """Compare what the forest says about its inputs with the card entry ``meta``."""
    predictors = list(meta["predictors"])
    own = _estimator_record(est)
    if own["n_features_in"] != meta.get("n_features_in"):
        raise BundleMismatchError(
            f"{path}: the forest has {own['n_features_in']} inputs but {card_path} field "
            f"{where}.n_features_in is {meta.get('n_features_in')!r}")
    if own["n_features_in"] != len(predictors):
        raise BundleMismatchError(
            f"{path}: the forest has {own['n_features_in']} inputs, {card_path} field "
            f"{where}.predictors lists {len(predictors)}: {_short(predictors)}")
    if "feature_names_in" in own and own["feature_names_in"] != predictors:
        raise BundleMismatchError(
            f"{path}: the forest was fitted on columns {_short(own['feature_names_in'])} but "
            f"{card_path} field {where}.predictors is {_short(predictors)}")
    if own.get("feature_names_in") != meta.get("feature_names_in"):
        raise BundleMismatchError(
            f"{path}: the forest's feature names {_short(own.get('feature_names_in'))} differ "
            f"from {card_path} field {where}.feature_names_in "
            f"{_short(meta.get('feature_names_in'))}")


def _model_from_card(directory: Path, card_path: Path, where: str, flux: str,
                     meta: dict[str, Any]) -> FluxModel:
    est = _load_estimator(directory, card_path, where, meta)
    _check_estimator(est, directory / meta["file"], card_path, where, meta)
    enc = CategoricalEncoding.from_json(meta["encoding"]) if meta.get("encoding") else \
        CategoricalEncoding()
    return FluxModel(flux, est, tuple(meta["predictors"]), enc, int(meta["mtry"]),
                     int(meta["seed"]))


def _read_card(directory: Path) -> tuple[Path, dict[str, Any]]:
    card_path = directory / "card.json"
    if not card_path.exists():
        raise BundleMismatchError(f"{directory}: no card.json (not a complete model bundle)")
    try:
        card = json.loads(card_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleMismatchError(f"{card_path}: not valid JSON ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or \
            card.get("version") != CARD_VERSION:
        raise BundleMismatchError(f"{card_path}: not an abz_dask model card v{CARD_VERSION}")
    fluxes = card.get("fluxes")
    models = card.get("models")
    if not isinstance(fluxes, list) or not isinstance(models, dict) or \
            [f for f in fluxes if f not in models]:
        raise BundleMismatchError(f"{card_path}: field 'fluxes' ({_short(fluxes)}) does not "
                                  "match the fluxes of field 'models'")
    for where, _, meta in _model_entries(card, card_path):
        _model_path(directory, card_path, where, meta)  # before anything is opened
    return card_path, card


def load_bundle(directory: str | Path | Location, cube: xr.Dataset | None = None) -> ModelBundle:
    """Load a bundle written by :meth:`ModelBundle.save`, verifying the card against its seal.

    Before any model file is opened, every model ``file`` of the card must be a relative path
    resolving inside ``directory``, and the card's model-defining fields (predictor names and
    order, encodings, fluxes, file names and SHA-256, the forests' input counts; see
    :data:`SEALED_CARD_FIELDS`, :data:`SEALED_MODEL_FIELDS`) must match ``card["seal"]``. Then
    each file must hash to its SHA-256, be a skops archive of a forest (:func:`load_forest`) and
    agree with the card on its number (and names, when recorded) of inputs.

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
        Naming the card or model file, the field and the two values: a card edited after the
        bundle was saved (e.g. predictor names swapped or reordered, a vegetation-type code
        changed), a model path leaving the bundle, a missing or changed file, a pickle or other
        non-skops file, unexpected types, or a cube that does not match the card.

    Notes
    -----
    Bundles written before abz_dask sealed its cards (no ``seal`` field) are refused: retrain
    them (``abz-dask train``), or — only for a bundle you trained yourself and whose card you did
    not edit — re-seal it once with :func:`reseal_bundle` (``python -c "from
    abz_dask.training.bundle import reseal_bundle; reseal_bundle('RUN/models')"``).
    """
    directory = as_path(directory)
    card_path, card = _read_card(directory)
    _verify_seal(card, card_path)
    if cube is not None:
        check_cube(card, cube)
    models: dict[str, FluxModel] = {}
    boots: dict[str, list[FluxModel]] = {}
    for flux in card["fluxes"]:
        entry = card["models"][flux]
        models[flux] = _model_from_card(directory, card_path, f"models.{flux}.central", flux,
                                        entry["central"])
        boots[flux] = [_model_from_card(directory, card_path, f"models.{flux}.bootstraps[{i}]",
                                        flux, m)
                       for i, m in enumerate(entry.get("bootstraps", []))]
    metrics = pd.DataFrame.from_records(
        [{"flux": f, **card["models"][f]["cv_metrics"]} for f in card["fluxes"]]
    ).set_index("flux")
    return ModelBundle(models, boots, card, read_cv_tables(directory / "cv_predictions.csv"),
                       metrics, read_cv_tables(directory / "blocked_cv.csv"))


def read_cv_tables(path: str | Path | Location) -> dict[str, pd.DataFrame]:
    """Flux → held-out predictions of a bundle's ``cv_predictions.csv`` or ``blocked_cv.csv``
    (empty when the file does not exist)."""
    path = as_path(path)
    if not path.exists():
        return {}
    allcv = pd.read_csv(url(path), dtype={"site_id": str})
    return {str(f): d.drop(columns="flux").reset_index(drop=True)
            for f, d in allcv.groupby("flux", sort=False)}


def reseal_bundle(directory: str | Path | Location, *, force: bool = False) -> Path:
    """The documented re-seal step: seal the card of a bundle as it stands.

    For bundles written before abz_dask sealed its cards, which :func:`load_bundle` refuses.
    Every model file is checked (path inside the bundle, SHA-256 as in the card, a skops file of
    a forest trusting only :data:`TRUSTED_TYPES`, as many inputs as the card lists predictors);
    the forests' own input counts/names are recorded and the seal is written (``card.json`` is
    replaced atomically).

    Re-sealing declares the card correct: it cannot tell whether predictor names, their order or
    the encodings were edited before. Run it only on a bundle you trained yourself and whose
    card you did not edit; otherwise retrain.

    Parameters
    ----------
    directory : path
        Bundle folder.
    force : bool
        Also re-seal a card whose existing seal no longer verifies (i.e. accept edits made after
        the bundle was saved). Off by default.

    Returns
    -------
    Path
        The re-sealed ``card.json``.

    Raises
    ------
    BundleMismatchError
        A model file fails a check, or the card has a seal that does not verify and ``force``
        is off.
    """
    directory = as_path(directory)
    card_path, card = _read_card(directory)
    if "seal" in card and not force:
        _verify_seal(card, card_path)
    card.pop("seal", None)
    for where, _, meta in list(_model_entries(card, card_path)):
        est = _load_estimator(directory, card_path, where, meta)
        meta.pop("feature_names_in", None)
        meta.update(_estimator_record(est))
        _check_estimator(est, directory / meta["file"], card_path, where, meta)
    card["seal"] = _seal(card)
    write_atomic(card_path, json.dumps(card, indent=2, allow_nan=True))
    return card_path


def card_predictors(card: dict[str, Any]) -> tuple[Predictor, ...]:
    """The predictor set a card records (``card["predictors"]``), in model order.

    Cards written before predictor sets existed have none: their models use the paper's 17
    (:data:`~abz_dask.io.predictors.PREDICTORS`).

    Raises
    ------
    BundleMismatchError
        The record is malformed.
    """
    rec = card.get("predictors")
    if rec is None:
        return PREDICTORS
    try:
        return predictors_from_record(rec)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleMismatchError(f"model card field 'predictors' is malformed ({e})") from e


_KIND_DIMS = {"monthly": ("time", "y", "x"), "annual": ("time", "y", "x"), "static": ("y", "x"),
              "series": ("time",)}


def check_cube(card: dict[str, Any], cube: xr.Dataset) -> None:
    """Refuse a predictor cube that does not match a model card.

    Checks that every predictor of every model is a variable of the cube (``month`` comes from
    ``time``) with the dimensions of its kind in the card's predictor set (``(time, y, x)``
    monthly/annual, ``(y, x)`` static, ``(time,)`` series) and that every category
    present in the cube (vegetation-type codes, calendar
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
    kinds = {p.name: p.kind for p in card_predictors(card)}
    unknown = sorted(p for p in needed if p not in PREDICTOR_NAMES and p not in kinds)
    if unknown:
        raise BundleMismatchError(f"the model card uses predictors unknown to abz_dask and "
                                  f"absent from its predictor set: {unknown}")
    for name in sorted(needed - {"month"}):
        want = _KIND_DIMS.get(kinds.get(name, ""))
        if want is not None and tuple(cube[name].dims) != want:
            raise BundleMismatchError(f"the cube's variable {name!r} has dims "
                                      f"{tuple(cube[name].dims)}, but the model card records "
                                      f"a {kinds[name]} predictor {want}")
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
