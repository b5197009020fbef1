"""The ``histogram`` meta-model: frame classifier → order-free statistics → gradient boosting.

1. A frame classifier (a one-hidden-layer MLP, 256 units by default; ``frame_hidden: 0``
   gives a logistic regression, far weaker on the generated sets: docs/level2.md) gives
   every real frame one logit per class. It learns from the clips' labels in one of two
   ways (``frame_training``). ``mil``, multiple-instance learning: a clip's logit is a soft
   maximum of its frames' logits (log-sum-exp minus log of the number of frames) for a
   species, and a soft minimum for ``blank`` (a clip is blank when all its frames are), so
   the frames of an animal clip in which the animal is not visible are not pushed towards
   that species. ``propagate``: every real frame learns its clip's labels (Hakuna
   Ma-Data). Each is better on some generated sets and worse on others; ``both`` (the
   default) trains one model of each (steps 1-3 below) and averages their clip logits,
   which beat both on every set measured (docs/level2.md). What it
   sees (``frame_input``): each frame as stored (``raw``), or each real frame minus its
   clip's mean real frame (``centered``, as the sequence model: removes the background
   the frames share; every one-frame clip then looks the same to it). ``auto`` (the
   default) centres videos and keeps photo sequences raw (:func:`resolve_frame_input`).
2. Per clip and class, the per-frame probabilities are summarised by mean, median, min,
   max, 10th and 90th percentile and a histogram (fraction of frames per bin on [0, 1]).
3. One booster per class (LightGBM or XGBoost) maps the statistics to a clip probability.

Honesty: the boosters must learn from frame probabilities of clips the frame classifier
did not see. Within a fold's training part the frame classifier is cross-fitted on
``frame_folds`` inner folds by :func:`pool.oof.cross_fit` (each clip is scored by the
classifier that did not train on it). Boosters train on the inner fit part and stop early
on the inner validation part.
Held-out and new clips are scored by each frame classifier in turn, and the boosters'
outputs are averaged over the classifiers; with ``both``, each member (frame training)
does this with its own classifiers and boosters (the same inner folds, frame
standardisation and seeds), and the members' probabilities are averaged as logits.

Memory: features are only ever read a block at a time through the block's
:class:`~pool.data.FeatureReader`. The frame classifier trains on streamed minibatches (the
:class:`~pool.data.BlockShuffle` order), and clip statistics are computed
:data:`SCORE_BATCH` clips at a time, every classifier on each block read; what is kept per
clip is its statistics vector.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import torch
import torch.nn.functional as F
import xgboost as xgb
from sklearn.base import BaseEstimator
from torch import nn

from pool.config import HistogramConfig, SequenceConfig
from pool.data import (
    BlockShuffle,
    FeatureBlock,
    frame_inputs,
    frame_moments,
    sequential,
    shuffled_batches,
)
from pool.folds import make_folds
from pool.metrics import logit, sigmoid
from pool.oof import cross_fit
from pool.train_torch import seeded

log = logging.getLogger(__name__)

#: order-free statistics per class, before the histogram bins.
STATISTICS: tuple[str, ...] = ("mean", "median", "min", "max", "p10", "p90")
#: clips per forward pass (and per feature read) when scoring frames.
SCORE_BATCH = 256
#: clips whose statistics go through the boosters at once when predicting.
PREDICT_PART = 4096
#: ``frame_input: auto`` centres the frames when the training clips' median number of real
#: frames is at least this (videos), and keeps them raw below it (photo sequences).
AUTO_CENTER_FRAMES = 8
#: the members of ``frame_training: both``.
FRAME_TRAININGS: tuple[str, ...] = ("mil", "propagate")


def resolve_frame_input(frame_input: str, mask: np.ndarray) -> str:
    """``frame_input``, with ``auto`` decided from the training clips' frame mask ``(n, T)``:
    ``centered`` when their median number of real frames is at least
    :data:`AUTO_CENTER_FRAMES` (videos: centring removes the site's background), else
    ``raw`` (photo sequences of a few images, which centring reduces to little or nothing)."""
    if frame_input != "auto":
        return frame_input
    frames = float(np.median(mask.sum(axis=1))) if len(mask) else 0.0
    return "centered" if frames >= AUTO_CENTER_FRAMES else "raw"


def saved_config(config: dict) -> HistogramConfig:
    """The settings of a saved histogram model; models saved before ``frame_input``
    existed saw raw frames, before ``frame_training`` they were trained by MIL."""
    return HistogramConfig(**({"frame_input": "raw", "frame_training": "mil"} | config))


class FrameClassifier(nn.Module):
    """Standardisation (buffers) then a linear layer or a one-hidden-layer MLP."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        if hidden:
            self.body = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
            )
        else:
            self.body = nn.Sequential(nn.Linear(in_dim, n_classes))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` frame features → ``(..., K)`` logits."""
        return self.body((frames - self.x_mean) / self.x_std)


def pooled_logits(logits: torch.Tensor, mask: torch.Tensor, blank: int | None) -> torch.Tensor:
    """Clip logits from ``(B, T, K)`` frame logits over real frames (``mask`` ``(B, T)``):
    log-sum-exp minus log(frames) (between mean and max) per class, its mirror image (a soft
    minimum) for class ``blank``."""
    m = mask.unsqueeze(-1)
    log_n = torch.log(mask.sum(dim=1, keepdim=True).to(logits.dtype))
    soft_max = torch.logsumexp(logits.masked_fill(~m, float("-inf")), dim=1) - log_n
    if blank is None:
        return soft_max
    soft_min = log_n - torch.logsumexp((-logits).masked_fill(~m, float("-inf")), dim=1)
    is_blank = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_blank[blank] = True
    return torch.where(is_blank, soft_min, soft_max)


#: a frame-classifier loss: ``(B, T, K)`` frame logits, ``(B, T)`` mask of real frames and
#: ``(B, K)`` clip targets → a scalar.
FrameLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train_frame_classifier(
    block: FeatureBlock,
    targets: np.ndarray,
    rows: np.ndarray,
    moments: tuple[np.ndarray, np.ndarray],
    seed: int,
    device: torch.device,
    shuffle: BlockShuffle | None,
    *,
    settings: HistogramConfig | SequenceConfig,
    loss: FrameLoss,
    after_step: Callable[[int, FrameClassifier], bool] | None = None,
) -> FrameClassifier:
    """Train a :class:`FrameClassifier` on clips ``rows`` from their clip labels; shared by
    the ``histogram`` and ``sequence`` models, whose ``settings`` give its width
    (``frame_hidden``, 0 for a linear layer), ``frame_steps``, ``frame_batch_clips``,
    ``frame_lr`` and ``frame_weight_decay``.

    Each of at most ``steps`` AdamW steps takes the next ``batch_clips`` clips of the
    ``shuffle`` order (passes over ``rows`` follow one another; a step may span two) and
    minimises ``loss(frame logits, mask, clip targets)``. ``moments``: per-channel mean and
    std that standardise the frames. The output bias starts at the logit of the class
    frequencies of ``rows``. ``after_step(step, classifier)`` (1-based step) is called after
    each step; training stops early when it returns True.
    """
    hidden, steps, batch_clips = (
        settings.frame_hidden,
        settings.frame_steps,
        settings.frame_batch_clips,
    )
    lr, weight_decay = settings.frame_lr, settings.frame_weight_decay
    rows = np.sort(rows)
    shuffle = shuffle or BlockShuffle()
    y_all = torch.from_numpy(targets.astype(np.float32))
    mean, std = moments
    rng = np.random.default_rng(seed)
    with seeded(seed, device):
        clf = FrameClassifier(block.dims, targets.shape[1], hidden)
        clf.x_mean.copy_(torch.from_numpy(mean))
        clf.x_std.copy_(torch.from_numpy(std))
        prior = y_all[rows].mean(dim=0).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            clf.body[-1].bias.copy_(torch.log(prior) - torch.log1p(-prior))
        clf.to(device).train()
        optimiser = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
        batch = min(batch_clips, len(rows))
        windows = shuffle.epochs(rows, rng, block.features.clip_bytes)
        batches = shuffled_batches(block.features, windows, batch)
        for step, (pick, features) in enumerate(itertools.islice(batches, steps), start=1):
            x = torch.from_numpy(features).to(device).float()
            mask = torch.from_numpy(block.mask[pick]).to(device)
            value = loss(clf(x), mask, y_all[pick].to(device))
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            if after_step is not None and after_step(step, clf):
                break
    return clf.eval()


def propagated_loss(logits: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every real frame against its clip's labels (mean over real
    frames and classes): label propagation, as Hakuna Ma-Data trained per image."""
    target = y.unsqueeze(1).expand_as(logits)
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=-1)
    return (per * mask).sum() / mask.sum()


def fit_frame_classifier(
    cfg: HistogramConfig,
    block: FeatureBlock,
    targets: np.ndarray,
    rows: np.ndarray,
    blank: int | None,
    moments: tuple[np.ndarray, np.ndarray],
    seed: int,
    device: torch.device,
    shuffle: BlockShuffle | None = None,
) -> FrameClassifier:
    """Train the histogram model's :class:`FrameClassifier` on clips ``rows``
    (:func:`train_frame_classifier`, ``cfg.frame_*`` settings). ``frame_training``:
    ``propagate``, every real frame learns its clip's labels (:func:`propagated_loss`); or
    ``mil``, the binary cross-entropy of :func:`pooled_logits` against the clip labels
    (``blank``: index of the blank class)."""

    def mil_loss(logits: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(pooled_logits(logits, mask, blank), y)

    return train_frame_classifier(
        block,
        targets,
        rows,
        moments,
        seed,
        device,
        shuffle,
        settings=cfg,
        loss=propagated_loss if cfg.frame_training == "propagate" else mil_loss,
    )


@torch.no_grad()
def frame_probabilities(classifier: FrameClassifier, x: np.ndarray) -> np.ndarray:
    """``(n, T, K)`` per-frame probabilities of features ``x`` ``(n, T, C)``."""
    device = next(classifier.parameters()).device
    frames = torch.from_numpy(x).to(device).float()
    return torch.sigmoid(classifier(frames)).cpu().numpy()


def score_clips(
    classifiers: list[FrameClassifier], block: FeatureBlock, rows: np.ndarray, bins: int
) -> list[np.ndarray]:
    """Per classifier, the ``(len(rows), F)`` :func:`clip_statistics` of clips ``rows``.

    Features are read :data:`SCORE_BATCH` clips at a time (ascending rows), and every
    classifier scores each block read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    width = len(classifiers[0].body[-1].bias) * (len(STATISTICS) + bins) if classifiers else 0
    out = [np.empty((len(rows), width), dtype=np.float32) for _ in classifiers]
    for pos, x in sequential(block.features, rows, SCORE_BATCH):
        mask = block.mask[rows[pos]]
        for stats, clf in zip(out, classifiers, strict=True):
            stats[pos] = clip_statistics(frame_probabilities(clf, x), mask, bins)
    return out


def clip_statistics(probs: np.ndarray, mask: np.ndarray, bins: int) -> np.ndarray:
    """Order-free statistics of per-frame probabilities over each clip's real frames.

    Args:
        probs: ``(n, T, K)`` per-frame probabilities.
        mask: ``(n, T)`` bool, True on real frames (at least one per clip).
        bins: histogram bins on [0, 1].

    Returns:
        ``(n, K * (6 + bins))`` float32: per class, :data:`STATISTICS` then the fraction of
        real frames in each bin. Quantiles interpolate linearly (as ``numpy.quantile``).
    """
    n, t, k = probs.shape
    lengths = mask.sum(axis=1)
    ordered = np.sort(np.where(mask[:, :, None], probs, np.inf), axis=1)  # padding last

    def quantile(q: float) -> np.ndarray:
        pos = q * (lengths - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, lengths - 1)
        frac = (pos - lo)[:, None]
        low = np.take_along_axis(ordered, lo[:, None, None].repeat(k, axis=2), axis=1)[:, 0]
        high = np.take_along_axis(ordered, hi[:, None, None].repeat(k, axis=2), axis=1)[:, 0]
        return low + frac * (high - low)

    weights = mask[:, :, None].astype(np.float32)
    mean = (probs * weights).sum(axis=1) / lengths[:, None]
    stats = [mean, quantile(0.5), quantile(0.0), quantile(1.0), quantile(0.1), quantile(0.9)]
    which = np.minimum((probs * bins).astype(np.int64), bins - 1)
    hist = [((which == b) & mask[:, :, None]).sum(axis=1) / lengths[:, None] for b in range(bins)]
    return (
        np.stack(stats + hist, axis=2).reshape(n, k * (len(STATISTICS) + bins)).astype(np.float32)
    )


def _fit_booster(
    cfg: HistogramConfig,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
    threads: int | None,
) -> dict:
    """One class's booster as ``{"kind", "model" (text), "rounds"}``, or a constant."""
    prior = float(np.clip(np.concatenate([y_fit, y_val]).mean(), 1e-4, 1 - 1e-4))
    if y_fit.min() == y_fit.max():
        return {"kind": "constant", "value": prior}
    if cfg.booster == "lightgbm":
        params = {
            "objective": "binary",
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "min_data_in_leaf": cfg.min_child_samples,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": threads or 0,
            "verbose": -1,
        }
        train = lgb.Dataset(x_fit, y_fit)
        valid = lgb.Dataset(x_val, y_val, reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=cfg.n_estimators,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
        )
        rounds = booster.best_iteration or booster.current_iteration()
        return {
            "kind": "lightgbm",
            "model": booster.model_to_string(num_iteration=rounds),
            "rounds": rounds,
        }
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "eta": cfg.learning_rate,
        "max_depth": max(1, math.ceil(math.log2(cfg.num_leaves))),
        "min_child_weight": 1.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "lambda": 1.0,
        "seed": seed,
        "nthread": threads or 0,
        "verbosity": 0,
    }
    booster = xgb.train(
        params,
        xgb.DMatrix(x_fit, label=y_fit),
        num_boost_round=cfg.n_estimators,
        evals=[(xgb.DMatrix(x_val, label=y_val), "val")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    rounds = booster.best_iteration + 1
    text = booster[:rounds].save_raw("json").decode("utf-8")
    return {"kind": "xgboost", "model": text, "rounds": rounds}


def _booster_predict(spec: dict, x: np.ndarray, cache: dict[int, object], key: int) -> np.ndarray:
    if spec["kind"] == "constant":
        return np.full(len(x), spec["value"], dtype=np.float32)
    if key not in cache:
        if spec["kind"] == "lightgbm":
            cache[key] = lgb.Booster(model_str=spec["model"])
        else:
            booster = xgb.Booster()
            booster.load_model(bytearray(spec["model"].encode("utf-8")))
            cache[key] = booster
    booster = cache[key]
    if spec["kind"] == "lightgbm":
        return booster.predict(x).astype(np.float32)
    return booster.predict(xgb.DMatrix(x)).astype(np.float32)


@dataclass
class HistogramMember:
    """One way of training the frame classifier (``training``: ``mil`` or ``propagate``):
    its cross-fitted frame classifiers and the boosters trained on their statistics."""

    training: str
    classifiers: list[FrameClassifier]
    boosters: list[dict]  #: one per class, see :func:`_fit_booster`
    _cache: dict[int, object] = field(default_factory=dict, repr=False)

    def predict_statistics(self, stats: np.ndarray) -> np.ndarray:
        """``(n, K)`` probabilities from clip statistics."""
        cols = [_booster_predict(s, stats, self._cache, k) for k, s in enumerate(self.boosters)]
        return np.stack(cols, axis=1)

    def state(self) -> dict:
        """The member's part of a checkpoint."""
        return {
            "training": self.training,
            "classifiers": [
                {k: v.detach().cpu() for k, v in clf.state_dict().items()}
                for clf in self.classifiers
            ],
            "boosters": self.boosters,
        }


@dataclass
class HistogramModel:
    """A trained histogram model of one fold: one member per frame training
    (``frame_training: both``: MIL and propagation, their clip logits averaged)."""

    config: HistogramConfig
    members: list[HistogramMember]
    info: dict[str, float] = field(default_factory=dict)

    @property
    def classifiers(self) -> list[FrameClassifier]:
        """Every member's frame classifiers, member by member."""
        return [clf for m in self.members for clf in m.classifiers]

    @property
    def n_classes(self) -> int:
        """Classes (one booster each)."""
        return len(self.members[0].boosters)

    def predict(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), K)`` float32 probabilities for clips ``rows`` (default all).

        Within a member, each frame classifier's statistics go through the boosters
        separately (the boosters were trained on single-classifier statistics) and the
        probabilities are averaged; the members' probabilities are averaged as logits.
        Every classifier scores each block of features read.
        """
        block = frame_inputs(block, self.config.frame_input)
        rows = np.arange(len(block)) if rows is None else np.asarray(rows, dtype=np.int64)
        classifiers = self.classifiers
        owner = [i for i, m in enumerate(self.members) for _ in m.classifiers]
        k = self.n_classes
        counts = np.array([len(m.classifiers) for m in self.members], dtype=np.float32)
        out = np.zeros((len(rows), k), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        for start in range(0, len(rows), PREDICT_PART):
            pos = order[start : start + PREDICT_PART]
            sums = np.zeros((len(self.members), len(pos), k), dtype=np.float32)
            scored = score_clips(classifiers, block, rows[pos], self.config.bins)
            for stats, i in zip(scored, owner, strict=True):
                sums[i] += self.members[i].predict_statistics(stats)
            probs = sums / counts[:, None, None]
            out[pos] = probs[0] if len(self.members) == 1 else _logit_mean(probs)
        return out

    def frame_proba(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), T, K)`` float32 per-frame probabilities: the mean of every frame
        classifier (padding slots are scored too; mask them with ``block.mask``)."""
        block = frame_inputs(block, self.config.frame_input)
        rows = np.arange(len(block)) if rows is None else np.asarray(rows, dtype=np.int64)
        classifiers = self.classifiers
        out = np.zeros((len(rows), block.mask.shape[1], self.n_classes), dtype=np.float32)
        for pos, x in sequential(block.features, rows, SCORE_BATCH):
            for clf in classifiers:
                out[pos] += frame_probabilities(clf, x)
        return out / len(classifiers)

    def checkpoint(self) -> dict:
        """A dict for ``torch.save`` (loadable with ``weights_only=True``)."""
        first = self.classifiers[0]
        return {
            "kind": "histogram",
            "model": "histogram",
            "config": self.config.model_dump(),
            "sizes": {
                "in_dim": int(first.x_mean.numel()),
                "n_classes": self.n_classes,
            },
            "info": dict(self.info),
            "members": [m.state() for m in self.members],
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device) -> HistogramModel:
        """Rebuild a model saved by :meth:`checkpoint` (or by a jungle from before
        ``members``: one member at the top level)."""
        config = saved_config(ckpt["config"])
        states = ckpt.get("members") or [
            {
                "training": config.frame_training,
                "classifiers": ckpt["classifiers"],
                "boosters": ckpt["boosters"],
            }
        ]
        members = []
        for state in states:
            classifiers = []
            for weights in state["classifiers"]:
                clf = FrameClassifier(
                    ckpt["sizes"]["in_dim"], ckpt["sizes"]["n_classes"], config.frame_hidden
                )
                clf.load_state_dict(weights)
                classifiers.append(clf.to(device).eval())
            members.append(HistogramMember(state["training"], classifiers, state["boosters"]))
        return cls(config, members, ckpt["info"])


def _logit_mean(probs: np.ndarray) -> np.ndarray:
    """The sigmoid of the mean logit over the first axis of probabilities ``probs``."""
    return sigmoid(logit(probs).mean(axis=0)).astype(np.float32)


class FrameScorer(BaseEstimator):
    """The frame classifier as an estimator: ``fit`` trains it on a block's clips,
    ``transform`` gives the :func:`clip_statistics` of a block's clips (what the boosters
    learn from). ``moments``: the frame standardisation, fixed beforehand (it uses no labels)."""

    def __init__(
        self,
        config: HistogramConfig | None = None,
        blank: int | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
        random_state: int = 0,
        device: str = "cpu",
        shuffle: BlockShuffle | None = None,
    ) -> None:
        self.config = config
        self.blank = blank
        self.moments = moments
        self.random_state = random_state
        self.device = device
        self.shuffle = shuffle

    def fit(self, X: FeatureBlock, y: np.ndarray) -> FrameScorer:
        cfg = self.config or HistogramConfig()
        moments = self.moments or frame_moments(X.features, X.mask, np.arange(len(X)))
        rows = np.arange(len(X))
        device = torch.device(self.device)
        args = (cfg, X, y, rows, self.blank, moments, self.random_state, device, self.shuffle)
        self.classifier_ = fit_frame_classifier(*args)
        return self

    def transform(self, X: FeatureBlock) -> np.ndarray:
        cfg = self.config or HistogramConfig()
        return score_clips([self.classifier_], X, np.arange(len(X)), cfg.bins)[0]


def fit_histogram(
    cfg: HistogramConfig,
    block: FeatureBlock,
    targets: np.ndarray,
    groups: np.ndarray | None,
    blank: int | None,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
    device: torch.device,
    threads: int | None = None,
    shuffle: BlockShuffle | None = None,
) -> HistogramModel:
    """Train the histogram model on a fold's training part (``fit_rows`` + ``val_rows``).

    ``frame_input: auto`` is decided here (:func:`resolve_frame_input`); the model's config
    (and so its checkpoint) holds the input used.

    For each frame training (two with ``frame_training: both``) the frame classifier is
    cross-fitted over the training part (minibatches in the ``shuffle`` order); the boosters
    train on the statistics of ``fit_rows`` and stop early on those of ``val_rows``.
    """
    start = time.perf_counter()
    train_rows = np.sort(np.concatenate([fit_rows, val_rows]))
    frame_input = resolve_frame_input(cfg.frame_input, block.mask[train_rows])
    if frame_input != cfg.frame_input:
        log.info("histogram: frame_input auto -> %s", frame_input)
        cfg = cfg.model_copy(update={"frame_input": frame_input})
    block = frame_inputs(block, frame_input)
    part_groups = groups[train_rows] if groups is not None else None
    n_units = len(np.unique(part_groups)) if part_groups is not None else len(train_rows)
    k = min(cfg.frame_folds, n_units)
    inner = make_folds(targets[train_rows], k, seed, part_groups)
    moments = frame_moments(block.features, block.mask, train_rows)  # shared: no labels
    is_val = np.isin(train_rows, val_rows)
    trainings = FRAME_TRAININGS if cfg.frame_training == "both" else (cfg.frame_training,)
    shared = {
        "block": block,
        "targets": targets,
        "blank": blank,
        "train_rows": train_rows,
        "is_val": is_val,
        "inner": inner,
        "moments": moments,
        "seed": seed,
        "device": device,
        "threads": threads,
        "shuffle": shuffle,
    }
    members = [_fit_member(cfg, training, **shared) for training in trainings]
    rounds = [b.get("rounds", 0) for m in members for b in m.boosters]
    info = {"rounds_mean": float(np.mean(rounds)), "seconds": time.perf_counter() - start}
    return HistogramModel(cfg, members, info)


def _fit_member(
    cfg: HistogramConfig,
    training: str,
    *,
    block: FeatureBlock,
    targets: np.ndarray,
    blank: int | None,
    train_rows: np.ndarray,
    is_val: np.ndarray,
    inner: np.ndarray,
    moments: tuple[np.ndarray, np.ndarray],
    seed: int,
    device: torch.device,
    threads: int | None,
    shuffle: BlockShuffle | None,
) -> HistogramMember:
    """Cross-fit the frame classifier trained by ``training`` over the training part
    ``train_rows`` (inner folds ``inner``) and train the boosters on the statistics of its
    fit rows, stopping early on its validation rows (``is_val``)."""
    cfg = cfg.model_copy(update={"frame_training": training})
    scorer = FrameScorer(cfg, blank, moments, seed, str(device), shuffle)
    crossed = cross_fit(
        scorer,
        block.view(train_rows),
        targets[train_rows],
        inner,
        method="transform",
        fold_params=lambda j: {"random_state": seed + 7919 * (j + 1)},
    )
    stats = crossed.oof
    boosters = [
        _fit_booster(
            cfg,
            stats[~is_val],
            targets[train_rows[~is_val], c],
            stats[is_val],
            targets[train_rows[is_val], c],
            seed + c,
            threads,
        )
        for c in range(targets.shape[1])
    ]
    return HistogramMember(training, [m.classifier_ for m in crossed.models], boosters)
