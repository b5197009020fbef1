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
  (format of :mod:`extract.workers`) in ``<tmp>/jungle-nvdec-<uid>/<run id>/`` on its
  node. An actor sends the clips that a dead actor of the same run on the same node was
  decoding (its suspects) back to the driver for the CPU pass, where the local crash rule
  applies (one retry in a fresh process, then a failed row). A batch retried on another
  node may crash NVDEC once there too: at most once per GPU node.

Run folders whose journals all belong to dead processes are removed when an actor starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from extract.discover import Clip
from extract.hybrid import JOURNAL_SUFFIX, _LockedJournal, nvdec_item
from extract.nvdec import GpuDecode, nvdec_accepts
from extract.probe import DecodeError, VideoInfo, probe
from extract.workers import WAKE_S, _Journal, read_journal

log = logging.getLogger(__name__)

#: a clip sent back to the driver for the CPU pass (NVDEC failed, or a suspect).
CPU_PASS = None
#: seconds after which a run folder of dead actors' journals may be removed.
_STALE_S = 60.0


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
        journal = _Journal(self.folder, JOURNAL_SUFFIX)
        self._own = journal.path
        self.journal = _LockedJournal(journal)
        self._dead: dict[Path, set[str]] = {}  # journals of dead actors → their suspects

    def suspects(self) -> set[str]:
        """Clips that dead actors of this run on this node were decoding with NVDEC."""
        for path in self.folder.glob("inflight-*.log"):
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

        futures: dict[Future, str] = {
            self.pool.submit(run, clip, info): clip.clip_id
            for clip, info in clips
            if clip.clip_id not in out
        }
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
            if late:  # the stuck threads stay with the old pool; its queued clips run there
                pending -= late
                self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nvdec")
        return out


def _pid(path: Path) -> int | None:
    """The pid in a journal's name (``inflight-<host>-<pid>-nvdec.log``)."""
    stem = path.name.removesuffix(".log").removesuffix(JOURNAL_SUFFIX)
    pid = stem.rpartition("-")[2]
    return int(pid) if pid.isdigit() else None


def _alive(path: Path) -> bool:
    """Whether the process that writes the journal ``path`` (on this node) is running."""
    pid = _pid(path)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        return True
    return True


def _remove_dead_runs(root: Path, keep: str) -> None:
    """Remove the run folders of ``root`` (but ``keep``) whose journals all belong to dead
    processes (and older than :data:`_STALE_S`: an actor of a run that just started may not
    have written its journal yet)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        with contextlib.suppress(OSError):
            if folder.name == keep or time.time() - folder.stat().st_mtime < _STALE_S:
                continue
            if not any(_alive(p) for p in folder.glob("inflight-*.log")):
                with contextlib.suppress(OSError):
                    shutil.rmtree(folder)
