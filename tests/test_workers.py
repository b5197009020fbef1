"""The decoder pool: clip order, crash containment with exact blame, timeouts, the
in-flight journal that keeps a rerun from crashing on the same clip, clean shutdown."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from extract.discover import Clip, discover
from extract.journal import journal_path, suspects
from extract.workers import (
    CRASH_ENV,
    HANG_ENV,
    _buffer_bytes,
    _death_reason,
    _frame_buffer,
    _from_buffer,
    _InBuffer,
    _to_buffer,
    decode_in_workers,
    decode_item,
)
from tests.media import indexed_clip

FRAMES, SIZE = 8, 64
CRASHED = "decoder crashed (signal 11)"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """Five small clips (H.264, MPEG-4 AVI, MJPEG, odd names) and one unreadable file."""
    root = tmp_path_factory.mktemp("pool")
    (root / "sub dir").mkdir()
    indexed_clip(root / "a.mp4", 20)
    indexed_clip(root / "b_bframes.avi", 16, "mpeg4_bframes_avi")
    indexed_clip(root / "sub dir" / "c éé.mp4", 6)
    (root / "d_broken.mp4").write_bytes(b"this is not a video" * 10)
    indexed_clip(root / "e_mjpeg.avi", 12, "mjpeg_avi")
    indexed_clip(root / "f.mp4", 24)
    return discover(root)[1]


def _pool(clips: list[Clip], workers: int, **kw: object):
    settings = {"timeout": 60.0, "journal_dir": None} | kw
    return decode_in_workers(
        clips, frames=FRAMES, size=SIZE, device="cpu", workers=workers, **settings
    )


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def _started_pids(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [
        r.args[0]
        for r in caplog.records
        if r.name == "extract.workers" and r.msg == "decoder process %d started"
    ]


def _gone(pids: list[int]) -> bool:
    """No such process, not even a zombie."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _alive(pid: int) -> bool:
    """Running (a zombie whose new parent does not reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children() -> list[int]:
    """Processes (zombies included) whose parent is this one, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():
                found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_items_equal_in_process_decoding_in_clip_order(
    clips: list[Clip], workers: int, tmp_path: Path
) -> None:
    expected = [decode_item(c, FRAMES, SIZE, "cpu") for c in clips]
    assert [e["ok"] for e in expected] == [c.clip_id != "d_broken.mp4" for c in clips]
    fds = len(os.listdir("/proc/self/fd"))
    # every item is kept until the end: frames that still lived in a worker's frame buffer
    # would have been overwritten by its later clips
    got = list(_pool(clips, workers, journal_dir=tmp_path))
    assert [c for c, _ in got] == clips
    for (_, item), want in zip(got, expected, strict=True):
        _assert_same(item, want)
        if item["ok"]:
            assert item["frames"].flags.owndata and item["frames"].flags.writeable
    assert list(tmp_path.iterdir()) == []  # the journal is removed at the end
    assert _children() == []
    assert len(os.listdir("/proc/self/fd")) == fds  # pipes, pidfds, frame buffers closed


def test_frame_buffer_round_trip_and_what_does_not_fit() -> None:
    nbytes = _buffer_bytes(FRAMES, SIZE)
    fd = _frame_buffer(nbytes)
    try:
        buffer = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    sent = _to_buffer({"ok": True, "frames": frames, "meta": {"a": 1}}, buffer)
    assert sent["frames"] == _InBuffer((3, SIZE, SIZE, 3)) and sent["meta"] == {"a": 1}
    back = _from_buffer(sent, buffer)
    np.testing.assert_array_equal(back["frames"], frames)
    buffer[:] = bytes(nbytes)  # the next clip overwrites the buffer: the copy keeps its frames
    np.testing.assert_array_equal(back["frames"], frames)
    too_big = np.zeros((FRAMES + 1, SIZE, SIZE, 3), np.uint8)
    not_bytes = np.zeros((1, SIZE, SIZE, 3), np.float32)
    for item in ({"ok": True, "frames": too_big}, {"ok": True, "frames": not_bytes}):
        assert _to_buffer(item, buffer) is item  # sent through the pipe as it is
    failed = {"ok": False, "reason": "x"}
    assert _to_buffer(failed, buffer) is failed and _from_buffer(failed, buffer) is failed
    buffer.close()


