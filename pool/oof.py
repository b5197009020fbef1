"""Out-of-fold predictions for any estimator: the one k-fold loop of jungle.

:func:`cross_fit` is used by every stage that needs honest predictions of clips a model did
not learn from: the level-1 models over the run's ``folds.csv`` (:mod:`pool.run`), the
histogram model's cross-fitted frame classifier (:mod:`pool.histogram`), the level-2
stacker over the same folds and its inner choice among candidates (:mod:`stack.stacker`).

An estimator follows scikit-learn's contract (``fit(X, y[, groups])``, ``get_params``,
``set_params``; ``sklearn.base.clone`` gives an unfitted copy). ``X`` is anything
:func:`take` can cut rows from: a numpy array, a pandas frame (by position), or a
:class:`~pool.data.FeatureBlock` (a view that reads features on demand, so a fold never
loads the whole store).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

log = logging.getLogger(__name__)


def take(x: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` (sorted) of ``x``: ``x.view(rows)`` for a feature block, ``x.iloc``
    for pandas, numpy indexing for an array; None stays None."""
    if x is None:
        return None
    if isinstance(x, pd.DataFrame | pd.Series):
        return x.iloc[rows]
    if isinstance(x, np.ndarray):
        return x[rows]
    return x.view(rows)


@dataclass
class CrossFit:
    """What :func:`cross_fit` returns."""

    oof: np.ndarray  #: out-of-fold output of every row (its own fold's model)
    models: list[Any]  #: the fitted estimator of each fold, in fold order
    folds: np.ndarray  #: the fold numbers, ascending


def cross_fit(
    estimator: Any,
    x: Any | Callable[[int], Any],
    y: np.ndarray,
    folds: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    method: str = "predict_proba",
    fold_params: Callable[[int], dict] | None = None,
    on_fold: Callable[[int, Any, np.ndarray, np.ndarray], None] | None = None,
) -> CrossFit:
    """Fit a clone of ``estimator`` per fold on the other folds' rows; each fold's rows get
    that model's ``method`` output (out-of-fold).

    Args:
        estimator: an unfitted estimator (it is cloned, never fitted itself).
        x: the inputs (see :func:`take`), or a function fold → inputs where each fold reads
            its own data (e.g. per-fold feature stores; the rows must be the same clips).
        y: ``(n, ...)`` targets.
        folds: ``(n,)`` fold number of each row.
        groups: ``(n,)`` groups passed to ``fit`` (so inner splits keep them apart), or None.
        method: the method giving each held-out row's output.
        fold_params: fold → parameters set on that fold's clone (e.g. its seed).
        on_fold: called after each fold with ``(fold, model, held rows, their output)``
            (to save the model, log its score...).

    Returns:
        The out-of-fold output (the shape of ``method``'s, with ``n`` rows) and the models.
    """
    folds = np.asarray(folds)
    y = np.asarray(y)
    oof: np.ndarray | None = None
    models = []
    numbers = np.unique(folds)
    for fold in numbers:
        data = x(int(fold)) if callable(x) else x
        held = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        model = clone(estimator)
        if fold_params is not None:
            model.set_params(**fold_params(int(fold)))
        if groups is None:
            model.fit(take(data, train), y[train])
        else:
            model.fit(take(data, train), y[train], groups=np.asarray(groups)[train])
        out = np.asarray(getattr(model, method)(take(data, held)))
        if oof is None:
            oof = np.full((len(y), *out.shape[1:]), np.nan, dtype=out.dtype)
        oof[held] = out
        models.append(model)
        if on_fold is not None:
            on_fold(int(fold), model, held, out)
    assert oof is not None, "folds is empty"
    return CrossFit(oof, models, numbers)
