"""Helpers shared by the level-1 tests (imported as ``tests.pool.support``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pool.config import Level1Config, load_config
from pool.synthetic import SyntheticSpec

#: small but learnable: the species shows in 2-4 of 16 frames.
SPEC = SyntheticSpec(clips=360, frames=16, failed=3, seed=3)
FAST = {
    "attention": {"epochs": 25, "patience": 6},
    "gru": {"epochs": 25, "patience": 6},
    "pool": {"epochs": 200, "patience": 10},  # lr 3e-4 (the default) needs more epochs
    "histogram": {"frame_steps": 300, "n_estimators": 200},
}


@dataclass(frozen=True)
class Synthetic:
    """A generated store with its labels CSV (written in the store's video root)."""

    store: Path
    labels_csv: Path  #: ``filepath,label,site`` for the clips that did not fail
    labels: pd.DataFrame  #: every clip, failed ones included
    failed: list[str]


def fast_config(syn: Synthetic, run: Path, **overrides: object) -> Level1Config:
    """A config for quick training on ``syn``: 3 folds, few epochs, 1 thread (tiny tensors
    run far faster on one thread than on two contended ones)."""
    settings: dict[str, object] = {
        "features": [str(syn.store)],
        "labels": str(syn.labels_csv),
        "run": str(run),
        "folds": 3,
        "threads": 1,
        "device": "cpu",
        **FAST,
    }
    settings.update(overrides)
    return load_config(None, settings)
