"""``jungle predict``: videos in, one CSV row per clip out (stage 1 → level 1 → level 2).

Stage 1 runs with the run's own extraction settings (backbone, weights or fine-tuned
checkpoint, layers, frames, image size, pooling, precision, TTA: read from the run, never
re-typed). Where the run was trained on one store per fold (backbones fine-tuned per fold),
the clips are extracted once per fold's checkpoint and fold K's level-1 models read fold
K's features. The features are cached in ``OUT.features/`` beside the CSV, so a re-run, or a
run killed midway, resumes and skips finished clips; the cache follows the feature store's
rules (a changed file is extracted again; a cache made from another folder is refused, so
two cards with the same file names are never mixed), and levels 1 and 2 score only the
clips of the current input. The CSV is written at the end through a temporary file and a
rename.

Output columns, one row per input clip in input order: ``filepath`` (the clip id: path
relative to the folder or CSV given), one probability column per class (training order),
``top_label``, ``top_prob``, ``status`` (``ok``, ``partial`` or ``failed``), ``error``.
Failed clips keep their row with empty probabilities and the reason. ``--top-k K`` adds
``top2_label, top2_prob, ...`` up to K; ``--threshold T`` adds ``CLASS_present`` 0/1 columns.
``--per-frame FRAMES.csv`` also writes the per-frame timeline (:mod:`pool.frames`).
``--format timelapse`` writes the same predictions as a Timelapse import table instead
(:mod:`stack.formats`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from extract.assemble import same_extraction
from extract.discover import discover
from extract.pipeline import config_from_extraction, extract_features
from extract.store import FeatureStore, read_extraction
from pool.frames import frame_columns, predict_frames, require_frame_models
from pool.run import predict_level1
from pool.rundir import Run
from stack.formats import FORMATS, timelapse_table
from stack.train import Level2Error, load_level2, predict_level2

log = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    """What :func:`predict` did."""

    out: Path
    clips: int
    ok: int
    partial: int
    failed: int
    seconds: float


def features_dir(out: Path) -> Path:
    """Where :func:`predict` caches the features of ``out``'s clips."""
    return out.with_name(out.stem + ".features")


def predict(
    videos: Path | str,
    run: Path | str,
    out: Path | str,
    *,
    threshold: float | None = None,
    top_k: int = 1,
    fmt: str = "csv",
    per_frame: Path | str | None = None,
    device: str = "auto",
    workers: int | None = None,
    shard_clips: int | None = None,
    show_progress: bool = True,
) -> PredictSummary:
    """Predict every clip of ``videos`` with the trained run ``run``; write ``out`` (CSV in
    the shape ``fmt``, one of :data:`stack.formats.FORMATS`) and, with ``per_frame``, the
    per-frame timeline CSV (:func:`pool.frames.predict_frames`; failed clips have no rows).

    Raises:
        Level2Error, DiscoveryError, BackboneError, StoreError, Level1Error: for the user.
    """
    started = time.perf_counter()
    run, out = Path(run), Path(out).absolute()
    info, _ = load_level2(run)  # fail before any work when the run is not trained
    classes = info["classes"]
    if threshold is not None and not 0 < threshold < 1:
        raise Level2Error("--threshold must be between 0 and 1")
    if not 1 <= top_k <= len(classes):
        raise Level2Error(f"--top-k must be between 1 and {len(classes)}")
    if fmt not in FORMATS:
        raise Level2Error(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if per_frame is not None:
        require_frame_models(Run(run).config().models)
    _, clips = discover(videos)
    inputs = Run(run).inputs()
    cache = features_dir(out)
    cache.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, object] = {"device": device}
    if workers is not None:
        overrides["workers"] = workers
    if shard_clips is not None:
        overrides["shard_clips"] = shard_clips
    stores: list[str] = []  # per run store: a path, or a {fold} pattern (one per fold)
    made: list[Path] = []
    for i, trained in enumerate(inputs["stores"]):
        if "per_fold" in trained:
            for fold, item in enumerate(trained["per_fold"]):
                path = cache / f"store{i}_fold{fold}.h5"
                _extract(videos, path, item["extraction"], overrides, show_progress, fold)
                made.append(path)
            stores.append(str(cache / f"store{i}_fold{{fold}}.h5"))
        else:
            path = cache / f"store{i}.h5"
            _extract(videos, path, trained["extraction"], overrides, show_progress)
            made.append(path)
            stores.append(str(path))
    first = FeatureStore(made[0])
    meta = first.meta()
    current = {c.clip_id for c in clips}  # the cache may hold clips no longer in the input
    failed = _failures(made)
    ok_ids = [c for c in first.ids if c in current and c not in failed]
    probs = pd.DataFrame(columns=classes, dtype=np.float64)
    if ok_ids:
        level1 = predict_level1(
            run, stores, models=info["level1_models"], device=device, ids=ok_ids
        )
        probs = predict_level2(run, level1, meta.loc[ok_ids])
    if per_frame is not None:
        fps = meta["fps"].to_dict()
        tables = predict_frames(run, stores, ok_ids, fps, device=device) if ok_ids else iter(())
        _write_frames(Path(per_frame).absolute(), tables, frame_columns(classes))
    partial = meta["partial"]
    table = _rows([c.clip_id for c in clips], classes, probs, partial, failed, threshold, top_k)
    written = table
    if fmt == "timelapse":
        written = timelapse_table(table, classes, {c.clip_id: c.path for c in clips})
    tmp = out.with_name(out.name + ".tmp")
    written.to_csv(tmp, index=False, float_format="%.6f")
    os.replace(tmp, out)
    status = table["status"].value_counts()
    return PredictSummary(
        out=out,
        clips=len(table),
        ok=int(status.get("ok", 0)),
        partial=int(status.get("partial", 0)),
        failed=int(status.get("failed", 0)),
        seconds=time.perf_counter() - started,
    )


