"""`jungle features` end to end: store layout, bad inputs, resume after kill -9, new clips."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from extract.config import FeaturesConfig
from extract.pipeline import extract_features, failed_csv_path, parts_dir
from extract.store import FeatureStore, StoreError
from tests.media import audio_only, indexed_clip, truncate

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["blocks.2", "blocks.4", "blocks.6", "features"]
WIDTHS = {"blocks.2": 40, "blocks.4": 112, "blocks.6": 320, "features": 1280}


def _jungle(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jungle", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name].dtype == db[name].dtype, name
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["extraction"] == fb.attrs["extraction"]


def test_store_layout_dtypes_and_metadata(
    clip_folder: Path, tmp_path: Path, small_config: FeaturesConfig
) -> None:
    out = tmp_path / "features.h5"
    summary = extract_features(clip_folder, out, small_config, show_progress=False)
    assert (summary.ok, summary.failed, summary.partial) == (5, 0, 0)
    assert not parts_dir(out).exists()
    store = FeatureStore(out)
    assert store.ids == [  # sorted by code point, as discovery lists them
        "Taï/m.avi",
        "Taï/éléphant.mp4",
        "site A/b.AVI",
        "site A/cam 1/clip one.mp4",
        "z.asf",
    ]
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "jungle-features"
        extraction = json.loads(f.attrs["extraction"])
        assert extraction["layers"] == LAYERS and extraction["frames"] == 8
        assert extraction["image_size"] == 64 and extraction["backbone"] == "efficientnet_lite0"
        assert json.loads(f.attrs["config"])["frames"] == 8
        assert "torch" in json.loads(f.attrs["versions"])
        for layer in LAYERS:
            ds = f[f"features/{layer}"]
            assert ds.dtype == np.float16 and ds.shape == (5, 8, WIDTHS[layer])
        assert f["clips/mask"].dtype == bool and f["clips/frame_index"].shape == (5, 8)
    meta = store.meta()
    assert meta.loc["Taï/éléphant.mp4", "frame_count"] == 12
    assert meta.loc["site A/b.AVI", "codec"] == "mpeg4"
    assert meta.loc["site A/b.AVI", "decoder"] == "pyav"
    assert meta.loc["site A/cam 1/clip one.mp4", "decoder"] == "decord"
    assert meta.loc["z.asf", "container"] == "asf"
    assert (meta["precision"] == "float32").all()  # the CPU's arithmetic, per clip
    assert (meta["width"] == 320).all() and (meta["height"] == 240).all()
    assert np.allclose(meta["fps"], 25) and (meta["file_size"] > 0).all()
    assert (meta["bitrate"] > 0).all() and (meta["duration"] > 0).all()
    mask = store.mask()
    assert mask[store.ids.index("Taï/éléphant.mp4")].all()  # 12 frames >= 8
    x = store.features()
    assert x.shape == (5, 8, sum(WIDTHS.values())) and np.isfinite(x).all()
    assert x.astype(np.float32).std() > 0
    paths = store.paths()
    assert all(Path(p).is_file() for p in paths)


def test_bad_inputs_become_failed_rows_and_never_features(
    clip_folder: Path, tmp_path: Path, small_config: FeaturesConfig
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(clip_folder, videos)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.avi").write_text("this is a text file renamed to .avi\n" * 50)
    (videos / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    audio_only(videos / "audio.mp4")
    truncate(videos / "site A" / "cam 1" / "clip one.mp4", videos / "cut.mp4", 0.5)
    short = indexed_clip(videos / "short.mp4", 3)
    out = tmp_path / "features.h5"
    summary = extract_features(videos, out, small_config, show_progress=False)
    store = FeatureStore(out)
    failed = dict(zip(store.failed()["id"], store.failed()["reason"], strict=True))
    assert set(failed) == {"zero.mp4", "text.avi", "random.mp4", "audio.mp4", "cut.mp4"}
    assert failed["zero.mp4"] == "empty file (0 bytes)"
    assert "not a readable video file" in failed["text.avi"]
    assert "not a readable video file" in failed["random.mp4"]
    assert failed["audio.mp4"].startswith("no video stream in file (found: audio)")
    assert not set(failed) & set(store.ids)  # failed clips never get features
    assert summary.ok == 6 and summary.failed == 5
    assert store.mask()[store.ids.index(short.name)].tolist() == [True] * 3 + [False] * 5
    with failed_csv_path(out).open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["id"]: r["reason"] for r in rows} == failed


def test_kill_9_then_resume_gives_the_same_store(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(10):
        indexed_clip(videos / f"clip{i:02d}.mp4", 120 + i)
    args = ["--frames", "16", "--image-size", "128", "--workers", "1", "--batch-frames", "24"]
    args += ["--no-progress"]
    config = tmp_path / "c.yaml"
    config.write_text("shard_clips: 1\n")
    reference = tmp_path / "reference.h5"
    done = _jungle("features", str(videos), "--out", str(reference), "--config", str(config), *args)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jungle",
            "features",
            str(videos),
            "--out",
            str(out),
            "--config",
            str(config),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not list(parts_dir(out).glob("shard-*.h5")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shards = list(parts_dir(out).glob("shard-*.h5"))
    assert shards and not out.exists(), "the run should have been killed midway"
    for shard in shards:  # what was written is intact
        with h5py.File(shard, "r") as f:
            assert len(f["clips/id"]) + len(f["failed/id"]) == 1

    again = _jungle("features", str(videos), "--out", str(out), "--config", str(config), *args)
    assert again.returncode == 0, again.stderr
    assert "were already done" in again.stderr
    processed_now = int(again.stderr.split(" processed now")[0].split()[-1])
    assert processed_now < 10
    _assert_same_store(out, reference)


def test_new_clips_are_added_and_old_ones_kept(
    tmp_path: Path, small_config: FeaturesConfig
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("b.mp4", "d.mp4"):
        indexed_clip(videos / name, 20)
    out = tmp_path / "f.h5"
    extract_features(videos, out, small_config, show_progress=False)
    before = FeatureStore(out).features()
    for name in ("a.mp4", "c.mp4"):
        indexed_clip(videos / name, 30)
    summary = extract_features(videos, out, small_config, show_progress=False)
    assert (summary.processed, summary.already_done, summary.ok) == (2, 2, 4)
    store = FeatureStore(out)
    assert store.ids == ["b.mp4", "d.mp4", "a.mp4", "c.mp4"]  # rows in the order added
    np.testing.assert_array_equal(store.features(rows=[0, 1]), before)
    nothing = extract_features(videos, out, small_config, show_progress=False)
    assert nothing.processed == 0 and FeatureStore(out).ids == store.ids


def test_other_settings_do_not_mix_into_a_store(
    clip_folder: Path, tmp_path: Path, small_config: FeaturesConfig
) -> None:
    out = tmp_path / "f.h5"
    extract_features(clip_folder, out, small_config, show_progress=False)
    other = small_config.model_copy(update={"frames": 4, "precision": "bfloat16"})
    with pytest.raises(StoreError, match="other settings"):
        extract_features(clip_folder, out, other, show_progress=False)
    extract_features(clip_folder, out, other, show_progress=False, overwrite=True)
    assert FeatureStore(out).mask().shape == (5, 4)
    assert (FeatureStore(out).meta()["precision"] == "bfloat16").all()


def test_cli_exit_codes_and_messages(tmp_path: Path) -> None:
    missing = _jungle("features", str(tmp_path / "nope"), "--out", str(tmp_path / "f.h5"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("frames: 32\nframez: 3\n")
    invalid = _jungle(
        "features", str(tmp_path), "--out", str(tmp_path / "f.h5"), "--config", str(bad)
    )
    assert invalid.returncode == 2 and "framez" in invalid.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"")
    all_failed = _jungle("features", str(broken), "--out", str(tmp_path / "f.h5"), "--no-progress")
    assert all_failed.returncode == 1, all_failed.stderr
    assert "1 failed" in all_failed.stderr


def test_lowres_real_clips_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lowres.h5"
    config = FeaturesConfig(frames=16, image_size=64, workers=2)
    summary = extract_features(shared_data / "camtrap-lowres", out, config, show_progress=False)
    assert (summary.ok, summary.failed) == (19, 0)
    store = FeatureStore(out)
    assert any("Taï" in i for i in store.ids)
    meta = store.meta()
    assert set(meta["codec"]) == {"h264", "mpeg4", "msmpeg4"}
    short = meta["frame_count"] < 16
    assert short.any() and (store.mask()[short.to_numpy()].sum(axis=1) < 16).all()


def test_a_clip_that_crashes_its_decoder_is_one_failed_row(
    tmp_path: Path, small_config: FeaturesConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "crash.mp4", "c.mp4"):
        indexed_clip(videos / name, 14)
    monkeypatch.setenv("JUNGLE_TEST_CRASH", "crash.mp4")
    out = tmp_path / "f.h5"
    summary = extract_features(videos, out, small_config, show_progress=False)
    store = FeatureStore(out)
    assert sorted(store.ids) == ["a.mp4", "c.mp4"] and summary.failed == 1
    failed = store.failed()
    assert failed["id"].tolist() == ["crash.mp4"]
    assert failed["reason"].tolist() == ["decoder crashed (signal 11)"]


def test_a_rerun_does_not_die_on_the_clip_that_killed_the_run(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "crash.mp4", "c.mp4"):
        indexed_clip(videos / name, 14)
    out = tmp_path / "f.h5"
    cmd = [sys.executable, "-m", "jungle", "features", str(videos), "--out", str(out)]
    cmd += ["--workers", "0", "--frames", "4", "--image-size", "32", "--no-progress"]
    env = {**os.environ, "JUNGLE_TEST_CRASH": "crash.mp4"}
    died = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert died.returncode == -signal.SIGSEGV  # decoding in-process: the run itself dies
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    store = FeatureStore(out)
    assert sorted(store.ids) == ["a.mp4", "c.mp4"]
    assert store.failed()["reason"].tolist() == ["decoder crashed (signal 11)"]


def test_shipped_features_yaml_lists_every_setting_with_its_default() -> None:
    shipped = yaml.safe_load((REPO / "configs" / "features.yaml").read_text(encoding="utf-8"))
    assert shipped == FeaturesConfig().model_dump()


def test_progress_rate_is_clips_per_second_since_the_start() -> None:
    from rich.progress import Progress

    from extract.progress import _RateColumn

    now = [100.0]
    column = _RateColumn()
    with Progress(column, get_time=lambda: now[0], disable=True) as progress:
        task = progress.add_task("clips", total=10)
        assert column.render(progress.tasks[0]).plain == "- clips/s"
        now[0] = 104.0
        progress.advance(task, 4)  # a burst after a slow start: the rate stays honest
        assert column.render(progress.tasks[0]).plain == "1.00 clips/s"
        now[0] = 105.0
        progress.advance(task, 6)
        assert column.render(progress.tasks[0]).plain == "2.00 clips/s"


@pytest.mark.parametrize(
    ("on_gpu", "cores", "workers", "batch_frames"),
    [(False, 16, 2, 64), (True, 16, 14, 512), (True, 3, 2, 512), (True, 96, 32, 512)],
)
def test_workers_and_batch_default_to_the_cpu_or_gpu_settings(
    monkeypatch: pytest.MonkeyPatch, on_gpu: bool, cores: int, workers: int, batch_frames: int
) -> None:
    from extract.config import with_hardware_defaults

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    got = with_hardware_defaults(FeaturesConfig(), on_gpu)
    assert (got.workers, got.batch_frames) == (workers, batch_frames)
    mine = with_hardware_defaults(FeaturesConfig(workers=5, batch_frames=8), on_gpu)
    assert (mine.workers, mine.batch_frames) == (5, 8)  # what the user set is kept


def test_a_cpu_run_records_the_cpu_defaults_it_used(clip_folder: Path, tmp_path: Path) -> None:
    config = FeaturesConfig(frames=4, image_size=32, device="cpu")
    extract_features(clip_folder, tmp_path / "f.h5", config, show_progress=False)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        used = json.loads(f.attrs["config"])
    assert (used["workers"], used["batch_frames"]) == (2, 64)
