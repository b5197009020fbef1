"""Decoding with NVDEC threads and CPU decoder processes in one run (``decoder: nvdec``).

:func:`decode_hybrid` yields ``(clip, item)`` like :func:`extract.workers.decode_in_workers`
(items of :func:`extract.workers.decode_item`), in two phases:

1. GPU phase: a pool of ``threads`` threads in this process probes the clips in order (at
   most ``2 * threads`` ahead of the one yielded next); a video whose stream the gate
   accepts (:func:`extract.nvdec.nvdec_accepts`) is decoded by the GPU decoder in that
   thread and its frames stay on the GPU. A clip the gate refuses, a photo sequence, and a
   clip NVDEC cannot decode are set aside for the CPU.
2. CPU phase: the set-aside clips go through the crash-containing decoder processes of
   :func:`extract.workers.decode_in_workers`.

Crash safety: probing (ffmpeg) and NVDEC run inside this process, so a crash in either
kills the run. Before a clip is probed, ``start<TAB>id`` is appended to the journal
``inflight-<host>-<pid>-nvdec.log`` in ``journal_dir`` (``end<TAB>id`` once it is
decoded or set aside; the format of :mod:`extract.workers`). Any error of NVDEC on a clip
(including CUDA running out of memory) sends the clip to the CPU. A clip whose GPU decode
takes longer than ``timeout`` becomes a failed row; its thread is abandoned and the journal
is kept, so a rerun decodes it on the CPU. A rerun reads the journals of dead runs
(:func:`extract.workers.suspects`): their clips skip NVDEC and go to the CPU phase, whose
decoder pool treats them as suspects (an isolated process; a second crash makes the clip
a failed row). So a clip that crashes NVDEC is retried once on the CPU path and never
loops.

Still to do (issue 11): one clip queue shared by both kinds of decoder at once (today the
CPU phase starts when the GPU phase ends), decoders reused across clips
(``reconfigure_decoder``), and measurements on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from extract.decode import DecodedClip
from extract.discover import Clip
from extract.probe import DecodeError, VideoInfo, probe
from extract.workers import (
    WAKE_S,
    _Journal,
    decode_in_workers,
    decoded_item,
    suspects,
    video_meta,
)

log = logging.getLogger(__name__)

#: a GPU decoder: ``(path, info, frames, (width, height))`` → the sampled clip.
GpuDecode = Callable[[Path, VideoInfo, int, tuple[int, int]], DecodedClip]
#: the gate: whether a stream goes to the GPU decoder.
Gate = Callable[[VideoInfo], bool]
#: the journal file suffix of the GPU phase.
JOURNAL_SUFFIX = "-nvdec"


class _LockedJournal:
    """The GPU phase's journal, written from several threads; ``dead`` (clips of dead runs)
    are written as started at once, so they stay suspect if this run dies too."""

    def __init__(self, journal_dir: Path | None, dead: set[str]) -> None:
        self._journal = _Journal(journal_dir, JOURNAL_SUFFIX) if journal_dir else None
        self._lock = threading.Lock()
        for clip_id in sorted(dead):
            self.write("start", clip_id)

    def write(self, kind: str, clip_id: str) -> None:
        if self._journal is not None:
            with self._lock:
                self._journal.write(kind, clip_id)

    def remove(self) -> None:
        if self._journal is not None:
            self._journal.remove()


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
    if not accepts(info):
        journal.write("end", clip.clip_id)
        return None
    try:
        decoded = gpu_decode(clip.path, info, frames, (size, size))
    except Exception as exc:  # never let one clip stop the run: the CPU path retries it
        log.warning("%s: NVDEC failed (%s); decoding it on the CPU", clip.path, exc)
        journal.write("end", clip.clip_id)
        return None
    journal.write("end", clip.clip_id)
    return decoded_item(decoded, video_meta(info, decoded))


_STUCK: dict = {}


def _result(job: Future, timeout: float) -> dict | None:
    """``job``'s result, or :data:`_STUCK` after ``timeout`` seconds; waits in slices of
    :data:`extract.workers.WAKE_S` so that a Ctrl-C received by another thread is acted on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return job.result(timeout=max(0.0, min(WAKE_S, deadline - time.monotonic())))
        except TimeoutError:
            if time.monotonic() >= deadline:
                return _STUCK


def decode_hybrid(
    clips: Sequence[Clip],
    *,
    gpu_decode: GpuDecode,
    frames: int,
    size: int,
    threads: int,
    workers: int,
    timeout: float,
    journal_dir: Path | None,
    accepts: Gate,
) -> Iterator[tuple[Clip, dict]]:
    """Decode ``clips`` with ``gpu_decode`` in ``threads`` threads where ``accepts`` the
    stream, and with CPU decoder processes otherwise (module docstring); yields every
    clip once. ``workers``, ``timeout``, ``journal_dir``: as for
    :func:`extract.workers.decode_in_workers` (the CPU phase).

    Raises:
        ValueError: ``threads < 1``.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    dead = suspects(journal_dir, include_own=True) if journal_dir is not None else set()
    if dead:
        log.warning(
            "%d clip(s) were being decoded when an earlier run died: decoding them on the CPU",
            len(dead),
        )
    cpu: list[Clip] = []
    journal = _LockedJournal(journal_dir, dead)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="nvdec")
    stuck = False
    try:
        window: deque[tuple[Clip, Future]] = deque()
        queue = iter(clips)

        def fill() -> None:
            while len(window) < 2 * threads:
                clip = next(queue, None)
                if clip is None:
                    return
                if clip.is_sequence or clip.clip_id in dead:
                    cpu.append(clip)
                    continue
                job = pool.submit(_gpu_item, clip, gpu_decode, accepts, frames, size, journal)
                window.append((clip, job))

        fill()
        while window:
            clip, job = window.popleft()
            item = _result(job, timeout)
            if item is _STUCK:  # its thread is abandoned; the journal keeps it suspect
                stuck = True
                item = {"ok": False, "reason": f"NVDEC took longer than {timeout:g} s"}
            fill()
            if item is None:
                cpu.append(clip)
            else:
                yield clip, item
    finally:
        pool.shutdown(wait=not stuck, cancel_futures=True)
        if not stuck:  # every clip handed to NVDEC has ended (or this run is stopping)
            journal.remove()
    log.info("GPU phase done; %d clip(s) left for the CPU decoders", len(cpu))
    with contextlib.closing(
        decode_in_workers(
            cpu,
            frames=frames,
            size=size,
            device="cpu",
            workers=workers,
            timeout=timeout,
            journal_dir=journal_dir,
        )
    ) as items:
        yield from items
