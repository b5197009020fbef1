"""NVDEC in a dedicated decoder process (``nvdec_host: process``,
:mod:`extract.nvdec_process`), driven on the CPU by the NVDEC stand-in
(:data:`extract.nvdec.STAND_IN_ENV`: the CPU decoder inside the decoder process). The same
on a GPU, with CUDA IPC: tests/test_nvdec_gpu.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from extract.config import FeaturesConfig
from extract.discover import Clip, discover
from extract.hybrid import decode_hybrid
from extract.nvdec import STAND_IN_ENV, nvdec_accepts
from extract.pipeline import extract_features
from extract.store import FeatureStore
from extract.workers import HANG_ENV, decode_item
from tests.guards import fail_after
from tests.media import indexed_clip, read_index


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """Ten H.264 MP4s (on NVDEC's list), an MKV (not on it) and a broken file."""
    videos = tmp_path_factory.mktemp("videos")
    for i, frames in enumerate((12, 30, 18, 12, 24, 16, 12, 20, 12, 14)):
        indexed_clip(videos / f"v{i}.mp4", frames)
    indexed_clip(videos / "w.mkv", 20, "h264_mkv")
    (videos / "x.mp4").write_bytes(b"not a video")
    return discover(videos)[1]


def _run(clips: list[Clip], tmp_path: Path, **kw: object) -> dict[str, dict]:
    settings = {"threads": 2, "workers": 0, "timeout": 60.0} | kw
    items = decode_hybrid(
        clips, gpu_decode=None, frames=6, size=32, journal_dir=tmp_path / "parts",
        accepts=nvdec_accepts, process_device="cpu", **settings,
    )  # fmt: skip
    got: dict[str, dict] = {}
    with fail_after(120, "the hybrid decoder with an NVDEC process hangs"):
        for clip, item in items:
            assert clip.clip_id not in got  # every clip once
            got[clip.clip_id] = item
    assert sorted(got) == sorted(c.clip_id for c in clips)
    assert not list((tmp_path / "parts").glob("inflight-*.log"))  # a clean end
    return got


def _exact(item: dict) -> None:
    assert item["ok"], item
    assert [read_index(f) for f in item["frames"][item["rows"]]] == list(item["frame_index"])


def _decoders(got: dict[str, dict]) -> dict[str, str]:
    return {name: item["meta"]["decoder"] for name, item in got.items() if item["ok"]}


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dedicated_nvdec_process_decodes_what_the_gate_accepts(
    clips: list[Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv(STAND_IN_ENV, "1")
    got = _run(clips, tmp_path, workers=workers)
    by = _decoders(got)
    assert by["w.mkv"] == "decord"  # refused by the gate: the CPU decoders
    on_nvdec = sorted(n for n, d in by.items() if d == "nvdec")
    if workers == 0:
        assert on_nvdec == [f"v{i}.mp4" for i in range(10)]
    # with workers=1 the CPU decoder takes from the same queue (maybe all: it starts sooner)
    assert not got["x.mp4"]["ok"] and "not a readable video" in got["x.mp4"]["reason"]
    for name, item in got.items():
        if name != "x.mp4":
            _exact(item)
            assert item["frames"].flags.writeable
            assert item["identity"] is not None  # read where the clip was decoded
    for clip in clips[:2]:  # the frames that crossed the pipe are those decoded there
        want = decode_item(clip, 6, 32, "cpu")
        np.testing.assert_array_equal(got[clip.clip_id]["frames"], want["frames"])
        np.testing.assert_array_equal(got[clip.clip_id]["frame_index"], want["frame_index"])


def test_a_crash_in_the_nvdec_process_sends_its_clips_to_the_cpu_and_it_restarts(
    clips: list[Clip],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(STAND_IN_ENV, "v2.mp4")  # the stand-in crashes its process on v2.mp4
    caplog.set_level(logging.WARNING, logger="extract.nvdec_process")
    got = _run(clips, tmp_path)
    by = _decoders(got)
    assert by["v2.mp4"] == "decord"  # decoded on the CPU, never sent to NVDEC again
    # the process held at most 4 clips (2 threads): the last ones went to a new process
    assert by["v9.mp4"] == "nvdec"
    for name, item in got.items():
        if name != "x.mp4":
            _exact(item)
    deaths = [r.getMessage() for r in caplog.records if "process died" in r.getMessage()]
    assert len(deaths) == 1 and "crashed (signal 11)" in deaths[0], deaths


def test_nvdec_is_given_up_after_repeated_crashes(
    clips: list[Clip],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(STAND_IN_ENV, ".mp4")  # every MP4 crashes its decoder process
    caplog.set_level(logging.WARNING, logger="extract.nvdec_process")
    got = _run(clips, tmp_path, threads=1)
    assert set(_decoders(got).values()) == {"decord"}  # everything on the CPU
    for name, item in got.items():
        if name != "x.mp4":
            _exact(item)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("clip(s); they are decoded on the CPU" in m for m in messages) == 3
    assert any("died 3 times: decoding the rest on the CPU" in m for m in messages)


def test_a_clip_stuck_in_the_nvdec_process_fails_and_the_others_are_decoded(
    clips: list[Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STAND_IN_ENV, "1")
    monkeypatch.setenv(HANG_ENV, "v1.mp4")
    got = _run(clips, tmp_path, timeout=4.0)
    assert not got["v1.mp4"]["ok"]
    assert got["v1.mp4"]["reason"] == "NVDEC took longer than 4 s and was abandoned"
    by = _decoders(got)
    assert {by[f"v{i}.mp4"] for i in range(10) if i != 1} == {"nvdec"}
    for name, item in got.items():
        if name not in ("x.mp4", "v1.mp4"):
            _exact(item)


def test_features_with_an_nvdec_process_equal_those_with_nvdec_threads(
    clips: list[Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STAND_IN_ENV, "1")
    folder = clips[0].path.parent
    stores = {}
    for host in ("thread", "process"):
        config = FeaturesConfig(
            frames=6, image_size=32, device="cpu", decoder="nvdec", workers=0, nvdec_host=host
        )
        out = tmp_path / f"{host}.h5"
        summary = extract_features(folder, out, config, show_progress=False)
        assert (summary.ok, summary.failed) == (11, 1)
        stores[host] = FeatureStore(out)
    a, b = stores["thread"], stores["process"]
    assert sorted(a.ids) == sorted(b.ids)
    meta = b.meta()
    assert (meta.drop(index="w.mkv")["decoder"] == "nvdec").all()
    order = [b.ids.index(i) for i in a.ids]
    np.testing.assert_array_equal(a.features(), b.features(rows=order))


def test_clips_waiting_behind_two_stuck_ones_are_not_failed_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both threads stuck: the clips already sent to the process but not taken by a thread
    go back to the queue (a clip's timeout runs from when a thread takes it)."""
    monkeypatch.setenv(STAND_IN_ENV, "1")
    monkeypatch.setenv(HANG_ENV, "_hang")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a_hang", "b_hang", *(f"c{i}" for i in range(6))):
        indexed_clip(videos / f"{name}.mp4", 12)
    clips = discover(videos)[1]
    got = _run(clips, tmp_path, threads=2, timeout=4.0)
    for name in ("a_hang.mp4", "b_hang.mp4"):
        assert got[name] == {"ok": False, "reason": "NVDEC took longer than 4 s and was abandoned"}
    for i in range(6):
        item = got[f"c{i}.mp4"]
        _exact(item)
        assert item["meta"]["decoder"] == "nvdec"
