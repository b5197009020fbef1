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
relative to the folder or CSV given; a photo sequence's first photo; named ``seq_id`` when
the input is a Hakuna-style metadata CSV of sequences, whose ``seq_id`` is the clip id), one
probability column per class (training order), ``top_label``, ``top_prob``, ``status``
(``ok``, ``partial`` or ``failed``), ``error``.
Failed clips keep their row with empty probabilities and the reason. ``--top-k K`` adds
``top2_label, top2_prob, ...`` up to K; ``--threshold T`` adds ``CLASS_present`` 0/1 columns.
``--per-frame FRAMES.csv`` also writes the per-frame timeline (:mod:`pool.frames`).
``--format timelapse`` writes the same predictions as a Timelapse import table instead
(:mod:`stack.formats`). Stage 1 also saves a thumbnail of each clip, the frame the run's
attention model weighs most (:mod:`extract.thumbnails`), in ``OUT.features/thumbs/``:
``jungle report`` shows them. ``--camtrap-dp DIR`` also writes the predictions as a Camtrap
DP 1.0.2 package (:mod:`stack.camtrap`); its inputs are read and checked before any video
work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from extract.assemble import same_extraction
from extract.discover import Clip, discover
from extract.pipeline import config_from_extraction, extract_features
from extract.ray_engine import ENGINES
from extract.sequences import DEFAULT_SEQUENCE_GAP
from extract.store import FeatureStore, read_extraction
from extract.thumbnails import Thumbnailer
from extract.timestamps import clip_timestamp
from pool.frames import (
    FRAME_MODELS,
    frame_columns,
    frame_evidence,
    predict_frames,
    require_frame_models,
)
from pool.run import predict_level1
from pool.rundir import Run
from stack.camtrap import (
    CamtrapError,
    CamtrapInputs,
    Photo,
    check_clips,
    check_out_dir,
    evidence_spans,
    read_camtrap_inputs,
    write_camtrap_dp,
)
from stack.formats import FORMATS, timelapse_table
from stack.train import Level2Error, load_level2, predict_level2

log = logging.getLogger(__name__)


#: the probability at which a class is observed in a Camtrap DP package without --threshold.
CAMTRAP_THRESHOLD = 0.5


@dataclass
class CamtrapRequest:
    """``--camtrap-dp DIR --deployments D.csv --taxonomy T.csv [--camtrap-project P.yaml]``."""

    out: Path
    deployments: Path
    taxonomy: Path
    project: Path | None = None


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


def thumbnails_dir(out: Path) -> Path:
    """Where :func:`predict` saves the thumbnails of ``out``'s clips
    (:func:`extract.thumbnails.thumbnail_path` names each)."""
    return features_dir(out) / "thumbs"


