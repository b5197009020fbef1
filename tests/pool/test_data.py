"""Matching label rows to store clips, and reading features of one or several stores."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract.store import FeatureStore
from pool.config import FeatureSource, Level1Error, load_config
from pool.data import Level1Data, load_block, load_training_data, open_stores
from pool.synthetic import SyntheticSpec, write_synthetic_store

Small = tuple[Path, pd.DataFrame, list[str]]  #: store, labels of every clip, failed ids
SMALL = SyntheticSpec(clips=30, frames=6, layers=(("a", 3), ("b", 5)), sites=3, failed=2, seed=1)


@pytest.fixture
def small(tmp_path: Path) -> Small:
    """A 30-clip store whose clip files exist under ``tmp_path/videos`` (2 failed clips)."""
    labels = write_synthetic_store(tmp_path / "f.h5", SMALL)
    for cid in labels["filepath"]:
        (tmp_path / "videos" / cid).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / cid).write_bytes(b"")
    failed = FeatureStore(tmp_path / "f.h5").failed()["id"].tolist()
    return tmp_path / "f.h5", labels, failed


def data_for(store: Path, csv: Path, **overrides: object) -> Level1Data:
    settings = {"features": [str(store)], "labels": str(csv), "run": "r", **overrides}
    cfg = load_config(None, settings)
    return load_training_data(cfg, open_stores(cfg.features))


def test_relative_absolute_and_symlinked_paths_match(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    ok = labels[~labels["filepath"].isin(failed)].reset_index(drop=True)
    # relative to the CSV's folder, through a symlink to the video root
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.symlink(tmp_path / "videos", tmp_path / "link")
    rel = ok.assign(filepath="../link/" + ok["filepath"])
    # absolute paths for half of the rows
    rel.loc[::2, "filepath"] = [str(tmp_path / "videos" / f) for f in ok["filepath"][::2]]
    rel.to_csv(other / "labels.csv", index=False)
    data = data_for(store, other / "labels.csv")
    assert sorted(data.block.ids) == sorted(ok["filepath"])
    by_id = dict(zip(ok["filepath"], ok["label"], strict=True))
    for cid, row in zip(data.block.ids, data.targets, strict=True):
        names = {c for c, v in zip(data.classes, row, strict=True) if v}
        assert names == set(by_id[cid].split(";"))
    assert data.skipped.empty


def test_falls_back_to_clip_ids_when_videos_moved(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    (tmp_path / "moved").mkdir()
    labels[~labels["filepath"].isin(failed)].to_csv(tmp_path / "moved" / "l.csv", index=False)
    data = data_for(store, tmp_path / "moved" / "l.csv")
    assert len(data.block) == SMALL.clips - len(failed)


def test_missing_and_failed_rows_are_errors_or_skipped(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    extra = pd.DataFrame({"filepath": ["site9/ghost.mp4"], "label": ["hog"], "site": ["site9"]})
    csv = tmp_path / "videos" / "labels.csv"
    pd.concat([labels, extra]).to_csv(csv, index=False)
    with pytest.raises(Level1Error) as info:
        data_for(store, csv)
    message = str(info.value)
    assert "3 of 31 rows" in message and "--skip-missing" in message
    assert "failed at extraction: synthetic decode error" in message
    assert "'site9/ghost.mp4': not in" in message
    data = data_for(store, csv, skip_missing=True)
    assert len(data.block) == SMALL.clips - 2
    assert sorted(data.skipped["filepath"]) == sorted([*failed, "site9/ghost.mp4"])
    assert not set(data.block.ids) & set(failed)


def test_two_rows_for_one_clip_is_an_error(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    ok = labels[~labels["filepath"].isin(failed)]
    dup = pd.concat([ok, ok.iloc[:1].assign(filepath="./" + ok["filepath"].iloc[0])])
    dup.to_csv(tmp_path / "videos" / "labels.csv", index=False)
    with pytest.raises(Level1Error, match="several label rows are the same clip"):
        data_for(store, tmp_path / "videos" / "labels.csv")


def test_groups_from_column_or_folder(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    csv = tmp_path / "videos" / "labels.csv"
    labels[~labels["filepath"].isin(failed)].to_csv(csv, index=False)
    by_column = data_for(store, csv, group_column="site")
    by_folder = data_for(store, csv, group_by_folder=True)
    assert list(by_folder.groups) == [cid.split("/")[0] for cid in by_folder.block.ids]
    np.testing.assert_array_equal(by_column.groups, by_folder.groups)


def test_several_stores_concatenate_per_clip(tmp_path: Path, small: Small) -> None:
    store, labels, _ = small
    whole = load_block([FeatureSource(path=store)], ["file_size", "fps"])
    assert whole.x.dtype == np.float16 and whole.x.shape == (28, 6, 8)
    np.testing.assert_array_equal(whole.x, FeatureStore(store).features())
    # the same clips in another store (another "backbone"): layers picked per store
    twin = tmp_path / "twin" / "g.h5"
    twin.parent.mkdir()
    write_synthetic_store(twin, SMALL, root=tmp_path / "videos")
    ids = whole.ids[::-1][:10]
    both = load_block(
        [FeatureSource(path=store, layers=["b"]), FeatureSource(path=twin, layers=["a", "b"])],
        ["file_size"],
        ids,
    )
    assert both.ids == ids and both.x.shape == (10, 6, 13)
    rows = [whole.ids.index(c) for c in ids]
    np.testing.assert_array_equal(both.x[:, :, :5], whole.x[rows][:, :, 3:])
    np.testing.assert_array_equal(both.x[:, :, 5:], whole.x[rows])
    np.testing.assert_array_equal(both.mask, whole.mask[rows])
    assert [item["dims"] for item in both.layout] == [[5], [3, 5]]
    np.testing.assert_allclose(
        both.meta[:, 0], np.log1p(FeatureStore(store).meta().loc[ids, "file_size"]), rtol=1e-6
    )


def test_clips_missing_from_a_second_store(tmp_path: Path, small: Small) -> None:
    store, labels, failed = small
    twin = tmp_path / "twin" / "g.h5"
    twin.parent.mkdir()
    write_synthetic_store(twin, replace(SMALL, failed=6), root=tmp_path / "videos")
    lost = sorted(set(FeatureStore(twin).failed()["id"]) - set(failed))
    csv = tmp_path / "videos" / "labels.csv"
    labels[~labels["filepath"].isin(failed)].to_csv(csv, index=False)
    features = [str(store), {"path": str(twin), "layers": ["a"]}]
    with pytest.raises(Level1Error, match=f"{len(lost)} of 28 rows") as info:
        data_for(store, csv, features=features)
    assert all(cid in str(info.value) for cid in lost[:3])
    data = data_for(store, csv, features=features, skip_missing=True)
    assert sorted(data.skipped["filepath"]) == lost
    assert data.block.x.shape == (28 - len(lost), 6, 11)


def test_unknown_layer_or_store_is_an_error(tmp_path: Path, small: Small) -> None:
    store, _, _ = small
    with pytest.raises(Level1Error, match=r"no layer \['c'\]"):
        open_stores([FeatureSource(path=store, layers=["c"])])
    with pytest.raises(Level1Error, match="does not exist"):
        open_stores([FeatureSource(path=tmp_path / "none.h5")])
