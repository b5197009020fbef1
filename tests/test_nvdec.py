"""NVDEC support that runs without a GPU: the colour conversion of NVDEC's NV12 frames,
the gate of streams sent to NVDEC, the decoder setting's errors, and the hybrid scheduler
(driven here by the CPU decoder in its GPU threads). The GPU half is tests/test_nvdec_gpu.py
(marker ``gpu``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from extract.config import ConfigError, FeaturesConfig
from extract.decode import decode_clip, sample_indices
from extract.discover import discover
from extract.hybrid import JOURNAL_SUFFIX, decode_hybrid
from extract.journal import journal_path, read_journal
from extract.nvdec import (
    REUSE_STRIKES,
    ThreadDecoders,
    nv12_to_rgb,
    nvdec_accepts,
    resolve_decoder,
)
from extract.pipeline import extract_features
from extract.probe import DecodeError, probe
from tests.guards import fail_after
from tests.media import CODECS, extension, indexed_clip, read_index, write_clip


def colourful(seed: int, height: int = 240, width: int = 320) -> np.ndarray:
    """Smooth colour gradients with saturated blocks (sharp colour edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    img = np.stack([200 * xx + 30, 180 * yy + 40, 120 * (1 - xx) * yy + 60], axis=-1)
    for _ in range(12):
        y0, x0 = rng.integers(0, height - 40), rng.integers(0, width - 40)
        img[y0 : y0 + rng.integers(10, 40), x0 : x0 + rng.integers(10, 40)] = rng.integers(
            0, 256, 3
        )
    return img.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("kind", "matrix", "full"),
    [("h264_mp4", "bt601", False), ("h264_mp4_bt709", "bt709", False),
     ("h264_mp4_full_range", "bt601", True)],
)  # fmt: skip
def test_nv12_conversion_matches_what_the_cpu_decoders_make(
    tmp_path: Path, kind: str, matrix: str, full: bool
) -> None:
    clip = write_clip(tmp_path / "c.mp4", [colourful(s) for s in range(3)], kind)
    from extract.nvdec import color_conversion

    assert color_conversion(probe(clip)) == (matrix, full)  # read from the stream's flags
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
        nv12 = torch.from_numpy(frame.reformat(format="nv12").to_ndarray())[None]
        same_size = frame.to_ndarray(format="rgb24").astype(int)
        # the CPU path's own call (extract/decode.py _pyav_pass)
        resized = frame.to_ndarray(
            width=160, height=120, format="rgb24", interpolation="BICUBIC"
        ).astype(int)
    ours = nv12_to_rgb(nv12, (320, 240), matrix, full)[0].numpy().astype(int)
    assert np.abs(ours - same_size).max() <= 3  # rounding of ffmpeg's fixed-point arithmetic
    wrong = "bt709" if matrix == "bt601" else "bt601"
    assert np.abs(nv12_to_rgb(nv12, (320, 240), wrong, full)[0].numpy() - same_size).max() > 12
    small = nv12_to_rgb(nv12, (160, 120), matrix, full)[0].numpy().astype(int)
    assert small.shape == (120, 160, 3)
    assert np.abs(small - resized).mean() < 3.0  # bicubic kernels differ at sharp edges


def test_gate_sends_only_frame_exact_8bit_streams_to_nvdec(tmp_path: Path) -> None:
    accepted = set()
    for kind in CODECS:
        info = probe(indexed_clip(tmp_path / f"{kind}.{extension(kind)}", 4, kind))
        if nvdec_accepts(info):
            accepted.add(kind)
    # H.264 in MKV returned wrong frames and MPEG-4 part 2 AVI was off by 2 (issue 11)
    assert accepted == {
        "h264_mp4", "h264_mp4_faststart", "h264_mp4_gop250", "hevc_mp4", "h264_mov",
        "h264_mp4_bt709", "h264_mp4_full_range",
    }  # fmt: skip
    info = probe(tmp_path / "h264_mp4.mp4")
    assert not nvdec_accepts(dataclasses.replace(info, pix_fmt="yuv420p10le"))
    assert not nvdec_accepts(dataclasses.replace(info, colorspace=4))  # a matrix not converted
    assert not nvdec_accepts(dataclasses.replace(info, width=321))


