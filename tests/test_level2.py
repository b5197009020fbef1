"""Estimators, the one OOF loop, the level-2 choice, lineage and leakage (issue 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from typer.testing import CliRunner

from jungle.cli import app
from pool.config import HistogramConfig, NetConfig, load_config
from pool.data import FeatureBlock
from pool.estimators import Level1Classifier, load_estimator
from pool.folds import read_folds
from pool.histogram import resolve_frame_input
from pool.metrics import evaluate
from pool.oof import cross_fit
from pool.run import train_level1
from pool.rundir import Run
from pool.synthetic import SyntheticSpec, write_synthetic_store
from stack.boost import BoostParams
from stack.candidates import CANDIDATES, DEFAULT_CANDIDATES, make_candidate, stack_inputs
from stack.predict import predict
from stack.stacker import MIN_WEIGHT, Stacker, fit_temperature, mixture_weights, temper
from stack.train import Level2Error, load_level2, predict_level2, train_level2

QUICK = {
    "attention": NetConfig(epochs=6, patience=3, hidden=16),
    "gru": NetConfig(epochs=6, patience=3, hidden=16),
    "pool": NetConfig(epochs=30, patience=5, lr=3e-3, use_meta=False),
    "histogram": HistogramConfig(
        frame_steps=60, n_estimators=40, frame_folds=3, frame_training="mil"
    ),
}
FAST_RUN = {
    "attention": {"epochs": 15, "patience": 4, "hidden": 32},
    "gru": {"epochs": 15, "patience": 4, "hidden": 32},
    "pool": {"epochs": 60, "patience": 8, "lr": 3e-3, "use_meta": False},
    "histogram": {"frame_steps": 150, "n_estimators": 120},
}


def synthetic_run_inputs(base: Path, spec: SyntheticSpec) -> tuple[Path, Path]:
    """A synthetic store and its labels CSV (in the store's video root)."""
    store = base / "features.h5"
    labels = write_synthetic_store(store, spec)
    (base / "videos").mkdir(exist_ok=True)
    csv = base / "videos" / "labels.csv"
    labels.to_csv(csv, index=False)
    return store, csv


def run_config(store: Path, csv: Path, run: Path, **extra: object):
    settings = {
        "features": [str(store)],
        "labels": str(csv),
        "run": str(run),
        "folds": 3,
        "threads": 1,
        "device": "cpu",
        "group_column": "site",
        **FAST_RUN,
        **extra,
    }
    return load_config(None, settings)


@pytest.fixture(scope="module")
def block() -> tuple[FeatureBlock, np.ndarray, np.ndarray]:
    """90 synthetic clips in memory: (block, targets, groups)."""
    rng = np.random.default_rng(0)
    n, t, c, k = 90, 8, 12, 3
    y = np.zeros((n, k), dtype=np.float32)
    y[np.arange(n), rng.integers(0, k, n)] = 1
    x = rng.normal(0, 1, (n, t, c)).astype(np.float32)
    x[:, :3, :k] += 3 * y[:, None, :]
    mask = np.ones((n, t), dtype=bool)
    mask[::4, 5:] = False
    meta = rng.normal(0, 1, (n, 2)).astype(np.float32)
    ids = [f"c{i:03d}" for i in range(n)]
    groups = np.array([f"g{i % 6}" for i in range(n)])
    return FeatureBlock(ids, x.astype(np.float16), mask, meta), y, groups


@pytest.mark.parametrize("model", ["attention", "gru", "pool", "histogram"])
def test_level1_estimator_contract(
    model: str, block: tuple[FeatureBlock, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y, groups = block
    est = Level1Classifier(model=model, config=QUICK[model], classes=["a", "b", "blank"])
    params = est.get_params()
    assert set(params) >= {"model", "config", "classes", "random_state", "split_seed"}
    assert clone(est).get_params() == params  # clone keeps every parameter
    assert Level1Classifier().set_params(**params).get_params() == params  # round trip
    assert est.fit(x.view(np.arange(60)), y[:60], groups=groups[:60]) is est
    probs = est.predict_proba(x.view(np.arange(60, 90)))
    assert probs.shape == (30, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert list(est.classes_) == ["a", "b", "blank"]
    assert not hasattr(clone(est), "model_")  # a clone is unfitted
    est.save(tmp_path / "m.pt")
    again = load_estimator(tmp_path / "m.pt")
    np.testing.assert_allclose(again.predict_proba(x.view(np.arange(60, 90))), probs, rtol=1e-5)
    assert again.get_params()["config"].model_dump() == QUICK[model].model_dump()


def test_histogram_frame_inputs_are_used_saved_and_old_models_read_as_raw(
    block: tuple[FeatureBlock, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y, groups = block
    held = x.view(np.arange(60, 90))
    probs, saved = {}, {}
    for frame_input in ("raw", "centered", "auto"):
        config = QUICK["histogram"].model_copy(update={"frame_input": frame_input})
        est = Level1Classifier(model="histogram", config=config, classes=["a", "b", "blank"])
        est.fit(x.view(np.arange(60)), y[:60], groups=groups[:60])
        probs[frame_input] = est.predict_proba(held)
        saved[frame_input] = tmp_path / f"{frame_input}.pt"
        est.save(saved[frame_input])
        again = load_estimator(saved[frame_input])
        assert again.get_params()["config"].frame_input == frame_input
        # the fitted model holds the input it used: auto is decided at fit time
        used = "centered" if frame_input == "auto" else frame_input
        assert again.model_.config.frame_input == used
        np.testing.assert_allclose(again.predict_proba(held), probs[frame_input], rtol=1e-5)
    assert np.abs(probs["raw"] - probs["centered"]).max() > 0.01  # the option is used
    np.testing.assert_array_equal(probs["auto"], probs["centered"])  # 8 of 8 or 5 frames
    # a model saved before frame_input and frame_training existed saw raw frames and was
    # trained by MIL: it is read so
    ckpt = torch.load(saved["raw"], weights_only=True)
    for config in (ckpt["config"], ckpt["params"]["config"]):
        del config["frame_input"], config["frame_training"]
    # ... and held its one classifier set and boosters at the top level
    (member,) = ckpt.pop("members")
    ckpt["classifiers"], ckpt["boosters"] = member["classifiers"], member["boosters"]
    torch.save(ckpt, tmp_path / "old.pt")
    old = load_estimator(tmp_path / "old.pt")
    assert old.get_params()["config"].frame_input == "raw"
    assert old.get_params()["config"].frame_training == "mil"
    np.testing.assert_allclose(old.predict_proba(held), probs["raw"], rtol=1e-5)


CLASSES = ["a", "b", "blank"]


def test_histogram_frame_training_by_label_propagation_learns_and_is_saved(
    block: tuple[FeatureBlock, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y, groups = block
    held = x.view(np.arange(60, 90))
    probs = {}
    for training in ("mil", "propagate"):
        config = QUICK["histogram"].model_copy(update={"frame_training": training})
        est = Level1Classifier(model="histogram", config=config, classes=CLASSES)
        est.fit(x.view(np.arange(60)), y[:60], groups=groups[:60])
        probs[training] = est.predict_proba(held)
        est.save(tmp_path / f"{training}.pt")
        again = load_estimator(tmp_path / f"{training}.pt")
        assert again.model_.config.frame_training == training
        np.testing.assert_allclose(again.predict_proba(held), probs[training], rtol=1e-5)
        prior = np.tile(y[:60].mean(axis=0), (30, 1))
        learned = evaluate(y[60:90], probs[training], CLASSES)["log_loss"]
        assert learned < 0.95 * evaluate(y[60:90], prior, CLASSES)["log_loss"], training
    assert np.abs(probs["mil"] - probs["propagate"]).max() > 0.01  # the option is used
    # both: one model of each, their clip logits averaged; each member is exactly the model
    # trained alone (same seeds)
    config = QUICK["histogram"].model_copy(update={"frame_training": "both"})
    est = Level1Classifier(model="histogram", config=config, classes=CLASSES)
    est.fit(x.view(np.arange(60)), y[:60], groups=groups[:60])
    assert [m.training for m in est.model_.members] == ["mil", "propagate"]
    both = est.predict_proba(held)
    logit = np.log(probs["mil"] / (1 - probs["mil"])) + np.log(
        probs["propagate"] / (1 - probs["propagate"])
    )
    np.testing.assert_allclose(both, 1 / (1 + np.exp(-logit / 2)), rtol=1e-5, atol=1e-7)
    est.save(tmp_path / "both.pt")
    again = load_estimator(tmp_path / "both.pt")
    assert again.model_.config.frame_training == "both"
    np.testing.assert_allclose(again.predict_proba(held), both, rtol=1e-5)
    assert again.frame_proba(held).shape == (30, x.mask.shape[1], 3)


def test_histogram_auto_centres_videos_and_keeps_photo_sequences_raw() -> None:
    def clips(*real: int) -> np.ndarray:
        return np.arange(16)[None, :] < np.array(real)[:, None]

    assert resolve_frame_input("auto", clips(16, 16, 3)) == "centered"  # videos
    assert resolve_frame_input("auto", clips(8, 8, 1)) == "centered"
    assert resolve_frame_input("auto", clips(1, 3, 5, 2, 10)) == "raw"  # photo bursts
    assert resolve_frame_input("auto", clips(7, 7, 16)) == "raw"
    assert resolve_frame_input("raw", clips(16, 16)) == "raw"  # an explicit choice stays
    assert resolve_frame_input("centered", clips(1, 1)) == "centered"


@pytest.mark.parametrize("name", CANDIDATES)
def test_level2_candidates_and_stacker_contract(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, classes = 160, ["a", "b", "blank"]
    y = (rng.random((n, 3)) < 0.35).astype(float)
    level1 = {
        m: pd.DataFrame(
            1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(0, s, y.shape)))),
            index=[f"c{i}" for i in range(n)],
            columns=classes,
        )
        for m, s in (("m1", 1.5), ("m2", 2.5))
    }
    meta = pd.DataFrame(
        {
            "file_size": rng.integers(1e5, 1e6, n),
            "width": 160,
            "height": 120,
            "fps": 8.0,
            "duration": 4.0,
            "frame_count": 32,
            "bitrate": 1e5,
        },
        index=level1["m1"].index,
    )
    x = stack_inputs(level1, meta, list(meta.index), classes)
    params = BoostParams(rounds=40, threads=1)
    cand = make_candidate(name, classes, params, 0)
    assert clone(cand).get_params() == cand.get_params()
    staged = cand.fit(x.iloc[:120], y[:120]).staged_proba(x.iloc[120:])
    assert staged.shape[:2] == (40, 3) and ((staged >= 0) & (staged <= 1)).all()
    stacker = Stacker(classes, (name,), params=params)
    assert clone(stacker).get_params() == stacker.get_params()
    probs = stacker.fit(x.iloc[:120], y[:120]).predict_proba(x.iloc[120:])
    assert probs.shape == (40, 3) and stacker.weights_.tolist() == [[1.0]] * 3
    stacker.save(tmp_path / "s")
    np.testing.assert_allclose(Stacker.load(tmp_path / "s").predict_proba(x.iloc[120:]), probs)


def test_mixture_weights_favour_the_candidate_that_fits_and_sum_to_one() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((400, 3)) < 0.3).astype(float)
    good = np.clip(0.8 * y + 0.1 + rng.normal(0, 0.03, y.shape), 0.01, 0.99)
    flat = np.full(y.shape, 0.3)
    wrong = 1 - good
    w = mixture_weights(np.stack([flat, good, wrong]), y)
    assert w.sum() == pytest.approx(1) and w[2] == 0 and w[1] > 0.9
    # two candidates, each right on half the rows: the mixture beats both
    half = np.where(np.arange(400)[:, None] < 200, good, flat)
    other = np.where(np.arange(400)[:, None] < 200, flat, good)
    w = mixture_weights(np.stack([half, other]), y)
    assert 0.3 < w[0] < 0.7 and w.sum() == pytest.approx(1)


def test_mixture_drops_small_weights_and_weighs_the_rest_again() -> None:
    """Candidates under ``min_weight`` are dropped and the others weighed again without them:
    the weights left sum to one, are all at least ``min_weight`` and are the optimum over
    the candidates kept."""
    rng = np.random.default_rng(2)
    n = 2000
    y = (rng.random((n, 2)) < 0.3).astype(float)
    z = 2 * y - 1
    rows = np.arange(n)[:, None]
    good = 1 / (1 + np.exp(-(4 * z + rng.normal(0, 1, y.shape))))
    flat = np.full(y.shape, 0.3)
    a = np.where(rows < 1000, good, flat)  # right on the first half only
    b = np.where(rows >= 1000, good, flat)  # on the second half only
    c = 1 / (1 + np.exp(-(1.2 * z + np.log(0.3 / 0.7) + rng.normal(0, 0.5, y.shape))))
    probs = np.stack([a, b, c])
    free = mixture_weights(probs, y, min_weight=0.0)
    assert (free > MIN_WEIGHT).all()  # all three kept at the default
    np.testing.assert_allclose(mixture_weights(probs, y), free, atol=1e-6)
    w = mixture_weights(probs, y, min_weight=0.3)  # at least one of the three is under 0.3
    kept = np.flatnonzero(w)
    assert 0 < len(kept) < 3 and w.sum() == pytest.approx(1) and (w[kept] >= 0.3).all()
    np.testing.assert_allclose(w[kept], mixture_weights(probs[kept], y, min_weight=0), atol=1e-6)


def test_temperature_undoes_over_and_underconfidence() -> None:
    """``fit_temperature`` finds T = 1 for calibrated probabilities, T = 2 for logits
    doubled, T = 1/2 for logits halved; tempering lowers the loss of the miscalibrated."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (20000, 2))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    for scale, expected in ((1.0, 1.0), (2.0, 2.0), (0.5, 0.5)):
        probs = 1 / (1 + np.exp(-scale * z))
        t = fit_temperature(probs, y)
        assert t == pytest.approx(expected, rel=0.06), (scale, t)
        tempered = temper(probs, np.full(2, t))
        assert _loss(y, tempered) <= _loss(y, probs) + 1e-9
    assert fit_temperature(1 / (1 + np.exp(-50 * z)), y) == pytest.approx(4.0, rel=1e-3)  # range


def test_stacker_tempers_the_mixture_and_reads_stackers_saved_without_temperature(
    tmp_path: Path,
) -> None:
    """Two level-1 models that see independent halves of the evidence: their mixture is
    underconfident, the stacker's temperature is below one (half of the fitted change by
    default) and lowers the held-out loss;
    a stacker.json without a temperature (saved before it existed) loads with T = 1."""
    rng = np.random.default_rng(5)
    n, classes = 1200, ["a", "b"]
    z1, z2 = rng.normal(0, 1.5, (n, 2)), rng.normal(0, 1.5, (n, 2))
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-(z1 + z2)))).astype(float)
    ids = [f"c{i}" for i in range(n)]
    level1 = {
        m: pd.DataFrame(1 / (1 + np.exp(-zz)), index=ids, columns=classes)
        for m, zz in (("m1", z1), ("m2", z2))
    }
    meta = pd.DataFrame(
        {
            c: 1.0
            for c in ("file_size", "width", "height", "fps", "duration", "frame_count", "bitrate")
        },
        index=ids,
    )
    x = stack_inputs(level1, meta, ids, classes)
    stacker = Stacker(classes, ("mean", "best"), params=BoostParams(threads=1))
    stacker.fit(x.iloc[:800], y[:800])
    assert (stacker.temperature_ < 0.9).all(), stacker.temperature_
    # temperature_share: the default applies half of the fitted change of 1/T
    fitted = clone(stacker).set_params(temperature_share=1.0).fit(x.iloc[:800], y[:800])
    assert (fitted.temperature_ < stacker.temperature_).all()
    np.testing.assert_allclose(1 / stacker.temperature_, (1 + 1 / fitted.temperature_) / 2)
    assert stacker.choice["temperature"] == {
        "a": stacker.temperature_[0],
        "b": stacker.temperature_[1],
    }
    tempered = stacker.predict_proba(x.iloc[800:])
    stacker.save(tmp_path / "s")
    info = json.loads((tmp_path / "s" / "stacker.json").read_text())
    del info["temperature"]
    (tmp_path / "s" / "stacker.json").write_text(json.dumps(info))
    old = Stacker.load(tmp_path / "s")
    assert old.temperature_.tolist() == [1.0, 1.0]
    untempered = old.predict_proba(x.iloc[800:])
    assert _loss(y[800:], tempered) < _loss(y[800:], untempered) - 0.005


def _loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_default_candidates_leave_out_trees_on_all_inputs(small_run: Path, tmp_path: Path) -> None:
    assert set(DEFAULT_CANDIDATES) == set(CANDIDATES) - {"trees_all"}
    assert "top2" in DEFAULT_CANDIDATES
    info = json.loads((small_run / "level2" / "model.json").read_text())
    assert info["candidates"] == list(DEFAULT_CANDIDATES)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    args = ["train-level2", "--run", str(run), "--candidates", "best,trees_al"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "got best, trees_al" in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, [*args[:-1], "best,mean"])
    assert result.exit_code == 0, result.output
    folds = json.loads((run / "level2" / "model.json").read_text())["choices"]
    temperatures = [sum(c["temperature"].values()) / len(c["temperature"]) for c in folds.values()]
    assert len(temperatures) == len(read_folds(run / "folds.csv").unique())
    printed = " ".join(result.stderr.split())  # rich wraps long lines
    assert "temperature per fold: " + ", ".join(f"{t:.2f}" for t in temperatures) in printed


def test_cross_fit_gives_every_row_its_own_folds_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    y = (x[:, :1] > 0).astype(float)
    folds = np.arange(50) % 5

    from sklearn.base import BaseEstimator

    class Memo(BaseEstimator):
        """Predicts the mean target of the rows it was fitted on (and remembers them)."""

        def fit(self, X: np.ndarray, y: np.ndarray) -> Memo:
            self.rows_, self.mean_ = {tuple(r) for r in X}, y.mean(axis=0)
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            assert not any(tuple(r) in self.rows_ for r in X)  # never its own training rows
            return np.tile(self.mean_, (len(X), 1))

    result = cross_fit(Memo(), x, y, folds)
    for f in range(5):
        np.testing.assert_allclose(result.oof[folds == f], y[folds != f].mean())
    assert len(result.models) == 5


# --- runs on synthetic stores --------------------------------------------------------------


@pytest.mark.parametrize(("clips", "seed"), [(150, 31), (300, 32), (600, 33)])
def test_level2_is_never_worse_than_the_best_level1_model(
    clips: int, seed: int, tmp_path: Path
) -> None:
    """Every default level-1 model (docs/level2.md has these stores and the others tried)."""
    spec = SyntheticSpec(clips=clips, frames=10, blank_fraction=0.3, seed=seed)
    store, csv = synthetic_run_inputs(tmp_path, spec)
    models = ["attention", "gru", "pool", "histogram", "sequence"]
    run = train_level1(run_config(store, csv, tmp_path / "run", models=models, folds=4))
    scores = train_level2(run, BoostParams(threads=1))
    best = min(scores[m]["log_loss"] for m in models)
    assert scores["level2"]["log_loss"] <= best + 0.002, (scores["level2"]["log_loss"], best)
    assert scores["level2"]["log_loss"] < scores["prior"]["log_loss"]
    recorded = Run(run).metrics()["level2"]["against_best_level1"]
    assert recorded["within_tolerance"] and recorded["log_loss"] == best


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("small")
    store, csv = synthetic_run_inputs(base, SyntheticSpec(clips=120, frames=8, seed=4))
    run = train_level1(run_config(store, csv, base / "run", models=["pool"]))
    train_level2(run, BoostParams(threads=1, rounds=40))
    return run


def test_level2_refuses_changed_or_foreign_level1(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    info, _ = load_level2(run)  # a copied run is the same run
    oof = run / "oof" / "pool.csv"
    original = oof.read_bytes()
    table = pd.read_csv(oof)
    table.iloc[0, 1] = 0.5
    table.to_csv(oof, index=False)
    with pytest.raises(Level2Error, match="oof/pool.csv changed since train-level1"):
        load_level2(run)
    with pytest.raises(Level2Error, match="changed since train-level1"):
        train_level2(run)
    oof.write_bytes(original)
    # a level 2 from another level 1 (same data, another seed)
    config = Run(small_run).config()
    other = train_level1(config.model_copy(update={"run": tmp_path / "other", "seed": 9}))
    shutil.rmtree(other / "level2", ignore_errors=True)
    shutil.copytree(run / "level2", other / "level2")
    with pytest.raises(Level2Error, match="trained on another level 1"):
        load_level2(other)
    level1 = {"pool": Run(other).oof("pool")}
    with pytest.raises(Level2Error, match="trained on another level 1"):
        predict_level2(other, level1, Run(other).meta())
    with pytest.raises(Level2Error, match="trained on another level 1"):
        predict(tmp_path, other, tmp_path / "p.csv")


def test_model_json_records_lineage_and_choices(small_run: Path) -> None:
    info = json.loads((small_run / "level2" / "model.json").read_text())
    assert info["level1_lineage"] == Run(small_run).level1_id()
    assert set(info["choices"]) == {"0", "1", "2"}
    for choice in info["choices"].values():
        for weights in choice["weights"].values():
            assert set(weights) <= set(CANDIDATES)
            assert abs(sum(weights.values()) - 1) < 1e-9 and min(weights.values()) >= MIN_WEIGHT
        assert all(0 <= b <= 0.05 for b in choice["clipping"].values())


def test_changing_held_out_labels_leaves_their_level1_oof_unchanged(tmp_path: Path) -> None:
    """Fold 0's OOF predictions come from models that never saw fold 0's labels."""
    store, csv = synthetic_run_inputs(tmp_path, SyntheticSpec(clips=120, frames=8, seed=6))
    models = ["attention", "gru", "pool", "histogram"]
    first = train_level1(run_config(store, csv, tmp_path / "a", models=models))
    folds = read_folds(first)
    labels = pd.read_csv(csv)
    held = labels["filepath"].isin(folds.index[folds == 0])
    rng = np.random.default_rng(0)
    labels.loc[held, "label"] = rng.permutation(labels.loc[held, "label"].to_numpy())
    labels.loc[held, "label"] = np.where(
        labels.loc[held, "label"] == "blank", "duiker", labels.loc[held, "label"]
    )
    changed = tmp_path / "videos" / "changed.csv"
    labels.to_csv(changed, index=False)
    second = train_level1(
        run_config(
            store, changed, tmp_path / "b", models=models, folds_csv=str(first / "folds.csv")
        )
    )
    assert not Run(first).targets().equals(Run(second).targets())  # the labels did change
    ids = list(folds.index[folds == 0])
    for model in models:
        a, b = Run(first).oof(model).loc[ids], Run(second).oof(model).loc[ids]
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy(), err_msg=model)
        other = list(folds.index[folds == 1])
        assert not np.array_equal(  # the other folds' models did learn the new labels
            Run(first).oof(model).loc[other].to_numpy(),
            Run(second).oof(model).loc[other].to_numpy(),
        )


def test_train_level2_warns_when_level2_is_worse_than_the_best_level1_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The comparison and the warning, on OOF scores of real probabilities."""
    from stack.train import LEVEL2_TOLERANCE, against_best_level1, report_against_level1

    classes = ["blank", "cat"]
    rng = np.random.default_rng(0)
    y = np.eye(2)[rng.integers(0, 2, 400)]
    sharp, vague = np.where(y > 0.5, 0.9, 0.1), np.where(y > 0.5, 0.6, 0.4)
    scores = {"good": evaluate(y, sharp, classes), "weak": evaluate(y, vague, classes)}
    scores["prior"] = evaluate(y, np.full_like(y, 0.5), classes)  # not a level-1 model
    for level2, worse in ((np.where(y > 0.5, 0.905, 0.095), False), ((sharp + vague) / 2, True)):
        scores["level2"] = evaluate(y, level2, classes)
        c = against_best_level1(scores, ["weak", "good"])
        assert c["model"] == "good" and c["log_loss"] == scores["good"]["log_loss"]
        assert c["ratio"] == pytest.approx(scores["level2"]["log_loss"] / c["log_loss"])
        assert c["within_tolerance"] is not worse
        assert (c["level2_log_loss"] > c["log_loss"] + LEVEL2_TOLERANCE) is worse
        caplog.clear()
        with caplog.at_level("INFO", logger="stack.train"):
            report_against_level1(c)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == int(worse), warnings
        if worse:
            assert "above the best level-1 model's (good " in warnings[0]


def test_grouped_run_without_folds_gets_one_fold_per_site(tmp_path: Path) -> None:
    """Four sites and no --folds: four folds of one site each (not an error about 5)."""
    store, csv = synthetic_run_inputs(tmp_path, SyntheticSpec(clips=80, frames=6, sites=4, seed=9))
    run = train_level1(run_config(store, csv, tmp_path / "run", models=["pool"], folds=None))
    table = pd.read_csv(run / "folds.csv")
    assert table.groupby("group")["fold"].nunique().eq(1).all()
    assert sorted(table.groupby("fold")["group"].nunique()) == [1, 1, 1, 1]
    assert load_config(run / "config.yaml", {}).folds == 4