def _write_frames(path: Path, tables: Iterable[pd.DataFrame], columns: list[str]) -> None:
    """Append ``tables`` to a temporary CSV, then rename it to ``path`` (so a killed run
    leaves no half-written timeline)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(columns) + "\n")
        for table in tables:
            table.to_csv(handle, header=False, index=False, float_format="%.6f")
    os.replace(tmp, path)


def _extract(
    videos: Path | str,
    path: Path,
    extraction: dict,
    overrides: dict[str, object],
    show_progress: bool,
    fold: int | None = None,
) -> None:
    """Stage 1 into ``path`` with a training store's ``extraction`` settings (resumable).

    Raises:
        Level2Error: the features made differ from the training features' settings.
    """
    config = config_from_extraction(extraction, **overrides)
    which = extraction["backbone"] + ("" if fold is None else f", fold {fold}'s checkpoint")
    log.info("stage 1 (%s) into %s", which, path.name)
    extract_features(videos, path, config, show_progress=show_progress)
    if not same_extraction(read_extraction(path), extraction):
        raise Level2Error(
            f"features of {path} differ from the run's training features (was a weights file "
            "or checkpoint replaced since training?)"
        )


def _failures(stores: list[Path]) -> dict[str, str]:
    """Clip id → reason, over every store (a clip failed in any store cannot be predicted:
    it gets a failed row; the other clips are predicted)."""
    failed: dict[str, str] = {}
    for path in stores:
        table = FeatureStore(path).failed()
        for cid, reason in zip(table["id"], table["reason"], strict=True):
            failed.setdefault(cid, reason)
    return failed


def _rows(
    ids: list[str],
    classes: list[str],
    probs: pd.DataFrame,
    partial: pd.Series,
    failed: dict[str, str],
    threshold: float | None,
    top_k: int,
) -> pd.DataFrame:
    table = pd.DataFrame({"filepath": ids})
    values = probs.reindex(ids)[classes].to_numpy(dtype=np.float64)
    for k, name in enumerate(classes):
        table[name] = values[:, k]
    have = ~np.isnan(values).any(axis=1)
    order = np.argsort(-np.nan_to_num(values, nan=-1.0), axis=1, kind="stable")
    for rank in range(top_k):
        suffix = "" if rank == 0 else str(rank + 1)
        label_col = f"top{suffix}_label" if rank else "top_label"
        prob_col = f"top{suffix}_prob" if rank else "top_prob"
        picked = order[:, rank]
        table[label_col] = np.where(have, np.asarray(classes, dtype=object)[picked], "")
        table[prob_col] = np.where(have, values[np.arange(len(ids)), picked], np.nan)
    if threshold is not None:
        for k, name in enumerate(classes):
            present = (values[:, k] >= threshold).astype(float)
            table[f"{name}_present"] = np.where(have, present, np.nan)
    is_partial = partial.astype(bool).reindex(ids, fill_value=False).to_numpy(dtype=bool)
    table["status"] = np.where(have, np.where(is_partial, "partial", "ok"), "failed")
    table["error"] = [
        "" if h else failed.get(cid, "no features were produced for this clip")
        for cid, h in zip(ids, have, strict=True)
    ]
    top = ["top_label", "top_prob"] + [
        c for r in range(2, top_k + 1) for c in (f"top{r}_label", f"top{r}_prob")
    ]
    present_cols = [f"{c}_present" for c in classes] if threshold is not None else []
    return table[["filepath", *classes, *top, *present_cols, "status", "error"]]
