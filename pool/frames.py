"""Per-frame outputs of a trained run: when in a clip the animal is.

For each clip and sampled frame: the attention model's weight (averaged over the fold
models; 0 on padding, summing to 1 over a clip's real frames) and the histogram model's
frame-classifier probability per class (averaged over the fold models and their frame
classifiers). Read and scored a chunk of clips at a time, so memory does not grow with the
number of clips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from extract.store import FeatureStore
from pool.config import Level1Error
from pool.data import FeatureBlock, load_block
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
    classes = run.classes()
    folds = run.config().folds
    first = FeatureStore(sources[0].for_fold(0).path)
    row_of = {cid: i for i, cid in enumerate(first.ids)}
    meta_fields = run.inputs()["meta_fields"]
    for start in range(0, len(ids), chunk):
        part = list(ids[start : start + chunk])
        rate = np.array([float(fps.get(cid, 0.0) or 0.0) for cid in part])
        if (rate <= 0).any():
            bad = part[int(np.flatnonzero(rate <= 0)[0])]
            raise Level1Error(f"{bad}: the clip has no frame rate; per-frame times are unknown")
        attention = scores = None
        blocks: dict[tuple[str, ...], FeatureBlock] = {}  # one read unless stores are per fold
        for fold in range(folds):
            fold_sources = [s.for_fold(fold) for s in sources]
            key = tuple(str(s.path) for s in fold_sources)
            if key not in blocks:
                blocks.clear()
                blocks[key] = load_block(fold_sources, meta_fields, ids=part)
            block = blocks[key]
            a = fold_models["attention"][fold].frame_attention(block)
            p = fold_models["histogram"][fold].frame_proba(block)
            attention = a if attention is None else attention + a
            scores = p if scores is None else scores + p
        assert attention is not None and scores is not None
        rows = np.array([row_of[cid] for cid in part])
        order = np.argsort(rows)
        index = np.empty((len(part), block.mask.shape[1]), dtype=np.int64)
        index[order] = first.frame_index(rows[order])
        mask = block.mask
        clip, slot = np.nonzero(mask)
        table = pd.DataFrame(
            {
                "filepath": np.asarray(part, dtype=object)[clip],
                "frame_index": index[clip, slot],
                "time_s": index[clip, slot] / rate[clip],
                "attention": (attention / folds)[clip, slot],
            }
        )
        frame_scores = (scores / folds)[clip, slot]
        for k, name in enumerate(classes):
            table[name] = frame_scores[:, k]
        yield table
