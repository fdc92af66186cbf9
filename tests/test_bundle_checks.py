"""Model bundles are verified, never trusted: seal of the card, paths, skops-only files.

Each tampering case edits a copy of one small saved bundle and asserts the error type and that
the message names the file and the field or value. Cases that get past the seal (an editor who
re-seals the card by hand) check the later, file-level checks.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import re
import shutil
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from abz_dask.training import (
    BundleMismatchError,
    FluxModel,
    ModelBundle,
    TrainingProfile,
    load_bundle,
    train_bundle,
)
from abz_dask.training.bundle import (
    CARD_FORMAT,
    CARD_VERSION,
    _seal,
    check_skops_file,
    load_forest,
    reseal_bundle,
)
from abz_dask.training.synthetic import synthetic_training_table

PACKAGE = Path(__file__).resolve().parents[1] / "abz_dask"

#: As small as training gets (the forests only need to exist and predict).
TINY = TrainingProfile(name="tiny", cv="group_kfold", n_folds=3, tuning_trees=4,
                       final_trees=6, bootstrap_trees=4, n_bootstrap=2, importance_repeats=0,
                       pdp_points=0)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_training_table(n_sites=12, months_per_site=(6, 12), seed=3)


@pytest.fixture(scope="module")
def saved(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[ModelBundle, Path]:
    bundle = train_bundle(table, profile=TINY, fluxes=("NEE", "GPP"), seed=11, progress=False)
    out = bundle.save(tmp_path_factory.mktemp("sealed") / "models")
    return bundle, out


@pytest.fixture
def copy(saved: tuple[ModelBundle, Path], tmp_path: Path) -> Path:
    """A private copy of the saved bundle, free to tamper with."""
    return Path(shutil.copytree(saved[1], tmp_path / "models"))


def _card(d: Path) -> dict[str, Any]:
    return json.loads((d / "card.json").read_text())


def _write(d: Path, card: dict[str, Any], *, reseal: bool = False) -> None:
    """Write a card; ``reseal`` plays an editor who also recomputes the seal."""
    if reseal:
        card.pop("seal", None)
        card["seal"] = _seal(card)
    (d / "card.json").write_text(json.dumps(card, indent=2))


def _refusal(d: Path) -> str:
    with pytest.raises(BundleMismatchError) as err:
        load_bundle(d)
    return str(err.value)


def _point_central_at(d: Path, rel: str, data: bytes, flux: str = "NEE") -> dict[str, Any]:
    """Put ``data`` at ``d/rel`` and make the central entry of ``flux`` name it (and its hash)."""
    (d / rel).write_bytes(data)
    card = _card(d)
    meta = card["models"][flux]["central"]
    meta["file"], meta["sha256"] = rel, hashlib.sha256(data).hexdigest()
    return card


# ---------------------------------------------------------------- untampered


def test_untampered_round_trip_predicts_identically(saved: tuple[ModelBundle, Path],
                                                    table: pd.DataFrame) -> None:
    bundle, out = saved
    card = _card(out)
    seal = card["seal"]
    assert seal["algorithm"] == "sha256" and len(seal["digest"]) == 64
    assert "models.NEE.central.predictors" in seal["fields"]
    assert "models.GPP.bootstraps[1].encoding" not in seal["fields"]  # bootstraps: no encoding
    assert "models.GPP.bootstraps[1].file" in seal["fields"]
    for f in bundle.fluxes:
        for meta, model in zip([card["models"][f]["central"], *card["models"][f]["bootstraps"]],
                               [bundle.models[f], *bundle.bootstraps[f]], strict=True):
            n = model.estimator.n_features_in_
            assert meta["n_features_in"] == n == len(meta["predictors"])
    loaded = load_bundle(out)
    assert loaded.fluxes == bundle.fluxes == ["NEE", "GPP"]
    for f in bundle.fluxes:
        a, b = bundle.models[f], loaded.models[f]
        assert a.predictors == b.predictors and a.encoding.codes == b.encoding.codes
        assert np.array_equal(a.predict(table), b.predict(table))
        for x, y in zip(bundle.bootstraps[f], loaded.bootstraps[f], strict=True):
            assert np.array_equal(x.predict(table), y.predict(table))


def test_reseal_of_an_intact_bundle_keeps_the_seal(copy: Path) -> None:
    before = _card(copy)["seal"]
    reseal_bundle(copy)
    assert _card(copy)["seal"] == before
    load_bundle(copy)


def test_no_pickle_is_ever_unpickled(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kw: object) -> None:
        raise AssertionError("pickle used while loading a bundle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_bundle(copy)
    card = _point_central_at(copy, "NEE/central.pkl", pickle.dumps({"not": "a forest"}))
    _write(copy, card, reseal=True)
    assert "pickle" in _refusal(copy)


# ---------------------------------------------------------------- the seal of the card


def test_swapped_predictor_names_are_refused(copy: Path) -> None:
    card = _card(copy)
    preds = card["models"]["NEE"]["central"]["predictors"]
    a, b = preds[:2]
    preds[0], preds[1] = b, a
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert (f'field models.NEE.central.predictors was changed (sealed → card): [0]: "{a}" → '
            f'"{b}", [1]: "{b}" → "{a}"') in msg


def test_swapped_names_are_refused_without_the_sealed_values(copy: Path) -> None:
    card = _card(copy)
    del card["seal"]["values"]  # the digests alone still catch it
    preds = card["models"]["NEE"]["central"]["predictors"]
    preds[0], preds[1] = preds[1], preds[0]
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert "field models.NEE.central.predictors was changed: sealed SHA-256" in msg
    assert json.dumps(preds[:2])[:-1] in msg  # the card's value


def test_reordered_predictors_are_refused(copy: Path) -> None:
    card = _card(copy)
    meta = card["models"]["GPP"]["bootstraps"][1]
    meta["predictors"] = meta["predictors"][1:] + meta["predictors"][:1]
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert "field models.GPP.bootstraps[1].predictors was changed (sealed → card)" in msg
    assert f'[0]: "{meta["predictors"][-1]}" → "{meta["predictors"][0]}"' in msg


def test_changed_vegetation_code_encoding_is_refused(copy: Path) -> None:
    card = _card(copy)
    codes = card["models"]["GPP"]["central"]["encoding"]["codes"]["vegtype"]
    a, b = sorted(codes)[:2]
    codes[a], codes[b] = codes[b], codes[a]  # two vegetation types trade codes
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert (f"field models.GPP.central.encoding was changed (sealed → card): codes.vegtype.{a}: "
            f"{codes[b]} → {codes[a]}, codes.vegtype.{b}: {codes[a]} → {codes[b]}") in msg


def test_a_removed_bootstrap_is_refused(copy: Path) -> None:
    card = _card(copy)
    card["models"]["NEE"]["bootstraps"].pop()
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert "model models.NEE.bootstraps[1] (sealed with the bundle) is missing" in msg


def test_an_edited_seal_is_refused(copy: Path) -> None:
    card = _card(copy)
    card["models"]["NEE"]["central"]["mtry"] += 1
    # an editor who also updates the field's digest is caught by the overall digest
    card["seal"]["fields"]["models.NEE.central.mtry"] = _seal(card)["fields"][
        "models.NEE.central.mtry"]
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg and "field seal.digest" in msg
    assert card["seal"]["digest"] in msg


def test_a_card_without_seal_is_refused_until_resealed(copy: Path, table: pd.DataFrame,
                                                       saved: tuple[ModelBundle, Path]) -> None:
    card = _card(copy)
    del card["seal"]
    for f in card["models"]:  # as written before this change
        for meta in [card["models"][f]["central"], *card["models"][f]["bootstraps"]]:
            del meta["n_features_in"]
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg and "field 'seal' is missing" in msg
    assert "reseal_bundle" in msg and "retrain" in msg
    reseal_bundle(copy)
    loaded = load_bundle(copy)
    assert np.array_equal(loaded.models["NEE"].predict(table),
                          saved[0].models["NEE"].predict(table))


def test_reseal_refuses_a_tampered_card_unless_forced(copy: Path) -> None:
    card = _card(copy)
    preds = card["models"]["NEE"]["central"]["predictors"]
    preds[2], preds[3] = preds[3], preds[2]
    _write(copy, card)
    with pytest.raises(BundleMismatchError, match=r"models\.NEE\.central\.predictors"):
        reseal_bundle(copy)
    reseal_bundle(copy, force=True)  # the user's explicit decision
    assert load_bundle(copy).models["NEE"].predictors == tuple(preds)


def test_a_forest_with_other_inputs_than_the_card_is_refused(copy: Path) -> None:
    card = _card(copy)
    meta = card["models"]["GPP"]["central"]
    meta["predictors"] = meta["predictors"][:-1]
    meta["n_features_in"] -= 1
    _write(copy, card, reseal=True)  # even a re-sealed card cannot hide it: the forest says 17
    msg = _refusal(copy)
    assert str(copy / "GPP" / "central.skops") in msg
    assert "field models.GPP.central.n_features_in is 16" in msg and "17 inputs" in msg


def test_save_refuses_a_card_that_does_not_match_its_forests(
        saved: tuple[ModelBundle, Path], tmp_path: Path) -> None:
    bundle = saved[0]
    card = json.loads(json.dumps(bundle.card))
    card["models"]["NEE"]["central"]["predictors"].pop()
    with pytest.raises(BundleMismatchError, match="NEE central model: the forest's 17 inputs"):
        ModelBundle(bundle.models, bundle.bootstraps, card).save(tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tmp").exists()


def test_feature_names_of_the_forest_are_checked(tmp_path: Path) -> None:
    """A forest fitted on named columns records them; a card naming others is refused."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["tair", "ndvi", "srad"])
    est = RandomForestRegressor(n_estimators=3, random_state=0).fit(X, X["tair"])
    model = FluxModel("NEE", est, ("tair", "ndvi", "srad"), mtry=3, seed=0)
    card = {"format": CARD_FORMAT, "version": CARD_VERSION, "fluxes": ["NEE"],
            "models": {"NEE": {"central": {"predictors": list(model.predictors), "mtry": 3,
                                           "seed": 0},
                               "bootstraps": [], "cv_metrics": {"R2": 0.5}}}}
    out = ModelBundle({"NEE": model}, {"NEE": []}, card).save(tmp_path / "m")
    meta = _card(out)["models"]["NEE"]["central"]
    assert meta["feature_names_in"] == ["tair", "ndvi", "srad"] and meta["n_features_in"] == 3
    assert np.array_equal(load_bundle(out).models["NEE"].estimator.predict(X), est.predict(X))
    card = _card(out)
    card["models"]["NEE"]["central"]["predictors"] = ["ndvi", "tair", "srad"]
    _write(out, card, reseal=True)
    msg = _refusal(out)
    assert str(out / "NEE" / "central.skops") in msg
    assert 'fitted on columns ["tair", "ndvi", "srad"]' in msg
    assert 'field models.NEE.central.predictors is ["ndvi", "tair", "srad"]' in msg


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("reseal", [False, True])
def test_a_file_outside_the_bundle_via_dotdot_is_refused(copy: Path, reseal: bool) -> None:
    shutil.copy(copy / "NEE" / "central.skops", copy.parent / "outside.skops")  # a valid forest
    card = _card(copy)
    card["models"]["NEE"]["bootstraps"][0]["file"] = "../outside.skops"
    _write(copy, card, reseal=reseal)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg and "field models.NEE.bootstraps[0].file" in msg
    assert "'../outside.skops'" in msg and "leaves the bundle folder" in msg


