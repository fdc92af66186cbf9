"""Training profiles: every setting of a training run in one validated pydantic model.

Two named profiles (:data:`PROFILES`):

``paper``
    The paper's method (seed-spec §4.2–4.6, DECISIONS 5–8): leave-one-site-out folds, mtry grid
    = caret's ``floor(seq(2, p, length = 3))``, 500 trees everywhere, 20 bootstrap models,
    permutation importance with 100 repeats on all training rows, partial dependence on a
    51-point grid (pdp's default resolution) over all training rows.
``light``
    The same method made cheap for demos and tests: grouped 5-fold CV by site (sites never
    split across folds) with 30 trees per tuning fit, 100 trees in the central models, 25 trees
    per bootstrap model (still 20 replicates), importance with 5 repeats on at most 1,500 rows,
    partial dependence on a 12-point grid over at most 500 rows. The forests keep the paper's
    tree settings (``min_samples_split = 6``, bootstrap rows, ``max_features = mtry``), so the
    maps differ from ``paper`` only by Monte-Carlo noise and the coarser tuning. Sized so that
    3 fluxes × (tuning + central + 20 bootstraps) on ≈ 4,800 rows train in under a minute on
    2 cores (``benchmarks/RESULTS_training.md``).

A profile can be overridden field by field from YAML or a mapping (unknown keys are errors)::

    base: light          # optional, default paper
    final_trees: 300
    cv: loso

see :func:`resolve_profile`.

Both named profiles bootstrap by row as the paper does (DECISIONS 8). ``bootstrap_unit: site``
draws whole sites instead; on the twin its budget SD comes much closer to the spread over redrawn
site networks, which the row bootstrap misses (``benchmarks/RESULTS_bootstrap_unit.md``).
``bootstrap_unit: cluster`` draws whole spatial clusters of sites (complete-linkage clusters of
at most ``bootstrap_cluster_km`` across, default 1,000 km), so that a region whose error comes
from a smooth field no predictor carries is in or out of a replicate as a whole
(``benchmarks/RESULTS_coverage.md``).

Resampling the sites a network holds cannot reveal an error that every network of the same
design shares (a domain whose sites sit where the model is biased). ``interval: blocked_cv``
adds that term: after tuning, the chosen forest is cross-validated once more over
``n_folds`` folds of whole spatial clusters of sites, and each domain's budget interval becomes
± 1.96 × √(bootstrap SD² + CV error²), the CV error being the domain's area × the sites'
held-out annual residual (:mod:`abz_dask.aggregation.intervals`). Use it with
``bootstrap_unit: cluster`` (``benchmarks/RESULTS_coverage.md`` measures both families).

Both named profiles also keep scikit-learn's node-size counting (``node_size_counts: rows``):
``min_samples_split`` counts the distinct rows in a node, where randomForest's ``nodesize``
counts bootstrap draws, so its trees have ≈ 1.5× as many leaves. ``node_size_counts: draws``
grows trees of randomForest's size (``benchmarks/RESULTS_fit.md``).

The **predictor set** is the paper's 17 unless the profile names one (``predictors``)::

    predictors: {drop: [soil_ph, cti], add: [peat_depth]}   # the 17 - drop + add (appended)
    predictors: [month, tair, srad, ndvi, co2, peat_depth]   # or the whole set, in model order

``add`` and full lists may name predictors of the user's own: continuous cube variables built
from an entry of build-cube's ``predictors:`` section with its ``kind`` and ``units``
(:func:`abz_dask.io.predictors.select_predictors`). Bootstrap models use the set's continuous
predictors (the paper's 15 by default); the default mtry grid follows the set's size. A profile
without ``predictors`` dumps exactly as before (the key is left out), so its runs are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

__all__ = ["PROFILES", "PredictorChoice", "TrainingProfile", "resolve_profile"]


class PredictorChoice(BaseModel):
    """The paper's 17 predictors minus ``drop`` plus ``add`` (appended in order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop: tuple[str, ...] = Field(default=(), description="Catalogue predictors left out.")
    add: tuple[str, ...] = Field(
        default=(), description="Predictors of the user's own (cube variables) appended.")

    @model_validator(mode="after")
    def _check(self) -> PredictorChoice:
        from abz_dask.io.predictors import CATALOGUE

        bad = [n for n in self.drop if n not in CATALOGUE]
        if bad:
            raise ValueError(f"drop: {bad} are not catalogue predictors ({list(CATALOGUE)})")
        cat = [n for n in self.add if n in CATALOGUE]
        if cat:
            raise ValueError(f"add: {cat} are catalogue predictors (already in the default "
                             "set; give a full list to reorder)")
        both = [*self.drop, *self.add]
        dup = sorted({n for n in both if both.count(n) > 1})
        if dup:
            raise ValueError(f"{dup} named more than once")
        if len(self.drop) == len(CATALOGUE) and not self.add:
            raise ValueError("drop leaves no predictor")
        return self


