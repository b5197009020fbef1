"""Level 2 (stacker) and `jungle predict` / `jungle evaluate`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from extract.probe import probe
from extract.store import FeatureStore
from extract.thumbnails import THUMB_WIDTH, thumbnail_path
from pool.config import Level1Error
from pool.frames import require_frame_models
from pool.run import train_level1
from pool.rundir import Run
from pool.synthetic import SyntheticSpec, write_synthetic_store
from stack.boost import _log_loss, base_margin, fit_base
from stack.candidates import stack_inputs
from stack.evaluate import evaluate_predictions
from stack.predict import features_dir, predict, thumbnails_dir
from stack.stacker import Stacker
from stack.train import Level2Error, load_level2, predict_level2, train_level2
from tests.media import indexed_clip, read_index
from tests.predict_runs import fast_level1


@pytest.fixture(scope="module")
def size_signal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weak frame features, but empty clips are smaller files: level 2 can use that."""
    base = tmp_path_factory.mktemp("level2")
    store = base / "features.h5"
    spec = SyntheticSpec(clips=360, frames=12, amplitude=2.0, blank_fraction=0.4, seed=5)
    labels = write_synthetic_store(store, spec)
    rng = np.random.default_rng(0)
    with h5py.File(store, "r+") as f:
        ids = [s.decode() for s in f["clips/id"][()]]
        blank = labels.set_index("filepath").loc[ids, "label"].eq("blank").to_numpy()
        size = np.where(blank, 150_000, 400_000) * rng.lognormal(0, 0.15, len(ids))
        f["meta/file_size"][...] = size.astype(np.int64)
    (base / "videos").mkdir()
    labels_csv = base / "videos" / "labels.csv"
    labels.to_csv(labels_csv, index=False)
    run = train_level1(fast_level1(store, labels_csv, base / "run"))
    train_level2(run, seed=0)
    return run


def test_level2_beats_every_level1_model_when_file_size_carries_signal(
    size_signal_run: Path,
) -> None:
    scores = Run(size_signal_run).metrics()["scores"]
    level1 = {m: scores[m]["log_loss"] for m in ("pool", "histogram")}
    assert scores["level2"]["log_loss"] < min(level1.values()), (scores["level2"], level1)
    assert scores["level2"]["blank_accuracy"] > max(scores[m]["blank_accuracy"] for m in level1)
    oof = pd.read_csv(size_signal_run / "level2" / "oof.csv").set_index("id")
    assert set(oof.index) == set(Run(size_signal_run).oof("pool").index)  # every clip once
    assert ((oof.to_numpy() >= 0) & (oof.to_numpy() <= 1)).all()


def test_prediction_averages_the_fold_stackers(size_signal_run: Path) -> None:
    run = Run(size_signal_run)
    info, stackers = load_level2(run.path)
    level1 = {m: run.oof(m).iloc[:25] for m in info["level1_models"]}
    got = predict_level2(run.path, level1, run.meta())
    assert list(got.columns) == info["classes"] and list(got.index) == list(level1["pool"].index)
    x = stack_inputs(level1, run.meta(), list(got.index), info["classes"])
    per_fold = []
    for fold in info["folds"]:
        stacker = Stacker.load(run.level2_dir / f"fold_{fold}")
        bounds = stacker.clipping_
        probs = stacker.predict_proba(x)
        assert (probs >= bounds - 1e-12).all() and (probs <= 1 - bounds + 1e-12).all()
        per_fold.append(probs)
    np.testing.assert_allclose(got.to_numpy(), np.mean(per_fold, axis=0), rtol=1e-6)
    assert len(stackers) == 3 and not np.allclose(per_fold[0], per_fold[1])


def test_retraining_level1_removes_the_stale_level2(tmp_path: Path) -> None:
    store = tmp_path / "features.h5"
    labels = write_synthetic_store(store, SyntheticSpec(clips=90, frames=6, seed=2))
    labels_csv = tmp_path / "labels.csv"
    labels.to_csv(labels_csv, index=False)
    config = fast_level1(store, labels_csv, tmp_path / "run", models=["pool"])
    run = train_level1(config)
    train_level2(run)
    assert (run / "level2").is_dir()
    train_level1(config, overwrite=True)
    assert not (run / "level2").exists()
    with pytest.raises(Level2Error):
        load_level2(run)


def test_base_blend_combines_models_and_ignores_noise() -> None:
    rng = np.random.default_rng(1)
    targets = (rng.random((2000, 4)) < 0.3).astype(float)
    signal = 3.0 * (2 * targets - 1)

    def model(noise: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(signal + rng.normal(0, noise, targets.shape))))

    probs = {"a": model(2.0), "b": model(2.0), "noise": rng.random(targets.shape)}
    base = fit_base(targets, probs, c=0.1)
    coef = np.array(base["coef"])  # (classes, 3 models x 4 classes), models sorted: a, b, noise
    own = [coef[k, [k, 4 + k, 8 + k]] for k in range(4)]
    for a, b, noise in own:
        assert a > 0.2 and b > 0.2 and abs(noise) < 0.1 * min(a, b)
    blend = 1 / (1 + np.exp(-base_margin(probs, base)))
    assert _log_loss(targets, blend) < min(_log_loss(targets, p) for p in probs.values()) - 0.02
    constant = fit_base(np.zeros((50, 1)), {"a": np.full((50, 1), 0.3)}, c=0.1)
    assert constant["coef"] == [[0.0]] and constant["intercept"][0] < -10


