"""Training: leave-one-site-out tuned random forests per flux, bootstraps, diagnostics, bundle.

The paper's method (seed-spec §4.1–4.6, DECISIONS 5–8) spread over Dask; see
:mod:`abz_dask.training.fit` for the steps, :mod:`abz_dask.training.profiles` for the ``paper``
and ``light`` settings, :mod:`abz_dask.training.diagnostics` for the tables and figures and
:mod:`abz_dask.training.bundle` for the saved models and their card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from abz_dask import DEFAULT_SEED
from abz_dask.io.location import as_path
from abz_dask.training.bundle import (
    BundleMismatchError,
    FluxModel,
    ModelBundle,
    check_cube,
    load_bundle,
)
from abz_dask.training.fit import caret_mtry_grid, train_bundle
from abz_dask.training.folds import fold_ids
from abz_dask.training.profiles import PROFILES, TrainingProfile, resolve_profile

__all__ = ["PROFILES", "BundleMismatchError", "FluxModel", "ModelBundle", "TrainingProfile",
           "caret_mtry_grid", "check_cube", "fold_ids", "load_bundle", "resolve_profile",
           "run_training", "train_bundle"]


def run_training(table_or_path: pd.DataFrame | str | Path, out_dir: str | Path, *,
                 profile: str | TrainingProfile = "light",
                 fluxes: Sequence[str] = ("NEE", "GPP", "Reco"),
                 seed: int = DEFAULT_SEED,
                 progress: bool = True) -> ModelBundle:
    """The ``train`` stage: training table in, model bundle and diagnostics out.

    Writes ``out_dir/training/`` (the training table as Parquet and CSV with units in the
    headers, CV predictions, metric tables, tuning, importance, partial dependence, figures)
    and ``out_dir/models/`` (the bundle; ``card.json`` appears last, so its presence marks a
    finished stage).

    Parameters
    ----------
    table_or_path : DataFrame or path
        Training table, or a Parquet/CSV file written by
        :func:`abz_dask.training.extract.write_training_table`.
    out_dir : path
        Run folder.
    profile : str or TrainingProfile
        ``"light"``, ``"paper"``, a YAML path or a profile.
    fluxes : sequence of str
        Responses to model.
    seed : int
        Base seed (default :data:`abz_dask.DEFAULT_SEED`).
    progress : bool
        Show progress bars.

    Returns
    -------
    ModelBundle
    """
    from abz_dask.training.extract import read_training_table, write_training_table

    out = as_path(out_dir)
    table = (table_or_path if isinstance(table_or_path, pd.DataFrame)
             else read_training_table(table_or_path))
    write_training_table(table, out / "training")
    bundle = train_bundle(table, profile=profile, fluxes=fluxes, seed=seed, progress=progress,
                          diagnostics_dir=out / "training",
                          checkpoint_dir=out / "training" / "cv_fits")
    bundle.save(out / "models")
    return bundle
