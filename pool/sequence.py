"""The ``sequence`` model: a per-frame classifier whose frame probabilities are averaged.

The Snapshot Serengeti winners' design (Hakuna Ma-Data) for image sequences, which jungle
stores as clips (a sequence's images are its real frames; a video's sampled frames too):

1. A frame classifier (:class:`~pool.histogram.FrameClassifier`, the histogram model's: a
   one-hidden-layer MLP of 256 units by default) gives every real frame one probability
   per class.
2. A clip's probability of a species is the arithmetic **mean** of its real frames'
   probabilities; of ``blank`` their **geometric mean** (a clip is blank when every frame
   is: one frame that surely shows an animal makes the clip surely not blank). Padding slots
   (``mask`` False) never count (:func:`clip_log_proba`).
3. ``calibrate`` (default): per class, a Platt scaling ``sigmoid(a * logit(p) + b)`` of the
   clip probability, fitted on the fold's training clips. The mean of frame probabilities
   is under-confident where an animal shows in a part of the frames (the others look
   empty); the scaling is monotone, so it changes no ranking. (Fitted on the inner
   validation clips alone, one or two sites with grouped folds, it was unstable: see
   docs/level2.md.)

What the frame classifier sees (``frame_input``): ``centered`` (default) each real frame
minus the mean of its clip's real frames (:class:`CenteredFeatures`), which removes the
background that a clip's frames share, so the classifier learns what changes within a clip
and carries over to unseen sites; ``raw`` each frame as stored (Hakuna Ma-Data's per-image
classifier). Centred, a frame is only informative relative to the clip's other frames: a
one-image clip reads as all zeros (its prediction is the same for every such clip), and an
animal present in every frame shows only through what changes between frames. On the
generated sets ``raw`` generalises badly to unseen sites in videos and is somewhat better
on photo bursts (docs/level2.md).

Training (``training``): ``propagate`` (the default, as Hakuna Ma-Data did) gives each real
frame its clip's labels and minimises the per-frame binary cross-entropy; ``mil`` minimises
the binary cross-entropy of the clip probabilities of step 2 against the clip labels
(multiple-instance learning through the same aggregation). The classifier trains on the
fold's inner fit part (:func:`~pool.histogram.train_frame_classifier`) and keeps the state
with the lowest training loss on the inner validation part (checked every ``eval_every``
steps on at most :data:`EVAL_CLIPS` of its clips, stopping after ``patience`` checks
without improvement).

Memory: features are read through the block's reader only: training minibatches in the
:class:`~pool.data.BlockShuffle` order, moments, validation, calibration and prediction
:data:`SCORE_BATCH` clips at a time (centring is done per read), so memory is flat in the
number of clips.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pool.config import SequenceConfig
from pool.data import BlockShuffle, FeatureBlock, frame_inputs, frame_moments, sequential
from pool.histogram import FrameClassifier, FrameLoss, propagated_loss, train_frame_classifier

log = logging.getLogger(__name__)

#: clips per forward pass (and per feature read) when scoring clips.
SCORE_BATCH = 256
#: most inner-validation clips scored at each early-stopping check (evenly spaced).
EVAL_CLIPS = 1024
#: clip logits are clipped to this range before calibration (probabilities of 1e-13).
LOGIT_LIMIT = 30.0


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Mächler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def clip_log_proba(
    logits: torch.Tensor, mask: torch.Tensor, blank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` and ``log(1 - p)`` ``(B, K)`` of the clip probabilities ``p``: over the real
    frames (``mask`` ``(B, T)``) of the frame probabilities ``sigmoid(logits)`` ``(B, T, K)``,
    the arithmetic mean per class, the geometric mean for class ``blank``."""
    m = mask.unsqueeze(-1)
    log_n = torch.log(mask.sum(dim=1, keepdim=True).to(logits.dtype))
    # log of a mean of sigmoids: logsumexp of log-sigmoids minus log(frames)
    log_p = torch.logsumexp(F.logsigmoid(logits).masked_fill(~m, float("-inf")), dim=1) - log_n
    log_q = torch.logsumexp(F.logsigmoid(-logits).masked_fill(~m, float("-inf")), dim=1) - log_n
    if blank is not None:
        mean_log = (F.logsigmoid(logits[..., blank]) * mask).sum(dim=1) / mask.sum(dim=1)
        log_p = log_p.clone()
        log_q = log_q.clone()
        log_p[:, blank] = mean_log
        log_q[:, blank] = _log1mexp(mean_log)
    return log_p, log_q


