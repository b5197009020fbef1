"""The decoders' journal of clips in flight: what makes reruns crash-proof.

A pool of decoders (:mod:`extract.workers`, the NVDEC threads of :mod:`extract.hybrid`, the
NVDEC actors of :mod:`extract.ray_nvdec`) appends ``start<TAB>clip_id`` to its journal file
``inflight-<host>-<pid>[suffix].log`` before a clip is handed to a decoder and
``end<TAB>clip_id`` once the clip's item is back (flushed, not fsynced; tabs, newlines and
backslashes in ids are backslash-escaped), and removes the file when it finishes or is
interrupted. A journal file that outlives its run names the clips that were in flight when
the process died (:func:`suspects`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

#: the names of journal files (any host, pid and suffix).
JOURNAL_GLOB = "inflight-*.log"


def suspects(journal_dir: Path, *, include_own: bool = False) -> set[str]:
    """Clip ids that runs which died were decoding: started but not ended in the journal
    files of ``journal_dir`` written by other processes (with ``include_own``, also a file
    named like this process's, which is stale when no pool of this process is running).

    The caller must hold the lock that makes it the only user of ``journal_dir``, so that
    every other journal file is one of a dead run.
    """
    return _read_journals(journal_dir, include_own)[0]


def journal_path(journal_dir: Path) -> Path:
    """This process's journal file in ``journal_dir``."""
    return Path(journal_dir) / f"inflight-{socket.gethostname()}-{os.getpid()}.log"


def journal_writer(path: Path, suffix: str = "") -> tuple[str, int] | None:
    """The host and pid in the name of a journal file (:func:`journal_path` + ``suffix``),
    or None for another name."""
    stem = path.name.removeprefix("inflight-").removesuffix(".log").removesuffix(suffix)
    host, _, pid = stem.rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def _escape(clip_id: str) -> str:
    return (
        clip_id.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _unescape(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def _read_journals(journal_dir: Path, include_own: bool) -> tuple[set[str], list[Path]]:
    """Started-but-not-ended clip ids of the journal files in ``journal_dir`` (all but this
    process's unless ``include_own``), and the files read."""
    own = journal_path(journal_dir)
    found: set[str] = set()
    read: list[Path] = []
    if not Path(journal_dir).is_dir():
        return found, read
    for path in sorted(Path(journal_dir).glob(JOURNAL_GLOB)):
        if path == own and not include_own:
            continue
        unfinished = read_journal(path)
        if unfinished is not None:
            found |= unfinished
            read.append(path)
    return found, read


def read_journal(path: Path) -> set[str] | None:
    """The clip ids started but not ended in one journal file, or None where it cannot be
    read (logged)."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        log.warning("cannot read decoder journal %s: %s", path, exc)
        return None
    started: set[str] = set()
    ended: set[str] = set()
    # only whole lines: a line cut off when the process died was not acted upon yet
    # (a cut ``end`` line leaves its clip suspect, which is safe)
    for line in text.split("\n")[:-1]:
        kind, sep, escaped = line.partition("\t")
        if not sep:
            continue
        if kind == "start":
            started.add(_unescape(escaped))
        elif kind == "end":
            ended.add(_unescape(escaped))
    return started - ended


def take_over_journals(journal_dir: Path, suffix: str = "") -> tuple[Journal, set[str]]:
    """Start this run's journal (file name + ``suffix``) in ``journal_dir``: the clips that
    runs which died were decoding (:func:`suspects`, this process's stale file included)
    are written to it as started, so they stay suspect until this run ends cleanly, and the
    dead runs' files are removed. Returns the journal and those clip ids."""
    dead, files = _read_journals(journal_dir, include_own=True)
    journal = Journal(journal_dir, suffix)
    for clip_id in sorted(dead):
        journal.write("start", clip_id)
    for path in files:
        if path != journal.path:
            path.unlink(missing_ok=True)
    return journal, dead


class Journal:
    """This pool's in-flight journal: one line per event, flushed (not fsynced) at once."""

    def __init__(self, journal_dir: Path, suffix: str = "") -> None:
        journal_dir.mkdir(parents=True, exist_ok=True)
        own = journal_path(journal_dir)
        self.path = own.with_name(own.stem + suffix + own.suffix)
        self._fh = self.path.open("w", encoding="utf-8", errors="surrogateescape", newline="\n")

    def write(self, kind: str, clip_id: str) -> None:
        self._fh.write(f"{kind}\t{_escape(clip_id)}\n")
        self._fh.flush()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        self.path.unlink(missing_ok=True)
