"""The HDF5 feature store: layout, crash-safe shard writing and streaming reads.

Layout of ``FEATURES.h5`` (N clips that succeeded, M that failed, T frames; every dataset
chunked and extendable along its first axis; documented in docs/store.md)::

    attrs: format="jungle-features", format_version=3, extraction (JSON: backbone, weights,
           weights_sha256, layers, frames, image_size, pooling, ...), config (JSON), versions
           (JSON), source (the folder clip ids are relative to), shard ("I/N" or ""), created
    clips/id            (N,)      str    path relative to the source root ('/' separators)
    clips/path          (N,)      str    absolute path at extraction time
    clips/size, clips/mtime_ns, clips/fingerprint   the file's identity (extract.identity)
    clips/frame_index   (N, T)    int32  source frame index of each slot
    clips/mask          (N, T)    bool   True for real frames, False for padding
    meta/<field>        (N,)      one dataset per field of :data:`META_FIELDS`
    features/<layer>    (N, T, C) float16, one dataset per tapped layer
    failed/id, failed/reason, failed/size, failed/mtime_ns, failed/fingerprint   (M,)

Rows are in the order clips were added. Writing (shards, assembly, extension, merging) is in
:mod:`extract.assemble`; crash safety is described there and in docs/store.md.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from extract.identity import UNKNOWN_IDENTITY, FileIdentity

FORMAT = "jungle-features"
FORMAT_VERSION = 3
STR = h5py.string_dtype("utf-8")

#: metadata fields stored per clip, with their HDF5 dtype.
META_FIELDS: dict[str, object] = {
    "file_size": np.int64,
    "width": np.int32,
    "height": np.int32,
    "fps": np.float64,
    "frame_count": np.int64,
    "duration": np.float64,
    "bitrate": np.int64,
    "codec": STR,
    "container": STR,
    "decoder": STR,
    "partial": np.bool_,
    # since format 3: photo sequences (extract.sequences); a video has media "video"
    "media": STR,
    "image_count": np.int32,
    "file_size_mean": np.float64,
    "time_span": np.float64,
    "camera_make": STR,
    "camera_model": STR,
    # since 2026-11-24: the CNN's arithmetic (float32, bfloat16, or float16 autocast on CUDA)
    "precision": STR,
}
#: what a store of format 2 (videos only, before sequences) holds in the fields it lacks.
META_DEFAULTS: dict[str, object] = {
    "media": "video",
    "image_count": 0,
    "file_size_mean": 0.0,
    "time_span": 0.0,
    "camera_make": "",
    "camera_model": "",
    "precision": "",  # not recorded by stores made before the field existed
}
#: metadata a photo sequence does not have: read as NaN on its rows (:meth:`FeatureStore.meta`).
VIDEO_ONLY_META: tuple[str, ...] = ("fps", "duration", "bitrate")
#: identity columns of every stored and failed clip (see :mod:`extract.identity`).
IDENTITY_FIELDS: dict[str, object] = {"size": np.int64, "mtime_ns": np.int64, "fingerprint": STR}
#: bytes read at once by streaming reads (a block of rows of every requested layer).
READ_BYTES = 64 << 20
#: unrequested bytes a streaming read skips rather than reads through.
GAP_BYTES = 1 << 20


class StoreError(RuntimeError):
    """A feature store cannot be read or extended (wrong format, other settings...)."""


@dataclass
class ClipFeatures:
    """Everything stored for one successfully processed clip."""

    clip_id: str
    path: str
    meta: dict[str, object]
    frame_index: np.ndarray  # (T,) int
    mask: np.ndarray  # (T,) bool
    features: dict[str, np.ndarray]  # layer -> (T, C) float16
    identity: FileIdentity = UNKNOWN_IDENTITY


@dataclass
class Failure:
    """A clip that could not be used, and why."""

    clip_id: str
    reason: str
    identity: FileIdentity = UNKNOWN_IDENTITY


@dataclass
class ShardBuffer:
    """Results waiting to be written as one shard."""

    ok: list[ClipFeatures] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (a rename, a new or removed file) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported here (e.g. some network filesystems)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """``tmp`` → ``path`` atomically, durable across a power cut (file, rename, folder)."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_attrs(f: h5py.File, attrs: dict) -> None:
    """Write the file attributes (format first; dicts and lists as JSON)."""
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for key, value in attrs.items():
        f.attrs[key] = (
            json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        )


