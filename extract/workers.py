"""Decoder worker processes that contain crashes.

:func:`decode_in_workers` decodes clips (probe + frame-exact sampling, :func:`decode_item`)
in separate processes and yields the items in clip order. Each worker holds exactly one
clip at a time, so when a worker dies (a segfault in a decoder library, the kernel's
out-of-memory killer) the main process knows exactly which clip killed it:

* a clip whose decoder dies is retried once in a fresh worker; if that one dies too, the
  clip's item is a failure (``"decoder crashed (signal 11)"``) and the run goes on;
* a clip that takes longer than ``timeout`` seconds gets its worker killed and becomes a
  failure (no retry).

Crash-proof reruns: with a ``journal_dir``, the pool keeps a journal of the clips in flight
(:mod:`extract.journal`): a clip is written as started before it is handed to a decoder and
as ended once its item is received. A journal file that outlives its run names the clips
that were in flight when the process died (:func:`extract.journal.suspects`); the next run
decodes those in an isolated worker even with ``workers=0``, so a clip that killed the
whole run becomes a failure instead of killing the rerun too. A clip whose decoder crashed
or timed out gets no ``end`` line, and suspects taken over from dead runs are written to the
new journal, so they stay suspect until this run ends normally (the caller has then stored
their rows).

Each decoder is a fresh Python interpreter (``subprocess``) that imports only this module
(numpy, PyAV, decord; no torch): ``fork`` would copy the parent's torch/OpenMP threads in a
broken state, and multiprocessing's ``spawn`` and ``forkserver`` re-import the parent's
``__main__`` in every worker (the ``jungle`` CLI imports torch and scikit-learn: seconds per
worker). Items travel pickled over one pipe per worker, which a dying worker can only
break for itself (a shared queue has a shared lock and a shared byte stream); their frames,
the bulk of an item, do not: each worker writes them into its own shared frame buffer (an
anonymous ``memfd`` the main process maps too, sized for one clip) and sends a
placeholder, and the main process copies them out when the message arrives, before the
worker can get its next clip. Receiving a clip (32 frames at 224 px, 4.8 MB) cost the
main process 6.4 ms of CPU through the pipe and costs 1.2-2.0 ms through the buffer
(``scripts/bench_features.py``, 2 cores, BENCHMARKS.md): half a core against a tenth or
two at 80 clips/s. A buffer's memory (frames x size² x 3 bytes: 4.8 MB at 32 x 224) is
reserved when its worker starts and held until the worker exits. Nothing of a buffer
outlives the processes (no name in ``/dev/shm``: a ``kill -9`` leaks nothing).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import mmap
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

import numpy as np

from extract.decode import DecodedClip, decode_clip
from extract.discover import Clip
from extract.identity import identity_or_unknown
from extract.journal import Journal, take_over_journals
from extract.probe import DECODING_FIELDS, DecodeError, VideoInfo, probe
from extract.sequences import decode_sequence

log = logging.getLogger(__name__)

#: Test-only hook: a decoder process kills itself with SIGSEGV before decoding a clip whose
#: id contains this variable's (non-empty) value. Never set it in production.
CRASH_ENV = "JUNGLE_TEST_CRASH"
#: Test-only hook: a decoder sleeps (an hour) before decoding a clip whose id contains this
#: variable's (non-empty) value, as a decoder stuck on a file would. Never set it in
#: production.
HANG_ENV = "JUNGLE_TEST_HANG"

#: clips decoded ahead of the next clip to yield, per worker (the reorder buffer's bound).
AHEAD_PER_WORKER = 2
#: a worker that dies this many times in a row before it is ready means decoder processes
#: cannot be started at all (a broken installation), which is an error, not a clip failure.
MAX_START_FAILURES = 3
#: seconds a worker whose pipe closed may take to exit before it is killed.
_EXIT_GRACE_S = 5.0
#: seconds a new worker may take to import its modules and report ready.
_START_TIMEOUT_S = 120.0
#: longest single wait of the main thread: a Ctrl-C (SIGINT sent to the process) may be
#: delivered to another thread (torch's OpenMP threads, Ray's), which does not interrupt the
#: main thread's wait; Python runs the handler when the main thread next runs bytecode.
WAKE_S = 0.5


class DecoderPoolError(RuntimeError):
    """Decoder processes cannot be started (not a problem of any clip)."""


def decode_item(clip: Clip, frames: int, size: int, device: str) -> dict:
    """Probe and decode one clip: ``frames`` frames squashed to ``size`` x ``size``.

    Returns:
        ``{"ok": True, "frames", "rows", "frame_index", "mask", "meta", "identity"}`` (numpy
        arrays, the metadata dict of the store, the identity of the clip's files as
        decoded: :func:`extract.identity.identity_or_unknown`) or ``{"ok": False, "reason":
        str, "identity"}`` for a clip that cannot be used. Never raises for a bad file.

    The test-only environment variables :data:`CRASH_ENV` and :data:`HANG_ENV` make the
    calling process crash (SIGSEGV) or hang on clips whose id contains their value.
    """
    _test_hooks(clip.clip_id)
    try:
        decoded, meta = decode_media(clip, frames, size, device)
    except DecodeError as exc:
        item = {"ok": False, "reason": str(exc)}
    except Exception as exc:  # never let one file take the run down
        item = {"ok": False, "reason": f"unexpected decoder error: {exc!r}"}
    else:
        item = decoded_item(decoded, meta)
    # read here, by the process that decoded the clip: not by the main process (1.5 ms of
    # its CPU per clip) nor by a Ray driver (the first and last MiB of every file)
    item["identity"] = identity_or_unknown(clip.files)
    return item


def decoded_item(decoded: DecodedClip, meta: dict[str, object]) -> dict:
    """The item of a decoded clip (:func:`decode_item`): frames, the row of each slot,
    source indices, mask and store metadata."""
    return {
        "ok": True,
        "frames": decoded.frames,
        "rows": decoded.slot_rows,
        "frame_index": decoded.frame_index,
        "mask": decoded.mask,
        "meta": meta,
    }


def decode_media(
    clip: Clip, frames: int, size: int, device: str = "cpu"
) -> tuple[DecodedClip, dict[str, object]]:
    """Decode a video (probe + :func:`~extract.decode.decode_clip`) or a photo sequence
    (:func:`~extract.sequences.decode_sequence`): ``frames`` slots of ``size`` x ``size``,
    and the clip's store metadata.

    Raises:
        DecodeError: the clip cannot be used (the reason).
    """
    if clip.is_sequence:
        return decode_sequence(clip.images, frames, size)
    info = probe(clip.path)
    decoded = decode_clip(clip.path, info, frames, (size, size), device)
    return decoded, video_meta(info, decoded)


def video_meta(info: VideoInfo, decoded: DecodedClip) -> dict[str, object]:
    """The store metadata of a decoded video (the fields of a photo sequence empty)."""
    meta = info.as_dict()
    for name in DECODING_FIELDS:
        meta.pop(name)
    meta.update(frame_count=decoded.n_frames, decoder=decoded.decoder, partial=decoded.partial)
    meta.update(
        media="video",
        image_count=0,
        file_size_mean=float(info.file_size),
        time_span=0.0,
        camera_make="",
        camera_model="",
    )
    return meta


def _test_hooks(clip_id: str) -> None:
    """The test-only crash and hang hooks of :func:`decode_item`."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in clip_id:
        with contextlib.suppress(Exception):  # no core file for a deliberate crash
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(10)  # the signal is delivered asynchronously; never decode this clip
    hang = os.environ.get(HANG_ENV)
    if hang and hang in clip_id:
        time.sleep(3600)