class _FakeNvdec:
    """A stand-in for PyNvVideoCodec's ``SimpleDecoder`` (no NVDEC on this machine): a clip
    ``NAME-FRAMES`` has FRAMES frames, and frame i reads as the pair (clip, i). ``faults``
    names what goes wrong: ``reconfigure`` raises, ``short`` returns one frame too few from
    a reconfigured decoder, ``broken`` returns one frame too few from any decoder."""

    def __init__(self, path: Path, faults: set[str]) -> None:
        self.faults = faults
        self.path = str(path)
        self.reconfigured = False

    def reconfigure_decoder(self, path: str) -> None:
        if "reconfigure" in self.faults:
            raise RuntimeError("cannot reconfigure")
        self.path, self.reconfigured = path, True

    def __len__(self) -> int:
        return int(self.path.rsplit("-", 1)[1])

    def get_batch_frames_by_index(self, wanted: list[int]) -> list[tuple[str, int]]:
        frames = [(Path(self.path).name, i) for i in wanted]
        short = "broken" in self.faults or ("short" in self.faults and self.reconfigured)
        return frames[:-1] if short else frames


def test_nvdec_decoders_are_reused_per_thread_and_replaced_when_reuse_fails() -> None:
    faults: set[str] = set()
    made: list[_FakeNvdec] = []

    def open_decoder(path: Path) -> _FakeNvdec:
        made.append(_FakeNvdec(path, faults))
        return made[-1]

    decoders = ThreadDecoders(open_decoder)
    key, other_key = ("h264", 720, 404, "yuv420p"), ("hevc", 720, 404, "yuv420p")

    def check(name: str, key: tuple = key) -> None:
        got = decoders.sample(Path(name), key, 8)
        n = int(name.rsplit("-", 1)[1])
        want, mask = sample_indices(n, 8)
        assert got.frames == [(name, i) for i in sorted(set(want.tolist()))]
        assert np.array_equal(got.index, want) and np.array_equal(got.mask, mask)
        assert got.n_frames == n

    for name in ["a-40", "b-300", "c-5", "a-40"]:  # one stream kind: one decoder
        check(name)
    assert decoders.opened == 1 and len(made) == 1
    check("d-90", other_key)  # another codec: a fresh decoder
    assert decoders.opened == 2
    faults.add("reconfigure")  # reconfiguring raises: a fresh decoder
    check("e-90", other_key)
    assert decoders.opened == 3
    faults.clear()
    faults.add("short")  # a reconfigured decoder returns too few frames: read again, fresh
    check("f-90", other_key)
    assert decoders.opened == 4 and not made[-1].reconfigured
    faults.add("broken")  # too few frames from a fresh decoder too: the clip fails
    with pytest.raises(DecodeError, match="NVDEC returned 7 of 8 frames"):
        decoders.sample(Path("g-90"), other_key, 8)
    assert decoders.opened == 5  # a reused one, then a fresh one
    faults.clear()
    check("h-90", other_key)  # the decoder that failed is not used again
    assert decoders.opened == 6
    main_decoder = made[-1]
    thread = threading.Thread(target=check, args=("i-40",))
    thread.start()
    thread.join()
    assert decoders.opened == 7 and made[-1] is not main_decoder  # each thread its own
    check("j-40", other_key)  # this thread's decoder is still its own
    assert decoders.opened == 7 and main_decoder.path == "j-40" and decoders.reuse


def test_nvdec_decoder_reuse_is_switched_off_when_it_keeps_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    faults = {"short"}  # every reconfigured decoder returns too few frames
    decoders = ThreadDecoders(lambda path: _FakeNvdec(path, faults))
    key = ("h264", 720, 404, "yuv420p")
    for i in range(1 + REUSE_STRIKES):  # the first clip is read by a fresh decoder anyway
        got = decoders.sample(Path(f"c{i}-40"), key, 8)
        assert got.frames[-1] == (f"c{i}-40", 37)  # every clip read whole, by a fresh one
    assert not decoders.reuse and decoders.opened == 1 + REUSE_STRIKES
    assert "making a fresh decoder for every clip" in caplog.text
    decoders.sample(Path("d-40"), key, 8)  # no reuse is tried any more: one decoder a clip
    assert decoders.opened == 2 + REUSE_STRIKES


