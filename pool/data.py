"""Level-1 inputs: features of one or several stores aligned per clip, metadata, labels.

Features are held once in memory as float16 ``(N, T, C)``: the layers chosen from each store
are concatenated along C (in config order), read straight into one preallocated array.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from extract.store import FeatureStore, StoreError
from pool.config import FeatureSource, Level1Config, Level1Error
from pool.labels import LabelTable, read_labels

log = logging.getLogger(__name__)

#: metadata fields whose logarithm (``log1p``) is used: they span orders of magnitude.
LOG_META = frozenset({"file_size", "bitrate", "frame_count"})


@dataclass
class FeatureBlock:
    """Features, frame mask and metadata of N clips, ready for the meta-models."""

    ids: list[str]  #: clip ids (of the first store)
    x: np.ndarray  #: ``(N, T, C)`` float16
    mask: np.ndarray  #: ``(N, T)`` bool, True on real frames (a prefix of each row)
    meta: np.ndarray  #: ``(N, M)`` float32, NaN where unknown
    layout: list[dict] = field(default_factory=list)  #: per store: path, layers, dims, extraction

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Level1Data:
    """A :class:`FeatureBlock` of the labelled clips with their targets."""

    block: FeatureBlock
    classes: list[str]
    targets: np.ndarray  #: ``(N, K)`` float32
    groups: np.ndarray | None  #: ``(N,)`` str, or None when not grouped
    skipped: pd.DataFrame  #: label rows without features: ``filepath``, ``reason``


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
) -> FeatureBlock:
    """Read the features of clips ``ids`` (default: every clip of the first store).

    Args:
        sources: stores and layers; their features are concatenated per clip.
        meta_fields: metadata columns (taken from the first store).
        ids: clip ids to read, in this order; each must be in every store.
        stores: the already opened stores of ``sources`` (opened here when omitted).

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

    x = _read_features(sources, stores, rows_per_store, layout)
    meta = meta_matrix(stores[0].meta().iloc[rows_per_store[0]], meta_fields)
    log.info(
        "features: %d clips x %d frames x %d dims (%.2f GB float16) from %d store(s)",
        *x.shape,
        x.nbytes / 1e9,
        len(stores),
    )
    return FeatureBlock(ids, x, mask, meta, layout)


def _read_features(
    sources: Sequence[FeatureSource],
    stores: Sequence[FeatureStore],
    rows_per_store: Sequence[np.ndarray],
    layout: list[dict],
) -> np.ndarray:
    """Concatenated float16 features, allocated once (a second store is read layer by layer)."""

    def rows_arg(store: FeatureStore, rows: np.ndarray) -> np.ndarray | None:
        return None if np.array_equal(rows, np.arange(len(store))) else rows

    if len(stores) == 1:
        x = stores[0].features(layout[0]["layers"], rows_arg(stores[0], rows_per_store[0]))
        layout[0]["dims"] = _layer_dims(stores[0], layout[0]["layers"])
        return x
    dims = [_layer_dims(store, item["layers"]) for store, item in zip(stores, layout, strict=True)]
    n, t = len(rows_per_store[0]), layout[0]["frames"]
    x = np.empty((n, t, sum(sum(d) for d in dims)), dtype=np.float16)
    col = 0
    for store, rows, item, widths in zip(stores, rows_per_store, layout, dims, strict=True):
        item["dims"] = widths
        for layer, width in zip(item["layers"], widths, strict=True):
            x[:, :, col : col + width] = store.features([layer], rows_arg(store, rows))
            col += width
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
    block = load_block(config.features, config.meta_fields, ids, stores)
    if config.group_by_folder:
        groups = np.array([posixpath.dirname(cid) for cid in ids], dtype=str)
    elif table.groups is not None:
        groups = np.array([table.groups[i] for i in keep], dtype=str)
    else:
        groups = None
    return Level1Data(block, table.classes, table.targets[keep], groups, skipped)


def frame_moments(
    x: np.ndarray, mask: np.ndarray, rows: np.ndarray, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over the real frames of clips ``rows``.

    Accumulated in float64 over chunks of clips (no full float32 copy). The std is floored
    at 1e-3 times the largest one, so constant channels do not blow up.
    """
    total = np.zeros(x.shape[2], dtype=np.float64)
    square = np.zeros(x.shape[2], dtype=np.float64)
    count = 0
    for start in range(0, len(rows), chunk):
        part = np.sort(rows[start : start + chunk])
        frames = x[part][mask[part]].astype(np.float32)
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