@pytest.mark.parametrize("target", ["/etc/passwd", "copy"])
def test_an_absolute_file_path_is_refused(copy: Path, target: str) -> None:
    if target == "copy":
        target = str(shutil.copy(copy / "NEE" / "central.skops", copy.parent / "abs.skops"))
    card = _card(copy)
    card["models"]["NEE"]["central"]["file"] = target
    _write(copy, card, reseal=True)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg and "field models.NEE.central.file" in msg
    assert repr(target) in msg and "absolute path" in msg


def test_a_symbolic_link_leaving_the_bundle_is_refused(copy: Path) -> None:
    shutil.copy(copy / "GPP" / "central.skops", copy.parent / "elsewhere.skops")
    (copy / "GPP" / "central.skops").unlink()
    (copy / "GPP" / "central.skops").symlink_to(copy.parent / "elsewhere.skops")
    msg = _refusal(copy)
    assert "field models.GPP.central.file" in msg and "'GPP/central.skops'" in msg
    assert "outside the bundle folder" in msg


# ---------------------------------------------------------------- file formats


def test_a_pickle_named_in_the_card_is_refused(copy: Path, saved: tuple[ModelBundle, Path]
                                               ) -> None:
    data = pickle.dumps(saved[0].models["NEE"].estimator)
    card = _point_central_at(copy, "NEE/central.pkl", data)
    _write(copy, card)
    msg = _refusal(copy)  # the seal names the edited field first
    assert str(copy / "card.json") in msg
    assert 'field models.NEE.central.file was changed (sealed → card): "NEE/central.skops" → ' \
        '"NEE/central.pkl"' in msg
    _write(copy, card, reseal=True)
    msg = _refusal(copy)  # re-sealed: refused by content, with one message
    assert msg == (f"{copy / 'NEE' / 'central.pkl'}: not a skops model file (a Python pickle, "
                   "which abz_dask never loads); refusing to load it")


