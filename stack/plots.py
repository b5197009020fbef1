"""The plots of an evaluation, shared by ``jungle evaluate`` (PNG files) and ``jungle
report`` (the same PNGs inline): the confusion matrix, per-class precision and recall, and
the blank-removal curve.

The *blank-removal curve* answers the question a survey team asks first: if every clip
whose ``blank`` probability is at least t is set aside unseen, what share of the truly blank
clips is removed, and what share of the clips with an animal is lost with them? One point
per threshold t (every distinct probability), from keeping everything (0, 0) to removing
everything (1, 1).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pool.labels import BLANK  # noqa: E402

#: the plots, by file-name suffix.
PLOTS: tuple[str, ...] = ("confusion", "per_class", "blank_removal")


@dataclass
class BlankCurve:
    """Points of the blank-removal curve (see the module doc), thresholds descending."""

    thresholds: np.ndarray
    blanks_removed: np.ndarray  #: share of the blank clips removed at each threshold
    animals_lost: np.ndarray  #: share of the animal clips removed with them

    def removed_at(self, lost: float) -> float:
        """The largest share of blanks removed while losing at most ``lost`` of the
        animal clips."""
        ok = self.animals_lost <= lost + 1e-12
        return float(self.blanks_removed[ok].max()) if ok.any() else 0.0


def confusion(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(K, K)`` counts: row = the true class (the clip's highest label), column = the
    predicted top class."""
    k = probs.shape[1]
    truth, pred = np.argmax(targets, axis=1), np.argmax(probs, axis=1)
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)


def blank_curve(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> BlankCurve | None:
    """The blank-removal curve, or None without a ``blank`` class or without both blank and
    animal clips among the labels."""
    if BLANK not in classes:
        return None
    b = classes.index(BLANK)
    is_blank = targets[:, b] > 0.5
    n_blank, n_animal = int(is_blank.sum()), int((~is_blank).sum())
    if n_blank == 0 or n_animal == 0:
        return None
    order = np.argsort(-probs[:, b], kind="stable")
    p = probs[order, b]
    removed = np.cumsum(is_blank[order]) / n_blank
    lost = np.cumsum(~is_blank[order]) / n_animal
    last = np.r_[p[1:] != p[:-1], True]  # one point per distinct threshold
    return BlankCurve(
        thresholds=np.r_[np.inf, p[last]],
        blanks_removed=np.r_[0.0, removed[last]],
        animals_lost=np.r_[0.0, lost[last]],
    )


def figures(
    targets: np.ndarray, probs: np.ndarray, classes: list[str], scores: dict
) -> dict[str, Figure]:
    """The figures of :data:`PLOTS` (``blank_removal`` only when :func:`blank_curve` has
    one). ``scores`` holds ``precision`` and ``recall`` per class."""
    out = {"confusion": _confusion_figure(confusion(targets, probs), classes)}
    out["per_class"] = _per_class_figure(scores, classes)
    curve = blank_curve(targets, probs, classes)
    if curve is not None:
        out["blank_removal"] = _blank_figure(curve)
    return out


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG file and close it."""
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG bytes (closed afterwards)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _confusion_figure(counts: np.ndarray, classes: list[str]) -> Figure:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * k, 1.0 + 0.5 * k))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Greens", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                color = "white" if shares[i, j] > 0.6 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted (top class)")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (clips)")
    return fig


def _per_class_figure(scores: dict, classes: list[str]) -> Figure:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 1.5), 3.2))
    x = np.arange(k)
    ax.bar(x - 0.2, [scores["precision"][c] for c in classes], 0.4, label="precision")
    ax.bar(x + 0.2, [scores["recall"][c] for c in classes], 0.4, label="recall")
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("per class, at probability 0.5")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _blank_figure(curve: BlankCurve) -> Figure:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(curve.blanks_removed, curve.animals_lost, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("share of blank clips removed")
    ax.set_ylabel("share of animal clips lost")
    ax.set_title("blank removal (threshold on P(blank))")
    return fig
