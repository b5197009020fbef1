"""Level-1 inputs: features of one or several stores aligned per clip, metadata, labels.

Features ``(N, T, C)`` float16 (the layers chosen from each store concatenated along C, in
config order) are reached through a :class:`FeatureReader`: ``read(rows)`` returns the
features of a sorted block of clips, either from one array held in memory
(:class:`ArrayFeatures`) or streamed from the HDF5 stores (:class:`StoreFeatures`, reading
contiguous row ranges through :meth:`extract.store.FeatureStore.features`). Everything that
touches features (normalisation moments, training, prediction) goes through a reader, block
by block, so with a streaming reader memory stays flat in the number of clips.

Training batches come from :class:`BlockShuffle`: the (sorted) training rows are cut into
blocks of consecutive rows; each epoch shuffles the blocks, groups them into *windows* of
about ``shuffle_window_mb`` of features, reads a window block by block and shuffles the
clips within it. The batches depend only on the rows, the seed and the settings, never on
where the features come from, so both readers give the same models. When every training
row fits in one window (small runs), an epoch is a plain permutation of the rows.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from extract.store import FeatureStore, StoreError
from pool.config import FeatureSource, Level1Config, Level1Error
from pool.labels import LabelTable, read_labels

log = logging.getLogger(__name__)

#: metadata fields whose logarithm (``log1p``) is used: they span orders of magnitude.
LOG_META = frozenset({"file_size", "bitrate", "frame_count"})
#: bytes of one feature value (float16).
ITEM_BYTES = 2
#: default of ``features_budget_gb`` (see :class:`pool.config.Level1Config`).
DEFAULT_BUDGET_GB = 4.0


class FeatureReader:
    """``(N, T, C)`` float16 features of a block of clips, read by sorted rows.

    Subclasses implement :meth:`read`; ``n``, ``frames`` and ``dims`` give the shape.
    """

    n: int
    frames: int
    dims: int
    #: True when the features are one array in memory (:class:`ArrayFeatures`).
    in_memory: bool = False
    #: most clips read at once by :func:`sequential` passes (moments, prediction, scoring).
    chunk_clips: int = 1 << 40

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), T, C)`` float16 features of clips ``rows`` (sorted ascending)."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, self.frames, self.dims)

    @property
    def clip_bytes(self) -> int:
        """Bytes of one clip's features."""
        return self.frames * self.dims * ITEM_BYTES

    @property
    def nbytes(self) -> int:
        """Bytes of every clip's features (what holding them in memory costs)."""
        return self.n * self.clip_bytes


class ArrayFeatures(FeatureReader):
    """Features held in memory as one ``(N, T, C)`` float16 array."""

    in_memory = True

    def __init__(self, x: np.ndarray) -> None:
        if x.ndim != 3:
            raise ValueError(f"features must be (N, T, C), got shape {x.shape}")
        self.x = x
        self.n, self.frames, self.dims = (int(v) for v in x.shape)

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(rows, dtype=np.int64)]


class RowFeatures(FeatureReader):
    """Rows ``rows`` (sorted) of another reader, read through it (nothing is read here)."""

    def __init__(self, base: FeatureReader, rows: np.ndarray) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        self.n, self.frames, self.dims = len(self.rows), base.frames, base.dims
        self.in_memory = base.in_memory
        self.chunk_clips = base.chunk_clips

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.base.read(self.rows[np.asarray(rows, dtype=np.int64)])


class StoreFeatures(FeatureReader):
    """Features streamed from one or several stores, concatenated along C.

    Block row ``i`` is row ``rows_per_store[s][i]`` of store ``s``; each :meth:`read` reads
    the requested rows of each store in ascending store order with one
    :meth:`~extract.store.FeatureStore.features` call (contiguous ranges, selected in
    memory), so a read costs the bytes of the range its rows span, nothing more is kept.
    """

    def __init__(
        self,
        stores: Sequence[FeatureStore],
        rows_per_store: Sequence[np.ndarray],
        layers: Sequence[Sequence[str]],
        dims: Sequence[Sequence[int]],
        frames: int,
    ) -> None:
        self.stores = list(stores)
        self.rows_per_store = [np.asarray(r, dtype=np.int64) for r in rows_per_store]
        self.layers = [list(item) for item in layers]
        self.widths = [int(sum(d)) for d in dims]
        self.n = len(self.rows_per_store[0])
        self.frames = int(frames)
        self.dims = int(sum(self.widths))

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.stores) == 1:
            return self._read_store(0, rows)
        out = np.empty((len(rows), self.frames, self.dims), dtype=np.float16)
        col = 0
        for s, width in enumerate(self.widths):
            out[:, :, col : col + width] = self._read_store(s, rows)
            col += width
        return out

    def _read_store(self, s: int, rows: np.ndarray) -> np.ndarray:
        store_rows = self.rows_per_store[s][rows]
        if len(store_rows) < 2 or bool(np.all(store_rows[1:] > store_rows[:-1])):
            return self.stores[s].features(self.layers[s], store_rows)
        order = np.argsort(store_rows, kind="stable")  # another store's order: sort, place
        data = self.stores[s].features(self.layers[s], store_rows[order])
        out = np.empty_like(data)
        out[order] = data
        return out