def decode_in_workers(
    clips: Sequence[Clip],
    *,
    frames: int,
    size: int,
    device: str,
    workers: int,
    timeout: float,
    journal_dir: Path | None,
) -> Iterator[tuple[Clip, dict]]:
    """Decode ``clips`` and yield ``(clip, item)`` for every clip, in the order of ``clips``.

    Args:
        clips: the clips to decode.
        frames, size, device: as for :func:`decode_item`.
        workers: decoder processes; 0 decodes in the calling process (no containment),
            except :func:`extract.journal.suspects` of ``journal_dir``, which always get a worker.
        timeout: seconds a worker may spend on one clip before it is killed and the clip
            becomes a failure.
        journal_dir: folder of the in-flight journals (created if missing), or None for
            no journal. Only one pool at a time may use a folder (the caller's store lock).

    Items are those of :func:`decode_item`, or ``{"ok": False, "reason": ...}`` for a clip
    whose decoder died twice (``"decoder crashed (signal 11)"``, ``"decoder process was
    killed (signal 9: out of memory?)"``, ``"decoder process exited with code N"``) or took
    longer than ``timeout``. At most ``2 * workers`` clips are decoded ahead of the one
    to yield next. Workers are started on the first ``next()``; closing the generator
    (or an exception such as ``KeyboardInterrupt`` inside it) kills and reaps them; use
    :func:`contextlib.closing` when breaking out of a loop early. Iterate it from one
    long-lived thread: Linux kills a decoder when the thread that started it ends (that
    is what makes decoders die with a ``kill -9``-ed run).

    Raises:
        ValueError: ``workers < 0`` or ``timeout <= 0``.
        DecoderPoolError: decoder processes die before they are ready, repeatedly.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    return _decode(list(clips), frames, size, device, workers, timeout, journal_dir)


# --- worker processes --------------------------------------------------------------------


def start_interpreter(
    module: str, function: str, args: Sequence[str], pass_fds: tuple[int, ...]
) -> subprocess.Popen:
    """A fresh Python interpreter (a decoder process) that ignores Ctrl-C at once (the main
    process stops its decoders), imports ``module`` from the folder this checkout was loaded
    from and calls ``function(args)``; ``pass_fds`` stay open in it."""
    boot = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        f"from {module} import {function}; {function}(sys.argv[2:])\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    return subprocess.Popen(
        [sys.executable, "-c", boot, root, *args], stdin=subprocess.DEVNULL, pass_fds=pass_fds
    )


def _worker_entry(argv: list[str]) -> None:
    """Entry point of a decoder process: ``argv`` is the fd of its end of the pipe, the
    main process's pid, frames, size, device, and the fd of its frame buffer."""
    fd, parent, frames, size, device, buffer_fd = argv
    _die_with_parent(int(parent))
    buffer = mmap.mmap(int(buffer_fd), _buffer_bytes(int(frames), int(size)))
    os.close(int(buffer_fd))
    _worker_main(Connection(int(fd)), int(frames), int(size), device, buffer)