def write_shard(path: Path, buffer: ShardBuffer, layers: Sequence[str], attrs: dict) -> None:
    """Write ``buffer`` as a complete (small) store at ``path``, atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    ok, failed = buffer.ok, buffer.failed
    t = len(ok[0].mask) if ok else int(attrs["extraction"]["frames"])
    with h5py.File(tmp, "w") as f:
        write_attrs(f, attrs)
        f.create_dataset("clips/id", data=[c.clip_id for c in ok], dtype=STR)
        f.create_dataset("clips/path", data=[c.path for c in ok], dtype=STR)
        for name, dtype in IDENTITY_FIELDS.items():
            values = [getattr(c.identity, name) for c in ok]
            f.create_dataset(f"clips/{name}", data=values, dtype=dtype)
        frame_index = np.array([c.frame_index for c in ok], dtype=np.int32).reshape(len(ok), t)
        f.create_dataset("clips/frame_index", data=frame_index)
        mask = np.array([c.mask for c in ok], dtype=bool).reshape(len(ok), t)
        f.create_dataset("clips/mask", data=mask)
        for name, dtype in META_FIELDS.items():
            values = [c.meta.get(name, META_DEFAULTS.get(name)) for c in ok]
            f.create_dataset(f"meta/{name}", data=values, dtype=dtype)
        f.create_group("features")
        for layer in layers if ok else []:
            data = np.stack([c.features[layer] for c in ok]).astype(np.float16)
            f.create_dataset(f"features/{layer}", data=data)
        f.create_dataset("failed/id", data=[x.clip_id for x in failed], dtype=STR)
        f.create_dataset("failed/reason", data=[x.reason for x in failed], dtype=STR)
        for name, dtype in IDENTITY_FIELDS.items():
            values = [getattr(x.identity, name) for x in failed]
            f.create_dataset(f"failed/{name}", data=values, dtype=dtype)
    replace_durably(tmp, path)


class ShardWriter:
    """Writes shards (:func:`write_shard`) on a background thread, in the order submitted,
    so that the clip loop goes on while a shard is written and fsynced. At most one shard
    waits (memory stays bounded); an error of a write is raised by the next :meth:`submit`
    or by :meth:`close`, and no later shard is written after it."""

    def __init__(self, layers: Sequence[str], attrs: dict) -> None:
        self.layers = list(layers)
        self.attrs = attrs
        self._jobs: queue.Queue[tuple[Path, ShardBuffer] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def submit(self, path: Path, buffer: ShardBuffer) -> None:
        """Queue ``buffer`` to be written at ``path`` (waits while another shard waits)."""
        self._raise()
        self._jobs.put((path, buffer))

    def close(self) -> None:
        """Wait until every submitted shard is written; raise the first write's error."""
        self._jobs.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    write_shard(job[0], job[1], self.layers, self.attrs)
                except BaseException as exc:  # handed to the clip loop's thread
                    self._error = exc