def mil_loss(blank: int | None) -> FrameLoss:
    """Binary cross-entropy of the clip probabilities (:func:`clip_log_proba`) against the
    clip labels (mean over clips and classes)."""

    def loss(logits: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p, log_q = clip_log_proba(logits, mask, blank)
        return -(y * log_p + (1 - y) * log_q).mean()

    return loss


@torch.no_grad()
def _clip_logits(
    classifier: FrameClassifier,
    block: FeatureBlock,
    rows: np.ndarray,
    blank: int | None,
) -> np.ndarray:
    """``(len(rows), K)`` float64 clip logits ``log p - log(1 - p)`` (uncalibrated)."""
    device = next(classifier.parameters()).device
    k = len(classifier.body[-1].bias)
    out = np.empty((len(rows), k), dtype=np.float64)
    for pos, x in sequential(block.features, rows, SCORE_BATCH):
        frames = torch.from_numpy(x).to(device).float()
        mask = torch.from_numpy(block.mask[rows[pos]]).to(device)
        log_p, log_q = clip_log_proba(classifier(frames).double(), mask, blank)
        out[pos] = (log_p - log_q).cpu().numpy()
    return np.clip(out, -LOGIT_LIMIT, LOGIT_LIMIT)


@torch.no_grad()
def _frame_loss(
    classifier: FrameClassifier,
    block: FeatureBlock,
    rows: np.ndarray,
    targets: np.ndarray,
    loss: FrameLoss,
) -> float:
    """``loss`` over clips ``rows``, clip-weighted mean of its batches'."""
    device = next(classifier.parameters()).device
    total = 0.0
    for pos, x in sequential(block.features, rows, SCORE_BATCH):
        frames = torch.from_numpy(x).to(device).float()
        mask = torch.from_numpy(block.mask[rows[pos]]).to(device)
        y = torch.from_numpy(targets[rows[pos]].astype(np.float32)).to(device)
        total += float(loss(classifier(frames), mask, y)) * len(pos)
    return total / max(len(rows), 1)


def fit_platt(z: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Slope and intercept ``(a, b)`` of ``sigmoid(a * z + b)`` fitted to 0/1 targets ``y``
    by Newton's method on the binary cross-entropy, with Platt's (1999) smoothed targets
    (``(n+ + 1) / (n+ + 2)`` for positives, ``1 / (n- + 2)`` for negatives) so a few
    separable clips do not give an infinite slope. A class with one target value in ``y``
    keeps the identity ``(1, 0)``."""
    y = np.asarray(y, dtype=np.float64) > 0.5
    if len(y) == 0 or y.all() or not y.any():
        return 1.0, 0.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = np.column_stack([np.asarray(z, dtype=np.float64), np.ones(len(y))])

    def loss(w: np.ndarray) -> float:
        u = x @ w
        return float(np.sum(np.logaddexp(0.0, u) - t * u))

    w = np.array([1.0, 0.0])
    current = loss(w)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, x.T @ (p - t))
        scale = 1.0
        while scale > 1e-6 and loss(w - scale * step) > current:  # backtracking
            scale /= 2
        w, before, current = w - scale * step, current, loss(w - scale * step)
        if before - current < 1e-12 * max(1.0, abs(before)):
            break
    return float(w[0]), float(w[1])


@dataclass
class SequenceModel:
    """A trained sequence model of one fold."""

    config: SequenceConfig
    classifier: FrameClassifier
    blank: int | None  #: index of the blank class (geometric mean), or None
    calibration: np.ndarray  #: ``(K, 2)`` slope and intercept per class (identity: 1, 0)
    info: dict[str, float] = field(default_factory=dict)

    def _logits(self, block: FeatureBlock, rows: np.ndarray | None) -> np.ndarray:
        rows = np.arange(len(block)) if rows is None else np.asarray(rows, dtype=np.int64)
        inputs = frame_inputs(block, self.config.frame_input)
        return _clip_logits(self.classifier, inputs, rows, self.blank)

    def clip_proba(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), K)`` float32 clip probabilities before calibration: the mean (species)
        or geometric mean (blank) of the real frames' probabilities."""
        return (1.0 / (1.0 + np.exp(-self._logits(block, rows)))).astype(np.float32)

    def predict(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), K)`` float32 probabilities of clips ``rows`` (default all)."""
        z = self._logits(block, rows) * self.calibration[:, 0] + self.calibration[:, 1]
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    @torch.no_grad()
    def frame_proba(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), T, K)`` float32 per-frame probabilities (padding slots are scored
        too; mask them with ``block.mask``)."""
        rows = np.arange(len(block)) if rows is None else np.asarray(rows, dtype=np.int64)
        inputs = frame_inputs(block, self.config.frame_input)
        device = next(self.classifier.parameters()).device
        out = np.empty((len(rows), block.mask.shape[1], len(self.calibration)), np.float32)
        for pos, x in sequential(inputs.features, rows, SCORE_BATCH):
            frames = torch.from_numpy(x).to(device).float()
            out[pos] = torch.sigmoid(self.classifier(frames)).cpu().numpy()
        return out

    def checkpoint(self) -> dict:
        """A dict for ``torch.save`` (loadable with ``weights_only=True``)."""
        return {
            "kind": "sequence",
            "model": "sequence",
            "config": self.config.model_dump(),
            "sizes": {
                "in_dim": int(self.classifier.x_mean.numel()),
                "n_classes": len(self.calibration),
            },
            "info": dict(self.info),
            "blank": -1 if self.blank is None else int(self.blank),
            "calibration": torch.from_numpy(np.asarray(self.calibration, dtype=np.float64)),
            "classifier": {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device) -> SequenceModel:
        """Rebuild a model saved by :meth:`checkpoint`."""
        config = SequenceConfig(**ckpt["config"])
        sizes = ckpt["sizes"]
        clf = FrameClassifier(sizes["in_dim"], sizes["n_classes"], config.frame_hidden)
        clf.load_state_dict(ckpt["classifier"])
        blank = None if ckpt["blank"] < 0 else int(ckpt["blank"])
        calibration = ckpt["calibration"].numpy().astype(np.float64)
        return cls(config, clf.to(device).eval(), blank, calibration, ckpt["info"])


@dataclass
class _EarlyStopping:
    """Keeps the frame classifier's state with the lowest inner-validation loss."""

    cfg: SequenceConfig
    block: FeatureBlock  #: the frame inputs
    rows: np.ndarray  #: validation clips scored at each check
    targets: np.ndarray
    loss: FrameLoss
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict | None = None
    waited: int = 0
    steps: int = 0

    def __call__(self, step: int, clf: FrameClassifier) -> bool:
        """After training step ``step``: check every ``eval_every`` steps (and at the last);
        True to stop (``patience`` checks without improvement)."""
        self.steps = step
        if not len(self.rows) or (step % self.cfg.eval_every and step != self.cfg.frame_steps):
            return False
        clf.eval()
        value = _frame_loss(clf, self.block, self.rows, self.targets, self.loss)
        clf.train()
        log.debug("sequence step %d: inner validation loss %.4f", step, value)
        if value < self.best_loss - 1e-6:
            self.best_loss, self.best_step, self.waited = value, step, 0
            self.best_state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.cfg.patience


def fit_sequence(
    cfg: SequenceConfig,
    block: FeatureBlock,
    targets: np.ndarray,
    blank: int | None,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
    device: torch.device,
    shuffle: BlockShuffle | None = None,
) -> SequenceModel:
    """Train the sequence model on a fold's training part (module docstring): the frame
    classifier on ``fit_rows`` (minibatches in the ``shuffle`` order), early stopping on
    ``val_rows`` (at most :data:`EVAL_CLIPS` of them), calibration on both. The frame
    standardisation uses every training frame (no labels)."""
    start = time.perf_counter()
    inputs = frame_inputs(block, cfg.frame_input)
    fit_rows, val_rows = np.sort(fit_rows), np.sort(val_rows)
    train_rows = np.sort(np.concatenate([fit_rows, val_rows]))
    moments = frame_moments(inputs.features, inputs.mask, train_rows)
    loss = propagated_loss if cfg.training == "propagate" else mil_loss(blank)
    picked = np.linspace(0, len(val_rows) - 1, min(len(val_rows), EVAL_CLIPS)).round()
    stopping = _EarlyStopping(cfg, inputs, val_rows[picked.astype(np.int64)], targets, loss)
    clf = train_frame_classifier(
        inputs,
        targets,
        fit_rows if len(val_rows) else train_rows,
        moments,
        seed,
        device,
        shuffle,
        settings=cfg,
        loss=loss,
        after_step=stopping,
    )
    if stopping.best_state is not None:
        clf.load_state_dict(stopping.best_state)
    k = targets.shape[1]
    calibration = np.tile([1.0, 0.0], (k, 1))
    if cfg.calibrate:
        z = _clip_logits(clf, inputs, train_rows, blank)
        for c in range(k):
            calibration[c] = fit_platt(z[:, c], targets[train_rows, c])
    info = {
        "best_step": float(stopping.best_step or stopping.steps),
        "steps": float(stopping.steps),
        "val_loss": float(stopping.best_loss),
        "seconds": time.perf_counter() - start,
    }
    return SequenceModel(cfg, clf.eval(), blank, calibration, info)