@dataclass(frozen=True)
class _InBuffer:
    """What a decoder sends instead of an item's frames that it wrote into its buffer."""

    shape: tuple[int, ...]


def _buffer_bytes(frames: int, size: int) -> int:
    """Bytes of a worker's frame buffer: one clip's ``frames`` RGB frames of ``size``²."""
    return frames * size * size * 3


def _frame_buffer(nbytes: int) -> int:
    """A new anonymous shared file of ``nbytes``, its memory reserved now (its fd; a
    ``memfd`` where the system has one, else an unlinked temporary file).

    Raises:
        DecoderPoolError: the memory (or disk) for it cannot be reserved: a clear error now,
            where a sparse file would kill the decoder with SIGBUS at its first clip.
    """
    try:
        fd = os.memfd_create("jungle-frames", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        log.debug("no memfd: a frame buffer in %s", tempfile.gettempdir())
        with tempfile.TemporaryFile() as fh:
            fd = os.dup(fh.fileno())
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise DecoderPoolError(
                    f"cannot reserve {nbytes / 2**20:.1f} MiB for a decoder's frame buffer ({exc})"
                ) from None
            os.ftruncate(fd, nbytes)  # a file system without fallocate
    except BaseException:
        os.close(fd)
        raise
    return fd


def _to_buffer(item: dict, buffer: mmap.mmap) -> dict:
    """``item`` with its frames written into ``buffer`` and replaced by an
    :class:`_InBuffer` (unchanged where they are not uint8 or do not fit)."""
    frames = item.get("frames")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        return item
    if frames.nbytes > len(buffer):
        return item
    view = np.frombuffer(buffer, np.uint8, count=frames.size).reshape(frames.shape)
    np.copyto(view, frames)
    del view  # a live view would keep the buffer from closing
    return item | {"frames": _InBuffer(frames.shape)}


def _from_buffer(item: dict, buffer: mmap.mmap) -> dict:
    """``item`` with :func:`_to_buffer`'s frames copied out of ``buffer`` (a fresh array
    that the buffer's next clip cannot overwrite)."""
    marker = item.get("frames")
    if not isinstance(marker, _InBuffer):
        return item
    count = math.prod(marker.shape)
    view = np.frombuffer(buffer, np.uint8, count=count).reshape(marker.shape)
    frames = view.copy()
    del view
    return item | {"frames": frames}


def _worker_main(conn: Connection, frames: int, size: int, device: str, buffer: mmap.mmap) -> None:
    """A decoder process: report ready, then decode one ``(index, clip)`` task at a time,
    write the frames into ``buffer`` and send back ``(index, item)``, until the pipe closes
    or ``None`` arrives."""
    # One thread and a lower priority, so that decoders fill the gaps of the CNN's OpenMP
    # threads instead of preempting them (measured on 2 cores: with equal priority the
    # end-to-end throughput fell to 0.73 of 1/(1/decode + 1/CNN)).
    with contextlib.suppress(OSError):
        os.nice(10)
    torch = sys.modules.get("torch")  # not imported by the decoders, but be sure
    if torch is not None:
        torch.set_num_threads(1)
    _send(conn, ("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the main process is gone
        if task is None:
            return
        index, clip = task
        item = _to_buffer(decode_item(clip, frames, size, device), buffer)
        try:
            _send(conn, (index, item))
        except OSError:
            return


def _send(conn: Connection, obj: object) -> None:
    """Send ``obj`` with its large buffers (the frames) out of band: pickle protocol 5
    writes them from the arrays' memory straight into the pipe, without a copy into the
    pickle (measured: about 4 ms instead of 6.5-13 ms for 32 frames of 224 px)."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raw = [b.raw() for b in buffers]
    conn.send((header, [r.nbytes for r in raw]))
    for r in raw:
        conn.send_bytes(r)


def _recv(conn: Connection) -> Any:
    """Receive what :func:`_send` sent; arrays are writable views of fresh buffers."""
    header, sizes = conn.recv()
    buffers = []
    for n in sizes:
        buffer = bytearray(n)
        if conn.recv_bytes_into(buffer) != n:
            raise OSError("short out-of-band buffer from a decoder process")
        buffers.append(buffer)
    return pickle.loads(header, buffers=buffers)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the main process dies (``kill -9``), so that
    a decoder stuck in C code is no orphan; exit at once if it is already gone."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        sig = -exitcode
        if sig == signal.SIGKILL:
            return f"decoder process was killed (signal {sig}: out of memory?)"
        return f"decoder crashed (signal {sig})"
    return f"decoder process exited with code {exitcode}"


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    pidfd: int | None  # readable once the process has exited (None: kernel too old)
    buffer: mmap.mmap  # the frames of its last clip (:func:`_to_buffer`)
    ready: bool = False
    index: int | None = None  # the clip it holds
    since: float = 0.0  # when it was given that clip (time.monotonic)
    decoded: int = 0  # clips it finished: 0 means a fresh process


@dataclass
class _Event:
    kind: str  # "done", "died" or "timeout"
    index: int
    item: dict | None = None
    reason: str = ""


@dataclass
class _Pool:
    """Decoder processes, each holding at most one clip."""

    frames: int
    size: int
    device: str
    timeout: float
    workers: list[_Worker] = field(default_factory=list)
    start_failures: int = 0  # consecutive deaths before ready

    def spawn(self) -> None:
        """Start a decoder process (a fresh interpreter that imports only this module)."""
        nbytes = _buffer_bytes(self.frames, self.size)
        parent, child = Pipe(duplex=True)
        fd = child.fileno()
        args = [str(fd), str(os.getpid()), str(self.frames), str(self.size), self.device]
        buffer_fd = buffer = None
        try:
            buffer_fd = _frame_buffer(nbytes)
            buffer = mmap.mmap(buffer_fd, nbytes)
            process = start_interpreter(
                __name__, "_worker_entry", [*args, str(buffer_fd)], (fd, buffer_fd)
            )
        except BaseException:
            parent.close()
            if buffer is not None:
                buffer.close()
            raise
        finally:
            child.close()
            if buffer_fd is not None:
                os.close(buffer_fd)
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(process.pid)
        self.workers.append(_Worker(process, parent, pidfd, buffer, since=time.monotonic()))
        log.debug("decoder process %d started", process.pid)

    def starting(self) -> int:
        return sum(not w.ready for w in self.workers)

    def spawn_for(self, waiting: int, slots: int) -> None:
        """Start workers for ``waiting`` clips beyond those already starting, up to
        ``slots`` workers in all."""
        for _ in range(min(waiting - self.starting(), slots - len(self.workers))):
            self.spawn()

    def idle(self, fresh: bool = False) -> _Worker | None:
        for w in self.workers:
            if w.ready and w.index is None and (w.decoded == 0 or not fresh):
                return w
        return None

    def give(self, worker: _Worker, index: int, clip: Clip) -> bool:
        """Hand ``clip`` to an idle worker; False when its pipe is broken (it died while
        idle: it is reaped, and the clip, which it never got, is not blamed)."""
        try:
            worker.conn.send((index, clip))
        except OSError:
            self._reap(worker)
            return False
        worker.index = index
        worker.since = time.monotonic()
        return True

    def poll(self, block: bool = True, wake: int | None = None) -> list[_Event]:
        """Wait (unless not ``block``) until a worker reports, dies or runs out of time, the
        file descriptor ``wake`` (if any) is readable, or at most :data:`WAKE_S`; return
        what happened to the workers (maybe nothing)."""
        deadlines = [self._deadline(w) for w in self.workers]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        if wait_s is not None and math.isinf(wait_s):
            wait_s = None
        wait_s = 0.0 if not block else min(WAKE_S, WAKE_S if wait_s is None else wait_s)
        handles: list[Any] = [w.conn for w in self.workers]
        handles += [w.pidfd for w in self.workers if w.pidfd is not None]
        if wake is not None:
            handles.append(wake)
        ready = set(wait(handles, timeout=wait_s))
        events: list[_Event] = []
        for w in list(self.workers):
            if w.conn not in ready and (w.pidfd is None or w.pidfd not in ready):
                continue
            dead = w.pidfd is not None and w.pidfd in ready
            try:
                while w.conn.poll():
                    events += self._message(w, _recv(w.conn))
            except (EOFError, OSError):
                dead = True
            if dead:
                events += self._reap(w)
        now = time.monotonic()
        for w in list(self.workers):
            if not w.ready and now >= self._deadline(w):
                log.warning("a decoder process did not start in %g s", _START_TIMEOUT_S)
                w.process.kill()
                events += self._reap(w)
            elif w.index is not None and now >= self._deadline(w):
                index = w.index
                log.debug("decoder process %d: clip %d timed out", w.process.pid, index)
                w.process.kill()
                w.index = None
                self._reap(w)
                events.append(_Event("timeout", index))
        return events

    def _deadline(self, w: _Worker) -> float:
        if not w.ready:
            return w.since + _START_TIMEOUT_S
        return w.since + self.timeout if w.index is not None else math.inf

    def _message(self, w: _Worker, message: tuple) -> list[_Event]:
        head, payload = message
        if head == "ready":
            w.ready = True
            self.start_failures = 0
            return []
        if head != w.index:
            raise DecoderPoolError(f"decoder sent clip {head} while holding clip {w.index}")
        w.index = None
        w.decoded += 1
        return [_Event("done", head, item=_from_buffer(payload, w.buffer))]

    def _reap(self, w: _Worker) -> list[_Event]:
        """Wait for a dead (or dying) worker, forget it, blame its clip."""
        try:
            exitcode = w.process.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            w.process.kill()
            exitcode = w.process.wait()
        self._forget(w)
        if w.index is not None:
            return [_Event("died", w.index, reason=_death_reason(exitcode))]
        if not w.ready:
            self.start_failures += 1
            log.warning("a decoder process died while starting (%s)", _death_reason(exitcode))
            if self.start_failures >= MAX_START_FAILURES:
                raise DecoderPoolError(
                    f"decoder processes die while starting ({_death_reason(exitcode)})"
                )
        return []

    def _forget(self, w: _Worker) -> None:
        w.conn.close()
        if w.pidfd is not None:
            os.close(w.pidfd)
        with contextlib.suppress(BufferError):  # a view left by an exception: GC frees it
            w.buffer.close()
        self.workers.remove(w)

    def close(self) -> None:
        """Kill and reap every worker (they hold nothing worth waiting for)."""
        for w in self.workers:
            with contextlib.suppress(OSError):
                w.process.terminate()
        for w in list(self.workers):
            try:
                w.process.wait(1.0)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
            self._forget(w)


# --- the scheduler -----------------------------------------------------------------------


def _decode(
    clips: list[Clip],
    frames: int,
    size: int,
    device: str,
    workers: int,
    timeout: float,
    journal_dir: Path | None,
) -> Iterator[tuple[Clip, dict]]:
    journal: Journal | None = None
    pool: _Pool | None = None
    try:
        isolated: set[int] = set()
        if journal_dir is not None:
            journal, dead = take_over_journals(Path(journal_dir))
            isolated = {i for i, c in enumerate(clips) if c.clip_id in dead}
            if isolated:
                log.warning(
                    "%d clip(s) were being decoded when an earlier run died; decoding them "
                    "in an isolated process: %s",
                    len(isolated),
                    ", ".join(str(clips[i].path) for i in sorted(isolated)),
                )
        slots = workers if workers else (1 if isolated else 0)
        pool = _Pool(frames, size, device, timeout)
        yield from _schedule(clips, pool, slots, workers, isolated, journal, timeout)
    finally:
        try:
            if pool is not None:
                pool.close()
        finally:
            if journal is not None:
                journal.remove()


class _CrashRule:
    """What the pool's events mean for their clips (the crash rule of the module docstring):
    a decoded clip's item is kept in :attr:`results` (and ``end`` journalled); a clip that
    timed out becomes a failure; a clip whose decoder died is queued in :attr:`retry` for a
    fresh decoder the first time and becomes a failure the second time. ``journal`` is
    anything with ``write(kind, clip_id)``, or None."""

    def __init__(self, clips: Sequence[Clip], journal: Any, timeout: float) -> None:
        self.clips = clips
        self.journal = journal
        self.timeout = timeout
        self.results: dict[int, dict] = {}
        #: clips whose decoder died once: next to a fresh worker
        self.retry: deque[int] = deque()
        self._deaths: dict[int, int] = {}

    def note(self, kind: str, index: int) -> None:
        """Journal ``start`` or ``end`` of clip ``index``."""
        if self.journal is not None:
            self.journal.write(kind, self.clips[index].clip_id)

    def give(self, pool: _Pool, worker: _Worker, index: int) -> bool:
        """Journal clip ``index`` as started and hand it to ``worker`` (:meth:`_Pool.give`)."""
        self.note("start", index)
        return pool.give(worker, index, self.clips[index])

    def give_retries(self, pool: _Pool) -> None:
        """Hand the clips to retry to fresh idle workers, as long as there are some."""
        while self.retry and (worker := pool.idle(fresh=True)) is not None:
            if self.give(pool, worker, self.retry[0]):
                self.retry.popleft()

    def handle(self, events: list[_Event]) -> None:
        """Apply the crash rule to ``events`` of :meth:`_Pool.poll`."""
        for event in events:
            clip = self.clips[event.index]
            if event.kind == "done":
                self.note("end", event.index)
                assert event.item is not None
                self.results[event.index] = event.item
            elif event.kind == "timeout":
                reason = (
                    f"decoding took longer than clip_timeout ({self.timeout:g} s) and was abandoned"
                )
                log.warning("%s: %s", clip.path, reason)
                self.results[event.index] = {"ok": False, "reason": reason}
            else:
                self._deaths[event.index] = self._deaths.get(event.index, 0) + 1
                if self._deaths[event.index] == 1:
                    log.warning(
                        "%s: %s; retrying it in a fresh decoder process", clip.path, event.reason
                    )
                    self.retry.append(event.index)
                else:
                    log.warning("%s: %s again; giving up on this clip", clip.path, event.reason)
                    self.results[event.index] = {"ok": False, "reason": event.reason}


def _schedule(
    clips: list[Clip],
    pool: _Pool,
    slots: int,
    workers: int,
    isolated: set[int],
    journal: Journal | None,
    timeout: float,
) -> Iterator[tuple[Clip, dict]]:
    frames, size, device = pool.frames, pool.size, pool.device
    ahead = AHEAD_PER_WORKER * max(workers, 1)
    rule = _CrashRule(clips, journal, timeout)
    results, retry = rule.results, rule.retry
    next_yield = next_give = 0

    while next_yield < len(clips):
        if pool.workers:  # collect what finished while the consumer had the clip before
            rule.handle(pool.poll(block=False))
        # hand out work before yielding, so decoders run while the consumer works:
        # retries first (to fresh workers), then clips in order
        next_give = max(next_give, next_yield)
        rule.give_retries(pool)
        while next_give < min(len(clips), next_yield + ahead):
            if workers == 0 and next_give not in isolated:
                next_give += 1  # decoded in this process when its turn comes
                continue
            worker = pool.idle()
            if worker is None:
                break
            if rule.give(pool, worker, next_give):
                next_give += 1
        waiting = len(retry) + sum(
            1
            for i in range(next_give, min(len(clips), next_yield + ahead))
            if workers or i in isolated
        )
        pool.spawn_for(waiting, slots)
        if next_yield in results:
            yield clips[next_yield], results.pop(next_yield)
            next_yield += 1
        elif workers == 0 and next_yield not in isolated:
            rule.note("start", next_yield)
            item = decode_item(clips[next_yield], frames, size, device)
            rule.note("end", next_yield)
            yield clips[next_yield], item
            next_yield += 1
        elif pool.workers:
            rule.handle(pool.poll())
        else:
            raise RuntimeError(f"decoder pool has no worker for clip {next_yield} (a bug)")
