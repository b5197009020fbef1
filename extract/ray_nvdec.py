"""NVDEC inside the Ray engine's CNN actors (``--engine ray --decoder nvdec``).

* The decode tasks (CPU) probe each video; one whose stream NVDEC accepts
  (:func:`extract.nvdec.nvdec_accepts`) is not decoded there: its item is
  ``{"nvdec": VideoInfo}`` (:func:`defer_to_nvdec`). Photo sequences, refused streams and
  files that cannot be probed are decoded by the task as before.
* The CNN actor on each GPU decodes those clips with :class:`ActorNvdec`: ``threads`` at a
  time, one decoder per clip (:func:`extract.hybrid.nvdec_item`), frames staying on the
  GPU. A clip NVDEC fails on goes back to the driver, which decodes it on the CPU in the
  crash rule's second pass; a clip NVDEC holds longer than ``timeout`` is a failed row
  (its thread is abandoned).
* A crash inside NVDEC kills the actor; Ray Data restarts it and runs its batches again.
  So that the clip does not crash it forever, each actor journals the clips it is decoding
  (format of :mod:`extract.journal`) in ``<tmp>/jungle-nvdec-<uid>/<run id>/`` on its
  node. An actor sends the clips that a dead actor of the same run on the same node was
  decoding (its suspects) back to the driver for the CPU pass, where the local crash rule
  applies (one retry in a fresh process, then a failed row). A batch retried on another
  node may crash NVDEC once there too: at most once per GPU node.

Run folders whose journals all belong to dead processes of this host and were last written
more than :data:`_STALE_S` seconds ago are removed when an actor starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from extract.discover import Clip
from extract.hybrid import JOURNAL_SUFFIX, _LockedJournal, nvdec_item
from extract.journal import JOURNAL_GLOB, Journal, journal_writer, read_journal
from extract.nvdec import GpuDecode, nvdec_accepts
from extract.probe import DecodeError, VideoInfo, probe
from extract.workers import WAKE_S

log = logging.getLogger(__name__)

#: a clip sent back to the driver for the CPU pass (NVDEC failed, or a suspect).
CPU_PASS = None
#: seconds since its last write after which a run folder of dead actors' journals may be
#: removed.
_STALE_S = 600.0


def journal_root() -> Path:
    """This node's folder of the actors' journals (one subfolder per run)."""
    return Path(tempfile.gettempdir()) / f"jungle-nvdec-{os.getuid()}"


def defer_to_nvdec(clip: Clip) -> dict | None:
    """``{"nvdec": info}`` for a video NVDEC accepts, else None (also for a file that
    cannot be probed, which :func:`extract.workers.decode_item` then reports as a local
    run does)."""
    if clip.is_sequence:
        return None
    try:
        info = probe(clip.path)
    except DecodeError:
        return None
    return {"nvdec": info} if nvdec_accepts(info) else None


class ActorNvdec:
    """A CNN actor's NVDEC decoding: a thread pool and the node-local journal of its run."""

    def __init__(
        self,
        gpu_decode: GpuDecode,
        frames: int,
        size: int,
        threads: int,
        timeout: float,
        run_id: str,
    ) -> None:
        self.gpu_decode = gpu_decode
        self.frames = frames
        self.size = size
        self.threads = threads
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="nvdec")
        _remove_dead_runs(journal_root(), keep=run_id)
        self.folder = journal_root() / run_id
        journal = Journal(self.folder, JOURNAL_SUFFIX)
        self._own = journal.path
        self.journal = _LockedJournal(journal)
        self._dead: dict[Path, set[str]] = {}  # journals of dead actors → their suspects

    def suspects(self) -> set[str]:
        """Clips that dead actors of this run on this node were decoding with NVDEC."""
        for path in self.folder.glob(JOURNAL_GLOB):
            if path != self._own and path not in self._dead and not _alive(path):
                self._dead[path] = read_journal(path) or set()
        return set().union(*self._dead.values())

    def decode(self, clips: list[tuple[Clip, VideoInfo]]) -> dict[str, dict | None]:
        """Clip id → the clip's item (:func:`extract.hybrid.nvdec_item`), :data:`CPU_PASS`
        (NVDEC failed on it, or it is a suspect), or a failure item for a clip NVDEC held
        longer than the timeout."""
        suspects = self.suspects()
        out: dict[str, dict | None] = {
            c.clip_id: CPU_PASS for c, _ in clips if c.clip_id in suspects
        }
        if out:
            log.warning(
                "%d clip(s) were being decoded with NVDEC when an actor died: decoding them "
                "on the CPU",
                len(out),
            )
        started: dict[str, float] = {}

        def run(clip: Clip, info: VideoInfo) -> dict | None:
            started[clip.clip_id] = time.monotonic()
            self.journal.write("start", clip.clip_id)
            item = nvdec_item(clip, info, self.gpu_decode, self.frames, self.size)
            self.journal.write("end", clip.clip_id)
            return item

        jobs = {clip.clip_id: (clip, info) for clip, info in clips if clip.clip_id not in out}
        futures: dict[Future, str] = {self.pool.submit(run, *jobs[c]): c for c in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=WAKE_S)
            for future in done:
                out[futures[future]] = future.result()
            now = time.monotonic()
            late = {f for f in pending if now - started.get(futures[f], now) > self.timeout}
            for future in late:
                reason = f"NVDEC took longer than {self.timeout:g} s and was abandoned"
                log.warning("%s: %s", futures[future], reason)
                out[futures[future]] = {"ok": False, "reason": reason}
            if late:
                # the stuck threads stay with the old pool (clips it is decoding finish
                # there); the clips no thread has started move to a new pool
                pending -= late
                queued = {f for f in pending if f.cancel()}
                pending -= queued
                self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nvdec")
                for future in queued:
                    again = self.pool.submit(run, *jobs[futures[future]])
                    futures[again] = futures[future]
                    pending.add(again)
        return out


def _alive(path: Path) -> bool:
    """Whether the process that writes the journal ``path`` may be running: False when it
    is gone or a zombie; True for a journal of another host (a ``/tmp`` shared between
    machines: this node cannot tell)."""
    writer = journal_writer(path, JOURNAL_SUFFIX)
    if writer is None:
        return False
    host, pid = writer
    if host != socket.gethostname():
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _remove_dead_runs(root: Path, keep: str) -> None:
    """Remove the run folders of ``root`` (but ``keep``) whose journals all belong to dead
    processes and were last written more than :data:`_STALE_S` ago (an actor of a run that
    just started may not have written its journal yet; one that died may be restarting)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        with contextlib.suppress(OSError):
            journals = list(folder.glob(JOURNAL_GLOB))
            newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in journals])
            if folder.name == keep or time.time() - newest < _STALE_S:
                continue
            if not any(_alive(p) for p in journals):
                shutil.rmtree(folder)
