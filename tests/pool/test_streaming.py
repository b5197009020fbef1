"""Level 1 with features streamed from the stores: the block-shuffled batch order, readers,
the same OOF and predictions as with features held in memory, and bounded reads."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from extract.store import FeatureStore
from pool.config import FeatureSource
from pool.data import (
    ArrayFeatures,
    BlockShuffle,
    CenteredFeatures,
    StoreFeatures,
    frame_moments,
    load_block,
    sequential,
    shuffled_batches,
)
from pool.run import predict_level1, train_level1
from pool.synthetic import SyntheticSpec, write_synthetic_store
from tests.pool.support import Synthetic, fast_config

#: the test store's clips: 16 frames x 64 dims x 2 bytes.
CLIP_BYTES = 16 * 64 * 2
#: blocks of 16 clips, windows of 4 blocks (64 clips of ~240 training clips per fold).
STREAM = {"shuffle_block_clips": 16, "shuffle_window_mb": 64 * CLIP_BYTES / 1e6}
QUICK = {
    "attention": {"epochs": 4, "patience": 4},
    "gru": {"epochs": 3, "patience": 3},
    "pool": {"epochs": 6, "patience": 6},
    "histogram": {"frame_steps": 40, "frame_folds": 3, "n_estimators": 30},
}


# --- the batch order -------------------------------------------------------------------


def test_every_training_row_exactly_once_per_epoch() -> None:
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(5000, size=1237, replace=False))
    shuffle = BlockShuffle(block_clips=50, window_bytes=4 * 50 * 1000)  # 4 blocks per window
    seen = []
    for _ in range(3):
        windows = shuffle.epoch(rows, rng, clip_bytes=1000)
        assert len(windows) == 7  # 25 blocks, 4 per window
        order = np.concatenate([w.order for w in windows])
        np.testing.assert_array_equal(np.sort(order), rows)
        for window in windows:
            members = np.concatenate(window.blocks)
            assert len(window.blocks) <= 4
            np.testing.assert_array_equal(np.sort(window.order), members)
            for block in window.blocks:  # a block is consecutive training rows
                start = int(np.searchsorted(rows, block[0]))
                np.testing.assert_array_equal(block, rows[start : start + len(block)])
                assert start % 50 == 0 and len(block) <= 50
        seen.append(order)
    assert not np.array_equal(seen[0], seen[1])  # reshuffled each epoch


def test_one_window_is_a_full_shuffle_as_before() -> None:
    rows = np.arange(3, 400, 2)
    epoch = BlockShuffle().epoch(rows, np.random.default_rng(7), clip_bytes=32 * 1752 * 2)
    assert len(epoch) == 1
    np.testing.assert_array_equal(epoch[0].order, np.random.default_rng(7).permutation(rows))


def test_batches_cover_the_epoch_and_span_windows() -> None:
    n, t, c = 300, 3, 5
    x = np.random.default_rng(1).standard_normal((n, t, c)).astype(np.float16)
    rows = np.arange(0, n, 3)  # 100 rows
    shuffle = BlockShuffle(block_clips=7, window_bytes=3 * 7 * t * c * 2)  # 21 clips a window
    windows = shuffle.epoch(rows, np.random.default_rng(2), clip_bytes=t * c * 2)
    batches = list(shuffled_batches(ArrayFeatures(x), windows, batch_size=8))
    assert [len(r) for r, _ in batches] == [8] * 12 + [4]
    order = np.concatenate([w.order for w in windows])
    for i, (batch_rows, batch_x) in enumerate(batches):
        np.testing.assert_array_equal(batch_rows, np.sort(order[8 * i : 8 * i + 8]))
        np.testing.assert_array_equal(batch_x, x[batch_rows])


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two stores of the same 60 clips, the second (another "backbone": negated features)
    holding them in another order."""
    base = tmp_path_factory.mktemp("two_stores")
    spec = SyntheticSpec(clips=60, frames=6, layers=(("a", 3), ("b", 4)), sites=3, seed=4)
    write_synthetic_store(base / "one.h5", spec)
    shutil.copy(base / "one.h5", base / "two.h5")
    perm = np.random.default_rng(0).permutation(60)
    with h5py.File(base / "two.h5", "r+") as f:
        for group in ("clips", "meta", "features"):
            for ds in f[group].values():
                data = ds[()][perm]
                ds[...] = -data if group == "features" else data
    return base / "one.h5", base / "two.h5"


def test_centred_reader_subtracts_each_clips_mean_real_frame() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 3)).astype(np.float16)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]], bool)
    x[~mask] = np.nan  # padding never leaks into a mean or a value
    centred = CenteredFeatures(ArrayFeatures(x), mask)
    rows = np.array([0, 1, 2, 4])
    got = centred.read(rows)
    assert got.dtype == np.float16 and got.shape == (4, 4, 3)
    for i, row in enumerate(rows):
        real = x[row][mask[row]].astype(np.float64)
        np.testing.assert_allclose(got[i][mask[row]], real - real.mean(axis=0), atol=2e-3)
        assert not got[i][~mask[row]].any()
    assert not got[2].any()  # a one-frame clip is all zeros once centred