def test_journal_records_clips_in_flight(clips: list[Clip], tmp_path: Path) -> None:
    with contextlib.closing(_pool(clips, 1, journal_dir=tmp_path)) as items:
        first, _ = next(items)
        lines = journal_path(tmp_path).read_text(encoding="utf-8").splitlines()
        assert lines[0] == f"start\t{first.clip_id}"
        assert f"end\t{first.clip_id}" in lines
        assert suspects(tmp_path) == set()  # its own journal is not a dead run's
    assert not journal_path(tmp_path).exists()


def test_crashing_clip_is_retried_once_then_failed_alone(
    clips: list[Clip], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CRASH_ENV, "b_bframes")
    caplog.set_level(logging.DEBUG, logger="extract.workers")
    sigchld = signal.getsignal(signal.SIGCHLD)
    got = list(_pool(clips, 2))
    assert [c for c, _ in got] == clips
    for clip, item in got:
        if "b_bframes" in clip.clip_id:
            assert item == {"ok": False, "reason": CRASHED}
        else:
            assert item["ok"] == (clip.clip_id != "d_broken.mp4"), clip.clip_id
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "extract.workers" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 2
    assert "b_bframes.avi: decoder crashed (signal 11); retrying" in warnings[0]
    assert "b_bframes.avi: decoder crashed (signal 11) again" in warnings[1]
    # the retry ran in a new process (a further one starts only if clips are still waiting)
    assert len(_started_pids(caplog)) in (3, 4)
    assert signal.getsignal(signal.SIGCHLD) == sigchld
    assert _children() == []
    assert _gone(_started_pids(caplog))


