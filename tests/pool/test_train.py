"""End-to-end level-1 training on generated features where a species shows in a few frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from extract.store import FeatureStore
from pool.config import MODELS, FeatureSource, Level1Error
from pool.data import load_block
from pool.estimators import load_estimator
from pool.folds import read_folds
from pool.run import predict_level1, train_level1
from pool.rundir import Run
from pool.synthetic import SyntheticSpec, write_synthetic_store
from tests.pool.support import Synthetic, fast_config


def scores(run: Path) -> dict[str, dict]:
    return Run(run).metrics()["scores"]


def test_run_directory_layout(trained_run: Path, synthetic: Synthetic) -> None:
    classes = Run(trained_run).classes()
    assert classes == ["chimpanzee", "duiker", "elephant", "hog", "leopard", "monkey", "blank"]
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["folds"] == 3 and config["models"] == list(MODELS)
    assert Path(config["labels"]).is_absolute()
    inputs = Run(trained_run).inputs()
    assert inputs["stores"][0]["dims"] == [16, 48]
    assert pd.read_csv(trained_run / "skipped.csv").empty
    for model in MODELS:
        assert sorted(p.name for p in (trained_run / "models" / model).iterdir()) == [
            "fold_0.pt",
            "fold_1.pt",
            "fold_2.pt",
        ]
    metrics = Run(trained_run).metrics()
    assert set(metrics["scores"]) == {*MODELS, "prior"}
    for m in metrics["scores"].values():
        assert set(m["roc_auc"]) == set(classes)
        assert {"log_loss", "top1_accuracy", "macro_f1", "blank_accuracy"} <= set(m)
    assert [len(v) for v in metrics["training"].values()] == [3] * len(MODELS)


def test_oof_covers_every_labelled_clip_once(trained_run: Path, synthetic: Synthetic) -> None:
    labelled = set(pd.read_csv(synthetic.labels_csv)["filepath"])
    folds = read_folds(trained_run)
    assert set(folds.index) == labelled and folds.index.is_unique
    for model in MODELS:
        oof = Run(trained_run).oof(model)
        assert oof.index.is_unique and set(oof.index) == labelled
        values = oof.to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()


def test_attention_and_histogram_beat_pool_and_all_beat_the_prior(trained_run: Path) -> None:
    s = {name: m["log_loss"] for name, m in scores(trained_run).items()}
    assert s["attention"] < s["pool"] - 0.03, s
    assert s["histogram"] < s["pool"], s
    for model in MODELS:
        assert s[model] < s["prior"] - 0.03, s
    assert scores(trained_run)["attention"]["top1_accuracy"] > 0.7


def test_same_seed_same_oof_whatever_else_is_trained(
    trained_run: Path, synthetic: Synthetic, tmp_path: Path
) -> None:
    run = train_level1(
        fast_config(synthetic, tmp_path / "again", models=["histogram", "attention"])
    )
    for model in ("attention", "histogram"):
        pd.testing.assert_frame_equal(Run(run).oof(model), Run(trained_run).oof(model))
    assert (run / "folds.csv").read_bytes() == (trained_run / "folds.csv").read_bytes()


def test_fold_checkpoints_reproduce_the_oof(trained_run: Path, synthetic: Synthetic) -> None:
    folds = read_folds(trained_run)
    block = load_block(*_sources(trained_run, [synthetic.store]), ids=list(folds.index))
    for model in MODELS:
        oof = Run(trained_run).oof(model).loc[block.ids].to_numpy()
        fold_model = load_estimator(Run(trained_run).checkpoint(model, 1))
        held = np.flatnonzero(folds.loc[block.ids].to_numpy() == 1)
        got = fold_model.predict_proba(block.view(held))
        np.testing.assert_allclose(got, oof[held], atol=1e-6)


def _sources(run: Path, stores: list[Path]) -> tuple[list[FeatureSource], list[str]]:
    inputs = Run(run).inputs()
    sources = [
        FeatureSource(path=p, layers=item["layers"])
        for p, item in zip(stores, inputs["stores"], strict=True)
    ]
    return sources, inputs["meta_fields"]


def test_predict_level1_on_every_clip_of_a_store(trained_run: Path, synthetic: Synthetic) -> None:
    first = predict_level1(trained_run, [synthetic.store], device="cpu")
    again = predict_level1(trained_run, [synthetic.store], models=["pool"], device="cpu")
    store_ids = FeatureStore(synthetic.store).ids
    classes = Run(trained_run).classes()
    assert list(first) == list(MODELS)
    for frame in first.values():
        assert frame.index.tolist() == store_ids and frame.columns.tolist() == classes
        assert np.isfinite(frame.to_numpy()).all()
    pd.testing.assert_frame_equal(first["pool"], again["pool"])
    # the mean of the fold models agrees with the OOF of each clip's held-out model roughly
    oof = Run(trained_run).oof("attention").loc[store_ids]
    agree = np.mean(oof.to_numpy().argmax(1) == first["attention"].to_numpy().argmax(1))
    assert agree > 0.8


def test_predict_level1_rejects_other_features(trained_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    write_synthetic_store(
        other, SyntheticSpec(clips=5, frames=16, layers=(("blocks.4", 8), ("features", 48)))
    )
    with pytest.raises(Level1Error, match="channels"):
        predict_level1(trained_run, [other])
    with pytest.raises(Level1Error, match="trained on 1 store"):
        predict_level1(trained_run, [other, other])


def test_an_existing_run_is_not_overwritten_silently(
    trained_run: Path, synthetic: Synthetic
) -> None:
    before = (trained_run / "metrics.json").read_bytes()
    with pytest.raises(Level1Error, match="already holds a level-1 run"):
        train_level1(fast_config(synthetic, trained_run, models=["pool"]))
    assert (trained_run / "metrics.json").read_bytes() == before


def test_grouped_run_keeps_sites_apart(synthetic: Synthetic, tmp_path: Path) -> None:
    run = train_level1(
        fast_config(
            synthetic,
            tmp_path / "grouped",
            models=["pool"],
            group_column="site",
            pool={"epochs": 3, "use_meta": False},
        )
    )
    folds = pd.read_csv(run / "folds.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1
    labels = pd.read_csv(synthetic.labels_csv).set_index("filepath")
    assert (labels.loc[folds["id"], "site"].to_numpy() == folds["group"].to_numpy()).all()
    assert set(Run(run).oof("pool").index) == set(folds["id"])


def test_reused_ungrouped_folds_that_split_a_group_are_refused(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    quick = {"models": ["pool"], "pool": {"epochs": 1, "use_meta": False}}
    run = train_level1(fast_config(synthetic, tmp_path / "run", **quick))
    with pytest.raises(Level1Error, match="splits .* group.*across folds"):
        train_level1(fast_config(synthetic, run, group_column="site", **quick), overwrite=True)
