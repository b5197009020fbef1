"""NVDEC threads and CPU decoder processes taking clips from one queue (``decoder: nvdec``).

:func:`decode_hybrid` yields ``(clip, item)`` like :func:`extract.workers.decode_in_workers`
(items of :func:`extract.workers.decode_item`), in the order the clips finish:

* The videos wait in one queue. ``threads`` NVDEC threads in this process and the
  crash-containing decoder processes of :mod:`extract.workers` take clips from its front
  whenever they are free, so both kinds of decoder work at once and neither waits for the
  other to finish its share.
* An NVDEC thread probes its clip. A stream the gate accepts
  (:func:`extract.nvdec.nvdec_accepts`) is decoded by the GPU decoder in that thread, and
  its frames stay on the GPU. A clip the gate refuses or NVDEC fails on goes to a second
  queue that only the decoder processes take from, as do photo sequences and the suspects
  of dead runs. With ``workers=0`` the processes take clips from that second queue only
  (one process is started when it has clips): NVDEC decodes everything it can.
* Memory is bounded: a thread holds one clip, a decoder process holds one clip, and once
  ``threads + workers`` decoded clips wait for the consumer nothing new is taken in until
  it has had one (the threads then wait on their full queue, the processes for a clip).

Crash safety (threads in this process, the default): probing (ffmpeg) and NVDEC run here,
so a crash in either kills the run. The journal ``inflight-<host>-<pid>-nvdec.log`` in
``journal_dir`` (format of :mod:`extract.journal`) has ``start<TAB>id`` from before a
thread probes a clip, or before a clip is handed to a decoder process, and ``end<TAB>id``
once it is decoded or set aside. Any error of NVDEC on a clip (including CUDA running out
of memory) sends the clip to the decoder processes. A clip whose GPU decode takes longer
than ``timeout`` becomes a failed row; its thread is abandoned (a new one takes its place)
and the journal is kept, so a rerun decodes the clip on the CPU. A rerun reads the
journals of dead runs (:func:`extract.journal.take_over_journals`): their clips skip NVDEC
and go to the decoder processes, whose crash rule applies (a clip that kills its process
is retried once in a fresh one, then becomes a failed row). So a clip that crashes NVDEC
is retried on the CPU path and never loops.

NVDEC in a dedicated decoder process instead (``process_device``; config
``nvdec_host: process``; :class:`extract.nvdec_process.GpuProcess`): the same threads in one
separate process that hands frames over through CUDA IPC, so a crash in NVDEC ends that
process only and its clips go to the decoder processes at once, with no rerun. Threads in
this process are the default: on the H100 of issue 11, NVDEC decoders in 2-4 processes
(several CUDA contexts sharing the video engines) decoded 3x slower than the same threads in
one process, and a dedicated process is a second CUDA context next to the CNN's, with a
pickled item and a copy of the frames per clip. The two have not been measured against each
other on a GPU (none lent yet): ``scripts/bench_nvdec.py`` prints both.

Each NVDEC thread keeps one decoder across clips (:class:`extract.nvdec.ThreadDecoders`).
Still to do (issue 11): measurements on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from extract.discover import Clip
from extract.identity import identity_or_unknown
from extract.journal import Journal, take_over_journals
from extract.nvdec import GpuDecode
from extract.nvdec_process import GpuProcess
from extract.probe import DecodeError, VideoInfo, probe
from extract.workers import (
    WAKE_S,
    _CrashRule,
    _Pool,
    decoded_item,
    video_meta,
)

log = logging.getLogger(__name__)

#: the gate: whether a stream goes to the GPU decoder.
Gate = Callable[[VideoInfo], bool]
#: the journal file suffix of a hybrid run.
JOURNAL_SUFFIX = "-nvdec"
#: seconds the end of a run waits for NVDEC threads still decoding (Ctrl-C, an error):
#: clips they have not finished by then stay in the journal and are suspects next time.
_JOIN_S = 5.0


class _LockedJournal:
    """A journal written from several threads; writes after :meth:`remove` are dropped."""

    def __init__(self, journal: Journal | None) -> None:
        self._journal = journal
        self._lock = threading.Lock()

    def write(self, kind: str, clip_id: str) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.write(kind, clip_id)

    def remove(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.remove()
                self._journal = None


def _gpu_item(
    clip: Clip,
    gpu_decode: GpuDecode,
    accepts: Gate,
    frames: int,
    size: int,
    journal: _LockedJournal,
) -> dict | None:
    """The item of a clip decoded on the GPU, a failure item for a file that cannot be
    probed, or None for a clip that goes to the CPU (refused by the gate, or NVDEC failed
    on it: the CPU decoders may still read a damaged file). Journalled from before the
    probe (ffmpeg runs here, not in a contained process) to the end."""
    journal.write("start", clip.clip_id)
    try:
        info = probe(clip.path)
    except DecodeError as exc:
        journal.write("end", clip.clip_id)
        return {"ok": False, "reason": str(exc)}
    item = nvdec_item(clip, info, gpu_decode, frames, size) if accepts(info) else None
    journal.write("end", clip.clip_id)
    return item


def nvdec_item(
    clip: Clip, info: VideoInfo, gpu_decode: GpuDecode, frames: int, size: int
) -> dict | None:
    """The item of a clip decoded by ``gpu_decode`` (frames on the GPU), or None where
    NVDEC failed on it (the CPU decoders may still read a damaged file)."""
    try:
        decoded = gpu_decode(clip.path, info, frames, (size, size))
    except Exception as exc:  # never let one clip stop the run: the CPU path retries it
        log.warning("%s: NVDEC failed (%s); decoding it on the CPU", clip.path, exc)
        return None
    return decoded_item(decoded, video_meta(info, decoded)) | {
        "identity": identity_or_unknown(clip.files)
    }


class _GpuThreads:
    """The NVDEC threads: each takes a clip index from ``shared``, decodes it
    (:func:`_gpu_item`) and puts ``(index, item or None)`` in a bounded queue, writing a
    byte to :attr:`wake_fd`'s pipe so that the main thread's wait ends at once."""

    def __init__(
        self,
        clips: Sequence[Clip],
        shared: deque[int],
        decode: Callable[[Clip], dict | None],
        threads: int,
        timeout: float,
    ) -> None:
        self.clips = clips
        self.shared = shared
        self.decode = decode
        self.timeout = timeout
        self.lock = threading.Lock()  # guards shared, _inflight, _abandoned, _pending
        self.done: queue.Queue[tuple[int, dict | None]] = queue.Queue(maxsize=threads)
        self.stop = threading.Event()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._inflight: dict[int, tuple[int, float]] = {}  # thread number → (clip, since)
        self._abandoned: set[int] = set()  # thread numbers
        self._pending = 0  # clips taken by a thread and not yet in ``done`` nor abandoned
        self._threads: list[threading.Thread] = []
        for _ in range(threads):
            self._start()

    def _start(self) -> None:
        number = len(self._threads)
        thread = threading.Thread(
            target=self._loop, args=(number,), name=f"nvdec-{number}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def take(self) -> int | None:
        """The next clip of the shared queue for a decoder process, or None."""
        with self.lock:
            return self.shared.popleft() if self.shared else None

    def _loop(self, number: int) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not self.shared:
                    return
                index = self.shared.popleft()
                self._inflight[number] = (index, time.monotonic())
                self._pending += 1
            try:
                item = self.decode(self.clips[index])
            except Exception as exc:  # a bug must not lose the clip or hang the run
                item = {"ok": False, "reason": f"unexpected decoder error: {exc!r}"}
            with self.lock:
                self._inflight.pop(number, None)
                if number in self._abandoned:
                    return  # its clip was failed for taking too long
            while not self.stop.is_set():
                try:
                    self.done.put((index, item), timeout=WAKE_S)
                    break
                except queue.Full:
                    continue
            with self.lock:
                self._pending -= 1
            with contextlib.suppress(OSError):  # a full pipe already wakes the main thread
                os.write(self._wake_w, b"\0")

    def collect(self) -> list[tuple[int, dict | None]]:
        """What the threads finished since the last call, and a failure for each clip a
        thread has held for longer than ``timeout`` (that thread is abandoned, and a new
        one started in its place)."""
        with contextlib.suppress(OSError):
            os.read(self.wake_fd, 65536)
        out: list[tuple[int, dict | None]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.done.get_nowait())
        now = time.monotonic()
        with self.lock:
            late = [
                (number, index)
                for number, (index, since) in self._inflight.items()
                if now - since > self.timeout
            ]
            for number, _ in late:
                del self._inflight[number]
                self._abandoned.add(number)
                self._pending -= 1
        for _, index in late:
            reason = f"NVDEC took longer than {self.timeout:g} s and was abandoned"
            log.warning("%s: %s", self.clips[index].path, reason)
            out.append((index, {"ok": False, "reason": reason}))
            if not self.stop.is_set():
                self._start()
        return out

    @property
    def abandoned(self) -> bool:
        """Whether a thread was abandoned on a clip (its journal line must stay)."""
        return bool(self._abandoned)

    def busy(self) -> bool:
        """Whether a thread holds or will take a clip, or a result waits."""
        with self.lock:
            return bool(self._pending) or bool(self.shared) or not self.done.empty()

    def close(self) -> bool:
        """Stop the threads; True when every one ended (within :data:`_JOIN_S`) without
        a clip in hand."""
        self.stop.set()
        deadline = time.monotonic() + _JOIN_S
        for number, thread in enumerate(self._threads):
            if number not in self._abandoned:
                thread.join(max(0.0, deadline - time.monotonic()))
        clean = not any(
            t.is_alive() for n, t in enumerate(self._threads) if n not in self._abandoned
        )
        for fd in (self.wake_fd, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        return clean


def decode_hybrid(
    clips: Sequence[Clip],
    *,
    gpu_decode: GpuDecode | None,
    frames: int,
    size: int,
    threads: int,
    workers: int,
    timeout: float,
    journal_dir: Path | None,
    accepts: Gate,
    process_device: str | None = None,
) -> Iterator[tuple[Clip, dict]]:
    """Decode ``clips`` with ``gpu_decode`` in ``threads`` threads where ``accepts`` the
    stream, and with ``workers`` CPU decoder processes, all taking clips from one queue
    (module docstring); yields every clip once. ``timeout``, ``journal_dir``: as for
    :func:`extract.workers.decode_in_workers`. Closing the generator stops the threads
    and kills the processes. With ``process_device`` (a CUDA device name), the ``threads``
    NVDEC threads run in one dedicated decoder process on that device instead
    (:class:`extract.nvdec_process.GpuProcess`, with :func:`extract.nvdec.nvdec_accepts` as
    the gate), and ``gpu_decode`` and ``accepts`` are not used.

    Raises:
        ValueError: ``threads < 1``, ``workers < 0`` or ``timeout <= 0`` (on the first
            ``next()``).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    clips = list(clips)
    journal = _LockedJournal(None)
    dead: set[str] = set()
    if journal_dir is not None:
        own, dead = take_over_journals(Path(journal_dir), JOURNAL_SUFFIX)
        journal = _LockedJournal(own)
    if dead:
        log.warning(
            "%d clip(s) were being decoded when an earlier run died: decoding them on the CPU",
            len(dead),
        )
    cpu_only: deque[int] = deque()
    shared: deque[int] = deque()
    for index, clip in enumerate(clips):
        (cpu_only if clip.is_sequence or clip.clip_id in dead else shared).append(index)
    rule = _CrashRule(clips, journal, timeout)
    pool = _Pool(frames, size, "cpu", timeout)
    gpu: _GpuThreads | GpuProcess | None = None
    on_gpu = 0
    try:
        if process_device is not None:
            gpu = GpuProcess(clips, shared, process_device, frames, size, threads, timeout)
        else:
            assert gpu_decode is not None, "gpu_decode or process_device"
            decode = gpu_decode
            gpu = _GpuThreads(
                clips,
                shared,
                lambda clip: _gpu_item(clip, decode, accepts, frames, size, journal),
                threads,
                timeout,
            )
        # decoded clips that may wait for the consumer: beyond it nothing new is taken in
        # (the NVDEC threads wait on their full queue, the processes for a next clip)
        backlog = threads + max(workers, 1)
        remaining = len(clips)
        while remaining:
            if pool.workers:
                rule.handle(pool.poll(block=False))
            if len(rule.results) < backlog:
                for index, item in gpu.collect():
                    if item is None:
                        cpu_only.append(index)
                    else:
                        on_gpu += bool(item["ok"])
                        rule.results[index] = item
                # the processes: retries (fresh workers), set-aside clips, the shared queue
                rule.give_retries(pool)
                while (worker := pool.idle()) is not None:
                    index = cpu_only.popleft() if cpu_only else (gpu.take() if workers else None)
                    if index is None:
                        break
                    if not rule.give(pool, worker, index):
                        cpu_only.appendleft(index)
            with gpu.lock:
                queued = len(shared) if workers else 0
            pool.spawn_for(len(rule.retry) + len(cpu_only) + queued, max(workers, 1))
            if rule.results:
                index = next(iter(rule.results))
                item = rule.results.pop(index)
                remaining -= 1
                yield clips[index], item
                continue
            if not pool.workers and not gpu.busy():
                raise RuntimeError(f"{remaining} clip(s) left but none is being decoded (a bug)")
            rule.handle(pool.poll(wake=gpu.wake_fd))
    finally:
        try:
            pool.close()
        finally:
            # as in extract.workers: the journal goes unless a thread may still be decoding
            if gpu is None or (gpu.close() and not gpu.abandoned):
                journal.remove()
    log.info("NVDEC decoded %d of %d clip(s)", on_gpu, len(clips))