def test_a_pickle_under_a_skops_name_is_refused(copy: Path, saved: tuple[ModelBundle, Path]
                                                ) -> None:
    card = _point_central_at(copy, "NEE/central.skops",
                             pickle.dumps(saved[0].models["NEE"].estimator, protocol=4))
    _write(copy, card, reseal=True)
    msg = _refusal(copy)
    assert str(copy / "NEE" / "central.skops") in msg and "Python pickle" in msg


def test_a_random_binary_file_is_refused(copy: Path) -> None:
    data = b"\x00" + np.random.default_rng(0).bytes(4095)
    card = _point_central_at(copy, "GPP/central.skops", data, flux="GPP")
    _write(copy, card, reseal=True)
    msg = _refusal(copy)
    assert str(copy / "GPP" / "central.skops") in msg
    assert "not a skops model file (not a zip archive" in msg


def test_a_truncated_skops_file_is_refused(copy: Path) -> None:
    path = copy / "NEE" / "central.skops"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    msg = _refusal(copy)  # first the file's SHA-256
    assert str(path) in msg and "SHA-256" in msg and "field models.NEE.central.sha256" in msg
    card = _card(copy)
    card["models"]["NEE"]["central"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write(copy, card, reseal=True)
    msg = _refusal(copy)  # then its content
    assert str(path) in msg and "not a skops model file" in msg and "truncated" in msg


def test_a_changed_sha256_is_refused(copy: Path) -> None:
    card = _card(copy)
    real = card["models"]["GPP"]["bootstraps"][0]["sha256"]
    fake = "f" * 64
    card["models"]["GPP"]["bootstraps"][0]["sha256"] = fake
    _write(copy, card)
    msg = _refusal(copy)
    assert str(copy / "card.json") in msg
    assert (f'field models.GPP.bootstraps[0].sha256 was changed (sealed → card): "{real}" → '
            f'"{fake}"') in msg
    _write(copy, card, reseal=True)
    msg = _refusal(copy)  # re-sealed: the file's own hash still differs
    path = copy / "GPP" / "bootstrap_01.skops"
    assert str(path) in msg and real in msg and fake in msg
    assert "field models.GPP.bootstraps[0].sha256" in msg


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(("entries", "says"), [
    ({"data.bin": b"x"}, "without skops' schema.json"),
    ({"schema.json": b"[1, 2]"}, "schema.json lacks"),
    ({"schema.json": b"{not json"}, "not a readable skops model file"),
    ({"schema.json": json.dumps({"__class__": "Booster", "__module__": "xgboost.core",
                                 "protocol": 2}).encode()}, "holds a xgboost.core.Booster"),
    ({"schema.json": json.dumps({"__class__": "RandomForestRegressor", "protocol": 2,
                                 "__module__": "sklearn.ensemble._forest",
                                 "__loader__": "ObjectNode", "content": {}}).encode()},
     "skops cannot"),
])
def test_zip_archives_that_are_not_forests_are_refused(tmp_path: Path,
                                                       entries: dict[str, bytes],
                                                       says: str) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(_zip(entries))
    with pytest.raises(BundleMismatchError) as err:
        load_forest(path)
    assert str(err.value).startswith(f"{path}: ") and says in str(err.value)


def test_check_skops_file_accepts_a_bundle_file(saved: tuple[ModelBundle, Path]) -> None:
    check_skops_file(saved[1] / "NEE" / "central.skops")


# ---------------------------------------------------------------- no unsafe loaders


#: Calls that execute or unpickle what they read. The issue's list (pickle.load(s), yaml.load,
#: joblib.load, torch.load, eval) plus their relatives.
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load",
                "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load",
                "cloudpickle.loads", "marshal.load", "marshal.loads", "shelve.open",
                "joblib.load", "torch.load", "yaml.load", "yaml.load_all", "yaml.unsafe_load",
                "yaml.unsafe_load_all", "pandas.read_pickle", "eval", "exec"}
