"""``jungle evaluate``: score any predictions CSV against ground-truth labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.metrics import precision_score, recall_score

from pool.labels import read_labels
from pool.metrics import evaluate
from stack.train import Level2Error


def _key(path: str) -> str:
    return Path(os.path.normpath(path)).as_posix()


def evaluate_predictions(predictions: Path | str, labels: Path | str) -> dict:
    """Scores of a predictions CSV (``filepath`` + one probability column per class, as
    written by ``jungle predict``) against a labels CSV (any layout ``train-level1``
    accepts). Rows match on ``filepath`` (normalised); failed rows (empty probabilities)
    and clips without a label are counted and left out.

    Returns:
        ``{"scores": evaluate(...) + per-class precision/recall, "clips": n scored,
        "failed": n, "unlabelled": n, "missing": n labelled clips without a prediction}``.
    """
    table = read_labels(labels)
    preds = pd.read_csv(predictions, dtype={"filepath": str})
    if "filepath" not in preds:
        raise Level2Error(f"{predictions} has no 'filepath' column")
    absent = [c for c in table.classes if c not in preds.columns]
    if absent:
        raise Level2Error(f"{predictions} has no probability column for classes {absent}")
    root = Path(labels).parent
    label_rows = {}
    for i, fp in enumerate(table.filepaths):
        label_rows[_key(fp)] = i
        label_rows[_key(str(root / fp))] = i
    rows, keep = [], []
    for j, fp in enumerate(preds["filepath"]):
        i = label_rows.get(_key(fp))
        if i is not None:
            rows.append(i)
            keep.append(j)
    matched = preds.iloc[keep]
    probs = matched[table.classes].to_numpy(dtype=np.float64)
    ok = ~np.isnan(probs).any(axis=1)
    targets = table.targets[np.asarray(rows, dtype=int)][ok]
    probs = probs[ok]
    if len(probs) == 0:
        raise Level2Error("no prediction matches a labelled clip (compare the filepath columns)")
    scores = evaluate(targets, probs, table.classes)
    y, yhat = targets > 0.5, probs >= 0.5
    scores["precision"] = dict(
        zip(
            table.classes,
            precision_score(y, yhat, average=None, zero_division=0).tolist(),
            strict=True,
        )
    )
    scores["recall"] = dict(
        zip(
            table.classes,
            recall_score(y, yhat, average=None, zero_division=0).tolist(),
            strict=True,
        )
    )
    scores["support"] = dict(zip(table.classes, y.sum(axis=0).astype(int).tolist(), strict=True))
    return {
        "scores": scores,
        "clips": int(ok.sum()),
        "failed": int((~ok).sum()),
        "unlabelled": int(len(preds) - len(keep)),
        "missing": int(len(table) - len(set(rows))),
    }


def report_tables(result: dict) -> list[Table]:
    """Rich tables: the headline scores, then per-class precision and recall."""
    s = result["scores"]
    head = Table(title=f"scores over {result['clips']} clips")
    for col in ("log loss", "top-1 acc", "blank acc", "macro F1", "mean AUC"):
        head.add_column(col, justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    head.add_row(
        fmt(s["log_loss"]),
        fmt(s["top1_accuracy"]),
        fmt(s["blank_accuracy"]),
        fmt(s["macro_f1"]),
        fmt(s["mean_roc_auc"]),
    )
    per = Table(title="per class (threshold 0.5)")
    for col, justify in (
        ("class", "left"),
        ("precision", "right"),
        ("recall", "right"),
        ("log loss", "right"),
        ("clips", "right"),
    ):
        per.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name in s["precision"]:
        per.add_row(
            name,
            fmt(s["precision"][name]),
            fmt(s["recall"][name]),
            fmt(s["class_log_loss"][name]),
            str(s["support"][name]),
        )
    return [head, per]
