"""`--engine ray` on a real local Ray instance (no mocks): the same stores, failed rows and
predictions as the local engine; crashes, killed workers and interruptions lose no clip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract.config import FeaturesConfig
from extract.nvdec import STAND_IN_ENV
from extract.pipeline import extract_features, parts_dir
from extract.ray_engine import CRASH_REASON, RayEngineError
from extract.store import FeatureStore
from extract.thumbnails import thumbnail_path
from extract.workers import CRASH_ENV, HANG_ENV
from stack.predict import features_dir, predict, thumbnails_dir
from tests.guards import fail_after
from tests.media import indexed_clip
from tests.test_pipeline import _assert_same_store, _jungle

#: Ray's decode workers crash (SIGSEGV) on clips whose id contains this.
CRASHER = "crashes-on-ray"
#: with ``decoder: nvdec``, the CPU stand-in for NVDEC (STAND_IN_ENV) in the CNN actors
#: crashes on clips whose path contains this.
NVDEC_CRASHER = "crashes-nvdec"
ACTOR = "BoundFeatureActor"  # in the command line of a CNN actor's process


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the module (2 CPUs), its workers with the crash hook and
    the CPU stand-in for NVDEC (used only by runs with ``decoder: nvdec``)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {CRASH_ENV: CRASHER, STAND_IN_ENV: NVDEC_CRASHER}},
    )
    yield
    ray.shutdown()


def _processes(needle: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``needle``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(entry.name))
    return pids


def _ray(config: FeaturesConfig) -> FeaturesConfig:
    return config.model_copy(update={"engine": "ray"})


def test_ray_equals_local_on_real_clips_and_broken_files(
    ray_instance: None, shared_data: Path, tmp_path: Path, small_config: FeaturesConfig
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(shared_data / "camtrap-lowres", videos)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.avi").write_text("this is a text file renamed to .avi\n" * 50)
    indexed_clip(videos / f"{CRASHER}.mp4", 20)
    local, ray = tmp_path / "local.h5", tmp_path / "ray.h5"
    extract_features(videos, local, small_config, show_progress=False)
    from ray.data import DataContext

    before = DataContext.get_current().max_errored_blocks
    summary = extract_features(videos, ray, _ray(small_config), show_progress=False)
    assert DataContext.get_current().max_errored_blocks == before  # Ray's context restored

    a, b = FeatureStore(local), FeatureStore(ray)
    assert summary.ok == 19 and summary.failed == 3
    # the crashing clip (only Ray's workers have the hook) is the one difference
    # (the crasher's block mates were run again after the others: same rows, other order)
    assert sorted(b.ids) == sorted(i for i in a.ids if i != f"{CRASHER}.mp4")
    keep = [a.ids.index(i) for i in b.ids]
    np.testing.assert_allclose(
        a.features(rows=keep).astype(np.float32), b.features().astype(np.float32), atol=1e-3
    )
    np.testing.assert_array_equal(a.mask()[keep], b.mask())
    pd.testing.assert_frame_equal(
        a.meta().iloc[keep].reset_index(drop=True), b.meta().reset_index(drop=True)
    )
    failed_local = dict(zip(a.failed()["id"], a.failed()["reason"], strict=True))
    failed_ray = dict(zip(b.failed()["id"], b.failed()["reason"], strict=True))
    assert failed_ray.pop(f"{CRASHER}.mp4") == CRASH_REASON
    assert failed_ray == failed_local and set(failed_local) == {"zero.mp4", "text.avi"}


def test_nvdec_in_the_cnn_actors_takes_what_the_gate_accepts_and_survives_a_crash(
    ray_instance: None,
    tmp_path: Path,
    small_config: FeaturesConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(6):
        indexed_clip(videos / f"clip{i}.mp4", 20 + i)
    indexed_clip(videos / "refused.mkv", 20, "h264_mkv")  # not frame-exact with NVDEC
    indexed_clip(videos / "refused.avi", 20, "mpeg4_bframes_avi")
    indexed_clip(videos / f"{NVDEC_CRASHER}.mp4", 20)
    (videos / "zero.mp4").write_bytes(b"")
    local = tmp_path / "local.h5"
    extract_features(videos, local, small_config, show_progress=False)

    monkeypatch.setenv(STAND_IN_ENV, NVDEC_CRASHER)  # this process's check of NVDEC
    out = tmp_path / "ray.h5"
    config = _ray(small_config).model_copy(update={"decoder": "nvdec"})
    with fail_after(300, "the run loops: the clip that crashes NVDEC is retried forever"):
        summary = extract_features(videos, out, config, show_progress=False)

    assert summary.ok == 9 and summary.failed == 1
    a, b = FeatureStore(local), FeatureStore(out)
    assert sorted(b.ids) == sorted(a.ids)
    keep = [a.ids.index(i) for i in b.ids]
    np.testing.assert_allclose(
        a.features(rows=keep).astype(np.float32), b.features().astype(np.float32), atol=1e-3
    )
    np.testing.assert_array_equal(a.mask()[keep], b.mask())
    pd.testing.assert_frame_equal(
        a.meta().iloc[keep].drop(columns="decoder").reset_index(drop=True),
        b.meta().drop(columns="decoder").reset_index(drop=True),
    )
    decoders = dict(zip(b.ids, b.meta()["decoder"], strict=True))
    # the actor that crashed on it was restarted; the clip was then decoded on the CPU
    assert decoders[f"{NVDEC_CRASHER}.mp4"] == a.meta()["decoder"].iloc[a.ids.index(
        f"{NVDEC_CRASHER}.mp4")] != "nvdec"  # fmt: skip
    assert decoders["refused.mkv"] != "nvdec" and decoders["refused.avi"] != "nvdec"
    assert "nvdec" in {decoders[f"clip{i}.mp4"] for i in range(6)}
    assert list(b.failed()["reason"]) == list(a.failed()["reason"])  # zero.mp4


def test_nvdec_on_ray_without_gpu_actors_is_a_clear_error(
    ray_instance: None,
    tmp_path: Path,
    small_config: FeaturesConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STAND_IN_ENV, raising=False)
    videos = tmp_path / "videos"
    videos.mkdir()
    indexed_clip(videos / "a.mp4", 10)
    config = _ray(small_config).model_copy(update={"decoder": "nvdec"})
    with pytest.raises(RayEngineError, match="decode with NVDEC on GPU nodes"):
        extract_features(videos, tmp_path / "f.h5", config, show_progress=False)


def test_a_killed_cnn_actor_loses_no_clip(
    ray_instance: None, tmp_path: Path, small_config: FeaturesConfig
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(14):
        indexed_clip(videos / f"clip{i:02d}.mp4", 30 + i)
    config = small_config.model_copy(update={"shard_clips": 1})
    reference = tmp_path / "reference.h5"
    extract_features(videos, reference, config, show_progress=False)

    out = tmp_path / "ray.h5"
    killed: list[tuple[int, int]] = []  # (pid, shards written when it was killed)

    def kill_the_actor() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            shards = list(parts_dir(out).glob("shard-*.h5")) if parts_dir(out).exists() else []
            if shards:
                for pid in _processes(ACTOR):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, len(shards)))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_actor, daemon=True)
    killer.start()
    extract_features(videos, out, _ray(config), show_progress=False)
    killer.join()
    assert killed and killed[0][1] < 14, "the actor should have been killed midway"
    _assert_same_store(out, reference)


def test_interrupted_then_resumed_gives_the_same_store(ray_instance: None, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(10):
        indexed_clip(videos / f"clip{i:02d}.mp4", 120 + i)
    config = tmp_path / "c.yaml"
    config.write_text("shard_clips: 1\nframes: 16\nimage_size: 64\nworkers: 1\n")
    reference = tmp_path / "reference.h5"
    done = _jungle("features", str(videos), "--out", str(reference), "--config", str(config))
    assert done.returncode == 0, done.stderr

    for attempt in range(3):
        # a run that ended before the signal landed (a loaded machine can deliver every
        # result in one burst) tested nothing: run again into a new store
        out = tmp_path / f"ray{attempt}.h5"
        cmd = [sys.executable, "-m", "jungle", "features", str(videos), "--out", str(out)]
        cmd += ["--config", str(config), "--engine", "ray", "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not list(parts_dir(out).glob("shard-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        if not (proc.returncode == 0 and out.exists()):
            break
    assert proc.returncode == 130, stderr
    assert "finished clips are saved" in stderr
    shards = list(parts_dir(out).glob("shard-*.h5"))
    assert shards and not out.exists(), "the run should have been interrupted midway"

    # resumed in this process (on the module's Ray instance): only the rest is processed
    settings = FeaturesConfig(shard_clips=1, frames=16, image_size=64, workers=1, engine="ray")
    summary = extract_features(videos, out, settings, show_progress=False)
    assert 0 < summary.already_done < 10 and summary.processed == 10 - summary.already_done
    _assert_same_store(out, reference)


def test_ctrl_c_while_a_decode_task_is_stuck_stops_the_run_promptly(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(8):
        indexed_clip(videos / f"clip{i:02d}.mp4", 40)
    config = tmp_path / "c.yaml"
    config.write_text("shard_clips: 1\nframes: 8\nimage_size: 64\n")
    out = tmp_path / "ray.h5"
    cmd = [sys.executable, "-m", "jungle", "features", str(videos), "--out", str(out)]
    cmd += ["--config", str(config), "--engine", "ray", "--no-progress"]
    # clip03's decode sleeps for an hour (clip_timeout: 300 s)
    env = os.environ | {HANG_ENV: "clip03"}
    others = set(_processes(ACTOR))  # actors of the module's Ray instance
    # its own process group, which the Ctrl-C of a terminal signals as a whole
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not set(_processes(ACTOR)) - others:  # its pipeline runs: its CNN actor is up
            assert time.monotonic() < deadline and proc.poll() is None, "no CNN actor"
            time.sleep(0.2)
        time.sleep(5)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "finished clips are saved" in stderr and "Traceback" not in stderr
    assert stopped_in < 30
    assert not out.exists()
    deadline = time.monotonic() + 30
    while set(_processes(ACTOR)) - others and time.monotonic() < deadline:  # Ray's shutdown
        time.sleep(0.5)
    assert not set(_processes(ACTOR)) - others


def test_predict_on_ray_writes_the_same_csv_and_thumbnails(
    ray_instance: None, demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    local, ray = tmp_path / "local" / "pred.csv", tmp_path / "ray" / "pred.csv"
    local.parent.mkdir()
    ray.parent.mkdir()
    predict(mixed_folder, run, local, show_progress=False)
    summary = predict(mixed_folder, run, ray, engine="ray", show_progress=False)
    assert summary.ok == 5 and summary.failed == 2
    a = pd.read_csv(local, keep_default_na=False, na_values=[""])
    b = pd.read_csv(ray, keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(a, b, atol=1e-4)
    for clip_id in a.loc[a["status"] == "ok", "filepath"]:
        for out in (local, ray):
            assert thumbnail_path(thumbnails_dir(out), clip_id).stat().st_size > 0
    assert features_dir(ray).is_dir()


def test_engine_errors_are_one_line(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    indexed_clip(videos / "a.mp4", 10)
    out = str(tmp_path / "f.h5")
    bad = _jungle("features", str(videos), "--out", out, "--engine", "spark")
    assert bad.returncode == 2 and "engine" in bad.stderr and "Traceback" not in bad.stderr
    unreachable = _jungle(
        "features", str(videos), "--out", out, "--engine", "ray", "--ray-address", "127.0.0.1:9"
    )
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert "cannot start or join Ray (127.0.0.1:9)" in unreachable.stderr


def test_photo_sequences_on_ray_equal_the_local_store(
    ray_instance: None, photo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = photo_run
    local = run.parent / "train.h5"  # made by the local engine with these settings
    out = tmp_path / "ray.h5"
    config = FeaturesConfig(image_size=64, workers=1, engine="ray")
    summary = extract_features(data, out, config, show_progress=False)
    assert summary.ok == len(FeatureStore(local).ids) and summary.failed == 0
    _assert_same_store(out, local)