@dataclass
class FeatureBlock:
    """Features, frame mask and metadata of N clips, ready for the meta-models.

    ``features`` may be given as an ``(N, T, C)`` array (wrapped in :class:`ArrayFeatures`).
    """

    ids: list[str]  #: clip ids (of the first store)
    features: FeatureReader  #: ``(N, T, C)`` float16, read by sorted rows
    mask: np.ndarray  #: ``(N, T)`` bool, True on real frames (a prefix of each row)
    meta: np.ndarray  #: ``(N, M)`` float32, NaN where unknown
    layout: list[dict] = field(default_factory=list)  #: per store: path, layers, dims, extraction

    def __post_init__(self) -> None:
        if isinstance(self.features, np.ndarray):
            self.features = ArrayFeatures(self.features)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def x(self) -> np.ndarray:
        """The ``(N, T, C)`` array of features held in memory.

        Raises:
            Level1Error: the features are streamed (use ``features.read``).
        """
        if not isinstance(self.features, ArrayFeatures):
            raise Level1Error("the features are streamed from the stores, not held in memory")
        return self.features.x

    @property
    def dims(self) -> int:
        """C: feature channels per frame."""
        return self.features.dims

    def view(self, rows: np.ndarray) -> FeatureBlock:
        """Clips ``rows`` (sorted ascending) as a block whose features are still read on
        demand from this block's reader (what the estimators of a fold are given)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
            raise ValueError("view rows must be sorted ascending and distinct")
        return FeatureBlock(
            [self.ids[i] for i in rows],
            RowFeatures(self.features, rows),
            self.mask[rows],
            self.meta[rows],
            self.layout,
        )

    def subset(self, rows: np.ndarray) -> FeatureBlock:
        """Clips ``rows`` (sorted) as a block whose features are read now, into memory."""
        rows = np.asarray(rows, dtype=np.int64)
        features = ArrayFeatures(self.features.read(rows))
        features.chunk_clips = self.features.chunk_clips
        return FeatureBlock(
            [self.ids[i] for i in rows],
            features,
            self.mask[rows],
            self.meta[rows],
            self.layout,
        )


@dataclass
class Level1Data:
    """A :class:`FeatureBlock` of the labelled clips with their targets."""

    block: FeatureBlock
    classes: list[str]
    targets: np.ndarray  #: ``(N, K)`` float32
    groups: np.ndarray | None  #: ``(N,)`` str, or None when not grouped
    skipped: pd.DataFrame  #: label rows without features: ``filepath``, ``reason``


def sequential(
    features: FeatureReader, rows: np.ndarray, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Read clips ``rows`` in ascending order, ``chunk`` clips at a time (at most
    ``features.chunk_clips``).

    Yields ``(positions, x)``: ``positions`` index ``rows`` (so ``rows[positions]`` is sorted)
    and ``x`` holds their features. For sorted ``rows`` the chunks are ``rows[i:i+chunk]``.
    """
    chunk = max(1, min(chunk, features.chunk_clips))
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), chunk):
        pos = order[start : start + chunk]
        yield pos, features.read(rows[pos])


@dataclass(frozen=True)
class Window:
    """Clips shuffled together: their blocks (sorted rows, read one by one) and their order."""

    blocks: list[np.ndarray]
    order: np.ndarray  #: the window's rows in the order they are used


