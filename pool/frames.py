"""Per-frame outputs of a trained run: when in a clip the animal is.

For each clip and sampled frame: the attention model's weight (averaged over the fold
models; 0 on padding, summing to 1 over a clip's real frames) and the histogram model's
frame-classifier probability per class (averaged over the fold models and their frame
classifiers). The stores are opened once and streamed; features are read and scored a chunk
of clips at a time, so only masks, metadata and row numbers are held for every clip (as in
:func:`pool.run.predict_level1`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from extract.store import FeatureStore
from extract.thumbnails import Evidence
from pool.config import Level1Error
from pool.data import FeatureBlock, load_block, meta_matrix
from pool.estimators import load_estimator
from pool.run import load_fold_models
from pool.rundir import Run

log = logging.getLogger(__name__)

#: the models the timeline needs: attention weights and frame scores.
FRAME_MODELS: tuple[str, ...] = ("attention", "histogram")
#: clips scored at once.
FRAME_CHUNK = 512


def frame_columns(classes: Sequence[str]) -> list[str]:
    """The columns of :func:`predict_frames`'s tables."""
    return ["filepath", "frame_index", "time_s", "attention", *classes]


def require_frame_models(models: Sequence[str]) -> None:
    """Raise a clear error when a run's ``models`` lack one of :data:`FRAME_MODELS`.

    Raises:
        Level1Error: naming the missing models.
    """
    missing = [m for m in FRAME_MODELS if m not in models]
    if missing:
        raise Level1Error(
            f"per-frame output needs the {' and '.join(FRAME_MODELS)} models; the run has no "
            f"{', '.join(missing)} (train level 1 with them)"
        )


def frame_evidence(
    run_dir: Path | str, fold: int | None = None, device: str = "cpu"
) -> Evidence | None:
    """The evidence function of :mod:`extract.thumbnails` for clips being extracted with a
    run's first store settings: the attention model's weight per frame (the mean over the
    fold models; only fold ``fold``'s where the run has one store per fold). None (the
    thumbnail is then the middle frame) when the run has no attention model, or reads
    several stores (one store's features alone cannot be scored)."""
    run = Run(run_dir)
    config, inputs = run.config(), run.inputs()
    if "attention" not in config.models or len(inputs["stores"]) != 1:
        log.info("thumbnails: the middle frame (the run has no single-store attention model)")
        return None
    store = inputs["stores"][0]
    folds = [fold or 0] if "per_fold" in store else list(range(config.folds))
    models = [load_estimator(run.checkpoint("attention", f), device) for f in folds]
    layers, meta_fields = list(store["layers"]), list(inputs["meta_fields"])

    def evidence(
        features: dict[str, np.ndarray], mask: np.ndarray, meta: Sequence[dict]
    ) -> np.ndarray:
        x = np.concatenate([features[layer] for layer in layers], axis=2)
        block = FeatureBlock(
            [str(i) for i in range(len(x))],
            x,
            mask,
            meta_matrix(pd.DataFrame(list(meta)), meta_fields),
        )
        return sum(m.frame_attention(block) for m in models) / len(models)

    return evidence


def predict_frames(
    run_dir: Path | str,
    stores: Sequence[Path | str],
    ids: Sequence[str],
    fps: Mapping[str, float],
    device: str = "auto",
    chunk: int = FRAME_CHUNK,
) -> Iterator[pd.DataFrame]:
    """One table per chunk of ``ids``: a row per clip and real sampled frame, columns
    :func:`frame_columns` (``time_s`` = frame index / fps).

    Args:
        run_dir: a finished level-1 run with the ``attention`` and ``histogram`` models.
        stores: the new clips' stores, as for :func:`pool.run.predict_level1`.
        ids: clips to describe, in output order (each in every store).
        fps: clip id → frames per second (from the store's metadata).

    Raises:
        Level1Error: the run lacks one of :data:`FRAME_MODELS`, or a clip has no frame rate.
    """
    require_frame_models(Run(run_dir).config().models)
    run, sources, fold_models = load_fold_models(run_dir, stores, FRAME_MODELS, device)
    classes, config = run.classes(), run.config()
    meta_fields = run.inputs()["meta_fields"]
    ids = list(ids)
    # one streamed block per distinct set of stores (one for all folds unless per fold),
    # opened once: only masks, metadata and row numbers are held for every clip
    keys, blocks = [], {}
    for fold in range(config.folds):
        fold_sources = [s.for_fold(fold) for s in sources]
        key = tuple(str(s.path) for s in fold_sources)
        keys.append(key)
        if key not in blocks:
            blocks[key] = load_block(
                fold_sources,
                meta_fields,
                ids=ids,
                in_memory=False,
                read_mb=config.shuffle_window_mb,
            )
    first = FeatureStore(sources[0].for_fold(0).path)
    row_of = {cid: i for i, cid in enumerate(first.ids)}
    store_rows = np.array([row_of[cid] for cid in ids], dtype=np.int64)
    del row_of
    rates = np.array([float(fps.get(cid, 0.0) or 0.0) for cid in ids])
    if (rates <= 0).any():
        bad = ids[int(np.flatnonzero(rates <= 0)[0])]
        raise Level1Error(f"{bad}: the clip has no frame rate; per-frame times are unknown")
    for start in range(0, len(ids), chunk):
        span = np.arange(start, min(start + chunk, len(ids)))
        parts = {key: block.subset(span) for key, block in blocks.items()}
        attention = (
            sum(
                fold_models["attention"][fold].frame_attention(parts[key])
                for fold, key in enumerate(keys)
            )
            / config.folds
        )
        scores = (
            sum(
                fold_models["histogram"][fold].frame_proba(parts[key])
                for fold, key in enumerate(keys)
            )
            / config.folds
        )
        rows = store_rows[span]
        order = np.argsort(rows)
        index = np.empty((len(span), blocks[keys[0]].mask.shape[1]), dtype=np.int64)
        index[order] = first.frame_index(rows[order])
        clip, slot = np.nonzero(parts[keys[0]].mask)
        table = pd.DataFrame(
            {
                "filepath": np.asarray(ids, dtype=object)[span][clip],
                "frame_index": index[clip, slot],
                "time_s": index[clip, slot] / rates[span][clip],
                "attention": attention[clip, slot],
            }
        )
        frame_scores = scores[clip, slot]
        for k, name in enumerate(classes):
            table[name] = frame_scores[:, k]
        yield table
