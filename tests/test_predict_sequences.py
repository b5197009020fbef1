"""The whole pipeline on photo sequences: a run trained on generated bursts (folder-grouped
ids), predictions on the folder and on the Hakuna metadata CSV, evaluation with both label
layouts, bad photos as partial and failed rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from extract.discover import discover
from extract.store import FeatureStore
from jungle.cli import app
from pool.rundir import Run
from stack.evaluate import evaluate_predictions
from stack.predict import predict
from tests.images import text_as_jpg, truncated_jpeg


def test_run_on_sequences_predicts_one_row_per_sequence(
    photo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = photo_run
    labels = pd.read_csv(data / "labels.csv")
    hakuna = pd.read_csv(data / "train_metadata.csv")

    # the training store holds one row per burst, marked as sequences
    train = FeatureStore(run.parent / "train.h5")
    assert len(train) == len(labels) == hakuna["seq_id"].nunique()
    assert set(train.meta()["media"]) == {"images"}
    assert train.extraction["frames"] == 10  # photos only: the photo default

    # predict on the folder: one row per sequence, ids are the first photos
    by_folder = tmp_path / "folder.csv"
    summary = predict(data, run, by_folder, show_progress=False)
    table = pd.read_csv(by_folder)
    assert summary.clips == len(labels) and summary.failed == 0
    assert table["filepath"].tolist() == sorted(labels["filepath"])
    scores = evaluate_predictions(by_folder, data / "labels.csv")
    assert scores["clips"] == len(labels)
    # training data, predicted by models that saw it: clearly better than the class prior
    prior = Run(run).metrics()["scores"]["prior"]["log_loss"]
    assert scores["scores"]["log_loss"] < prior - 0.03, (scores["scores"], prior)

    # predict on the Hakuna metadata CSV: key column seq_id, same sequences, same numbers
    by_meta = tmp_path / "meta.csv"
    predict(data / "train_metadata.csv", run, by_meta, show_progress=False)
    seq = pd.read_csv(by_meta)
    assert list(seq.columns[:1]) == ["seq_id"] and "filepath" not in seq.columns
    assert seq["seq_id"].tolist() == list(dict.fromkeys(hakuna["seq_id"]))
    first = hakuna.groupby("seq_id", sort=False)["file_name"].first()
    same = table.set_index("filepath").loc[first.loc[seq["seq_id"]].to_numpy()]
    classes = [c for c in labels["label"].str.split(";").explode().unique()]
    np.testing.assert_allclose(seq[classes].to_numpy(), same[classes].to_numpy(), rtol=0, atol=1e-5)
    # evaluation with Hakuna labels (seq_id, ..., empty) gives the folder's scores
    again = evaluate_predictions(by_meta, data / "train_labels.csv")
    assert again["clips"] == scores["clips"]
    assert abs(again["scores"]["log_loss"] - scores["scores"]["log_loss"]) < 1e-4


def test_bad_photos_partial_and_failed_rows(photo_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = photo_run
    card = tmp_path / "card"
    shutil.copytree(data / "siteA", card / "siteA")
    burst = next(c for c in discover(card)[1] if len(c.images) >= 2)
    (card / "broken").mkdir()
    truncated_jpeg(card / "broken" / "x.jpg", burst.images[0])
    text_as_jpg(card / "notes.jpg")
    whole = burst.images[1].read_bytes()  # one damaged photo in a burst: partial
    burst.images[1].write_bytes(whole[: len(whole) // 3])
    out = tmp_path / "p.csv"
    args = ["predict", str(card), "--run", str(run), "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False).set_index("filepath")
    assert table.loc["broken/x.jpg", "status"] == "failed"
    assert "damaged image data" in table.loc["broken/x.jpg", "error"]
    assert table.loc["notes.jpg", "status"] == "failed"
    assert "not a readable image file" in table.loc["notes.jpg", "error"]
    assert table.loc[burst.clip_id, "status"] == "partial"
    rest = table.drop(["broken/x.jpg", "notes.jpg", burst.clip_id])
    assert (rest["status"] == "ok").all() and len(rest) > 5


def test_timelapse_has_a_row_per_photo(photo_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = photo_run
    out = tmp_path / "timelapse.csv"
    predict(data / "siteB", run, out, fmt="timelapse", show_progress=False)
    table = pd.read_csv(out, keep_default_na=False)
    photos = sorted((data / "siteB").glob("*.JPG"))
    assert table["File"].tolist() == [p.name for p in photos]  # every photo, capture order
    assert (table["RelativePath"] == "").all()
    meta = pd.read_csv(data / "train_metadata.csv").set_index("file_name")["datetime"]
    assert table["DateTime"].tolist() == [meta[f"siteB/{p.name}"] for p in photos]
    # the photos of one sequence share its probabilities
    _, clips = discover(data / "siteB")
    burst = next(c for c in clips if len(c.images) >= 2)
    rows = table[table["File"].isin([p.name for p in burst.images])]
    assert len(rows) == len(burst.images) and rows["top_label"].nunique() == 1
    assert rows.drop(columns=["File", "DateTime"]).drop_duplicates().shape[0] == 1
