"""The HDF5 feature store: layout, crash-safe shard writing, assembly and reading.

Layout of ``FEATURES.h5`` (N clips that succeeded, T frames, documented in docs/store.md)::

    attrs: format="jungle-features", format_version, extraction (JSON: backbone, weights,
           weights_sha256, layers, frames, image_size, pooling), config (JSON), versions
           (JSON: package versions), created
    clips/id            (N,)      str    path relative to the source root ('/' separators)
    clips/path          (N,)      str    absolute path at extraction time
    clips/frame_index   (N, T)    int32  source frame index of each slot
    clips/mask          (N, T)    bool   True for real frames, False for padding
    meta/<field>        (N,)      one dataset per field of :data:`META_FIELDS`
    features/<layer>    (N, T, C) float16, one dataset per tapped layer
    failed/id, failed/reason  (M,) str

Crash safety: results are written in small *shard* files under ``FEATURES.h5.parts/``, each
written to a temporary name, closed, then renamed (an atomic step), so a kill at any moment
leaves only complete shards. When every clip is done the shards (and the previous store, if
any) are assembled into ``FEATURES.h5.tmp``, which is renamed over ``FEATURES.h5``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

FORMAT = "jungle-features"
FORMAT_VERSION = 1
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
}


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


@dataclass
class Failure:
    """A clip that could not be used, and why."""

    clip_id: str
    reason: str


@dataclass
class ShardBuffer:
    """Results waiting to be written as one shard."""

    ok: list[ClipFeatures] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed)


def write_shard(path: Path, buffer: ShardBuffer, layers: Sequence[str], attrs: dict) -> None:
    """Write ``buffer`` as a complete store at ``path``, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        _write_attrs(f, attrs)
        ok = buffer.ok
        f.create_dataset("clips/id", data=[c.clip_id for c in ok], dtype=STR)
        f.create_dataset("clips/path", data=[c.path for c in ok], dtype=STR)
        t = len(ok[0].mask) if ok else int(attrs["extraction"]["frames"])
        f.create_dataset(
            "clips/frame_index",
            data=np.array([c.frame_index for c in ok], dtype=np.int32).reshape(len(ok), t),
        )
        f.create_dataset(
            "clips/mask", data=np.array([c.mask for c in ok], dtype=bool).reshape(len(ok), t)
        )
        for name, dtype in META_FIELDS.items():
            f.create_dataset(f"meta/{name}", data=[c.meta[name] for c in ok], dtype=dtype)
        f.create_group("features")
        for layer in layers if ok else []:
            data = np.stack([c.features[layer] for c in ok]).astype(np.float16)
            f.create_dataset(f"features/{layer}", data=data)
        f.create_dataset("failed/id", data=[x.clip_id for x in buffer.failed], dtype=STR)
        f.create_dataset("failed/reason", data=[x.reason for x in buffer.failed], dtype=STR)
    _fsync(tmp)
    os.replace(tmp, path)


