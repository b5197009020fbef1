"""Inputs of ``jungle finetune``: the labelled clips (labels matched to the video source)
and the split of fold K into training and held-out clips."""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import pandas as pd

from extract.discover import Clip, discover
from pool.config import Level1Error
from pool.finetune_config import FinetuneConfig, FinetuneError
from pool.folds import (
    check_groups_kept,
    default_fold_count,
    make_folds,
    read_folds,
    write_folds,
)
from pool.labels import read_labels

log = logging.getLogger(__name__)


@dataclass
class LabelledClips:
    """The labelled clips of a run, in the order of the video source."""

    clips: list[Clip]
    classes: list[str]
    targets: np.ndarray  #: ``(n, K)`` float32
    groups: list[str] | None


def match_clips(config: FinetuneConfig) -> LabelledClips:
    """Read the labels and find each row's clip among ``config.videos``.

    A row's ``filepath`` (relative to the CSV's folder, or absolute) is resolved and compared
    with the resolved paths of the clips; failing that, the path as written is compared with
    the clip ids (paths relative to the video source).

    Raises:
        FinetuneError: no row matches a clip, or some rows match none (unless
            ``skip_missing``), or two rows are the same clip.
        Level1Error: an invalid labels file (see :func:`pool.labels.read_labels`).
        DiscoveryError: an unusable video source.
    """
    if not config.labels.is_file():
        raise FinetuneError(f"labels file {config.labels} does not exist")
    table = read_labels(config.labels, config.group_column)
    _, clips = discover(config.videos)
    if not clips:
        raise FinetuneError(f"{config.videos}: no video files found")
    by_path = {os.path.realpath(c.path): i for i, c in enumerate(clips)}
    by_id = {c.clip_id: i for i, c in enumerate(clips)}
    base = table.source.parent
    found: list[int | None] = []
    for filepath in table.filepaths:
        hit = by_path.get(os.path.realpath(os.path.join(base, filepath)))
        if hit is None:
            rel = posixpath.normpath(filepath.replace("\\", "/")).removeprefix("./")
            hit = by_id.get(rel)
        found.append(hit)
    lost = [row for row, hit in enumerate(found) if hit is None]
    if len(lost) == len(found):
        raise FinetuneError(
            f"no row of {config.labels} matches a clip of {config.videos} (e.g. "
            f"{table.filepaths[0]!r}); label file paths are relative to the CSV's folder"
        )
    if lost:
        lines = ", ".join(f"line {r + 2} {table.filepaths[r]!r}" for r in lost[:6])
        more = f" and {len(lost) - 6} more" if len(lost) > 6 else ""
        if not config.skip_missing:
            raise FinetuneError(
                f"{len(lost)} of {len(found)} rows of {config.labels} match no clip of "
                f"{config.videos}: {lines}{more}. Fix the labels, or pass --skip-missing"
            )
        log.warning("skipping %d label rows that match no clip: %s%s", len(lost), lines, more)
    hits = pd.Series([h for h in found if h is not None])
    if hits.duplicated().any():
        dup = sorted({clips[h].clip_id for h in hits[hits.duplicated()]})
        raise FinetuneError(f"several label rows are the same clip: {dup[:6]}")
    rows = np.array([r for r, h in enumerate(found) if h is not None], dtype=np.int64)
    rows = rows[np.argsort([found[r] for r in rows], kind="stable")]  # video-source order
    chosen = [clips[int(found[r])] for r in rows]
    if config.group_by_folder:
        groups = [posixpath.dirname(c.clip_id) for c in chosen]
    elif table.groups is not None:
        groups = [table.groups[r] for r in rows]
    else:
        groups = None
    return LabelledClips(chosen, table.classes, table.targets[rows], groups)


def fold_split(config: FinetuneConfig, data: LabelledClips) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, held-out rows)`` of ``data`` for ``config.fold``.

    Without a fold every clip trains and none is held out. With one, folds are read from
    ``folds_csv`` (or ``RUN/folds.csv``), or made and written to ``RUN/folds.csv``. Clips that
    a ``folds.csv`` does not list are left out of both parts (with a warning).

    Raises:
        FinetuneError: a missing ``folds_csv``, a ``folds.csv`` about other clips, or a fold
            that does not exist.
    """
    n = len(data.clips)
    if config.fold is None:
        log.warning(
            "no --fold: fine-tuning on every labelled clip. Features of these clips made with "
            "this backbone leak their labels into level-1 out-of-fold predictions; use it for "
            "new clips only, or fine-tune per fold (--fold K) for honest OOF"
        )
        return np.arange(n), np.zeros(0, dtype=np.int64)
    path = config.folds_csv or config.run / "folds.csv"
    ids = [c.clip_id for c in data.clips]
    if path.is_file():
        try:
            table = read_folds(path)
            fold_of = table.reindex(ids).to_numpy(dtype=np.float64)
        except (OSError, KeyError, ValueError) as exc:  # unreadable, no column, duplicate ids
            raise FinetuneError(f"cannot read folds {path}: {exc}") from exc
        listed = ~np.isnan(fold_of)
        if not listed.any():
            raise FinetuneError(
                f"{path} lists none of the labelled clips of {config.videos} (its ids look like "
                f"{list(table.index[:2])}, the clips' like {ids[:2]}); pass the --videos source "
                "the feature store was extracted from"
            )
        if not listed.all():
            log.warning(
                "%d labelled clips are not in %s (e.g. %s): they are not used",
                int((~listed).sum()),
                path,
                [i for i, ok in zip(ids, listed, strict=True) if not ok][:3],
            )
        folds = np.where(listed, fold_of, -1).astype(np.int64)
        try:
            check_groups_kept(path, folds, data.groups)
        except Level1Error as exc:
            raise FinetuneError(str(exc)) from exc
        present = sorted(set(table.tolist()))
        log.info("folds from %s", path)
    elif config.folds_csv is not None:
        raise FinetuneError(f"folds file {config.folds_csv} does not exist")
    else:
        k = default_fold_count(config.folds, data.groups)
        if config.fold >= k:
            raise FinetuneError(f"fold {config.fold} does not exist with {k} folds")
        try:
            folds = make_folds(data.targets, k, config.seed, data.groups)
        except Level1Error as exc:
            raise FinetuneError(str(exc)) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        write_folds(path, ids, folds, data.groups)
        present = list(range(k))
        log.info("made %d folds over %d labelled clips: %s", k, n, path)
    if config.fold not in present:
        raise FinetuneError(
            f"fold {config.fold} is not in {path}, whose folds are {min(present)}-{max(present)}"
        )
    held = np.flatnonzero(folds == config.fold)
    train = np.flatnonzero((folds >= 0) & (folds != config.fold))
    if not len(train):
        raise FinetuneError(f"fold {config.fold}'s training part has no clip")
    return train, held
