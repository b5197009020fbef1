"""Scores of out-of-fold predictions, the class-prior baseline, and the results table.

* ``log_loss``: mean over classes of the binary log loss (the Pri-matrix metric),
  probabilities clipped to ``[1e-7, 1 - 1e-7]``.
* ``top1_accuracy``: the most probable class is one of the clip's classes.
* ``macro_f1``: per-class F1 at threshold 0.5, averaged over classes.
* ``roc_auc``: per class (``None`` where a class has only one target value).
* ``blank_accuracy``: blank vs animal, a clip called blank when ``P(blank) >= 0.5``.
"""

from __future__ import annotations

import numpy as np
from rich.table import Table
from sklearn.metrics import f1_score, roc_auc_score

from pool.labels import BLANK

EPS = 1e-7


def prior_oof(targets: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Class-prior baseline: each held-out clip gets its fold's training class frequencies."""
    out = np.empty(targets.shape, dtype=np.float32)
    for fold in np.unique(folds):
        held = folds == fold
        out[held] = targets[~held].mean(axis=0)
    return out


def logit(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Log-odds (float64) of probabilities, clipped to ``[eps, 1 - eps]`` first."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function (the inverse of :func:`logit`)."""
    return 1.0 / (1.0 + np.exp(-z))


def class_log_loss(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(K,)`` binary log loss of each class, averaged over clips."""
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    return -np.mean(targets * np.log(p) + (1 - targets) * np.log1p(-p), axis=0)


def evaluate(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Every metric of the module docstring for ``(n, K)`` targets and probabilities."""
    y = targets > 0.5
    per_class = class_log_loss(targets, probs)
    top = np.argmax(probs, axis=1)
    auc = {}
    for k, name in enumerate(classes):
        both = 0 < y[:, k].sum() < len(y)
        auc[name] = float(roc_auc_score(y[:, k], probs[:, k])) if both else None
    defined = [v for v in auc.values() if v is not None]
    result = {
        "log_loss": float(per_class.mean()),
        "top1_accuracy": float(np.mean(y[np.arange(len(y)), top])),
        "macro_f1": float(f1_score(y, probs >= 0.5, average="macro", zero_division=0)),
        "mean_roc_auc": float(np.mean(defined)) if defined else None,
        "blank_accuracy": None,
        "class_log_loss": dict(zip(classes, map(float, per_class), strict=True)),
        "roc_auc": auc,
    }
    if BLANK in classes:
        b = classes.index(BLANK)
        result["blank_accuracy"] = float(np.mean((probs[:, b] >= 0.5) == y[:, b]))
    return result


def metrics_table(metrics: dict[str, dict], title: str = "level-1 out-of-fold scores") -> Table:
    """A rich table with one row per model (and the prior), best log loss in bold."""
    table = Table(title=title)
    for column, justify in (
        ("model", "left"),
        ("log loss", "right"),
        ("top-1 acc", "right"),
        ("macro F1", "right"),
        ("mean AUC", "right"),
        ("blank acc", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    best = min(m["log_loss"] for m in metrics.values())

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for name, m in metrics.items():
        loss = fmt(m["log_loss"])
        table.add_row(
            name,
            f"[bold]{loss}[/]" if m["log_loss"] == best else loss,
            fmt(m["top1_accuracy"]),
            fmt(m["macro_f1"]),
            fmt(m["mean_roc_auc"]),
            fmt(m["blank_accuracy"]),
        )
    return table