def _write_attrs(f: h5py.File, attrs: dict) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for key, value in attrs.items():
        f.attrs[key] = (
            json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_ids(f: h5py.File, group: str) -> list[str]:
    return [s.decode("utf-8") for s in f[f"{group}/id"][()]] if group in f else []


def done_ids(path: Path) -> tuple[set[str], set[str]]:
    """Clip ids already in a store or shard: ``(ok ids, failed ids)``."""
    with h5py.File(path, "r") as f:
        return set(_read_ids(f, "clips")), set(_read_ids(f, "failed"))


def read_extraction(path: Path) -> dict:
    """The ``extraction`` attribute (the settings that determine the features) of a store."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise StoreError(f"{path} is not a jungle feature store")
            return json.loads(f.attrs["extraction"])
    except OSError as exc:
        raise StoreError(f"{path} cannot be read as HDF5 ({exc})") from exc


def assemble(
    out: Path,
    sources: Sequence[Path],
    order: Sequence[str],
    layers: Sequence[str],
    attrs: dict,
    block: int = 256,
) -> tuple[int, int]:
    """Merge stores/shards ``sources`` into ``out`` (atomically), clips in ``order``.

    A clip present in several sources is taken from the last one. Clips of the sources that
    ``order`` does not name are appended in their source order (nothing already extracted
    is dropped). Memory stays bounded: rows are copied ``block`` at a time.

    Returns:
        ``(clips written, failures written)``.
    """
    where: dict[str, tuple[int, int]] = {}
    fail_where: dict[str, str] = {}
    handles = [h5py.File(p, "r") for p in sources]
    try:
        for s, f in enumerate(handles):
            for row, cid in enumerate(_read_ids(f, "clips")):
                where[cid] = (s, row)
                fail_where.pop(cid, None)
            reasons = [r.decode("utf-8") for r in f["failed/reason"][()]]
            for cid, reason in zip(_read_ids(f, "failed"), reasons, strict=True):
                fail_where[cid] = reason
                where.pop(cid, None)
        ids = [c for c in order if c in where]
        ids += [c for c in where if c not in set(ids)]
        failed = [c for c in order if c in fail_where]
        failed += [c for c in fail_where if c not in set(failed)]
        tmp = out.with_name(out.name + ".tmp")
        with h5py.File(tmp, "w") as dst:
            _write_attrs(dst, attrs)
            _copy_rows(handles, dst, ids, where, layers, block)
            dst.create_dataset("failed/id", data=failed, dtype=STR)
            dst.create_dataset("failed/reason", data=[fail_where[c] for c in failed], dtype=STR)
    finally:
        for f in handles:
            f.close()
    _fsync(tmp)
    os.replace(tmp, out)
    return len(ids), len(failed)


def _copy_rows(
    handles: list[h5py.File],
    dst: h5py.File,
    ids: list[str],
    where: dict[str, tuple[int, int]],
    layers: Sequence[str],
    block: int,
) -> None:
    n = len(ids)
    names = ["clips/id", "clips/path", "clips/frame_index", "clips/mask"]
    names += [f"meta/{m}" for m in META_FIELDS] + [f"features/{layer}" for layer in layers]
    ref = next((h for h in handles if "clips/mask" in h and len(h["clips/mask"])), None)
    if ref is None:  # no clip succeeded: empty datasets of the right kinds
        t = int(json.loads(dst.attrs["extraction"])["frames"])
        dst.create_dataset("clips/id", shape=(0,), dtype=STR)
        dst.create_dataset("clips/path", shape=(0,), dtype=STR)
        dst.create_dataset("clips/frame_index", shape=(0, t), dtype=np.int32)
        dst.create_dataset("clips/mask", shape=(0, t), dtype=bool)
        for name, dtype in META_FIELDS.items():
            dst.create_dataset(f"meta/{name}", shape=(0,), dtype=dtype)
        dst.create_group("features")
        return
    for name in names:
        ds = ref[name]
        chunks = (1, *ds.shape[1:]) if name.startswith("features/") else None
        dst.create_dataset(name, shape=(n, *ds.shape[1:]), dtype=ds.dtype, chunks=chunks)
    for start in range(0, n, block):
        part = ids[start : start + block]
        src = np.array([where[c] for c in part])
        for name in names:
            rows_out = []
            for s in np.unique(src[:, 0]):
                sel = np.flatnonzero(src[:, 0] == s)
                rows = src[sel, 1]
                perm = np.argsort(rows)
                data = handles[s][name][rows[perm].tolist()]
                placed = np.empty_like(data)
                placed[perm] = data
                rows_out.append((sel, placed))
            first = rows_out[0][1]
            buf = np.empty((len(part), *first.shape[1:]), dtype=first.dtype)
            for sel, data in rows_out:
                buf[sel] = data
            dst[name][start : start + len(part)] = buf


class FeatureStore:
    """Read access to a finished feature store (the file stays closed between calls).

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> x = store.features(["blocks.6", "features"])   # (N, T, 320 + 1280) float16
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.extraction = read_extraction(self.path)
        with h5py.File(self.path, "r") as f:
            self.ids: list[str] = _read_ids(f, "clips")
            self.layers: list[str] = list(self.extraction["layers"])
            self.attrs: dict[str, object] = {k: f.attrs[k] for k in f.attrs}

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self) -> np.ndarray:
        """``(N, T)`` bool, True for real frames."""
        with h5py.File(self.path, "r") as f:
            return f["clips/mask"][()].astype(bool)

    def frame_index(self) -> np.ndarray:
        """``(N, T)`` source frame index of each slot."""
        with h5py.File(self.path, "r") as f:
            return f["clips/frame_index"][()]

    def paths(self) -> list[str]:
        """Absolute paths of the clips at extraction time."""
        with h5py.File(self.path, "r") as f:
            return [s.decode("utf-8") for s in f["clips/path"][()]]

    def meta(self) -> pd.DataFrame:
        """The metadata table, one row per clip, indexed by clip id."""
        with h5py.File(self.path, "r") as f:
            cols = {}
            for name in META_FIELDS:
                data = f[f"meta/{name}"][()]
                cols[name] = [v.decode("utf-8") for v in data] if data.dtype == object else data
        return pd.DataFrame(cols, index=pd.Index(self.ids, name="id"))

    def features(
        self, layers: Iterable[str] | None = None, rows: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """``(N, T, C)`` float16 features of ``layers`` (default all), concatenated along C.

        ``rows`` selects clips (any order); the result is allocated once.
        """
        layers = list(layers or self.layers)
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise StoreError(f"{self.path}: no layer {unknown}; layers are {self.layers}")
        with h5py.File(self.path, "r") as f:
            dsets = [f[f"features/{name}"] for name in layers]
            n = len(self.ids) if rows is None else len(rows)
            t = dsets[0].shape[1] if dsets else 0
            out = np.empty((n, t, sum(d.shape[2] for d in dsets)), dtype=np.float16)
            col = 0
            for d in dsets:
                width = d.shape[2]
                if rows is None:
                    d.read_direct(out, dest_sel=np.s_[:, :, col : col + width])
                else:
                    rows_arr = np.asarray(rows)
                    perm = np.argsort(rows_arr)
                    out[perm, :, col : col + width] = d[rows_arr[perm].tolist()]
                col += width
        return out

    def failed(self) -> pd.DataFrame:
        """Clips that could not be used: columns ``id``, ``reason``."""
        with h5py.File(self.path, "r") as f:
            return pd.DataFrame(
                {
                    "id": _read_ids(f, "failed"),
                    "reason": [r.decode("utf-8") for r in f["failed/reason"][()]],
                }
            )