class TrainingProfile(BaseModel):
    """Settings of a training run (see the module docstring for the two named profiles)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="custom", description="Label recorded in the model card.")
    cv: Literal["loso", "group_kfold"] = Field(
        default="loso",
        description="Leave-one-site-out (one fold per site) or grouped k-fold by site.")
    n_folds: int = Field(default=5, ge=2, description="Folds of group_kfold (unused by loso).")
    mtry_grid: tuple[int, ...] | None = Field(
        default=None, description="mtry values tried; None = caret floor(seq(2, p, length=3)).")
    tuning_trees: int = Field(default=500, ge=1, description="Trees per tuning (CV) fit.")
    final_trees: int = Field(default=500, ge=1, description="Trees of the central models.")
    bootstrap_trees: int = Field(default=500, ge=1, description="Trees per bootstrap model.")
    n_bootstrap: int = Field(default=20, ge=0, description="Bootstrap models per flux.")
    bootstrap_unit: Literal["row", "site", "cluster"] = Field(
        default="row",
        description="What a bootstrap training set resamples: rows (DECISIONS 8, the paper), "
                    "whole sites with all their rows (a block bootstrap that also sees which "
                    "sites the network holds) or whole spatial clusters of sites "
                    "(bootstrap_cluster_km).")
    bootstrap_cluster_km: float = Field(
        default=1000.0, gt=0,
        description="Largest distance (km, polar LAEA) between two sites of one cluster of the "
                    "cluster bootstrap (complete linkage); unused by the other units.")
    interval: Literal["bootstrap", "blocked_cv"] = Field(
        default="bootstrap",
        description="The budgets' 95 % interval: ± 1.96 × the bootstrap SD (the paper), or "
                    "± 1.96 × √(bootstrap SD² + blocked-CV error²), the second term being the "
                    "domain's budget error implied by the held-out residuals of a "
                    "cross-validation over folds of whole spatial clusters of sites "
                    "(bootstrap_cluster_km); see abz_dask.aggregation.intervals.")
    min_samples_split: int = Field(default=6, ge=2, description="randomForest nodesize 5.")
    node_size_counts: Literal["rows", "draws"] = Field(
        default="rows",
        description="What min_samples_split counts: distinct rows of a tree's bootstrap sample "
                    "(scikit-learn's forest, which weights rows) or bootstrap draws, as "
                    "randomForest's nodesize does (trees fitted on their drawn rows; ≈ 1.5× "
                    "the leaves and fit time).")
    min_samples_leaf: int = Field(default=1, ge=1, description="Smallest leaf.")
    month_scheme: Literal["mean_response", "ordinal"] = Field(
        default="mean_response", description="Encoding of month (DECISIONS 7).")
    importance_repeats: int = Field(
        default=100, ge=0, description="Permutations per predictor; 0 = none.")
    importance_rows: int | None = Field(
        default=None, ge=10, description="Rows (random subset) for importance; None = all.")
    pdp_points: int = Field(
        default=51, ge=0, description="Grid points per continuous predictor; 0 = no PDP.")
    pdp_rows: int | None = Field(
        default=None, ge=10, description="Rows (random subset) averaged in PDPs; None = all.")
    predictors: tuple[str, ...] | PredictorChoice | None = Field(
        default=None, description="Predictor set: the whole list in model order, or "
        "{drop: [...], add: [...]} applied to the paper's 17; None = the paper's 17.")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler,
              info: SerializationInfo) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.predictors is None:  # profiles without a set dump exactly as before
            out.pop("predictors", None)
        if self.interval == "bootstrap":  # the default: older records and ledgers stay current
            out.pop("interval", None)
        if self.bootstrap_unit != "cluster" and self.interval != "blocked_cv":  # unused
            out.pop("bootstrap_cluster_km", None)
        return out

    @model_validator(mode="after")
    def _check_grid(self) -> TrainingProfile:
        if self.mtry_grid is not None and (not self.mtry_grid or min(self.mtry_grid) < 1):
            raise ValueError("mtry_grid must hold positive integers")
        if isinstance(self.predictors, tuple):
            names = list(self.predictors)
            dup = sorted({n for n in names if names.count(n) > 1})
            if not names or dup:
                raise ValueError(f"predictors: the list is empty or names {dup} twice")
        return self

    def predictor_set(self, available: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
        """The profile's predictors (:class:`~abz_dask.io.predictors.Predictor`) in model order.

        Parameters
        ----------
        available : mapping, optional
            User predictors that may be named (name -> Predictor).

        Raises
        ------
        ValueError
            A name that is neither a catalogue predictor nor available.
        """
        from abz_dask.io.predictors import select_predictors

        p = self.predictors
        if isinstance(p, PredictorChoice):
            return select_predictors(drop=p.drop, add=p.add, available=available)
        return select_predictors(p, available=available)


PROFILES: dict[str, TrainingProfile] = {
    "paper": TrainingProfile(name="paper"),
    "light": TrainingProfile(
        name="light", cv="group_kfold", n_folds=5, tuning_trees=30, final_trees=100,
        bootstrap_trees=25, importance_repeats=5, importance_rows=1500, pdp_points=12,
        pdp_rows=500),
}


def resolve_profile(spec: str | Path | TrainingProfile | Mapping[str, Any]) -> TrainingProfile:
    """A :class:`TrainingProfile` from a name, a YAML file, a mapping or a profile.

    Parameters
    ----------
    spec : str, path, mapping or TrainingProfile
        ``"paper"`` / ``"light"``; a path to a YAML file; or a mapping. YAML files and mappings
        hold field overrides and an optional ``base`` (a profile name, default ``paper``).

    Returns
    -------
    TrainingProfile

    Raises
    ------
    ValueError
        Unknown profile name, unknown field or invalid value.
    """
    if isinstance(spec, TrainingProfile):
        return spec
    if isinstance(spec, str) and spec in PROFILES:
        return PROFILES[spec]
    if isinstance(spec, str | Path):
        p = Path(spec)
        if not p.is_file():
            raise ValueError(f"unknown training profile {str(spec)!r}: not one of "
                             f"{sorted(PROFILES)} and not a YAML file")
        from abz_dask.io.yamlfile import read_mapping

        spec = read_mapping(p, "training profile")
    over = dict(spec)
    base_name = over.pop("base", "paper")
    if base_name not in PROFILES:
        raise ValueError(f"unknown base profile {base_name!r}; choose one of {sorted(PROFILES)}")
    base = PROFILES[base_name].model_dump()
    base["name"] = over.pop("name", f"{base_name}+custom" if over else base_name)
    return TrainingProfile.model_validate({**base, **over})