def test_hanging_clip_times_out_and_the_rest_is_decoded(
    clips: list[Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HANG_ENV, "c éé")
    started = time.monotonic()
    got = list(_pool(clips, 2, timeout=3.0))
    assert time.monotonic() - started < 30
    assert [c for c, _ in got] == clips
    for clip, item in got:
        if "c éé" in clip.clip_id:
            assert item == {
                "ok": False,
                "reason": "decoding took longer than clip_timeout (3 s) and was abandoned",
            }
        else:
            assert item["ok"] == (clip.clip_id != "d_broken.mp4"), clip.clip_id
    assert _children() == []


def test_rerun_after_a_run_killed_by_a_clip_fails_that_clip_only(
    clips: list[Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workers=0: the crash kills the whole first run (a child process here); the rerun
    finds the clip in the dead run's journal, decodes it in a contained worker, which
    crashes twice: a failed row, and the rerun finishes."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from extract.discover import discover\n"
        "from extract.workers import decode_in_workers\n"
        "clips = discover(sys.argv[1])[1]\n"
        "for clip, item in decode_in_workers(clips, frames=8, size=64, device='cpu',\n"
        "        workers=0, timeout=60, journal_dir=Path(sys.argv[2])):\n"
        "    print(clip.clip_id, flush=True)\n"
    )
    root = clips[0].path.parent
    env = dict(os.environ, **{CRASH_ENV: "e_mjpeg"})
    run = subprocess.run(
        [sys.executable, "-c", script, str(root), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -signal.SIGSEGV, run.stderr
    crash_at = [c.clip_id for c in clips].index("e_mjpeg.avi")
    assert run.stdout.splitlines() == [c.clip_id for c in clips[:crash_at]]
    assert suspects(tmp_path) == {"e_mjpeg.avi"}

    monkeypatch.setenv(CRASH_ENV, "e_mjpeg")
    got = list(_pool(clips, 0, journal_dir=tmp_path))
    assert [c for c, _ in got] == clips
    for clip, item in got:
        if clip.clip_id == "e_mjpeg.avi":
            assert item == {"ok": False, "reason": CRASHED}
        else:
            assert item["ok"] == (clip.clip_id != "d_broken.mp4"), clip.clip_id
    assert list(tmp_path.iterdir()) == []  # dead run's journal consumed, own one removed
    assert _children() == []


def test_suspects_reads_other_journals_only(tmp_path: Path) -> None:
    (tmp_path / "inflight-otherhost-4242.log").write_text(
        "start\ta.mp4\nend\ta.mp4\nstart\tb\\tc\\\\d.mp4\nstart\tc.mp4\nend\tc.mp4\nstart\tdi",
        encoding="utf-8",
    )
    (tmp_path / "inflight-otherhost-4343.log").write_text("start\tx.mp4\n", encoding="utf-8")
    journal_path(tmp_path).write_text("start\tmine.mp4\n", encoding="utf-8")
    # "di" is a line cut off by the death of its process: never acted upon
    assert suspects(tmp_path) == {"b\tc\\d.mp4", "x.mp4"}
    assert "mine.mp4" in suspects(tmp_path, include_own=True)
    assert suspects(tmp_path / "missing") == set()


def test_closing_early_leaves_no_child_process(
    clips: list[Clip], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="extract.workers")
    items = _pool(clips, 2)
    for _ in items:
        break
    items.close()
    pids = _started_pids(caplog)
    assert len(pids) == 2
    assert _children() == []
    assert _gone(pids)


@pytest.mark.parametrize("receiver", ["main thread", "another thread"])
def test_ctrl_c_while_waiting_stops_workers_promptly(
    clips: list[Clip],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    receiver: str,
) -> None:
    monkeypatch.setenv(HANG_ENV, "a.mp4")  # the first clip: the pool waits on it
    caplog.set_level(logging.DEBUG, logger="extract.workers")
    items = _pool(clips, 2, timeout=120.0)
    # A Ctrl-C is sent to the process, and the kernel delivers it to any thread that does
    # not block it: the main thread, or another one (torch's OpenMP threads, Ray's; in the
    # full suite os.kill(getpid(), SIGINT) landed elsewhere and the main thread waited out
    # the timeout). Both cases, deterministically, with the default handler installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def interrupt() -> None:  # runs in the timer's own thread
        target = main if receiver == "main thread" else threading.get_ident()
        signal.pthread_kill(target, signal.SIGINT)

    timer = threading.Timer(1.5, interrupt)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(items)
    finally:
        timer.cancel()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 10
    pids = _started_pids(caplog)
    assert len(pids) == 2
    assert _children() == []
    assert _gone(pids)


def test_kill_9_of_the_run_leaves_no_orphan_decoder(clips: list[Clip]) -> None:
    """A decoder stuck on a clip dies with the run that started it."""
    script = (
        "import logging, sys\n"
        "from extract.discover import discover\n"
        "from extract.workers import decode_in_workers\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(message)s')\n"
        "clips = discover(sys.argv[1])[1]\n"
        "for item in decode_in_workers(clips, frames=8, size=64, device='cpu',\n"
        "        workers=2, timeout=600, journal_dir=None):\n"
        "    pass\n"
    )
    env = dict(os.environ, **{HANG_ENV: "a.mp4"})
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(clips[0].path.parent)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids: list[int] = []
        assert run.stdout is not None
        while len(pids) < 2:
            line = run.stdout.readline()
            assert line, "the run ended before starting its decoders"
            if line.startswith("decoder process "):
                pids.append(int(line.split()[2]))
        time.sleep(0.5)  # let them start decoding (one hangs on a.mp4)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def test_death_reasons() -> None:
    assert _death_reason(-11) == CRASHED
    assert _death_reason(-9) == "decoder process was killed (signal 9: out of memory?)"
    assert _death_reason(3) == "decoder process exited with code 3"


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="workers"):
        decode_in_workers(
            [], frames=8, size=64, device="cpu", workers=-1, timeout=1, journal_dir=None
        )
    with pytest.raises(ValueError, match="timeout"):
        decode_in_workers(
            [], frames=8, size=64, device="cpu", workers=1, timeout=0, journal_dir=None
        )
