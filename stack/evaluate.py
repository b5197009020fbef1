"""``jungle evaluate``: score any predictions CSV against ground-truth labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.metrics import precision_score, recall_score

from pool.labels import read_labels
from pool.metrics import evaluate
from stack.formats import with_filepath
from stack.plots import figures, save_png
from stack.train import Level2Error


def _key(path: str) -> str:
    return Path(os.path.normpath(path)).as_posix()


@dataclass
class Matched:
    """Predictions matched to labels: the rows both have, with probabilities."""

    classes: list[str]
    ids: list[str]  #: the predictions' ``filepath`` of each scored row
    targets: np.ndarray  #: ``(n, K)`` labels
    probs: np.ndarray  #: ``(n, K)`` predicted probabilities
    failed: int  #: labelled rows without probabilities (failed clips)
    unlabelled: int  #: predictions without a label
    missing: int  #: labelled clips without a prediction


def match_predictions(predictions: Path | str | pd.DataFrame, labels: Path | str) -> Matched:
    """Match a predictions CSV (``filepath`` or ``seq_id`` + one probability column per
    class, as written by ``jungle predict``; or the table itself) with a labels CSV (any layout
    ``train-level1`` accepts). Rows match on ``filepath`` (normalised, also relative to the
    labels' folder); failed rows (empty probabilities) and clips without a label are
    counted and left out.

    Raises:
        Level2Error: no ``filepath`` or class column, or no row matches.
    """
    table = read_labels(labels)
    if isinstance(predictions, pd.DataFrame):
        preds, name = predictions, "the predictions"
    else:
        preds = pd.read_csv(predictions, dtype={"filepath": str, "seq_id": str})
        preds, name = with_filepath(preds), str(predictions)
    if "filepath" not in preds:
        raise Level2Error(f"{name} has no 'filepath' (or 'seq_id') column")
    absent = [c for c in table.classes if c not in preds.columns]
    if absent:
        raise Level2Error(f"{name} has no probability column for classes {absent}")
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
    if not ok.any():
        raise Level2Error("no prediction matches a labelled clip (compare the filepath columns)")
    return Matched(
        classes=list(table.classes),
        ids=[str(v) for v in matched["filepath"].to_numpy()[ok]],
        targets=table.targets[np.asarray(rows, dtype=int)][ok],
        probs=probs[ok],
        failed=int((~ok).sum()),
        unlabelled=int(len(preds) - len(keep)),
        missing=int(len(table) - len(set(rows))),
    )


def score_matched(m: Matched) -> dict:
    """:func:`pool.metrics.evaluate` plus per-class precision, recall (at probability 0.5)
    and support."""
    scores = evaluate(m.targets, m.probs, m.classes)
    y, yhat = m.targets > 0.5, m.probs >= 0.5
    for key, metric in (("precision", precision_score), ("recall", recall_score)):
        values = metric(y, yhat, average=None, zero_division=0).tolist()
        scores[key] = dict(zip(m.classes, values, strict=True))
    scores["support"] = dict(zip(m.classes, y.sum(axis=0).astype(int).tolist(), strict=True))
    return scores


def evaluation(m: Matched) -> dict:
    """The scores of matched predictions (see :func:`evaluate_predictions`)."""
    return {
        "scores": score_matched(m),
        "clips": len(m.ids),
        "failed": m.failed,
        "unlabelled": m.unlabelled,
        "missing": m.missing,
    }


def evaluate_predictions(predictions: Path | str, labels: Path | str) -> dict:
    """Scores of a predictions CSV against a labels CSV (see :func:`match_predictions`).

    Returns:
        ``{"scores": score_matched(...), "clips": n scored, "failed": n, "unlabelled": n,
        "missing": n labelled clips without a prediction}``.
    """
    return evaluation(match_predictions(predictions, labels))


def save_plots(m: Matched, scores: dict, folder: Path | str, stem: str) -> list[Path]:
    """Write the plots of :mod:`stack.plots` of matched predictions ``m`` (``scores`` =
    :func:`score_matched` of them) as ``<stem>.<plot>.png`` in ``folder`` (created); return
    their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save_png(figure, folder / f"{stem}.{name}.png")
        for name, figure in figures(m.targets, m.probs, m.classes, scores).items()
    ]


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