def predict(
    videos: Path | str,
    run: Path | str,
    out: Path | str,
    *,
    threshold: float | None = None,
    top_k: int = 1,
    fmt: str = "csv",
    per_frame: Path | str | None = None,
    thumbnails: bool = True,
    camtrap: CamtrapRequest | None = None,
    device: str = "auto",
    workers: int | None = None,
    shard_clips: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    sequence_gap: float = DEFAULT_SEQUENCE_GAP,
    show_progress: bool = True,
) -> PredictSummary:
    """Predict every clip of ``videos`` with the trained run ``run``; write ``out`` (CSV in
    the shape ``fmt``, one of :data:`stack.formats.FORMATS`) and, with ``per_frame``, the
    per-frame timeline CSV (:func:`pool.frames.predict_frames`; failed clips have no rows);
    with ``thumbnails``, a thumbnail per clip extracted (:func:`thumbnails_dir`); with
    ``camtrap``, a Camtrap DP package (classes observed at ``threshold``, default
    :data:`CAMTRAP_THRESHOLD`; event times from the per-frame evidence when the run has the
    attention and histogram models, else the whole clip). Photos of a folder are grouped
    into sequences by ``sequence_gap`` seconds (:func:`extract.discover.discover`). Stage 1
    runs on ``engine`` (``local`` or ``ray``, at ``ray_address``: :mod:`extract.ray_engine`).

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
    if engine not in ENGINES:
        raise Level2Error(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    models = Run(run).config().models
    if per_frame is not None:
        require_frame_models(models)
    camtrap_inputs = None
    if camtrap is not None:
        camtrap_inputs = read_camtrap_inputs(
            camtrap.deployments, camtrap.taxonomy, camtrap.project, classes
        )
        check_out_dir(camtrap.out)
    root, clips = discover(videos, sequence_gap)
    if camtrap_inputs is not None:
        check_clips(camtrap_inputs, [c.clip_id for c in clips], _photo_paths(clips, root))
    inputs = Run(run).inputs()
    cache = features_dir(out)
    cache.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, object] = {
        "device": device,
        "sequence_gap": sequence_gap,
        "engine": engine,
        "ray_address": ray_address,
    }
    if workers is not None:
        overrides["workers"] = workers
    if shard_clips is not None:
        overrides["shard_clips"] = shard_clips
    stores: list[str] = []  # per run store: a path, or a {fold} pattern (one per fold)
    made: list[Path] = []
    for i, trained in enumerate(inputs["stores"]):
        # thumbnails while the first store's clips are decoded (fold 0's, if per fold)
        thumbs = None
        if thumbnails and i == 0:
            evidence = frame_evidence(run, 0 if "per_fold" in trained else None, device)
            thumbs = Thumbnailer(thumbnails_dir(out), evidence)
        if "per_fold" in trained:
            for fold, item in enumerate(trained["per_fold"]):
                path = cache / f"store{i}_fold{fold}.h5"
                _extract(
                    videos,
                    path,
                    item["extraction"],
                    overrides,
                    show_progress,
                    fold,
                    thumbs if fold == 0 else None,
                )
                made.append(path)
            stores.append(str(cache / f"store{i}_fold{{fold}}.h5"))
        else:
            path = cache / f"store{i}.h5"
            _extract(videos, path, trained["extraction"], overrides, show_progress, None, thumbs)
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
    spans_wanted = camtrap is not None and all(m in models for m in FRAME_MODELS)
    spans = None
    if per_frame is not None or spans_wanted:
        fps = meta["fps"].to_dict()
        tables = predict_frames(run, stores, ok_ids, fps, device=device) if ok_ids else iter(())
        if per_frame is not None:
            tables = _written(Path(per_frame).absolute(), tables, frame_columns(classes))
        if spans_wanted:
            spans = evidence_spans(tables, classes, threshold or CAMTRAP_THRESHOLD)
        else:
            for _ in tables:  # written as they pass
                pass
    partial = meta["partial"]
    table = _rows([c.clip_id for c in clips], classes, probs, partial, failed, threshold, top_k)
    times, photos = (
        _recording_times(clips, failed, root)
        if fmt == "timelapse" or camtrap is not None
        else ({}, {})
    )
    written = table
    if fmt == "timelapse":
        written = timelapse_table(table, classes, times, photos)
    elif _is_metadata_csv(videos, clips):
        written = table.rename(columns={"filepath": "seq_id"})
    tmp = out.with_name(out.name + ".tmp")
    written.to_csv(tmp, index=False, float_format="%.6f")
    os.replace(tmp, out)  # the predictions first: nothing later can lose them
    if camtrap is not None and camtrap_inputs is not None:
        _write_camtrap(
            camtrap.out, table, classes, camtrap_inputs, times, photos, meta, spans, threshold
        )
    status = table["status"].value_counts()
    return PredictSummary(
        out=out,
        clips=len(table),
        ok=int(status.get("ok", 0)),
        partial=int(status.get("partial", 0)),
        failed=int(status.get("failed", 0)),
        seconds=time.perf_counter() - started,
    )


def _is_metadata_csv(videos: Path | str, clips: Sequence[Clip]) -> bool:
    """True when the input is a metadata CSV of photo sequences (clip ids are ``seq_id``)."""
    return Path(videos).suffix.lower() == ".csv" and bool(clips) and clips[0].is_sequence


def _written(
    path: Path, tables: Iterable[pd.DataFrame], columns: list[str]
) -> Iterator[pd.DataFrame]:
    """Pass ``tables`` on, appending each to a temporary CSV first; once all have passed,
    rename it to ``path`` (so a killed run leaves no half-written timeline)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(columns) + "\n")
        for table in tables:
            table.to_csv(handle, header=False, index=False, float_format="%.6f")
            yield table
    os.replace(tmp, path)


