"""NVDEC in one dedicated decoder process (``nvdec_host: process``), the alternative to the
NVDEC threads in the jungle process that :mod:`extract.hybrid` uses by default.

Issue 11 asks for both, measured against each other: NVDEC threads in the main process
(a crash in NVDEC kills the run; the journal makes the rerun decode the clip on the CPU) or
NVDEC in a dedicated process that hands its frames over through CUDA IPC (a crash kills
that process only). :class:`GpuProcess` is the second. It has the interface of
:class:`extract.hybrid._GpuThreads` (``take``, ``collect``, ``busy``, ``close``,
``wake_fd``, ``lock``, ``abandoned``), so :func:`extract.hybrid.decode_hybrid` schedules
either the same way: both take clips from the one shared queue the CPU decoder processes
also take from.

* The process is a fresh interpreter (``subprocess``, as the CPU decoders of
  :mod:`extract.workers`) that initialises CUDA through torch, makes the NVDEC decode
  function (:func:`extract.nvdec.gpu_decoder`) and runs ``threads`` threads; each probes a
  clip, applies the gate (:func:`extract.nvdec.nvdec_accepts`) and decodes it
  (:func:`extract.hybrid.nvdec_item`). It is sent at most ``2 x threads`` clips at a time.
* Items come back over one pipe, pickled by :mod:`multiprocessing`'s pickler, into which
  ``torch.multiprocessing`` registers CUDA IPC for CUDA tensors: the frames stay on the GPU
  and only a handle crosses the pipe. The main process copies each clip's frames into its
  own memory at once (a device-to-device copy, on a side stream that the current stream
  then waits for, since releasing a shared tensor synchronises the stream it is released
  on) and drops the shared tensor, so frames never depend on the decoder process staying
  alive. A reply that cannot be read or copied is handled like a death (below) or sends
  its clip to the CPU decoders.
* A clip the gate refuses, or NVDEC fails on, comes back as None and goes to the CPU
  decoders. When the process dies (a crash inside NVDEC), every clip it held goes to the CPU
  decoders, whose crash rule applies (a clip that kills a CPU decoder twice is a failed
  row), and a new process is started; after :data:`MAX_RESTARTS` deaths NVDEC is given up
  for the run (a warning) and the rest of its queue goes to the CPU. A clip that one of its
  threads has been decoding for longer than ``timeout`` (timed from when the thread took
  it) becomes a failed row; the process is killed (its other clips go back to the front of
  the queue) and started again.
* No journal is needed for NVDEC: nothing NVDEC does can kill the jungle process. The
  decoder process dies with the jungle process (``PR_SET_PDEATHSIG``).

The cost: a second CUDA context next to the CNN's, a pickled item per clip, and the copy of
each clip's frames on the GPU. Not checked without a GPU (none lent yet): the CUDA IPC path
itself (the CPU tests send numpy frames), and whether torch's IPC reference-count files in
``/dev/shm`` outlive a decoder process that was killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, Pipe

from extract.discover import Clip
from extract.workers import (
    _EXIT_GRACE_S,
    _START_TIMEOUT_S,
    _death_reason,
    _die_with_parent,
    _test_hooks,
    start_interpreter,
)

log = logging.getLogger(__name__)

#: deaths of the decoder process after which NVDEC is given up for the run.
MAX_RESTARTS = 3
#: clips sent to the decoder process per thread (one decoding, one waiting).
AHEAD_PER_THREAD = 2


def _serve(argv: list[str]) -> None:
    """Entry point of the decoder process: ``argv`` is the fd of its end of the pipe, the
    main process's pid, device, frames, size and threads."""
    fd, parent, device, frames, size, threads = argv
    _die_with_parent(int(parent))
    conn = Connection(int(fd))
    import torch
    import torch.multiprocessing  # noqa: F401  (registers CUDA IPC in the pickler)

    from extract.hybrid import _gpu_item, _LockedJournal
    from extract.nvdec import gpu_decoder, nvdec_accepts

    gpu_decode = gpu_decoder(torch.device(device))
    frames_, size_ = int(frames), int(size)
    no_journal = _LockedJournal(None)  # nothing here can kill the jungle process
    tasks: queue.Queue[tuple[int, Clip] | None] = queue.Queue()
    send = threading.Lock()

    def reply(message: tuple) -> None:
        with send:
            try:
                conn.send(message)
            except OSError:
                return  # the main process is gone
            except Exception as exc:  # cannot be pickled or shared: the CPU path takes it
                log.warning(
                    "cannot hand clip %s over (%r); it is decoded on the CPU", message[0], exc
                )
                with contextlib.suppress(OSError):
                    conn.send((message[0], None))

    def work() -> None:
        while (task := tasks.get()) is not None:
            index, clip = task
            reply(("start", index))  # its clip_timeout runs from now
            _test_hooks(clip.clip_id)  # the tests' crash and hang hooks (never set otherwise)
            try:
                item = _gpu_item(clip, gpu_decode, nvdec_accepts, frames_, size_, no_journal)
            except Exception as exc:  # a bug must not lose the clip: the CPU path takes it
                log.warning("%s: NVDEC process error %r; decoding it on the CPU", clip.path, exc)
                item = None
            reply((index, item))

    workers = [threading.Thread(target=work, daemon=True) for _ in range(int(threads))]
    for w in workers:
        w.start()
    reply(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        tasks.put(task)
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.join(_EXIT_GRACE_S)


def _owned(item: dict | None) -> dict | None:
    """``item`` with CUDA frames received through IPC copied into this process's memory (the
    shared tensor is released when the caller drops the received item)."""
    if item is None or not item.get("ok"):
        return item
    frames = item.get("frames")
    if getattr(frames, "is_cuda", False):
        return item | {"frames": frames.clone()}  # type: ignore[union-attr]
    return item


class GpuProcess:
    """The NVDEC decoder process, scheduled like :class:`extract.hybrid._GpuThreads`
    (module docstring). ``device``: the CUDA device (``cuda:N``) it decodes on."""

    def __init__(
        self,
        clips: Sequence[Clip],
        shared: deque[int],
        device: str,
        frames: int,
        size: int,
        threads: int,
        timeout: float,
    ) -> None:
        import torch
        import torch.multiprocessing  # noqa: F401  (CUDA IPC in the pickler, to receive)

        self._torch = torch
        #: the stream that received frames are copied on (None: not a CUDA device)
        self._stream = (
            torch.cuda.Stream(torch.device(device))
            if device.startswith("cuda") and torch.cuda.is_available()
            else None
        )
        self.clips = clips
        self.shared = shared
        self.settings = [device, str(frames), str(size), str(threads)]
        self.ahead = AHEAD_PER_THREAD * threads
        self.timeout = timeout
        self.lock = threading.Lock()  # guards shared (the same interface as the threads)
        self.deaths = 0
        self.given_up = False
        #: clips sent to the process → when one of its threads took it (None: not yet)
        self._inflight: dict[int, float | None] = {}
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._since = 0.0
        self._start()

    # --- the process ---------------------------------------------------------------------

    def _start(self) -> None:
        parent, child = Pipe(duplex=True)
        try:
            args = [str(child.fileno()), str(os.getpid()), *self.settings]
            self._process = start_interpreter(__name__, "_serve", args, (child.fileno(),))
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._conn = parent
        self._ready = False
        self._since = time.monotonic()
        log.debug("NVDEC decoder process %d started", self._process.pid)

    def _stop(self) -> int | None:
        """Kill and reap the process; its exit code."""
        if self._process is None:
            return None
        self._process.kill()
        code = self._process.wait()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
        return code

    @property
    def wake_fd(self) -> int | None:
        """Readable when the process sends something or dies (None once given up)."""
        return self._conn.fileno() if self._conn is not None else None

    # --- the interface of the NVDEC threads ------------------------------------------------

    def take(self) -> int | None:
        """The next clip of the shared queue for a decoder process, or None."""
        with self.lock:
            return self.shared.popleft() if self.shared else None

    def collect(self) -> list[tuple[int, dict | None]]:
        """What the process finished since the last call (None: for the CPU decoders), the
        clips of a process that died (None each), a failure for a clip it has decoded for
        longer than ``timeout``; then send it more clips."""
        out: list[tuple[int, dict | None]] = []
        if self._process is not None:
            if self._process.poll() is not None:
                # what it sent before dying stays unread: its CUDA memory died with it
                self._died(out)
            else:
                try:
                    self._receive(out)
                except (EOFError, OSError):
                    self._died(out)
                except Exception as exc:  # a reply that cannot be rebuilt, as a death
                    self._died(out, f"its reply could not be read: {exc!r}")
                else:
                    self._late(out)
        if self._process is not None and self._ready:
            self._feed()
        return out

    def _receive(self, out: list[tuple[int, dict | None]]) -> None:
        """Read every message waiting in the pipe. CUDA frames are copied and the shared
        tensors released on a side stream (releasing one synchronises the current stream),
        which the current stream then waits for on the GPU."""
        assert self._conn is not None
        while self._conn.poll():
            with self._on_side_stream():
                head, payload = self._conn.recv()
                if head == "ready":
                    self._ready = True
                    continue
                if head == "start":  # a thread took the clip: its timeout runs from now
                    if payload in self._inflight:
                        self._inflight[payload] = time.monotonic()
                    continue
                self._inflight.pop(head, None)
                try:
                    item = _owned(payload)
                except Exception as exc:  # CUDA out of memory for the copy, ...
                    log.warning(
                        "%s: cannot copy NVDEC's frames (%r); decoding it on the CPU",
                        self.clips[head].path,
                        exc,
                    )
                    item = None
                del payload  # releases the shared tensor, on the side stream
            if item is not None and self._stream is not None and item.get("ok"):
                current = self._torch.cuda.current_stream(self._stream.device)
                current.wait_stream(self._stream)
                item["frames"].record_stream(current)
            out.append((head, item))

    def _on_side_stream(self) -> contextlib.AbstractContextManager:
        if self._stream is None:
            return contextlib.nullcontext()
        return self._torch.cuda.stream(self._stream)

    def _died(self, out: list[tuple[int, dict | None]], why: str = "") -> None:
        """The process died (or, with ``why``, is killed now): every clip it held goes to
        the CPU decoders."""
        assert self._process is not None
        if why:
            self._stop()
        else:
            try:
                why = _death_reason(self._process.wait(_EXIT_GRACE_S)).replace("decoder ", "", 1)
            except subprocess.TimeoutExpired:
                why = "its pipe closed"
            self._stop()
        self.deaths += 1
        # every clip it held, taken by a thread or not (what it sent last is not read)
        held = sorted(self._inflight)
        self._inflight.clear()
        if not self._ready:
            why = f"it did not start: {why}"
        log.warning(
            "the NVDEC decoder process died (%s) holding %d clip(s); they are decoded on the CPU",
            why,
            len(held),
        )
        out += [(index, None) for index in held]
        if self.deaths >= MAX_RESTARTS:
            self._give_up(out)
        else:
            self._start()

    def _late(self, out: list[tuple[int, dict | None]]) -> None:
        now = time.monotonic()
        if not self._ready:
            if now - self._since > _START_TIMEOUT_S:
                log.warning("the NVDEC decoder process did not start in %g s", _START_TIMEOUT_S)
                self._stop()
                self.deaths += 1
                if self.deaths >= MAX_RESTARTS:
                    self._give_up(out)
                else:
                    self._start()
            return
        late = [
            index
            for index, since in self._inflight.items()
            if since is not None and now - since > self.timeout
        ]
        if not late:
            return
        reason = f"NVDEC took longer than {self.timeout:g} s and was abandoned"
        for index in late:
            log.warning("%s: %s", self.clips[index].path, reason)
            out.append((index, {"ok": False, "reason": reason}))
            del self._inflight[index]
        # the process is stuck: its other clips go back to the front of the queue
        with self.lock:
            self.shared.extendleft(sorted(self._inflight, reverse=True))
        self._inflight.clear()
        self._stop()
        self._start()

    def _give_up(self, out: list[tuple[int, dict | None]]) -> None:
        log.warning(
            "the NVDEC decoder process died %d times: decoding the rest on the CPU", self.deaths
        )
        self.given_up = True
        with self.lock:
            out += [(index, None) for index in self.shared]
            self.shared.clear()

    def _feed(self) -> None:
        assert self._conn is not None
        while len(self._inflight) < self.ahead:
            index = self.take()
            if index is None:
                return
            try:
                self._conn.send((index, self.clips[index]))
            except OSError:  # it died: collect() hands its clips to the CPU next time
                with self.lock:
                    self.shared.appendleft(index)
                return
            self._inflight[index] = None

    @property
    def abandoned(self) -> bool:
        """Always False: no clip in this process's journal depends on NVDEC."""
        return False

    def busy(self) -> bool:
        """Whether the process holds or will take a clip."""
        with self.lock:
            queued = bool(self.shared)
        return bool(self._inflight) or (queued and not self.given_up)

    def close(self) -> bool:
        """Stop the process; True (no clip of the journal is left in it)."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
        if self._process is not None:
            try:
                self._process.wait(_EXIT_GRACE_S if self._ready and not self._inflight else 0.1)
            except subprocess.TimeoutExpired:
                pass
        self._stop()
        return True
