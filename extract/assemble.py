"""Writing feature stores at survey scale: assembling shards, extending in place, merging.

Every operation streams: sources are opened one at a time (bounded open files), rows are
copied in contiguous blocks of at most :data:`extract.store.READ_BYTES`, and the only
per-clip state held is the clip ids (a set or dict of strings): cost O(N log N) at worst,
memory O(N) in ids only, never in features.

* :func:`assemble` writes a *new* store from shards (or stores) into ``OUT.tmp`` and renames
  it over ``OUT``: a kill at any moment leaves the old state. A clip in several sources is
  taken from the last one.
* :func:`extend` adds the clips of new shards to an existing store *in place*, without
  rewriting its features: new clips are appended, re-extracted clips (their file changed)
  overwrite their row. Before touching the file it writes a journal ``OUT.extending`` (the
  row count and the failed table before the change); the shards stay until the change is
  committed. After a kill, :func:`recover` truncates the store back to that row count and
  restores the failed table, and the next run applies the shards again (overwrites are
  idempotent). HDF5 metadata is held in memory during the change (cache evictions off) and
  written by one flush at the end, so the window in which a kill can damage the file is
  that flush; a damaged file is reported, never used.
* :func:`merge_stores` joins stores made with the same settings from the same source folder
  (e.g. the ``--shard I/N`` slices of one survey), refusing a clip present twice with
  different file contents.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from extract.store import (
    IDENTITY_FIELDS,
    META_FIELDS,
    READ_BYTES,
    STR,
    StoreError,
    contiguous_runs,
    extending_path,
    fsync_dir,
    fsync_file,
    identity_table,
    meta_column,
    read_extraction,
    read_strings,
    replace_durably,
    write_attrs,
)

log = logging.getLogger(__name__)

#: settings that must match for stores to be extended or merged.
IDENTITY_KEYS = (
    "backbone",
    "weights_sha256",
    "layers",
    "frames",
    "image_size",
    "pooling",
    "precision",
    "tta",
)
#: free space kept on top of the estimated need before assembling or merging.
SPACE_MARGIN = 64 << 20


def same_extraction(a: dict, b: dict) -> bool:
    """True when two stores' features were made with the same settings."""
    return all(a.get(k) == b.get(k) for k in IDENTITY_KEYS)


def extraction_diff(theirs: dict, ours: dict) -> dict:
    """The settings of ``theirs`` that differ from ``ours``."""
    return {k: theirs.get(k) for k in IDENTITY_KEYS if theirs.get(k) != ours.get(k)}


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Stop with a clear error, before writing anything, when ``folder`` lacks ``need`` bytes.

    Raises:
        StoreError: not enough free space (with the numbers and what to do).
    """
    free = shutil.disk_usage(folder).free
    if free < need + SPACE_MARGIN:
        raise StoreError(
            f"not enough free disk space in {folder} to {what}: about "
            f"{(need + SPACE_MARGIN) / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free. Free some "
            "space and run the same command again (nothing was lost)"
        )


def _ok_names(layers: Sequence[str]) -> list[str]:
    names = ["clips/id", "clips/path", *(f"clips/{n}" for n in IDENTITY_FIELDS)]
    names += ["clips/frame_index", "clips/mask", *(f"meta/{m}" for m in META_FIELDS)]
    return names + [f"features/{layer}" for layer in layers]


FAILED_NAMES = ["failed/id", "failed/reason", *(f"failed/{n}" for n in IDENTITY_FIELDS)]


def _chunk_rows(row_bytes: int) -> int:
    """Rows per HDF5 chunk: about 1 MiB per chunk, 1 to 4096 rows."""
    return int(max(1, min(4096, (1 << 20) // max(row_bytes, 1))))


def _row_bytes(ds: h5py.Dataset) -> int:
    size = 16 if ds.dtype == object else ds.dtype.itemsize
    return int(np.prod(ds.shape[1:], dtype=np.int64)) * size


def _rows(src: h5py.File, name: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of dataset ``name`` of a source (metadata fields a format-2 store
    lacks read as their defaults, so older stores extend and merge)."""
    if name.startswith("meta/") and name not in src:
        return meta_column(src, name.removeprefix("meta/"), lo, hi)
    return src[name][lo:hi]