def test_store_reader_reads_what_the_array_holds(two_stores: tuple[Path, Path]) -> None:
    one, two = two_stores
    sources = [FeatureSource(path=one), FeatureSource(path=two)]
    ids = FeatureStore(one).ids[::-1]  # not the first store's order either
    held = load_block(sources, ["fps"], ids, in_memory=True)
    streamed = load_block(sources, ["fps"], ids, in_memory=False)
    assert isinstance(held.features, ArrayFeatures)
    assert isinstance(streamed.features, StoreFeatures)
    assert streamed.features.shape == held.x.shape == (60, 6, 14)
    for path, cols in ((one, slice(0, 7)), (two, slice(7, 14))):
        store = FeatureStore(path)
        expected = store.features(rows=[store.ids.index(cid) for cid in ids])
        np.testing.assert_array_equal(held.x[:, :, cols], expected)
    np.testing.assert_array_equal(held.x[:, :, 7:], -held.x[:, :, :7])
    for rows in ([0], [3, 4, 5, 40], np.arange(60)):
        np.testing.assert_array_equal(streamed.features.read(np.array(rows)), held.x[rows])
    with pytest.raises(Exception, match="streamed"):
        _ = streamed.x
    auto_small = load_block(sources, ["fps"], in_memory="auto", budget_gb=60 * 6 * 14 * 2 / 1e9)
    auto_tiny = load_block(sources, ["fps"], in_memory="auto", budget_gb=1e-9)
    assert auto_small.features.in_memory and not auto_tiny.features.in_memory


def test_same_batches_and_moments_from_memory_and_from_the_stores(
    two_stores: tuple[Path, Path],
) -> None:
    one, two = two_stores
    sources = [FeatureSource(path=one, layers=["b"]), FeatureSource(path=two)]
    held = load_block(sources, [], in_memory=True, read_mb=9 * 6 * 11 * 2 / 1e6)
    streamed = load_block(sources, [], in_memory=False, read_mb=9 * 6 * 11 * 2 / 1e6)
    assert held.features.chunk_clips == streamed.features.chunk_clips == 9
    rows = np.setdiff1d(np.arange(60), [5, 17, 18, 33])
    shuffle = BlockShuffle(block_clips=6, window_bytes=2 * 6 * streamed.features.clip_bytes)
    for seed in range(3):
        got = []
        for block in (held, streamed):
            rng = np.random.default_rng(seed)
            windows = shuffle.epochs(rows, rng, block.features.clip_bytes)
            batches = shuffled_batches(block.features, windows, batch_size=5)
            got.append([next(batches) for _ in range(30)])  # 150 clips: three epochs
        for (rows_a, x_a), (rows_b, x_b) in zip(*got, strict=True):
            np.testing.assert_array_equal(rows_a, rows_b)
            np.testing.assert_array_equal(x_a, x_b)
    for a, b in zip(
        frame_moments(held.features, held.mask, rows),
        frame_moments(streamed.features, streamed.mask, rows),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    sizes = [len(x) for _, x in sequential(streamed.features, rows, chunk=512)]
    assert max(sizes) == 9 and sum(sizes) == len(rows)


# --- level 1 end to end --------------------------------------------------------------


class ReadCounter:
    """Records the clips of every FeatureStore.features call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        original = FeatureStore.features

        def counted(store: FeatureStore, layers=None, rows=None):  # noqa: ANN001, ANN202
            self.sizes.append(len(store) if rows is None else len(rows))
            if rows is not None and len(rows) > 1:
                assert np.all(np.diff(np.asarray(rows)) > 0), "rows must be sorted ascending"
            return original(store, layers, rows)

        monkeypatch.setattr(FeatureStore, "features", counted)


@pytest.fixture(scope="module")
def runs_both_ways(
    synthetic: Synthetic, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stream_runs")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        for mode, in_memory in (("memory", True), ("stream", False)):
            counter = ReadCounter(patch)
            config = fast_config(
                synthetic, base / mode, features_in_memory=in_memory, **STREAM, **QUICK
            )
            runs[mode] = train_level1(config)
            (base / f"{mode}.reads").write_text(" ".join(map(str, counter.sizes)))
            patch.undo()
    return runs


def test_chunk_read_store_gives_the_same_oof_as_memory(runs_both_ways: dict[str, Path]) -> None:
    memory, stream = runs_both_ways["memory"], runs_both_ways["stream"]
    for name in ("attention", "gru", "pool", "histogram"):
        assert filecmp.cmp(memory / "oof" / f"{name}.csv", stream / "oof" / f"{name}.csv", False)
    for name in ("folds.csv", "targets.csv", "inputs.json"):
        assert filecmp.cmp(memory / name, stream / name, shallow=False)


def test_streamed_training_never_reads_all_features(
    runs_both_ways: dict[str, Path], synthetic: Synthetic
) -> None:
    n = len(FeatureStore(synthetic.store))
    window = int(STREAM["shuffle_window_mb"] * 1e6 // CLIP_BYTES)
    streamed = [
        int(v) for v in (runs_both_ways["stream"].parent / "stream.reads").read_text().split()
    ]
    held = [int(v) for v in (runs_both_ways["memory"].parent / "memory.reads").read_text().split()]
    # held in memory: the labelled clips are read once (and one clip per layer for its width)
    assert sum(held) <= n + 2
    # streamed: many reads, none larger than a shuffle window (here a sixth of the clips)
    assert len(streamed) > 100 and max(streamed) <= window < n / 5


def test_predict_level1_streams_with_the_same_result(
    runs_both_ways: dict[str, Path], synthetic: Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runs_both_ways["stream"]  # trained with features_in_memory: false
    counter = ReadCounter(monkeypatch)
    streamed = predict_level1(run, [synthetic.store], device="cpu")
    window = int(STREAM["shuffle_window_mb"] * 1e6 // CLIP_BYTES)
    assert max(counter.sizes) <= window
    # the models read every clip once per pass, not once per model and fold
    assert sum(counter.sizes) <= 2 * len(FeatureStore(synthetic.store))
    monkeypatch.undo()
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(
        config.replace("features_in_memory: false", "features_in_memory: true")
    )
    try:
        held = predict_level1(run, [synthetic.store], device="cpu")
    finally:
        (run / "config.yaml").write_text(config)
    for name, frame in streamed.items():
        pd.testing.assert_frame_equal(frame, held[name])
