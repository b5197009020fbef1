"""Cross-validation folds: multi-label iterative stratification, optionally grouped.

The folds of a run are made once, saved as ``folds.csv`` and reused by every level-1 model
and by level 2. :func:`make_folds` follows Sechidis et al. (2011), "On the stratification of
multi-label data": the rarest remaining class is placed first, each of its units going to
the fold that still wants most of that class. With groups (sites, folders), the unit is the
whole group, so no group is split between training and validation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pool.config import Level1Error

log = logging.getLogger(__name__)

#: k when folds are made and neither the config nor the groups say otherwise.
DEFAULT_FOLDS = 5


def default_fold_count(folds: int | None, groups: np.ndarray | None) -> int:
    """k for new folds: ``folds`` when given, else :data:`DEFAULT_FOLDS`, or one fold per
    group when the clips are grouped into fewer groups than that (leave one site out)."""
    if folds is not None:
        return folds
    n_groups = len(np.unique(groups)) if groups is not None else DEFAULT_FOLDS
    if 2 <= n_groups < DEFAULT_FOLDS:
        log.info("%d groups: one fold per group (%d folds)", n_groups, n_groups)
        return n_groups
    return DEFAULT_FOLDS


def make_folds(
    targets: np.ndarray,
    n_folds: int,
    seed: int,
    groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """Assign each row to one of ``n_folds`` folds.

    Args:
        targets: ``(n, K)`` 0/1 targets (a row may have several classes).
        n_folds: number of folds, at least 2.
        seed: breaks ties and orders units; the same seed gives the same folds.
        groups: optional ``(n,)`` group id per row; rows sharing one land in the same fold.

    Returns:
        ``(n,)`` int64 fold index in ``[0, n_folds)``; every fold is non-empty.

    Raises:
        Level1Error: fewer rows (or groups) than folds.
    """
    y = np.asarray(targets) > 0.5
    n = len(y)
    if groups is None:
        unit_of = np.arange(n)
    else:
        _, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_units = int(unit_of.max()) + 1 if n else 0
    if n_units < n_folds:
        what = "groups" if groups is not None else "clips"
        raise Level1Error(
            f"{n_units} {what} cannot be split into {n_folds} folds; use at most {n_units} "
            "folds (--folds)"
        )
    counts = np.zeros((n_units, y.shape[1]), dtype=np.int64)
    np.add.at(counts, unit_of, y)
    sizes = np.bincount(unit_of, minlength=n_units).astype(np.float64)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_units)
    want_size = np.full(n_folds, n / n_folds)
    want_label = np.tile(counts.sum(axis=0) / n_folds, (n_folds, 1))
    fold_of_unit = np.full(n_units, -1, dtype=np.int64)

    def place(unit: int, wants: np.ndarray) -> None:
        best = np.flatnonzero(np.isclose(wants, wants.max()))
        if len(best) > 1:
            size = want_size[best]
            best = best[np.isclose(size, size.max())]
        fold = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        fold_of_unit[unit] = fold
        want_label[fold] -= counts[unit]
        want_size[fold] -= sizes[unit]

    while True:
        left = order[fold_of_unit[order] < 0]
        if not len(left):
            break
        remaining = counts[left].sum(axis=0)
        if not remaining.any():  # units without any class: balance sizes only
            for unit in left:
                place(int(unit), want_size)
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        with_label = left[counts[left, label] > 0]
        # largest units first (groups), the seeded random order among equals
        with_label = with_label[np.argsort(-counts[with_label, label], kind="stable")]
        for unit in with_label:
            place(int(unit), want_label[:, label])

    folds = fold_of_unit[unit_of]
    empty = sorted(set(range(n_folds)) - set(folds.tolist()))
    if empty:
        raise Level1Error(f"folds {empty} would be empty; use fewer folds or more clips/groups")
    return folds


def inner_split(
    targets: np.ndarray,
    fraction: float,
    seed: int,
    groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """Boolean ``(n,)`` mask of an inner validation part of about ``fraction`` of the rows.

    Stratified and grouped like :func:`make_folds` (it is one of ``round(1 / fraction)``
    folds), so early stopping never sees a group that it also trains on.
    """
    n_units = len(np.unique(np.asarray(groups, dtype=str))) if groups is not None else len(targets)
    k = min(max(2, round(1.0 / fraction)), n_units)
    if k < 2:
        raise Level1Error("a fold's training part has a single group: no inner validation split")
    return make_folds(targets, k, seed, groups) == 0


def write_folds(path: Path, ids: Sequence[str], folds: np.ndarray, groups: Sequence | None) -> None:
    """Write ``folds.csv``: columns ``id``, ``fold`` and, when grouped, ``group``."""
    table = pd.DataFrame({"id": list(ids), "fold": np.asarray(folds, dtype=np.int64)})
    if groups is not None:
        table["group"] = list(groups)
    table.to_csv(path, index=False)


def read_folds(path: Path) -> pd.Series:
    """The fold of each clip from a ``folds.csv`` (or a run directory): Series indexed by id."""
    path = Path(path)
    if path.is_dir():
        path = path / "folds.csv"
    table = pd.read_csv(path, dtype={"id": str, "fold": np.int64, "group": str})
    return table.set_index("id")["fold"]


def check_groups_kept(path: Path, folds: np.ndarray, groups: np.ndarray | None) -> None:
    """Refuse folds (read from ``path``) that put clips of one group in several folds.

    A ``folds.csv`` made without grouping (or with another grouping) would let a site's
    clips be trained on and scored in different folds: optimistic OOF scores.

    Raises:
        Level1Error: a group is split, with the way to rebuild.
    """
    if groups is None:
        return
    listed = folds >= 0
    spread = pd.Series(folds[listed]).groupby(pd.Series(np.asarray(groups)[listed])).nunique()
    split = spread[spread > 1]
    if len(split):
        raise Level1Error(
            f"{path} splits {len(split)} group(s) across folds (e.g. {list(split.index[:3])}):"
            " its folds were made without this grouping, so clips of one group would be"
            " trained on and scored in different folds (optimistic OOF scores). Delete it"
            " (and re-run `jungle finetune --fold K` if its checkpoints used those folds),"
            " or pass a --folds-csv grouped the same way"
        )