@dataclass(frozen=True)
class BlockShuffle:
    """The training-batch order: shuffled blocks of consecutive rows, shuffled within windows.

    The rows given to :meth:`epoch` (sorted) are cut into blocks of ``block_clips``
    consecutive rows. Each epoch permutes the blocks and takes them ``window_blocks`` at a
    time (as many as fit in ``window_bytes`` of features, at least one); the rows of a
    window are read block by block, then permuted. When every block fits in one window the
    epoch is ``rng.permutation(rows)``: a full shuffle. The order depends only on the rows,
    the random generator and these settings, never on where the features are held.
    """

    block_clips: int = 128
    window_bytes: float = 256e6

    @classmethod
    def from_config(cls, config: Level1Config) -> BlockShuffle:
        return cls(config.shuffle_block_clips, config.shuffle_window_mb * 1e6)

    def window_blocks(self, clip_bytes: int) -> int:
        """Blocks per window for clips of ``clip_bytes`` bytes."""
        return max(1, int(self.window_bytes // (self.block_clips * max(clip_bytes, 1))))

    def window_clips(self, clip_bytes: int) -> int:
        """Clips per (full) window."""
        return self.window_blocks(clip_bytes) * self.block_clips

    def epoch(self, rows: np.ndarray, rng: np.random.Generator, clip_bytes: int) -> list[Window]:
        """One pass over ``rows``: windows whose orders together hold every row once."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        b = self.block_clips
        blocks = [rows[i : i + b] for i in range(0, len(rows), b)]
        per = self.window_blocks(clip_bytes)
        if len(blocks) <= per:
            return [Window(blocks, rng.permutation(rows))]
        shuffled = rng.permutation(len(blocks))
        windows = []
        for start in range(0, len(blocks), per):
            members = [blocks[i] for i in np.sort(shuffled[start : start + per])]
            windows.append(Window(members, rng.permutation(np.concatenate(members))))
        return windows

    def epochs(
        self, rows: np.ndarray, rng: np.random.Generator, clip_bytes: int
    ) -> Iterator[Window]:
        """Windows of endless epochs (each epoch drawn when the previous one is used up;
        none when there is no row)."""
        if not len(rows):
            return iter(())
        return itertools.chain.from_iterable(
            self.epoch(rows, rng, clip_bytes) for _ in itertools.count()
        )


def shuffled_batches(
    features: FeatureReader, windows: Iterable[Window], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of ``batch_size`` consecutive clips of the windows' orders (a batch may span
    two windows; the last one may be shorter).

    Yields ``(rows, x)``: the batch's rows sorted ascending and their features. One window's
    features are held at a time (plus the fewer than ``batch_size`` clips carried over).
    """
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (rows in use order, features)
    count = 0
    for window in windows:
        if not len(window.order):
            continue
        rows_sorted = np.concatenate(window.blocks)
        x = np.empty((len(rows_sorted), features.frames, features.dims), dtype=np.float16)
        start = 0
        for block in window.blocks:
            x[start : start + len(block)] = features.read(block)
            start += len(block)
        order, start = window.order, 0
        while start < len(order):
            take = order[start : start + batch_size - count]
            start += len(take)
            if not pending and len(take) == batch_size:  # the common case: one gather
                picked = np.sort(take)
                yield picked, x[np.searchsorted(rows_sorted, picked)]
                continue
            pending.append((take, x[np.searchsorted(rows_sorted, take)]))
            count += len(take)
            if count == batch_size:
                yield _join(pending)
                pending, count = [], 0
        del x
    if pending:
        yield _join(pending)


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([r for r, _ in parts])
    x = np.concatenate([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
    order = np.argsort(rows, kind="stable")
    return rows[order], x[order]


def open_stores(sources: Sequence[FeatureSource]) -> list[FeatureStore]:
    """Open every store and check that the requested layers exist.

    Raises:
        Level1Error: a missing or unreadable store, or an unknown layer.
    """
    stores = []
    for source in sources:
        if not source.path.is_file():
            raise Level1Error(f"feature store {source.path} does not exist")
        try:
            store = FeatureStore(source.path)
        except (StoreError, OSError, KeyError) as exc:
            raise Level1Error(f"cannot read feature store {source.path}: {exc}") from exc
        unknown = [layer for layer in source.layers or [] if layer not in store.layers]
        if unknown:
            raise Level1Error(f"{source.path}: no layer {unknown}; its layers are {store.layers}")
        stores.append(store)
    return stores


def meta_matrix(meta: pd.DataFrame, fields: Sequence[str]) -> np.ndarray:
    """``(N, M)`` float32 metadata: :data:`LOG_META` fields as ``log1p``, NaN where unknown."""
    if not fields:
        return np.zeros((len(meta), 0), dtype=np.float32)
    values = meta[list(fields)].to_numpy(dtype=np.float64, copy=True)
    logs = [i for i, name in enumerate(fields) if name in LOG_META]
    with np.errstate(invalid="ignore", divide="ignore"):
        values[:, logs] = np.log1p(np.clip(values[:, logs], 0.0, None))
    values[~np.isfinite(values)] = np.nan
    return values.astype(np.float32)


def load_block(
    sources: Sequence[FeatureSource],
    meta_fields: Sequence[str],
    ids: Sequence[str] | None = None,
    stores: Sequence[FeatureStore] | None = None,
    in_memory: bool | Literal["auto"] = True,
    budget_gb: float = DEFAULT_BUDGET_GB,
    read_mb: float | None = None,
) -> FeatureBlock:
    """The features, masks and metadata of clips ``ids`` (default: every clip of the first
    store).

    Args:
        sources: stores and layers; their features are concatenated per clip.
        meta_fields: metadata columns (taken from the first store).
        ids: clip ids to read, in this order; each must be in every store.
        stores: the already opened stores of ``sources`` (opened here when omitted).
        in_memory: True reads the features into one array; False streams them from the
            stores (:class:`StoreFeatures`); ``"auto"`` reads them when they take at most
            ``budget_gb`` GB.
        read_mb: passes over the clips (:func:`sequential`) read at most this many MB of
            features at once (at least one clip); None: their own chunk sizes. It decides
            prediction batches, so it is the same whether features are held or streamed.

    Raises:
        Level1Error: clips missing from a store, stores with different frame counts, or a
            mask that is not a prefix of real frames.
    """
    stores = list(stores) if stores is not None else open_stores(sources)
    ids = list(stores[0].ids if ids is None else ids)
    rows_per_store = []
    for source, store in zip(sources, stores, strict=True):
        where = {cid: i for i, cid in enumerate(store.ids)}
        missing = [cid for cid in ids if cid not in where]
        if missing:
            raise Level1Error(
                f"{len(missing)} clips are not in {source.path} (e.g. {missing[:3]}); every "
                "store must hold the same clips"
            )
        rows_per_store.append(np.array([where[cid] for cid in ids], dtype=np.int64))

    masks, layout = [], []
    for source, store, rows in zip(sources, stores, rows_per_store, strict=True):
        masks.append(store.mask()[rows])
        layers = list(source.layers or store.layers)
        layout.append(
            {
                "path": str(source.path),
                "layers": layers,
                "frames": int(masks[-1].shape[1]),
                "extraction": store.extraction,
                "dims": _layer_dims(store, layers),
            }
        )
    frames = {m.shape[1] for m in masks}
    if len(frames) > 1:
        raise Level1Error(f"the stores have different frames per clip ({sorted(frames)})")
    mask = np.logical_and.reduce(masks)
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise Level1Error(f"{int((lengths == 0).sum())} clips have no real frame in the stores")
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise Level1Error("frame masks must mark a prefix of real frames (padding at the end)")

    reader: FeatureReader = StoreFeatures(
        stores,
        rows_per_store,
        [item["layers"] for item in layout],
        [item["dims"] for item in layout],
        mask.shape[1],
    )
    hold = reader.nbytes <= budget_gb * 1e9 if in_memory == "auto" else bool(in_memory)
    if hold:
        reader = ArrayFeatures(read_all(reader))
    if read_mb is not None:
        reader.chunk_clips = max(1, int(read_mb * 1e6 // max(reader.clip_bytes, 1)))
    meta = meta_matrix(stores[0].meta().iloc[rows_per_store[0]], meta_fields)
    log.info(
        "features: %d clips x %d frames x %d dims (%.2f GB float16) from %d store(s), %s",
        *reader.shape,
        reader.nbytes / 1e9,
        len(stores),
        "held in memory" if hold else "streamed block by block",
    )
    return FeatureBlock(ids, reader, mask, meta, layout)


def read_all(features: FeatureReader, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """Every clip's features in one array, allocated once and filled chunk by chunk."""
    x = np.empty(features.shape, dtype=np.float16)
    chunk = max(1, chunk_bytes // max(features.clip_bytes, 1))
    for pos, part in sequential(features, np.arange(features.n), chunk):
        x[pos] = part
    return x


def _layer_dims(store: FeatureStore, layers: Sequence[str]) -> list[int]:
    """Channels of each layer (read from one clip)."""
    if not len(store):
        return [0 for _ in layers]
    return [int(store.features([layer], [0]).shape[2]) for layer in layers]


def _normal_id(text: str) -> str:
    """A clip id written as in a store: '/' separators, no leading './'."""
    return posixpath.normpath(text.replace("\\", "/")).removeprefix("./")


def _store_root(store: FeatureStore) -> str | None:
    """The folder the store's ids are relative to (from its first clip), if derivable."""
    for cid, path in zip(store.ids, store.paths(), strict=True):
        norm = path.replace("\\", "/")
        if norm.endswith("/" + cid):
            return path[: len(path) - len(cid)]
        return None
    return None


def match_labels(table: LabelTable, store: FeatureStore) -> tuple[list[str | None], dict[int, str]]:
    """Find the clip of each label row in ``store``.

    A row's ``filepath`` (relative to the CSV's folder, or absolute) is resolved with
    :func:`os.path.realpath` and compared with the resolved absolute paths of the store's
    clips; failing that, the path as written is compared with the store's clip ids.

    Returns:
        ``(clip id or None per row, {row: reason} for the unmatched rows)``.
    """
    base = table.source.parent
    by_path = {os.path.realpath(p): cid for cid, p in zip(store.ids, store.paths(), strict=True)}
    by_id = set(store.ids)
    failed = store.failed()
    root = _store_root(store)
    failed_reason = dict(zip(failed["id"], failed["reason"], strict=True))
    if root is not None:
        for cid, reason in zip(failed["id"], failed["reason"], strict=True):
            failed_reason[os.path.realpath(root + cid)] = reason
    found: list[str | None] = []
    reasons: dict[int, str] = {}
    for row, filepath in enumerate(table.filepaths):
        resolved = os.path.realpath(os.path.join(base, filepath))
        rel = _normal_id(filepath)
        cid = by_path.get(resolved) or (rel if rel in by_id else None)
        found.append(cid)
        if cid is None:
            reason = failed_reason.get(resolved) or failed_reason.get(rel)
            reasons[row] = f"failed at extraction: {reason}" if reason else f"not in {store.path}"
    return found, reasons


def load_training_data(config: Level1Config, stores: Sequence[FeatureStore]) -> Level1Data:
    """Labels of ``config.labels`` matched to the stores, with their features and folds' groups.

    Raises:
        Level1Error: label rows without features (unless ``skip_missing``), two rows for one
            clip, or any problem of :func:`read_labels` / :func:`load_block`.
    """
    table = read_labels(config.labels, config.group_column)
    found, reasons = match_labels(table, stores[0])
    for source, store in zip(config.features[1:], stores[1:], strict=True):
        present = set(store.ids)
        table_failed = store.failed()
        failed = dict(zip(table_failed["id"], table_failed["reason"], strict=True))
        for i, cid in enumerate(found):
            if cid is not None and cid not in present:
                found[i] = None
                why = failed.get(cid)
                reasons[i] = f"failed at extraction: {why}" if why else f"not in {source.path}"
    lost = [i for i, cid in enumerate(found) if cid is None]
    skipped = pd.DataFrame(
        {"filepath": [table.filepaths[i] for i in lost], "reason": [reasons[i] for i in lost]},
        columns=["filepath", "reason"],
    )
    if lost and not config.skip_missing:
        lines = "; ".join(f"line {i + 2} {table.filepaths[i]!r}: {reasons[i]}" for i in lost[:8])
        more = f" and {len(lost) - 8} more" if len(lost) > 8 else ""
        raise Level1Error(
            f"{len(lost)} of {len(found)} rows of {config.labels} have no features: {lines}"
            f"{more}. Fix the labels, or pass --skip-missing to skip (and report) them"
        )
    keep = np.array([i for i, cid in enumerate(found) if cid is not None], dtype=np.int64)
    if lost:
        log.warning("skipping %d label rows without features (see skipped.csv)", len(lost))
    if not len(keep):
        raise Level1Error(f"no row of {config.labels} matches a clip of the feature store")
    ids = [found[i] for i in keep]
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        rows = [f"line {keep[i] + 2} {table.filepaths[keep[i]]!r}" for i in np.flatnonzero(dup)]
        raise Level1Error(f"several label rows are the same clip: {', '.join(rows[:6])}")
    # store order: sequential reads, and results independent of the CSV's row order
    order = np.argsort(pd.Index(stores[0].ids).get_indexer(ids), kind="stable")
    keep, ids = keep[order], [ids[i] for i in order]
    block = load_block(
        config.features,
        config.meta_fields,
        ids,
        stores,
        config.features_in_memory,
        config.features_budget_gb,
        config.shuffle_window_mb,
    )
    if config.group_by_folder:
        groups = np.array([posixpath.dirname(cid) for cid in ids], dtype=str)
    elif table.groups is not None:
        groups = np.array([table.groups[i] for i in keep], dtype=str)
    else:
        groups = None
    return Level1Data(block, table.classes, table.targets[keep], groups, skipped)


def frame_moments(
    features: FeatureReader | np.ndarray, mask: np.ndarray, rows: np.ndarray, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over the real frames of clips ``rows``.

    Read ``chunk`` clips at a time (in ascending order) and accumulated in float64 (no full
    float32 copy). The std is floored at 1e-3 times the largest one, so constant channels do
    not blow up.
    """
    if isinstance(features, np.ndarray):
        features = ArrayFeatures(features)
    total = np.zeros(features.dims, dtype=np.float64)
    square = np.zeros(features.dims, dtype=np.float64)
    count = 0
    rows = np.asarray(rows, dtype=np.int64)
    for pos, x in sequential(features, rows, chunk):
        frames = x[mask[rows[pos]]].astype(np.float32)
        total += frames.sum(axis=0, dtype=np.float64)
        square += np.square(frames).sum(axis=0, dtype=np.float64)
        count += len(frames)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(square / max(count, 1) - mean**2, 0.0))
    std = np.maximum(std, 1e-3 * max(float(std.max()), 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def meta_moments(meta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-field mean and std of metadata over ``rows`` (NaN ignored).

    A field constant over ``rows`` (std below 1e-6 of its scale) gets std ``inf``: it carried
    no information in training, so it reads 0 whatever its value on new clips (a camera with
    another resolution must not saturate the network).
    """
    part = meta[rows].astype(np.float64)
    if part.shape[1] == 0:
        return np.zeros(0, np.float32), np.ones(0, np.float32)
    counts = np.isfinite(part).sum(axis=0)
    mean = np.where(counts > 0, np.nansum(part, axis=0) / np.maximum(counts, 1), 0.0)
    var = np.nansum(np.square(part - mean), axis=0) / np.maximum(counts, 1)
    std = np.sqrt(var)
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, np.inf)
    return mean.astype(np.float32), std.astype(np.float32)


class CenteredFeatures(FeatureReader):
    """Another reader's features minus each clip's mean over its real frames (``mask``
    ``(N, T)``, the base reader's rows); padding slots read 0. Float16 like the base."""

    def __init__(self, base: FeatureReader, mask: np.ndarray) -> None:
        self.base = base
        self.mask = np.asarray(mask, dtype=bool)
        self.n, self.frames, self.dims = base.n, base.frames, base.dims
        self.in_memory = base.in_memory
        self.chunk_clips = base.chunk_clips

    def read(self, rows: np.ndarray) -> np.ndarray:
        # in torch, in place: 6x faster than the same in numpy (float16 casts, no temporaries)
        rows = np.asarray(rows, dtype=np.int64)
        x = torch.from_numpy(self.base.read(rows)).to(torch.float32, copy=True)  # never in place
        pad = ~torch.from_numpy(self.mask[rows]).unsqueeze(-1)
        x.masked_fill_(pad, 0.0)
        mean = x.sum(dim=1, keepdim=True).div_((~pad).sum(dim=1, keepdim=True))
        return x.sub_(mean).masked_fill_(pad, 0.0).half().numpy()


def frame_inputs(block: FeatureBlock, frame_input: str) -> FeatureBlock:
    """What the frame classifier sees of ``block``: its features (``raw``), or read through
    :class:`CenteredFeatures` (``centered``); nothing is read here."""
    if frame_input == "raw":
        return block
    features = CenteredFeatures(block.features, block.mask)
    return FeatureBlock(block.ids, features, block.mask, block.meta, block.layout)