def test_decoder_setting_auto_falls_back_to_the_cpu_and_nvdec_is_a_clear_error(
    tmp_path: Path, clip_folder: Path, small_config: FeaturesConfig
) -> None:
    cpu = torch.device("cpu")
    assert resolve_decoder("auto", cpu) == "cpu" and resolve_decoder("cpu", cpu) == "cpu"
    with pytest.raises(ConfigError, match="NVDEC needs a CUDA device"):
        resolve_decoder("nvdec", cpu)
    with pytest.raises(ConfigError, match="--decoder nvdec"):
        extract_features(
            clip_folder,
            tmp_path / "f.h5",
            small_config.model_copy(update={"decoder": "nvdec"}),
            show_progress=False,
        )
    assert not (tmp_path / "f.h5").exists()
    run = subprocess.run(
        [sys.executable, "-m", "jungle", "features", str(clip_folder), "--out",
         str(tmp_path / "g.h5"), "--decoder", "nvdec", "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--decoder nvdec: NVDEC needs a CUDA device" in run.stderr
    assert "Traceback" not in run.stderr


def test_hybrid_scheduler_routes_streams_journals_and_sends_suspects_to_the_cpu(
    tmp_path: Path,
) -> None:
    # workers=0: the decoder process takes only the clips NVDEC cannot have
    videos = tmp_path / "videos"
    videos.mkdir()
    indexed_clip(videos / "a.mp4", 30)
    indexed_clip(videos / "b.mkv", 30, "h264_mkv")
    indexed_clip(videos / "c.mp4", 18, "h264_mov")
    indexed_clip(videos / "d.avi", 20, "mpeg4_bframes_avi")
    (videos / "e.mp4").write_bytes(b"not a video")
    clips = discover(videos)[1]
    parts = tmp_path / "parts"
    on_gpu: list[str] = []

    def gpu_decode(path, info, frames, size):  # the CPU decoder, in the GPU threads
        journal = parts / journal_path(parts).name.replace(".log", f"{JOURNAL_SUFFIX}.log")
        assert path.name in journal.read_text()  # journalled before it is decoded
        on_gpu.append(path.name)
        return decode_clip(path, info, frames, size)

    def run() -> dict[str, dict]:
        items = decode_hybrid(
            clips, gpu_decode=gpu_decode, frames=6, size=64, threads=2, workers=0,
            timeout=60, journal_dir=parts, accepts=nvdec_accepts,
        )  # fmt: skip
        return {clip.clip_id: item for clip, item in items}

    items = run()
    assert sorted(items) == ["a.mp4", "b.mkv", "c.mp4", "d.avi", "e.mp4"]
    assert sorted(on_gpu) == ["a.mp4", "c.mp4"]
    assert not items["e.mp4"]["ok"] and "not a readable video" in items["e.mp4"]["reason"]
    for name in ("a.mp4", "b.mkv", "c.mp4", "d.avi"):
        item = items[name]
        assert item["ok"], item
        decoded = [read_index(f) for f in item["frames"][item["rows"]]]
        assert decoded == list(item["frame_index"])  # frame-exact on either path
    assert items["d.avi"]["meta"]["decoder"] == "pyav"
    assert not list(parts.glob("inflight-*.log"))  # journals removed after a clean run

    # a run killed while NVDEC decoded a.mp4 left its journal: the rerun decodes it on the CPU
    (parts / "inflight-otherhost-1-nvdec.log").write_text("start\ta.mp4\n")
    on_gpu.clear()
    items = run()
    assert on_gpu == ["c.mp4"] and items["a.mp4"]["ok"]
    assert items["a.mp4"]["meta"]["decoder"] == "decord"
    assert not list(parts.glob("inflight-*.log"))


def _mp4s(tmp_path: Path, names: list[str], frames: int) -> Path:
    """A folder ``tmp_path/videos`` of index-coded H.264 MP4s ``NAME.mp4`` of ``frames``."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:
        indexed_clip(videos / f"{name}.mp4", frames)
    return videos


def _stand_in(decoded_by: list[str], delay: float = 0.0, hang: str = "", release=None):
    """A GPU decoder for the CPU: the CPU decoder in the NVDEC threads, recording which
    clips it decoded and marking their items ``nvdec``; it sleeps ``delay`` seconds per
    clip and waits for ``release`` on the clip named ``hang``."""

    def gpu_decode(path, info, frames, size):
        if path.name == hang:
            release.wait(60)
        time.sleep(delay)
        decoded_by.append(path.name)
        return dataclasses.replace(decode_clip(path, info, frames, size), decoder="nvdec")

    return gpu_decode


def _assert_exact(item: dict) -> None:
    assert item["ok"], item
    decoded = [read_index(f) for f in item["frames"][item["rows"]]]
    assert decoded == list(item["frame_index"])


def test_hybrid_threads_and_processes_take_clips_from_one_queue(tmp_path: Path) -> None:
    clips = discover(_mp4s(tmp_path, [f"v{i}" for i in range(10)], 12))[1]
    on_gpu: list[str] = []
    # one slow NVDEC thread and one decoder process: both must take NVDEC's clips
    items = decode_hybrid(
        clips, gpu_decode=_stand_in(on_gpu, delay=0.4), frames=4, size=32, threads=1,
        workers=1, timeout=60, journal_dir=tmp_path / "parts", accepts=nvdec_accepts,
    )  # fmt: skip
    got = {clip.clip_id: item for clip, item in items}
    assert sorted(got) == sorted(c.clip_id for c in clips)  # every clip once
    by = {name: item["meta"]["decoder"] for name, item in got.items()}
    assert sorted(n for n, d in by.items() if d == "nvdec") == sorted(on_gpu)
    assert 1 <= len(on_gpu) <= 9, by  # both kinds of decoder worked
    for item in got.values():
        _assert_exact(item)
    assert not list((tmp_path / "parts").glob("inflight-*.log"))


def test_hybrid_abandons_a_stuck_nvdec_clip_and_a_rerun_decodes_it_on_the_cpu(
    tmp_path: Path,
) -> None:
    clips = discover(_mp4s(tmp_path, ["a", "b", "c", "d"], 12))[1]
    parts = tmp_path / "parts"
    release = threading.Event()
    on_gpu: list[str] = []
    try:
        items = decode_hybrid(
            clips, gpu_decode=_stand_in(on_gpu, hang="b.mp4", release=release), frames=4,
            size=32, threads=1, workers=0, timeout=2, journal_dir=parts,
            accepts=nvdec_accepts,
        )  # fmt: skip
        got = {clip.clip_id: item for clip, item in items}
        # the thread that took b.mp4 was replaced: NVDEC decoded all the others
        assert sorted(on_gpu) == ["a.mp4", "c.mp4", "d.mp4"]
        assert not got["b.mp4"]["ok"]
        assert "NVDEC took longer than 2 s" in got["b.mp4"]["reason"]
        journals = list(parts.glob("inflight-*.log"))
        assert len(journals) == 1 and "start\tb.mp4" in journals[0].read_text()
    finally:
        release.set()
    on_gpu = []  # (the abandoned thread may still append b.mp4 to the first list)
    got = {
        clip.clip_id: item
        for clip, item in decode_hybrid(
            clips, gpu_decode=_stand_in(on_gpu), frames=4, size=32, threads=1, workers=0,
            timeout=60, journal_dir=parts, accepts=nvdec_accepts,
        )
    }  # fmt: skip
    assert got["b.mp4"]["meta"]["decoder"] == "decord" and "b.mp4" not in on_gpu
    _assert_exact(got["b.mp4"])
    assert not list(parts.glob("inflight-*.log"))


def test_closing_the_hybrid_early_stops_its_threads_and_processes(tmp_path: Path) -> None:
    videos = _mp4s(tmp_path, [f"v{i}" for i in range(8)], 12)
    indexed_clip(videos / "w.mkv", 12, "h264_mkv")
    clips = discover(videos)[1]
    items = decode_hybrid(
        clips, gpu_decode=_stand_in([], delay=0.3), frames=4, size=32, threads=2,
        workers=2, timeout=60, journal_dir=tmp_path / "parts", accepts=nvdec_accepts,
    )  # fmt: skip
    with contextlib.closing(items):
        next(items)
        assert any(t.name.startswith("nvdec-") for t in threading.enumerate())
    assert not any(t.name.startswith("nvdec-") for t in threading.enumerate())
    children = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "extract.workers"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    assert children == []
    assert not list((tmp_path / "parts").glob("inflight-*.log"))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_ray_actor_nvdec_abandons_a_stuck_clip_and_sends_dead_actors_clips_to_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from extract.ray_nvdec import CPU_PASS, ActorNvdec, journal_root

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's journal folder
    videos = _mp4s(tmp_path, ["a", "b", "c", "d"], 12)
    clips = [(clip, probe(clip.path)) for clip in discover(videos)[1]]
    run = journal_root() / "run1"
    run.mkdir(parents=True)
    # c.mp4 was in flight in an actor of this run that died, d.mp4 is in a live one's
    host = socket.gethostname()
    (run / f"inflight-{host}-{_dead_pid()}-nvdec.log").write_text("start\tc.mp4\n")
    (run / f"inflight-{host}-{os.getppid()}-nvdec.log").write_text("start\td.mp4\n")
    # another machine's journal (a /tmp shared between machines): cannot be judged, kept
    (run / f"inflight-elsewhere-{_dead_pid()}-nvdec.log").write_text("start\ta.mp4\n")
    release = threading.Event()
    on_gpu: list[str] = []
    # one thread: the clips queued behind the stuck one must move to a new thread
    nvdec = ActorNvdec(
        _stand_in(on_gpu, hang="b.mp4", release=release), frames=4, size=32, threads=1,
        timeout=1, run_id="run1",
    )  # fmt: skip
    own = run / f"inflight-{host}-{os.getpid()}-nvdec.log"
    try:
        with fail_after(60, "the clips queued behind the stuck one were never decoded"):
            got = nvdec.decode(clips)
        # the journal names the clip still held by the abandoned thread, and only that one
        assert read_journal(own) == {"b.mp4"}
    finally:
        release.set()
    assert sorted(got) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    assert got["c.mp4"] is CPU_PASS and "c.mp4" not in on_gpu  # a suspect: the CPU pass
    assert got["b.mp4"] == {
        "ok": False, "reason": "NVDEC took longer than 1 s and was abandoned"
    }  # fmt: skip
    for name in ("a.mp4", "d.mp4"):
        assert got[name]["meta"]["decoder"] == "nvdec"
        _assert_exact(got[name])


def test_ray_actor_nvdec_removes_only_old_run_folders_of_dead_actors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from extract.ray_nvdec import ActorNvdec, journal_root

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = journal_root()
    host = socket.gethostname()
    folders = {
        "old-dead": (host, _dead_pid(), True),
        "old-live": (host, os.getppid(), True),
        "old-elsewhere": ("elsewhere", _dead_pid(), True),  # another machine's: kept
        "new-dead": (host, 1 << 30, False),  # its actor may be restarting: kept
    }
    for name, (where, pid, old) in folders.items():
        journal = root / name / f"inflight-{where}-{pid}-nvdec.log"
        journal.parent.mkdir(parents=True)
        journal.write_text("start\tx.mp4\n")
        if old:
            for path in (journal, journal.parent):
                os.utime(path, (time.time() - 3600, time.time() - 3600))
    ActorNvdec(_stand_in([]), frames=4, size=32, threads=1, timeout=60, run_id="run2")
    assert sorted(p.name for p in root.iterdir()) == [
        "new-dead", "old-elsewhere", "old-live", "run2"
    ]  # fmt: skip


def test_the_hybrid_decodes_only_a_bounded_backlog_ahead_of_a_slow_consumer(
    tmp_path: Path,
) -> None:
    clips = discover(_mp4s(tmp_path, [f"v{i:02d}" for i in range(20)], 8))[1]
    on_gpu: list[str] = []
    threads = 2
    items = decode_hybrid(
        clips, gpu_decode=_stand_in(on_gpu), frames=4, size=32, threads=threads, workers=0,
        timeout=60, journal_dir=tmp_path / "parts", accepts=nvdec_accepts,
    )  # fmt: skip
    ahead = []
    for yielded, _ in enumerate(items, start=1):
        time.sleep(0.2)  # a CNN slower than the decoders
        ahead.append(len(on_gpu) - yielded)
    assert len(on_gpu) == 20
    # decoded, not yet yielded: collected while fewer than the backlog (threads + workers,
    # here 3) waited, so at most 2 + the threads' queue (threads) before a yield takes one;
    # then, while the consumer works, the queue fills again and each thread holds one more
    backlog = threads + 1
    assert max(ahead) <= (backlog - 1) + threads - 1 + 2 * threads, ahead
