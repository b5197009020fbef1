"""One writer per store: a lock file beside it naming the host and process that holds it.

``F.h5.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on
NFSv3+), so of two runs started at once exactly one gets it. It holds a JSON record of the
owner (host, pid, process start time, command, since); a second run stops at once with a
message naming that owner. A lock left by a process that died (``kill -9``, a crash, a power
cut) is *stale*: on the same host the owner pid no longer runs, or runs another program
(pid reuse, told apart by its start time); such a lock is taken over with a warning. A lock
held from another host cannot be checked from here: the message says how to remove it when
that run is known to be gone (job arrays share filesystems, so this is the safe default).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from extract.store import StoreError

log = logging.getLogger(__name__)


class LockError(StoreError):
    """Another run holds the lock; the message names it and says what to do."""


def lock_path(out: Path) -> Path:
    """The lock file of the store ``out``."""
    return out.with_name(out.name + ".lock")


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` (field 22 of /proc/PID/stat), None when it does not run."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""  # runs, start time unknown (no /proc)
    return text[text.rindex(")") + 2 :].split()[19]


def _owner_record() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_time(os.getpid()) or "",
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv)[:300],
    }


def _is_stale(owner: dict[str, object]) -> bool:
    """True when the owner is known to be gone (only decidable on the same host)."""
    if owner.get("host") != socket.gethostname():
        return False
    running = _start_time(int(owner.get("pid", -1)))
    if running is None:
        return True
    return bool(owner.get("start")) and bool(running) and running != owner.get("start")


class StoreLock:
    """Context manager holding ``F.h5.lock`` while a run writes ``F.h5``.

    >>> with StoreLock(Path("features.h5")):   # doctest: +SKIP
    ...     ...  # extend the store

    Raises:
        LockError: on entering, when another live run holds the lock.
    """

    def __init__(self, out: Path) -> None:
        self.path = lock_path(out)
        self._held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock file, taking over a stale one (at most one retry)."""
        record = json.dumps(_owner_record()).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                if owner is None or owner.get("vanished") or _is_stale(owner):
                    self._take_over(owner)
                    continue
                raise LockError(self._busy_message(owner)) from None
            with os.fdopen(fd, "wb") as fh:
                fh.write(record)
                fh.flush()
                os.fsync(fh.fileno())
            self._held = True
            return
        raise LockError(f"could not take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self._held:
            self._held = False
            owner = self._read_owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)

    def _read_owner(self) -> dict[str, object] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"host": "", "pid": -1, "vanished": True}
        except (OSError, ValueError):
            return None  # half-written by a process that died while creating it

    def _take_over(self, owner: dict[str, object] | None) -> None:
        if owner is not None and owner.get("vanished"):
            return  # released meanwhile: just try again
        # rename first: of two runs taking over at once only one rename succeeds
        stale = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, stale)
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)
        who = "an unreadable lock" if owner is None else _describe(owner)
        log.warning("took over %s: %s is no longer running", self.path.name, who)

    def _busy_message(self, owner: dict[str, object]) -> str:
        target = self.path.name.removesuffix(".lock")
        text = f"another run is writing {target}: {_describe(owner)}."
        if owner.get("host") != socket.gethostname():
            text += f" If that run is gone (its machine crashed), delete {self.path} and run again."
        else:
            text += " Wait for it to finish, or stop it, then run again."
        return text


def _describe(owner: dict[str, object]) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('since', '?')}"
        f" ({owner.get('command', '')})"
    )
