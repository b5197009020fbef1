"""The ``sequence`` level-1 model: per-frame classifier, clip = mean (species) / geometric
mean (blank) of the real frames' probabilities (pool/sequence.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pool.config import FeatureSource, SequenceConfig
from pool.data import FeatureBlock, frame_inputs, load_block
from pool.estimators import Level1Classifier, load_estimator
from pool.folds import read_folds
from pool.metrics import evaluate
from pool.run import train_level1
from pool.rundir import Run
from pool.sequence import fit_platt
from tests.pool.support import Synthetic, fast_config

CLASSES = ["cat", "dog", "blank"]
#: small and quick: 48 hidden units, at most 600 steps (a higher learning rate than the
#: default, which suits 1000+ feature channels, not 12).
QUICK = SequenceConfig(frame_hidden=48, frame_steps=600, frame_lr=3e-3, eval_every=25, patience=4)


def make_block(n: int, frames: int, seed: int, dims: int = 12) -> tuple[FeatureBlock, np.ndarray]:
    """``n`` clips of ``frames`` slots (some padded): a background of the clip plus noise per
    frame, plus the species' direction on a quarter to a half of the real frames of an
    animal clip (at least one); classes cat, dog, blank."""
    rng = np.random.default_rng(seed)
    protos = 6.0 * np.eye(dims, dtype=np.float32)[:2]
    labels = rng.integers(0, 3, size=n)  # 0 cat, 1 dog, 2 blank
    lengths = np.where(rng.random(n) < 0.3, rng.integers(2, frames + 1, size=n), frames)
    x = rng.standard_normal((n, frames, dims)).astype(np.float32)
    x += rng.standard_normal((n, 1, dims)).astype(np.float32)  # the clip's background
    for i, label in enumerate(labels):
        if label < 2:
            shown = rng.random(lengths[i]) < rng.uniform(0.25, 0.5)
            shown[rng.integers(lengths[i])] = True
            x[i, : lengths[i]][shown] += protos[label]
    mask = np.arange(frames)[None, :] < lengths[:, None]
    x[~mask] = 0.0
    y = np.eye(3, dtype=np.float32)[labels]
    ids = [f"clip{i}" for i in range(n)]
    return FeatureBlock(ids, x.astype(np.float16), mask, np.zeros((n, 0), np.float32)), y


def prior_loss(y_train: np.ndarray, y_test: np.ndarray) -> float:
    prior = np.tile(y_train.mean(axis=0), (len(y_test), 1))
    return evaluate(y_test, prior, CLASSES)["log_loss"]


@pytest.fixture(scope="module")
def data() -> tuple[FeatureBlock, np.ndarray, FeatureBlock, np.ndarray]:
    train, y_train = make_block(240, 8, seed=0)
    test, y_test = make_block(80, 8, seed=1)
    return train, y_train, test, y_test


@pytest.fixture(scope="module")
def fitted(data: tuple) -> Level1Classifier:
    train, y_train, _, _ = data
    est = Level1Classifier("sequence", QUICK, CLASSES, threads=1, random_state=3)
    return est.fit(train, y_train)


def test_fit_predict_shapes_and_range(fitted: Level1Classifier, data: tuple) -> None:
    _, _, test, _ = data
    probs = fitted.predict_proba(test)
    assert probs.shape == (len(test), 3) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert list(fitted.classes_) == CLASSES
    assert fitted.frame_proba(test).shape == (len(test), 8, 3)
    assert {"best_step", "steps", "val_loss", "seconds"} <= set(fitted.info)


def test_clip_is_mean_of_frames_and_geometric_mean_for_blank(
    fitted: Level1Classifier, data: tuple
) -> None:
    _, _, test, _ = data
    frames = fitted.frame_proba(test).astype(np.float64)  # (n, T, K), padding scored too
    expected = np.empty((len(test), 3))
    for i in range(len(test)):
        real = frames[i][test.mask[i]]  # the clip's real frames only
        expected[i, :2] = real[:, :2].mean(axis=0)  # arithmetic mean: cat, dog
        expected[i, 2] = np.exp(np.log(real[:, 2]).mean())  # geometric mean: blank
    model = fitted.model_
    np.testing.assert_allclose(model.clip_proba(test), expected, rtol=1e-4, atol=1e-6)
    # predict_proba is that, through the per-class Platt scaling of the clip logit
    a, b = model.calibration[:, 0], model.calibration[:, 1]
    logit = np.log(expected) - np.log1p(-expected)
    calibrated = 1 / (1 + np.exp(-(a * logit + b)))
    np.testing.assert_allclose(fitted.predict_proba(test), calibrated, rtol=1e-4, atol=1e-6)
    # without calibration, predict_proba is the aggregation itself
    raw = Level1Classifier("sequence", QUICK.model_copy(update={"calibrate": False}), CLASSES)
    raw.set_params(threads=1, random_state=3).fit(*data[:2])
    frames = raw.frame_proba(test).astype(np.float64)
    lengths = test.mask.sum(axis=1)
    m = test.mask[:, :, None]
    mean = (frames * m).sum(axis=1) / lengths[:, None]
    geo = np.exp((np.log(frames) * m).sum(axis=1) / lengths[:, None])
    np.testing.assert_allclose(raw.predict_proba(test)[:, :2], mean[:, :2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(raw.predict_proba(test)[:, 2], geo[:, 2], rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_the_result(fitted: Level1Classifier, data: tuple) -> None:
    _, _, test, _ = data
    base = fitted.predict_proba(test)
    x = test.x.copy()
    x[~test.mask] = 50.0  # other values in the padding slots
    garbage = FeatureBlock(test.ids, x, test.mask, test.meta)
    np.testing.assert_array_equal(fitted.predict_proba(garbage), base)
    # more padding slots (a longer slot count, e.g. 32-frame videos next to short sequences)
    wide = np.zeros((len(test), 32, test.dims), np.float16)
    wide[:, :8] = test.x
    wide_mask = np.zeros((len(test), 32), bool)
    wide_mask[:, :8] = test.mask
    padded = FeatureBlock(test.ids, wide, wide_mask, test.meta)
    np.testing.assert_allclose(fitted.predict_proba(padded), base, rtol=1e-5, atol=1e-7)


def test_clone_and_save_load_round_trip(
    fitted: Level1Classifier, data: tuple, tmp_path: Path
) -> None:
    train, y_train, test, _ = data
    base = fitted.predict_proba(test)
    again = clone(fitted).fit(train, y_train)  # same parameters, same seed: same model
    np.testing.assert_array_equal(again.predict_proba(test), base)
    fitted.save(tmp_path / "sequence.pt")
    loaded = load_estimator(tmp_path / "sequence.pt")
    assert loaded.model == "sequence" and loaded.config == QUICK
    assert list(loaded.classes_) == CLASSES
    np.testing.assert_array_equal(loaded.predict_proba(test), base)
    np.testing.assert_array_equal(loaded.frame_proba(test), fitted.frame_proba(test))


@pytest.mark.parametrize(
    ("training", "frame_input"),
    [("propagate", "centered"), ("mil", "centered"), ("propagate", "raw"), ("mil", "raw")],
)
def test_learns_a_separable_problem(data: tuple, training: str, frame_input: str) -> None:
    train, y_train, test, y_test = data
    config = QUICK.model_copy(update={"training": training, "frame_input": frame_input})
    est = Level1Classifier("sequence", config, CLASSES, threads=1).fit(train, y_train)
    scores = evaluate(y_test, est.predict_proba(test), CLASSES)
    prior = prior_loss(y_train, y_test)
    assert scores["log_loss"] < 0.45 * prior, (scores["log_loss"], prior)
    assert scores["top1_accuracy"] > 0.85


def test_centered_frames_subtract_the_mean_of_the_real_frames() -> None:
    block, _ = make_block(30, 8, seed=6)
    x = block.x.astype(np.float32)
    x[~block.mask] = 7.0  # padding values must not enter the mean
    block = FeatureBlock(block.ids, x.astype(np.float16), block.mask, block.meta)
    rows = np.array([2, 5, 11, 29])
    got = frame_inputs(block.view(rows), "centered").features.read(np.arange(4))
    for j, i in enumerate(rows):
        real = block.x[i][block.mask[i]].astype(np.float32)
        n = len(real)
        np.testing.assert_allclose(got[j, :n], real - real.mean(axis=0), atol=2e-2)
        assert (got[j, n:] == 0).all()
    assert frame_inputs(block, "raw") is block


def test_videos_of_32_frames_and_no_blank_class() -> None:
    train, y_train = make_block(120, 32, seed=4)
    test, y_test = make_block(40, 32, seed=5)
    species = ["cat", "dog"]  # no blank class: every column is a mean
    keep = y_train[:, 2] == 0
    est = Level1Classifier("sequence", QUICK, species, threads=1)
    est.fit(train.view(np.flatnonzero(keep)), y_train[keep][:, :2])
    assert est.model_.blank is None
    probs = est.predict_proba(test)
    assert probs.shape == (40, 2)
    frames = est.frame_proba(test).astype(np.float64)
    m = test.mask[:, :, None]
    mean = (frames * m).sum(axis=1) / test.mask.sum(axis=1)[:, None]
    np.testing.assert_allclose(est.model_.clip_proba(test), mean, rtol=1e-4, atol=1e-6)
    animal = y_test[:, 2] == 0
    assert evaluate(y_test[animal][:, :2], probs[animal], species)["top1_accuracy"] > 0.9


def test_platt_scaling() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(3 * z - 1)))).astype(float)
    a, b = fit_platt(z, y)
    assert abs(a - 3) < 0.4 and abs(b + 1) < 0.25
    assert fit_platt(z, np.zeros(2000)) == (1.0, 0.0)  # one target value: identity
    a, b = fit_platt(np.array([-1.0, 1.0]), np.array([0.0, 1.0]))  # separable: finite
    assert np.isfinite([a, b]).all() and 0 < a < 10


def test_streamed_features_give_the_same_model(synthetic: Synthetic) -> None:
    labels = pd.read_csv(synthetic.labels_csv)
    ids = labels["filepath"].tolist()
    classes = sorted({c for v in labels["label"] for c in v.split(";")} - {"blank"})
    classes.append("blank")
    y = np.array([[float(c in v.split(";")) for c in classes] for v in labels["label"]], np.float32)
    sources = [FeatureSource(path=synthetic.store)]
    held = load_block(sources, [], ids=ids, in_memory=True)
    streamed = load_block(sources, [], ids=ids, in_memory=False, read_mb=0.05)
    config = QUICK.model_copy(update={"frame_steps": 60, "eval_every": 20})
    settings = {"shuffle_block_clips": 16, "shuffle_window_mb": 0.2, "threads": 1}
    train, test = np.arange(0, len(ids), 2), np.arange(1, len(ids), 2)
    outs = []
    for block in (held, streamed):
        est = Level1Classifier("sequence", config, classes, **settings)
        est.fit(block.view(train), y[train])
        outs.append(est.predict_proba(block.view(test)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_trained_as_a_level1_model(synthetic: Synthetic, tmp_path: Path) -> None:
    """``models: [sequence]`` in a level-1 run: OOF of every clip, fold checkpoints that
    reproduce it, a score below the prior."""
    config = fast_config(synthetic, tmp_path / "run", models=["sequence"])
    run = Run(train_level1(config))
    assert run.config().models == ["sequence"]
    scores = run.metrics()["scores"]
    assert scores["sequence"]["log_loss"] < scores["prior"]["log_loss"] - 0.03, scores
    oof = run.oof("sequence")
    folds = read_folds(run.path)
    block = load_block([FeatureSource(path=synthetic.store)], [], ids=list(oof.index))
    held = np.flatnonzero(folds.loc[block.ids].to_numpy() == 1)
    model = load_estimator(run.checkpoint("sequence", 1))
    got = model.predict_proba(block.view(held))
    np.testing.assert_allclose(got, oof.to_numpy()[held], atol=1e-6)