def test_train_level2_needs_a_finished_level1_run(tmp_path: Path) -> None:
    with pytest.raises(Level2Error, match="not a finished level-1 run"):
        train_level2(tmp_path)


# --- predict on real (generated) video files (fixtures demo_run, mixed_folder: conftest)


def test_predict_one_row_per_clip_with_status(
    demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    classes = Run(run).classes()
    out = tmp_path / "pred.csv"
    summary = predict(mixed_folder, run, out, top_k=2, threshold=0.5, show_progress=False)
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(table.columns) == (
        ["filepath", *classes, "top_label", "top_prob", "top2_label", "top2_prob"]
        + [f"{c}_present" for c in classes]
        + ["status", "error"]
    )
    assert table["filepath"].tolist() == sorted(p.name for p in mixed_folder.iterdir())
    status = table.set_index("filepath")["status"]
    assert status["empty.mp4"] == "failed" and status["notes.mp4"] == "failed"
    assert status["short.mp4"] == "ok"
    assert (status == "ok").sum() == 5 and summary.failed == 2
    errors = table.set_index("filepath")["error"]
    assert errors["empty.mp4"] == "empty file (0 bytes)"
    assert "not a readable video file" in errors["notes.mp4"]
    ok = table[table["status"] == "ok"]
    probs = ok[classes].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    assert (ok["top_label"] == ok[classes].idxmax(axis=1)).all()
    assert table.loc[table["status"] == "failed", classes].isna().all().all()
    assert features_dir(out).is_dir()


def test_predict_timelapse_format(
    demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    classes = Run(run).classes()
    folder = tmp_path / "survey"
    (folder / "cam 1").mkdir(parents=True)
    clips = sorted(mixed_folder.glob("*.mp4"))
    tagged = indexed_clip(
        folder / "cam 1" / "tagged.mp4", 6, metadata={"creation_time": "2021-05-31T08:25:38Z"}
    )
    os.symlink(mixed_folder / "empty.mp4", folder / "empty.mp4")
    plain = shutil.copy(clips[0], folder / "cam 1" / "plain.mp4")
    os.utime(plain, (1_600_000_000, 1_600_000_000))
    out = tmp_path / "timelapse.csv"
    predict(folder, run, out, fmt="timelapse", show_progress=False)
    table = pd.read_csv(out, keep_default_na=False, na_values=[""], dtype={"DateTime": str})
    assert list(table.columns) == [
        "File",
        "RelativePath",
        "DateTime",
        "DeleteFlag",
        *classes,
        "top_label",
    ]
    rows = table.set_index("File")
    assert rows.loc["tagged.mp4", "RelativePath"] == "cam 1" and tagged.exists()
    assert rows.loc["tagged.mp4", "DateTime"] == "2021-05-31 08:25:38"
    assert rows.loc["plain.mp4", "DateTime"] == "2020-09-13 12:26:40"  # the mtime, UTC
    assert rows["DeleteFlag"].astype(str).str.lower().eq("false").all()
    assert rows.loc[["empty.mp4"], classes].isna().all().all()
    assert pd.isna(rows.loc["empty.mp4", "top_label"])
    ok = rows.drop(index="empty.mp4")
    assert (ok["top_label"] == ok[classes].idxmax(axis=1)).all()
    predict(folder, run, tmp_path / "plain.csv", show_progress=False)
    same = pd.read_csv(tmp_path / "plain.csv").set_index("filepath")
    same.index = [Path(i).name for i in same.index]
    np.testing.assert_allclose(rows[classes].to_numpy(), same.loc[rows.index, classes], atol=1e-6)


def test_predict_per_frame_timeline(
    demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    classes = Run(run).classes()
    frames_csv = tmp_path / "frames.csv"
    out = tmp_path / "pred.csv"
    predict(mixed_folder, run, out, per_frame=frames_csv, show_progress=False)
    frames = pd.read_csv(frames_csv)
    assert list(frames.columns) == ["filepath", "frame_index", "time_s", "attention", *classes]
    status = pd.read_csv(out).set_index("filepath")["status"]
    assert set(frames["filepath"]) == set(status.index[status != "failed"])
    store = FeatureStore(features_dir(out) / "store0.h5")
    real = dict(zip(store.ids, store.mask().sum(axis=1), strict=True))
    for clip, rows in frames.groupby("filepath"):
        assert len(rows) == real[clip]
        assert rows["attention"].sum() == pytest.approx(1.0, abs=1e-5)
        assert (rows["attention"] > 0).all()
        fps = probe(mixed_folder / clip).fps
        np.testing.assert_allclose(rows["time_s"], rows["frame_index"] / fps, atol=1e-5)
        assert rows["frame_index"].is_monotonic_increasing
    assert frames.groupby("filepath").size()["short.mp4"] == 3
    assert ((frames[classes] >= 0) & (frames[classes] <= 1)).all().all()
    assert frames[classes].std().max() > 0  # frames are scored, not a constant
    # thumbnails: one per clip that has features, the frame the attention weighs most
    for clip, state in status.items():
        assert thumbnail_path(thumbnails_dir(out), clip).is_file() == (state != "failed")
    short = frames[frames["filepath"] == "short.mp4"].reset_index(drop=True)
    image = np.asarray(Image.open(thumbnail_path(thumbnails_dir(out), "short.mp4")))
    info = probe(mixed_folder / "short.mp4")
    assert image.shape == (round(THUMB_WIDTH * info.height / info.width), THUMB_WIDTH, 3)
    assert read_index(image) == short.loc[short["attention"].idxmax(), "frame_index"]


def test_per_frame_needs_the_attention_and_histogram_models() -> None:
    require_frame_models(["attention", "histogram", "gru"])
    with pytest.raises(Level1Error, match="the run has no attention"):
        require_frame_models(["gru", "histogram"])


def test_predict_killed_and_rerun_gives_the_same_csv(
    demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    reference = tmp_path / "reference.csv"
    predict(mixed_folder, run, reference, show_progress=False)
    out = tmp_path / "killed.csv"
    cmd = [
        sys.executable,
        "-m",
        "jungle",
        "predict",
        str(mixed_folder),
        "--run",
        str(run),
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "1",
        "--shard-clips",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = features_dir(out) / "store0.h5.parts"
    deadline = time.monotonic() + 120
    while not list(parts.glob("shard-*.h5")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(reference))


def test_predict_never_mixes_two_cards_and_scores_only_the_input(
    demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = demo_run
    clips = sorted((data / "siteA").glob("*.mp4"))[:3]
    card_a, card_b = tmp_path / "cardA", tmp_path / "cardB"
    card_a.mkdir()
    card_b.mkdir()
    for i, clip in enumerate(clips[:2]):
        os.symlink(clip, card_a / f"IMAG000{i}.mp4")
    os.symlink(clips[2], card_b / "IMAG0000.mp4")  # same name, other footage
    out = tmp_path / "pred.csv"
    predict(card_a, run, out, show_progress=False)
    first = pd.read_csv(out)
    cmd = [sys.executable, "-m", "jungle", "predict", str(card_b), "--run", str(run)]
    refused = subprocess.run(
        [*cmd, "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2, refused.stderr
    assert "was made from the clips in" in refused.stderr and "Traceback" not in refused.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out), first)
    own = tmp_path / "pred_b.csv"
    predict(card_b, run, own, show_progress=False)
    b_probs = pd.read_csv(own).iloc[0, 1:-4].to_numpy(dtype=float)
    assert not np.allclose(b_probs, first.iloc[0, 1:-4].to_numpy(dtype=float))
    (card_a / "IMAG0001.mp4").unlink()  # the cache still holds it; the output must not
    predict(card_a, run, out, show_progress=False)
    again = pd.read_csv(out)
    assert again["filepath"].tolist() == ["IMAG0000.mp4"]
    pd.testing.assert_frame_equal(again, first.iloc[:1])


def test_evaluate_scores_predictions_against_labels(
    demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = demo_run
    out = data / "pred_all.csv"
    predict(data / "labels.csv", run, out, show_progress=False)
    result = evaluate_predictions(out, data / "labels.csv")
    assert result["clips"] == 48 and result["failed"] == 0 and result["missing"] == 0
    s = result["scores"]
    assert 0 < s["log_loss"] < 0.7 and 0 <= s["top1_accuracy"] <= 1
    assert set(s["precision"]) == set(Run(run).classes())
    # a perfect predictions file scores a near-zero log loss
    labels = pd.read_csv(data / "labels.csv")
    classes = Run(run).classes()
    perfect = pd.DataFrame({"filepath": labels["filepath"]})
    for c in classes:
        perfect[c] = [1.0 if c in str(lab).split(";") else 0.0 for lab in labels["label"]]
    perfect.to_csv(tmp_path / "perfect.csv", index=False)
    best = evaluate_predictions(tmp_path / "perfect.csv", data / "labels.csv")["scores"]
    assert best["log_loss"] < 1e-5 and best["top1_accuracy"] == 1.0
    # the command line also saves the plots as PNG files
    args = ["evaluate", "--predictions", str(out), "--labels", str(data / "labels.csv")]
    done = subprocess.run(
        [sys.executable, "-m", "jungle", *args, "--plots", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name in ("confusion", "per_class", "blank_removal"):
        with Image.open(tmp_path / "plots" / f"pred_all.{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 100