UNSAFE_TEXT = re.compile(r"\bpickle\.loads?\b|\byaml\.load\(|\bjoblib\.load\b|\btorch\.load\b"
                         r"|(?<![\w.])eval\(|(?<![\w.])exec\(|allow_pickle\s*=\s*True")


def _code_only(source: str) -> str:
    """``source`` with comments and string literals blanked (docstrings may name the calls)."""
    lines = source.splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            a = c0 if r == r0 else 0
            b = c1 if r == r1 else len(lines[r - 1].rstrip("\n"))
            lines[r - 1] = lines[r - 1][:a] + " " * (b - a) + lines[r - 1][b:]
    return "".join(lines)


def _grep(source: str) -> list[str]:
    return [m.group(0) for m in UNSAFE_TEXT.finditer(_code_only(source))]


def _unsafe_calls(source: str) -> list[str]:
    """Unsafe calls in ``source``, following ``import x as y`` and ``from x import y``."""
    tree = ast.parse(source)
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            alias.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            alias.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts: list[str] = []
        f: ast.expr = node.func
        while isinstance(f, ast.Attribute):
            parts.insert(0, f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            continue
        name = ".".join([alias.get(f.id, f.id), *parts])
        pickles = name == "numpy.load" and any(
            k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant)
                                             and k.value.value is False) for k in node.keywords)
        if name in UNSAFE_CALLS or pickles:
            found.append(f"line {node.lineno}: {name}")
    return found


def test_the_scanners_find_unsafe_loaders() -> None:
    bad = ("import pickle as pk\nimport yaml\nfrom joblib import load\nimport numpy as np\n"
           "pk.loads(b'')\nyaml.load(s)\nload(p)\neval(text)\nnp.load(p, allow_pickle=True)\n")
    assert len(_unsafe_calls(bad)) == 5
    assert _grep(bad) == ["yaml.load(", "eval(", "allow_pickle=True"]  # pk., load: the AST scan
    good = ('"""No pickle.load here."""\nimport yaml\n# torch.load(x)\nyaml.safe_load(s)\n'
            "zones.eval('vegtype == 3')\nnp.load(p)\n")
    assert _unsafe_calls(good) == [] and _grep(good) == []


def test_the_package_has_no_unsafe_loaders() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    hits = [f"{p.relative_to(PACKAGE.parent)} {h}" for p in files
            for h in [*_grep(p.read_text()), *_unsafe_calls(p.read_text())]]
    assert not hits, f"unsafe loaders of user data in the package: {hits}"