def _photo_paths(clips: Sequence[Clip], root: Path) -> dict[str, list[str]]:
    """Sequence clip id → its photos' paths relative to ``root`` (the input folder; a photo
    outside it keeps its absolute path), ``/`` separated, in capture order."""
    return {c.clip_id: [_relative(p, root) for p in c.images] for c in clips if c.is_sequence}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _recording_times(
    clips: Sequence[Clip], failed: Mapping[str, str], root: Path | None = None
) -> tuple[dict[str, datetime | None], dict[str, list[Photo]]]:
    """Clip id → recording time (:func:`extract.timestamps.clip_timestamp`; None when the
    file cannot be read). A failed clip's container is not opened again (it may have hung
    the decoder): its file time is used. With ``root`` (the input folder; for Camtrap DP and
    Timelapse),
    also sequence clip id → its photos (:class:`~stack.camtrap.Photo`: path relative to
    ``root`` and capture time), each photo read once: a sequence's own time is then its
    first photo's (its file time when the sequence failed, as without ``root``)."""
    times: dict[str, datetime | None] = {}
    photos: dict[str, list[Photo]] = {}
    for clip in clips:
        if root is not None and clip.is_sequence:
            items = []
            for image in clip.images:
                try:
                    when: datetime | None = clip_timestamp(image)[0]
                except OSError as exc:
                    log.warning("%s: no capture time (%s)", image, exc)
                    when = None
                items.append(Photo(_relative(image, root), when))
            photos[clip.clip_id] = items
            if clip.clip_id not in failed:
                times[clip.clip_id] = items[0].time
                continue
        try:
            times[clip.clip_id] = clip_timestamp(clip.path, clip.clip_id not in failed)[0]
        except OSError as exc:
            log.warning("%s: no recording time (%s)", clip.clip_id, exc)
            times[clip.clip_id] = None
    return times, photos


def _write_camtrap(
    out: Path,
    table: pd.DataFrame,
    classes: list[str],
    inputs: CamtrapInputs,
    times: Mapping[str, datetime | None],
    photos: Mapping[str, Sequence[Photo]],
    meta: pd.DataFrame,
    spans: Mapping[str, Mapping[str, tuple[float, float]]] | None,
    threshold: float | None,
) -> None:
    """The Camtrap DP package of the predictions ``table`` (every video, failed ones too,
    needs its recording time ``times``; every photo of a sequence of ``photos`` its
    capture time).

    Raises:
        CamtrapError: a video or photo without a recording time.
    """
    missing = [cid for cid, when in times.items() if when is None and cid not in photos]
    missing += [p.path for items in photos.values() for p in items if p.time is None]
    if missing:
        raise CamtrapError(f"{missing[0]}: no recording time (the file cannot be read)")
    durations = meta["duration"].astype(float).to_dict()
    write_camtrap_dp(
        out,
        table,
        classes,
        inputs,
        times,
        durations,
        spans,
        threshold or CAMTRAP_THRESHOLD,
        photos,
    )


def _extract(
    videos: Path | str,
    path: Path,
    extraction: dict,
    overrides: dict[str, object],
    show_progress: bool,
    fold: int | None = None,
    thumbnails: Thumbnailer | None = None,
) -> None:
    """Stage 1 into ``path`` with a training store's ``extraction`` settings (resumable),
    writing ``thumbnails`` of the clips it extracts.

    Raises:
        Level2Error: the features made differ from the training features' settings.
    """
    config = config_from_extraction(extraction, **overrides)
    which = extraction["backbone"] + ("" if fold is None else f", fold {fold}'s checkpoint")
    log.info("stage 1 (%s) into %s", which, path.name)
    extract_features(videos, path, config, show_progress=show_progress, thumbnails=thumbnails)
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