def meta_column(f: h5py.File, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows ``lo:hi`` of metadata field ``name`` (str fields as object arrays of str); a
    store of format 2 lacks the sequence fields, which read as :data:`META_DEFAULTS`."""
    path = f"meta/{name}"
    if path in f:
        ds = f[path]
        return ds.asstr()[lo:hi] if ds.dtype == object else ds[lo:hi]
    n = len(f["clips/id"])
    count = len(range(n)[lo:hi])
    dtype = object if META_FIELDS[name] is STR else META_FIELDS[name]
    return np.full(count, META_DEFAULTS[name], dtype=dtype)


def read_strings(f: h5py.File, name: str) -> list[str]:
    """A string dataset as a list of str (empty when absent)."""
    if name not in f:
        return []
    return list(f[name].asstr()[()]) if len(f[name]) else []


def extending_path(out: Path) -> Path:
    """The journal an in-place extension of ``out`` leaves while it runs."""
    return out.with_name(out.name + ".extending")


def read_extraction(path: Path) -> dict:
    """The ``extraction`` attribute (the settings that determine the features) of a store."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise StoreError(f"{path} is not a jungle feature store")
            return json.loads(f.attrs["extraction"])
    except OSError as exc:
        raise StoreError(f"{path} cannot be read as HDF5 ({exc})") from exc


def identity_table(f: h5py.File, group: str) -> pd.DataFrame:
    """``id, size, mtime_ns, fingerprint`` of the ``clips`` or ``failed`` rows of an open
    store (unknown identities read size -1, as in stores of format 1)."""
    ids = read_strings(f, f"{group}/id")
    cols: dict[str, object] = {"id": ids}
    for name, dtype in IDENTITY_FIELDS.items():
        path = f"{group}/{name}"
        if path in f and dtype is STR:
            cols[name] = read_strings(f, path)
        elif path in f:
            cols[name] = f[path][()]
        else:
            cols[name] = [getattr(UNKNOWN_IDENTITY, name)] * len(ids)
    return pd.DataFrame(cols)


def contiguous_runs(
    rows: np.ndarray, span: int, max_gap: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Cover sorted ``rows`` with ranges ``[lo, hi)`` of at most ``span`` rows.

    Yields ``(lo, hi, positions)``: ``positions`` index ``rows`` for the rows in the range.
    Each range starts at a requested row and ends after the last requested row it holds, so
    unrequested rows are read only between requested ones; a gap of more than ``max_gap``
    unrequested rows starts a new range (scattered rows are not read through long gaps).
    """
    rows = np.asarray(rows)
    n = len(rows)
    breaks = [0, n]
    if max_gap is not None and n > 1:
        breaks = [0, *(np.flatnonzero(np.diff(rows) > max_gap + 1) + 1).tolist(), n]
    for a, b in zip(breaks[:-1], breaks[1:], strict=True):
        i = a
        while i < b:
            lo = int(rows[i])
            j = a + int(np.searchsorted(rows[a:b], lo + span, side="left"))
            yield lo, int(rows[j - 1]) + 1, np.arange(i, j)
            i = j


class FeatureStore:
    """Read access to a finished feature store (the file stays closed between calls).

    Feature reads are streaming: contiguous row ranges of at most :data:`READ_BYTES` are
    read and the requested rows selected in memory (no per-row fancy indexing); a range
    ends where more than :data:`GAP_BYTES` of unrequested rows follow, so scattered rows
    cost one read each and dense ones one read per block.

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> x = store.features(["blocks.6", "features"])   # (N, T, 320 + 1280) float16
    >>> for rows, x in store.iter_features(["features"]):  # doctest: +SKIP
    ...     ...  # blocks of clips in store order
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if extending_path(self.path).exists():
            raise StoreError(
                f"{self.path} was being extended by a run that did not finish; run the same "
                "`jungle features` command again to repair it before reading it"
            )
        self.extraction = read_extraction(self.path)
        with h5py.File(self.path, "r") as f:
            self.ids: list[str] = read_strings(f, "clips/id")
            self.layers: list[str] = list(self.extraction["layers"])
            self.attrs: dict[str, object] = {k: f.attrs[k] for k in f.attrs}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def source(self) -> str:
        """The folder (or CSV's folder) the clip ids are relative to."""
        return str(self.attrs.get("source", ""))

    @property
    def format_version(self) -> int:
        """1 for stores without file identities, 2 since."""
        return int(self.attrs.get("format_version", 1))

    def mask(self) -> np.ndarray:
        """``(N, T)`` bool, True for real frames."""
        with h5py.File(self.path, "r") as f:
            return f["clips/mask"][()].astype(bool)

    def frame_index(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``(N, T)`` source frame index of each slot (of store rows ``rows``, sorted
        ascending, when given)."""
        with h5py.File(self.path, "r") as f:
            if rows is None:
                return f["clips/frame_index"][()]
            return f["clips/frame_index"][np.asarray(rows, dtype=np.int64)]

    def paths(self) -> list[str]:
        """Absolute paths of the clips at extraction time."""
        with h5py.File(self.path, "r") as f:
            return read_strings(f, "clips/path")

    def identities(self) -> pd.DataFrame:
        """``id, size, mtime_ns, fingerprint`` of every stored clip, in store order."""
        with h5py.File(self.path, "r") as f:
            return identity_table(f, "clips")

    def meta(self) -> pd.DataFrame:
        """The metadata table, one row per clip, indexed by clip id. On the rows of photo
        sequences (``media == "images"``) the video-only fields (:data:`VIDEO_ONLY_META`)
        are NaN: models see them as unknown, not as zero."""
        with h5py.File(self.path, "r") as f:
            cols = {name: meta_column(f, name) for name in META_FIELDS}
        table = pd.DataFrame(cols, index=pd.Index(self.ids, name="id"))
        images = (table["media"] == "images").to_numpy()
        if images.any():
            for name in VIDEO_ONLY_META:
                table[name] = table[name].astype(np.float64)
                table.loc[images, name] = np.nan
        return table

    def _datasets(self, f: h5py.File, layers: list[str]) -> list[h5py.Dataset]:
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise StoreError(f"{self.path}: no layer {unknown}; layers are {self.layers}")
        return [f[f"features/{name}"] for name in layers]

    def _span(self, dsets: list[h5py.Dataset]) -> tuple[int, int]:
        """Rows per read (one read of every layer under :data:`READ_BYTES`), and the gap of
        unrequested rows (about 1 MiB) past which a new read starts."""
        row = max(sum(int(np.prod(d.shape[1:])) * d.dtype.itemsize for d in dsets), 1)
        return max(1, READ_BYTES // row), max(1, GAP_BYTES // row)

    def features(
        self, layers: Iterable[str] | None = None, rows: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """``(n, T, C)`` float16 features of ``layers`` (default all), concatenated along C.

        ``rows`` selects clips (any order, duplicates allowed); the result is allocated
        once and filled by streaming reads.
        """
        layers = list(layers or self.layers)
        rows_arr = np.arange(len(self.ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows_arr) and (rows_arr.min() < 0 or rows_arr.max() >= len(self.ids)):
            raise StoreError(f"{self.path}: row out of range (the store has {len(self)} clips)")
        with h5py.File(self.path, "r") as f:
            dsets = self._datasets(f, layers)
            t = dsets[0].shape[1] if dsets else 0
            out = np.empty((len(rows_arr), t, sum(d.shape[2] for d in dsets)), dtype=np.float16)
            order = np.argsort(rows_arr, kind="stable")
            sorted_rows = rows_arr[order]
            for lo, hi, pos in contiguous_runs(sorted_rows, *self._span(dsets)):
                col = 0
                for d in dsets:
                    block = d[lo:hi]
                    out[order[pos], :, col : col + d.shape[2]] = block[sorted_rows[pos] - lo]
                    col += d.shape[2]
        return out

    def iter_features(
        self, layers: Iterable[str] | None = None, rows: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(rows, x)`` blocks of at most :data:`READ_BYTES`: ``rows`` are sorted
        store rows (all, or those of ``rows``), ``x`` their ``(n, T, C)`` features."""
        layers = list(layers or self.layers)
        wanted = np.arange(len(self.ids)) if rows is None else np.unique(np.asarray(rows))
        with h5py.File(self.path, "r") as f:
            dsets = self._datasets(f, layers)
            for lo, hi, pos in contiguous_runs(wanted, *self._span(dsets)):
                picked = wanted[pos] - lo
                x = np.concatenate([d[lo:hi][picked] for d in dsets], axis=2)
                yield wanted[pos], x.astype(np.float16, copy=False)

    def failed(self) -> pd.DataFrame:
        """Clips that could not be used: columns ``id``, ``reason``."""
        with h5py.File(self.path, "r") as f:
            return pd.DataFrame(
                {"id": read_strings(f, "failed/id"), "reason": read_strings(f, "failed/reason")}
            )