def _create(dst: h5py.File, name: str, like: h5py.Dataset | None, rows: int, t: int) -> None:
    """An extendable dataset ``name`` of ``rows`` rows, shaped and typed like ``like``
    (or, for a store without clips, from the known layout)."""
    if like is not None:
        shape, dtype = like.shape[1:], (STR if like.dtype == object else like.dtype)
    else:
        group, field = name.split("/", 1)
        shape = (t,) if field in ("frame_index", "mask") else ()
        known = {"frame_index": np.int32, "mask": np.bool_, "id": STR, "path": STR}
        known |= {"reason": STR} | IDENTITY_FIELDS | META_FIELDS
        dtype = known[field]
    row = int(np.prod(shape, dtype=np.int64)) * (16 if dtype is STR else np.dtype(dtype).itemsize)
    dst.create_dataset(
        name,
        shape=(rows, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=(_chunk_rows(row), *shape),
    )


def _check_source(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format_version", 1) < 2 or "clips/fingerprint" not in f:
        raise StoreError(
            f"{path} was made by an older jungle (store format 1, without file identities) "
            "and cannot be extended or merged; extract it again (--overwrite)"
        )


def _copy_rows(
    src: h5py.File, dst: h5py.File, names: Sequence[str], keep: np.ndarray, pos: int
) -> int:
    """Append the rows of ``src`` where ``keep`` to ``dst`` at ``pos``, streaming."""
    rows = np.flatnonzero(keep)
    if not len(rows):
        return pos
    span = max(1, READ_BYTES // max(sum(_row_bytes(src[n]) for n in names if n in src), 1))
    for lo, hi, idx in contiguous_runs(rows, span):
        picked = rows[idx] - lo
        for name in names:
            dst[name][pos : pos + len(picked)] = _rows(src, name, lo, hi)[picked]
        pos += len(picked)
    return pos


def _plan_last_wins(sources: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source, ``(ok rows kept, failed rows kept)``: each clip once, from its last source."""
    seen: set[str] = set()
    plans = []
    for path in reversed(sources):
        with h5py.File(path, "r") as f:
            ok_ids, failed_ids = read_strings(f, "clips/id"), read_strings(f, "failed/id")
        ok_keep = np.array([c not in seen for c in ok_ids], dtype=bool)
        seen.update(ok_ids)
        failed_keep = np.array([c not in seen for c in failed_ids], dtype=bool)
        seen.update(failed_ids)
        plans.append((ok_keep, failed_keep))
    return plans[::-1]


def _write_new(
    out: Path, sources: Sequence[Path], plans: list[tuple[np.ndarray, np.ndarray]], attrs: dict
) -> tuple[int, int]:
    """Write the kept rows of ``sources`` (in order) to ``out.tmp``, then rename over ``out``."""
    layers = list(attrs["extraction"]["layers"])
    t = int(attrs["extraction"]["frames"])
    n_ok = int(sum(k.sum() for k, _ in plans))
    n_failed = int(sum(k.sum() for _, k in plans))
    need = sum(os.path.getsize(p) for p in sources)
    check_free_space(out.parent, need, f"write {out.name}")
    ref = next((p for p, (k, _) in zip(sources, plans, strict=True) if k.any()), None)
    tmp = out.with_name(out.name + ".tmp")
    ok_names = _ok_names(layers if ref is not None else [])
    with h5py.File(tmp, "w") as dst:
        write_attrs(dst, attrs)
        dst.create_group("features")
        if ref is not None:
            with h5py.File(ref, "r") as f:
                for name in ok_names:
                    _create(dst, name, f[name] if name in f else None, n_ok, t)
        else:
            for name in ok_names:
                _create(dst, name, None, 0, t)
        for name in FAILED_NAMES:
            _create(dst, name, None, n_failed, t)
        pos_ok = pos_failed = 0
        for path, (ok_keep, failed_keep) in zip(sources, plans, strict=True):
            with h5py.File(path, "r") as src:
                _check_source(src, path)
                pos_ok = _copy_rows(src, dst, ok_names, ok_keep, pos_ok)
                pos_failed = _copy_rows(src, dst, FAILED_NAMES, failed_keep, pos_failed)
    replace_durably(tmp, out)
    return n_ok, n_failed


def assemble(out: Path, sources: Sequence[Path], attrs: dict) -> tuple[int, int]:
    """Write a new store ``out`` from ``sources`` (shards or stores) in order, atomically.

    A clip present in several sources is taken from the last one (a later run's result
    replaces an earlier one's). Returns ``(clips, failures)`` written.

    Raises:
        StoreError: not enough disk space, or a source without file identities.
    """
    return _write_new(out, sources, _plan_last_wins(sources), attrs)


def merge_stores(inputs: Sequence[Path], out: Path) -> tuple[int, int]:
    """Merge stores made with the same extraction settings from the same source folder.

    A clip in several inputs is kept once when its file identity (size and fingerprint) is
    the same in each (a success wins over a failure); different identities are an error.

    Raises:
        StoreError: fewer than two inputs, ``out`` exists or is an input, other settings,
            other source folders, a clip with two identities, or not enough disk space.
    """
    inputs = [Path(p).absolute() for p in inputs]
    out = Path(out).absolute()
    if len(inputs) < 2:
        raise StoreError("merge needs at least two stores")
    if out in inputs or out.exists():
        raise StoreError(f"{out} exists: merge writes a new store; choose another --out")
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise StoreError(f"no such store: {', '.join(missing)}")
    first = read_extraction(inputs[0])
    with h5py.File(inputs[0], "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("format", "format_version")}
    attrs = {
        k: (json.loads(v) if k in ("extraction", "config", "versions") else v)
        for k, v in attrs.items()
    }
    for path in inputs[1:]:
        theirs = read_extraction(path)
        if not same_extraction(theirs, first):
            raise StoreError(
                f"{path} was made with other extraction settings than {inputs[0]} "
                f"({extraction_diff(theirs, first)}); only stores with the same settings merge"
            )
        with h5py.File(path, "r") as f:
            source = str(f.attrs.get("source", ""))
        if source != str(attrs.get("source", "")):
            raise StoreError(
                f"{path} holds clips of {source}, {inputs[0]} of {attrs.get('source')}: clip "
                "ids are relative to different folders, so they cannot be merged"
            )
    plans = _plan_merge(inputs)
    attrs |= {"shard": "", "created": datetime.now(UTC).isoformat(timespec="seconds")}
    attrs["merged_from"] = [str(p) for p in inputs]
    return _write_new(out, inputs, plans, attrs)


def _plan_merge(inputs: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    owner: dict[str, tuple[int, str, int, bool]] = {}  # id -> (input, fingerprint, size, ok)
    plans = []
    for i, path in enumerate(inputs):
        with h5py.File(path, "r") as f:
            _check_source(f, path)
            tables = [(identity_table(f, "clips"), True), (identity_table(f, "failed"), False)]
        keeps = []
        for table, ok in tables:
            keep = np.zeros(len(table), dtype=bool)
            rows = zip(table["id"], table["fingerprint"], table["size"], strict=True)
            for row, (cid, fp, size) in enumerate(rows):
                seen = owner.get(cid)
                if seen is None or (ok and not seen[3] and (seen[1], seen[2]) == (fp, size)):
                    if seen is not None:  # a success replaces an identical failure
                        plans[seen[0]][1][_row_of(inputs[seen[0]], cid)] = False
                    owner[cid] = (i, fp, int(size), ok)
                    keep[row] = True
                elif (seen[1], seen[2]) != (fp, size):
                    raise StoreError(
                        f"clip {cid!r} is in {inputs[seen[0]]} and in {path} with different "
                        "file contents (size or fingerprint); merge stores of distinct clips"
                    )
            keeps.append(keep)
        plans.append((keeps[0], keeps[1]))
    return plans


def _row_of(path: Path, cid: str) -> int:
    """Row of a failed clip in a store (rare: a failure later replaced by a success)."""
    with h5py.File(path, "r") as f:
        return read_strings(f, "failed/id").index(cid)


def _disable_evictions(f: h5py.File) -> None:
    """Hold dirty HDF5 metadata in memory until the flush (see the module docstring)."""
    config = f.id.get_mdc_config()
    config.evictions_enabled = False
    config.incr_mode = 0
    config.flash_incr_mode = 0
    config.decr_mode = 0
    f.id.set_mdc_config(config)


def _failed_rows(f: h5py.File) -> dict[str, list]:
    return {
        name: read_strings(f, name) if f[name].dtype == object else f[name][()].tolist()
        for name in FAILED_NAMES
    }


def _write_failed(f: h5py.File, columns: dict[str, list]) -> None:
    n = len(columns["failed/id"])
    for name in FAILED_NAMES:
        f[name].resize((n,))
        if n:
            f[name][:] = np.asarray(
                columns[name], dtype=object if f[name].dtype == object else None
            )


def recover(out: Path) -> bool:
    """Undo the unfinished in-place extension of ``out`` a killed run left (see module doc).

    Returns:
        True when there was one to undo.

    Raises:
        StoreError: the store was damaged (a kill during the final flush).
    """
    journal = extending_path(out)
    if not journal.exists():
        return False
    state = json.loads(journal.read_text(encoding="utf-8"))
    try:
        with h5py.File(out, "r+") as f:
            layers = [n for n in f["features"]]
            for name in _ok_names(layers):
                if name in f:  # (a format-2 store gains its sequence fields in extend)
                    f[name].resize((state["clips"], *f[name].shape[1:]))
            _write_failed(f, state["failed"])
    except (OSError, KeyError) as exc:
        raise StoreError(
            f"{out} was damaged by an interruption while a run was extending it ({exc}). The "
            f"clips extracted before cannot be recovered: extract again with --overwrite"
        ) from exc
    fsync_file(out)
    journal.unlink()
    fsync_dir(out.parent)
    log.warning("%s: undid an extension that a killed run left unfinished", out.name)
    return True


def extend(
    out: Path, shards: Sequence[Path], mtimes: dict[str, int] | None = None
) -> tuple[int, int]:
    """Add the clips of ``shards`` to the store ``out`` in place (see the module docstring).

    ``mtimes`` updates the stored modification time of clips whose file was copied (same
    content, new time), so later runs recognise them without reading them. A clip that was
    stored and now failed (its file changed into a broken one) cannot be removed in place:
    then the store is assembled anew (:func:`assemble`), which rewrites it.

    Returns:
        ``(clips, failures)`` in the store afterwards.
    """
    mtimes = mtimes or {}
    with h5py.File(out, "r") as f:
        _check_source(f, out)
        ids = read_strings(f, "clips/id")
        attrs = {k: f.attrs[k] for k in f.attrs if k not in ("format", "format_version")}
        old_failed = _failed_rows(f)
    where = {cid: i for i, cid in enumerate(ids)}
    plans = _plan_last_wins(shards)
    shard_ok: dict[str, tuple[int, int]] = {}
    shard_failed: set[str] = set()
    for s, (path, (ok_keep, failed_keep)) in enumerate(zip(shards, plans, strict=True)):
        with h5py.File(path, "r") as f:
            ok_ids, failed_ids = read_strings(f, "clips/id"), read_strings(f, "failed/id")
        shard_ok.update({ok_ids[r]: (s, r) for r in np.flatnonzero(ok_keep)})
        shard_failed.update(failed_ids[r] for r in np.flatnonzero(failed_keep))
    if not ids or any(cid in where for cid in shard_failed):
        decoded = {
            k: (json.loads(v) if k in ("extraction", "config", "versions") else v)
            for k, v in attrs.items()
        }
        return assemble(out, [out, *shards], decoded)
    check_free_space(out.parent, sum(os.path.getsize(p) for p in shards), f"extend {out.name}")
    appended = [cid for cid in shard_ok if cid not in where]
    n_before, n_after = len(ids), len(ids) + len(appended)
    journal = extending_path(out)
    tmp = journal.with_name(journal.name + ".tmp")
    tmp.write_text(json.dumps({"clips": n_before, "failed": old_failed}), encoding="utf-8")
    replace_durably(tmp, journal)
    # the failed table afterwards: old failures not redone, then the shards' failures
    redone = set(shard_ok) | shard_failed
    keep_old = [i for i, cid in enumerate(old_failed["failed/id"]) if cid not in redone]
    failed = {name: [old_failed[name][i] for i in keep_old] for name in FAILED_NAMES}
    with h5py.File(out, "r+") as dst:
        _disable_evictions(dst)
        layers = [n for n in dst["features"]]
        names = _ok_names(layers)
        _add_missing_meta(dst, n_before)
        for name in names:
            dst[name].resize((n_after, *dst[name].shape[1:]))
        new_row = {cid: n_before + k for k, cid in enumerate(appended)}
        for s, path in enumerate(shards):
            with h5py.File(path, "r") as src:
                ok_ids = read_strings(src, "clips/id")
                rows = [
                    (r, new_row.get(c, where.get(c)))
                    for r, c in enumerate(ok_ids)
                    if shard_ok.get(c) == (s, r)
                ]
                _place_rows(src, dst, names, rows)
                fkeep = plans[s][1]
                cols = _failed_rows(src)
                for name in FAILED_NAMES:
                    failed[name] += [v for v, k in zip(cols[name], fkeep, strict=True) if k]
        touched = sorted((where[c], t) for c, t in mtimes.items() if c in where)
        for row, mtime in touched:
            dst["clips/mtime_ns"][row] = mtime
        _write_failed(dst, failed)
        dst.attrs["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        dst.flush()
    fsync_file(out)
    journal.unlink()
    fsync_dir(out.parent)
    return n_after, len(failed["failed/id"])


def _add_missing_meta(dst: h5py.File, n: int) -> None:
    """Give a format-2 store the metadata fields of format 3 (videos' defaults)."""
    t = dst["clips/mask"].shape[1]
    for name in META_FIELDS:
        if f"meta/{name}" not in dst:
            defaults = meta_column(dst, name, 0, n)  # (read before the field exists)
            _create(dst, f"meta/{name}", None, n, t)
            if n:
                dst[f"meta/{name}"][:] = defaults


def _place_rows(
    src: h5py.File, dst: h5py.File, names: Sequence[str], rows: list[tuple[int, int]]
) -> None:
    """Copy source rows to destination rows: consecutive runs in blocks, others one by one."""
    if not rows:
        return
    src_rows = np.array([r for r, _ in rows])
    dst_rows = np.array([d for _, d in rows])
    span = max(1, READ_BYTES // max(sum(_row_bytes(src[n]) for n in names if n in src), 1))
    for lo, hi, idx in contiguous_runs(src_rows, span):
        targets = dst_rows[idx]
        picked = src_rows[idx] - lo
        for name in names:
            data = _rows(src, name, lo, hi)[picked]
            if np.array_equal(targets, np.arange(targets[0], targets[0] + len(targets))):
                dst[name][targets[0] : targets[0] + len(targets)] = data
            else:
                for k, target in enumerate(targets):
                    dst[name][target] = data[k]
