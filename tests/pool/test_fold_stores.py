"""Folds reused from a folds.csv, and one feature store per fold (``{fold}`` in the path):
fold K's models train on and predict store K, as fine-tuning per fold requires."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pool.config import FeatureSource, Level1Error
from pool.data import load_block
from pool.estimators import load_estimator
from pool.folds import read_folds
from pool.run import predict_level1, train_level1
from pool.rundir import Run
from tests.pool.support import Synthetic, fast_config

POOL = {"models": ["pool"], "pool": {"epochs": 4, "patience": 2, "use_meta": False}}


@pytest.fixture(scope="module")
def fold_stores(synthetic: Synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three copies of the synthetic store whose features differ (store K: features scaled
    and shifted by K), as if made by three backbones fine-tuned per fold."""
    base = tmp_path_factory.mktemp("fold_stores")
    rng = np.random.default_rng(0)
    for fold in range(3):
        path = base / f"features_fold{fold}.h5"
        shutil.copy(synthetic.store, path)
        with h5py.File(path, "r+") as f:
            for layer in f["features"]:
                data = f["features"][layer][()].astype(np.float32)
                noise = rng.normal(0, 0.3 * fold, data.shape)
                f["features"][layer][...] = ((1 + fold) * data + noise).astype(np.float16)
    return base


@pytest.fixture(scope="module")
def folds_csv(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("folds") / "folds.csv"
    shutil.copy(trained_run / "folds.csv", path)
    return path


def test_per_fold_stores_fold_k_uses_store_k(
    synthetic: Synthetic, fold_stores: Path, folds_csv: Path, tmp_path: Path
) -> None:
    pattern = str(fold_stores / "features_fold{fold}.h5")
    run = train_level1(
        fast_config(
            synthetic,
            tmp_path / "per_fold",
            features=[pattern],
            folds_csv=str(folds_csv),
            folds=None,
            **POOL,
        )
    )
    folds = read_folds(run)
    oof = Run(run).oof("pool")
    pd.testing.assert_series_equal(folds, read_folds(folds_csv).loc[folds.index])
    # fold K's OOF rows are exactly those of a plain run on store K with the same folds
    for fold in range(3):
        plain = train_level1(
            fast_config(
                synthetic,
                tmp_path / f"plain{fold}",
                features=[pattern.replace("{fold}", str(fold))],
                folds_csv=str(folds_csv),
                folds=None,
                **POOL,
            )
        )
        held = folds.index[folds == fold]
        pd.testing.assert_frame_equal(oof.loc[held], Run(plain).oof("pool").loc[held])
        if fold:  # and not those of store 0: the stores really differ
            other = Run(tmp_path / "plain0").oof("pool").loc[held]
            assert np.abs(oof.loc[held].to_numpy() - other.to_numpy()).max() > 1e-3

    # prediction: fold K's model on store K, averaged over folds
    got = predict_level1(run, [pattern], device="cpu")["pool"]
    expected = []
    for fold in range(3):
        source = FeatureSource(path=Path(pattern.replace("{fold}", str(fold))))
        block = load_block([source], ["file_size", "width", "height", "fps", "duration", "bitrate"])
        model = load_estimator(Run(run).checkpoint("pool", fold))
        expected.append(model.predict_proba(block))
    np.testing.assert_allclose(got.to_numpy(), np.mean(expected, axis=0), atol=1e-6)
    with pytest.raises(Level1Error, match="one store per fold"):
        predict_level1(run, [fold_stores / "features_fold0.h5"], device="cpu")


def test_per_fold_stores_need_the_folds_they_were_made_with(
    synthetic: Synthetic, fold_stores: Path, tmp_path: Path
) -> None:
    pattern = str(fold_stores / "features_fold{fold}.h5")
    with pytest.raises(Level1Error, match="need the folds they were made with"):
        train_level1(fast_config(synthetic, tmp_path / "r", features=[pattern], folds=None, **POOL))
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_missing_fold_store_is_an_error_before_training(
    synthetic: Synthetic, fold_stores: Path, folds_csv: Path, tmp_path: Path
) -> None:
    pattern = str(tmp_path / "f{fold}.h5")
    shutil.copy(fold_stores / "features_fold0.h5", tmp_path / "f0.h5")
    shutil.copy(fold_stores / "features_fold1.h5", tmp_path / "f1.h5")
    with pytest.raises(Level1Error, match="f2.h5 does not exist"):
        train_level1(
            fast_config(
                synthetic,
                tmp_path / "r",
                features=[pattern],
                folds_csv=str(folds_csv),
                folds=None,
                **POOL,
            )
        )
    assert not (tmp_path / "r").exists()


def test_folds_csv_in_the_run_directory_is_reused(
    synthetic: Synthetic, folds_csv: Path, tmp_path: Path
) -> None:
    """`jungle finetune --fold K` leaves RUN/folds.csv; train-level1 into RUN reuses it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    table = pd.read_csv(folds_csv)
    table["fold"] = (table["fold"] + 1) % 3  # other folds than a fresh run would make
    table.to_csv(run_dir / "folds.csv", index=False)
    run = train_level1(fast_config(synthetic, run_dir, folds=None, **POOL))
    assert read_folds(run).to_dict() == table.set_index("id")["fold"].to_dict()
    with pytest.raises(Level1Error, match="has 3 folds but --folds is 4"):
        train_level1(fast_config(synthetic, run_dir, folds=4, **POOL), overwrite=True)
    table.iloc[:5].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(Level1Error, match="labelled clips are not in"):
        train_level1(
            fast_config(
                synthetic,
                tmp_path / "r2",
                folds_csv=str(tmp_path / "short.csv"),
                folds=None,
                **POOL,
            )
        )
