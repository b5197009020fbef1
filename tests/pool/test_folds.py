"""Folds: every clip validated once, multi-label stratification (rarest first), groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pool.config import Level1Error
from pool.folds import default_fold_count, inner_split, make_folds, read_folds, write_folds


def multilabel(n: int, seed: int) -> np.ndarray:
    """Targets with a common, a medium and two rare classes, some rows with two classes."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 5), dtype=np.float32)
    y[:, 0] = rng.random(n) < 0.5
    y[:, 1] = rng.random(n) < 0.2
    y[rng.choice(n, 10, replace=False), 2] = 1  # rare: 10 clips
    y[rng.choice(n, 3, replace=False), 3] = 1  # very rare: 3 clips
    y[:, 4] = y[:, :4].sum(axis=1) == 0  # blank
    return y


def test_every_clip_in_exactly_one_fold_and_balanced() -> None:
    y = multilabel(503, seed=1)
    folds = make_folds(y, 5, seed=0)
    assert folds.shape == (503,)
    assert set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 2


def test_every_class_is_stratified_not_only_the_first() -> None:
    y = multilabel(503, seed=2)
    folds = make_folds(y, 5, seed=0)
    for k in range(y.shape[1]):
        per_fold = np.array([y[folds == f, k].sum() for f in range(5)])
        expected = y[:, k].sum() / 5
        assert np.all(np.abs(per_fold - expected) <= 1.5), (k, per_fold, expected)


def test_rare_classes_land_in_several_folds() -> None:
    y = multilabel(503, seed=3)
    folds = make_folds(y, 5, seed=4)
    # 10 examples: two per fold; 3 examples: three different folds
    assert sorted(np.bincount(folds[y[:, 2] > 0], minlength=5).tolist()) == [2, 2, 2, 2, 2]
    assert len(set(folds[y[:, 3] > 0].tolist())) == 3


def test_groups_never_straddle_folds() -> None:
    y = multilabel(400, seed=5)
    rng = np.random.default_rng(0)
    groups = np.array([f"site{g}" for g in rng.integers(0, 23, size=400)])
    folds = make_folds(y, 4, seed=0, groups=groups)
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1, g
    assert set(folds.tolist()) == set(range(4))
    # still roughly balanced in size and in the common class
    sizes = np.bincount(folds)
    assert sizes.min() > 0.5 * sizes.max()


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    y = multilabel(300, seed=6)
    np.testing.assert_array_equal(make_folds(y, 5, seed=7), make_folds(y, 5, seed=7))
    assert not np.array_equal(make_folds(y, 5, seed=7), make_folds(y, 5, seed=8))


def test_too_few_clips_or_groups() -> None:
    y = multilabel(50, seed=0)
    with pytest.raises(Level1Error, match="3 groups cannot be split into 5 folds; use at most 3"):
        make_folds(y, 5, seed=0, groups=np.array(["a", "b", "c"] * 16 + ["a", "b"]))
    with pytest.raises(Level1Error, match="4 clips"):
        make_folds(y[:4], 5, seed=0)


def test_default_fold_count_is_one_fold_per_group_when_there_are_fewer_than_five() -> None:
    four_sites = np.array(["a", "b", "c", "d"] * 10)
    assert default_fold_count(None, four_sites) == 4  # leave one site out
    assert default_fold_count(None, np.array(list("abcdefg") * 5)) == 5
    assert default_fold_count(None, None) == 5
    assert default_fold_count(3, four_sites) == 3  # asked for: kept
    assert default_fold_count(6, four_sites) == 6  # make_folds then says what to do
    assert default_fold_count(None, np.array(["a"] * 9)) == 5  # one group: make_folds fails


def test_inner_split_is_a_grouped_fraction() -> None:
    y = multilabel(600, seed=9)
    val = inner_split(y, 0.2, seed=0)
    assert 0.17 < val.mean() < 0.23
    groups = np.array([f"g{i % 40}" for i in range(600)])
    val = inner_split(y, 0.2, seed=0, groups=groups)
    assert not set(groups[val]) & set(groups[~val])
    assert 0.1 < val.mean() < 0.3


def test_folds_csv_round_trip(tmp_path: Path) -> None:
    ids = [f"s/c{i}.mp4" for i in range(20)]
    folds = make_folds(multilabel(20, seed=1)[:, [0, 4]], 4, seed=0)
    write_folds(tmp_path / "folds.csv", ids, folds, [f"s{i % 5}" for i in range(20)])
    back = read_folds(tmp_path)
    assert back.index.tolist() == ids
    np.testing.assert_array_equal(back.to_numpy(), folds)
