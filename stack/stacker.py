"""``Stacker``: the level-2 estimator, a convex mixture of candidates weighted by inner
cross-validation.

``fit(X, y, groups)`` on a fold's training part only:

1. split the rows into inner folds: one per group (``train_level2`` gives each clip its
   level-1 fold as group, so an inner fold is one level-1 fold model's OOF predictions, as
   the held-out fold is another model's: the weights see the shift between fold models
   that a held-out fold will show), else ``inner_folds`` stratified, grouped folds;
2. get the inner out-of-fold probabilities of every candidate of :mod:`stack.candidates`
   (:func:`pool.oof.cross_fit`), at every stage (boosting rounds) of the tree candidates;
3. per candidate and class, the rounds: the fewest whose mean inner loss is within
   ``se_factor`` standard errors (of the per-clip loss difference) of the lowest;
4. the mixture: non-negative weights summing to one, one per candidate, that minimise the
   inner OOF log loss of the weighted mean of the candidates' probabilities
   (:func:`mixture_weights`; log loss is convex in the weights, so the optimum is unique).
   With ``select="overall"`` (the default) one set of weights for every class, with
   ``select="class"`` one per class. A candidate with a weight below :data:`MIN_WEIGHT` is
   dropped, the weights of the rest found again, and it is never refitted;
5. a temperature ``T`` (one, or one per class with ``select="class"``): the mixture's
   probability ``q`` becomes ``sigmoid(logit(q) / T)``. A weighted mean of probabilities
   of models that disagree is less confident than its members (the linear pool is
   underconfident even when every member is calibrated; Gneiting & Ranjan's
   beta-transformed linear pool corrects it with a similar map). :func:`fit_temperature`
   finds the best ``T`` on the mixture's inner OOF probabilities; ``temperature_share`` of
   its change is applied (``1/T = 1 + share * (1/T_fitted - 1)``; default one half). The
   fitted ``T`` was below one (sharpen) on 76 of the 81 outer folds of docs/level2.md, and
   sharpening a site where the models are wrong makes it worse: half of it kept the mean
   gain of the whole one and cut its largest loss from 0.0050 to 0.0012 (docs/level2.md,
   "A temperature on the mixture");
6. choose the per-class clipping bounds on those inner OOF probabilities
   (:func:`stack.boost.tune_clipping`);
7. refit the candidates with weight on every training row.

So nothing about the held-out fold is used to choose anything; the outer OOF of the stacker
(:func:`stack.train.train_level2`) is as honest as level 1's. A mixture rather than a choice
of one candidate: a hard choice among close candidates flips from fold to fold and often
lands on the worse one for the held-out fold, while one candidate far better than the rest
(one level-1 model that dominates) still gets nearly all the weight (docs/level2.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from sklearn.base import BaseEstimator

from pool.folds import make_folds
from pool.metrics import logit, sigmoid
from pool.oof import cross_fit
from stack.boost import EPS, BoostParams, apply_clipping, params_dict, tune_clipping
from stack.candidates import DEFAULT_CANDIDATES, Candidate, make_candidate

log = logging.getLogger(__name__)

#: with at most this many groups, each group is an inner fold of its own.
MAX_GROUP_FOLDS = 10


def row_losses(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Binary log loss of every entry of ``probs`` (``(n, K)`` or ``(n, K, S)``)."""
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    yy = np.asarray(y, dtype=np.float64).reshape(y.shape + (1,) * (p.ndim - 2))
    return -(yy * np.log(p) + (1 - yy) * np.log1p(-p))


def one_se_choice(losses: dict[Any, np.ndarray], se_factor: float) -> Any:
    """The first name of ``losses`` (simplest first) whose per-row losses ``(n,)`` have a
    mean at most ``se_factor`` standard errors (of the paired difference) above the lowest."""
    names = list(losses)
    means = {n: float(np.mean(losses[n])) for n in names}
    lowest = min(names, key=lambda n: round(means[n], 12))
    for name in names:
        if not _clearly_better(losses[lowest], losses[name], se_factor):
            return name
    return lowest


def _clearly_better(new: np.ndarray, old: np.ndarray, se_factor: float) -> bool:
    """True when per-row losses ``new`` beat ``old`` by more than ``se_factor`` standard
    errors of the paired difference."""
    diff = old - new
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return bool(np.mean(diff) > se_factor * se + 1e-12)


#: a candidate whose mixture weight is below this is dropped and the weights of the others are
#: found again without it.
MIN_WEIGHT = 0.01


def mixture_weights(probs: np.ndarray, y: np.ndarray, min_weight: float = MIN_WEIGHT) -> np.ndarray:
    """Weights ``(C,)`` (non-negative, summing to one) of candidates' probabilities ``probs``
    ``(C, n, K)`` whose weighted mean has the lowest binary log loss on ``y`` ``(n, K)``.

    The loss is convex in the weights; they are found by L-BFGS over a softmax
    parametrisation from equal weights. While some weights are below ``min_weight``, those
    candidates are dropped and the weights of the rest found again (the largest always
    stays), so every weight left is at least ``min_weight``.
    """
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    active = np.arange(len(p))
    while True:
        w = _optimal_weights(p[active], y)
        if len(active) == 1 or w.min() >= min_weight:
            break
        keep = w >= min_weight
        active = active[keep] if keep.any() else active[[int(np.argmax(w))]]
    weights = np.zeros(len(p))
    weights[active] = w
    return weights


def _optimal_weights(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The convex problem of :func:`mixture_weights` on clipped ``p`` ``(C, n, K)``."""

    def loss_and_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        w = np.exp(v - v.max())
        w /= w.sum()
        q = np.tensordot(w, p, 1)
        loss = -float(np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))
        grad_q = -(y / q - (1 - y) / (1 - q)) / q.size
        grad_w = np.tensordot(p, grad_q, axes=([1, 2], [0, 1]))
        return loss, w * (grad_w - np.dot(w, grad_w))

    v = minimize(loss_and_grad, np.zeros(len(p)), jac=True, method="L-BFGS-B").x
    w = np.exp(v - v.max())
    return w / w.sum()


#: the range of :func:`fit_temperature`.
TEMPERATURE_RANGE = (0.25, 4.0)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` in :data:`TEMPERATURE_RANGE` for which
    ``sigmoid(logit(probs) / T)`` has the lowest binary log loss on ``y`` (both ``(n, K)``);
    the loss is convex in ``1/T``, so the bounded scalar search finds the optimum."""
    z = logit(probs, EPS)
    y = np.asarray(y, dtype=np.float64)

    def loss(inverse: float) -> float:
        return float(row_losses(y, sigmoid(inverse * z)).mean())

    low, high = TEMPERATURE_RANGE
    inverse = minimize_scalar(loss, bounds=(1 / high, 1 / low), method="bounded").x
    return float(1 / inverse)


def temper(probs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(probs) / T)`` per class, temperatures ``(K,)``, ``probs`` ``(n, K)``."""
    return sigmoid(logit(probs, EPS) / np.asarray(temperature, dtype=np.float64)[None, :])


class Stacker(BaseEstimator):
    """Level 2 (see the module docstring).

    Args:
        classes: class names, the columns of ``y`` and of the level-1 blocks of ``X``.
        candidates: which candidates to mix (:data:`~stack.candidates.DEFAULT_CANDIDATES`).
        select: ``overall`` (one set of weights) or ``class`` (weights per class).
        se_factor: standard errors within which the fewest boosting rounds are kept.
        params: booster settings and ``inner_folds``, ``base_c``.
        random_state: seed of the inner folds and of the boosters.
        temperature_share: share of the fitted temperature's change of ``1/T`` that is
            applied (0: no temperature; 1: the fitted one).
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
        select: str = "overall",
        se_factor: float = 1.0,
        params: BoostParams | None = None,
        random_state: int = 0,
        temperature_share: float = 0.5,
    ) -> None:
        self.classes = classes
        self.candidates = candidates
        self.select = select
        self.se_factor = se_factor
        self.temperature_share = temperature_share
        self.params = params
        self.random_state = random_state

    def _candidate(self, name: str) -> Candidate:
        params = self.params or BoostParams()
        return make_candidate(name, list(self.classes or []), params, self.random_state)

    def fit(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None = None) -> Stacker:
        """Weigh and fit (module docstring) on level-2 inputs ``X`` and targets ``y``."""
        y = np.asarray(y, dtype=np.float64)
        params = self.params or BoostParams()
        if self.select not in ("overall", "class"):
            raise ValueError(f"select must be 'overall' or 'class', got {self.select!r}")
        inner = _inner_folds(y, groups, params.inner_folds, self.random_state)
        k = y.shape[1]
        names = list(self.candidates)
        at_stage, rounds = [], {}
        for name in names:
            candidate = self._candidate(name)
            staged = cross_fit(candidate, X, y, inner, method="staged_proba").oof
            losses = row_losses(y, staged)  # (n, K, S)
            stage = [_stage_choice(losses[:, c, :], self.se_factor) for c in range(k)]
            at_stage.append(staged[:, np.arange(k), stage])  # (n, K)
            rounds[name] = [int(candidate.stages[s]) for s in stage]
        probs = np.stack(at_stage)  # (C, n, K)
        if self.select == "overall":
            weights = np.tile(mixture_weights(probs, y), (k, 1))
        else:
            weights = np.stack([mixture_weights(probs[:, :, [c]], y[:, [c]]) for c in range(k)])
        mixed = np.einsum("kc,cnk->nk", weights, probs)
        columns = [slice(None)] if self.select == "overall" else [[c] for c in range(k)]
        fitted = np.array([fit_temperature(mixed[:, c], y[:, c]) for c in columns])
        inverse = 1 + self.temperature_share * (1 / fitted - 1)
        self.temperature_ = np.broadcast_to(1 / inverse, (k,)).copy()
        inner_oof = temper(mixed, self.temperature_)
        self.clipping_ = tune_clipping(y, inner_oof)
        self.weights_ = weights  # (K, C): class x candidate
        self.rounds_: dict[str, list[int]] = {}
        self.models_: dict[str, Candidate] = {}
        for j, name in enumerate(names):
            if not weights[:, j].any():
                continue
            model = self._candidate(name)
            if "rounds" in model.get_params():
                # rounds of the classes that use this candidate (others: 0, never read)
                self.rounds_[name] = [
                    r if w > 0 else 0 for r, w in zip(rounds[name], weights[:, j], strict=True)
                ]
                model.set_params(rounds=self.rounds_[name])
            self.models_[name] = model.fit(X, y)
        losses = {n: float(row_losses(y, probs[j]).mean()) for j, n in enumerate(names)}
        self.inner_log_loss_ = losses | {
            "mixture": float(row_losses(y, mixed).mean()),
            "tempered": float(row_losses(y, inner_oof).mean()),
        }
        self.classes_ = np.asarray(self.classes if self.classes else np.arange(k))
        log.debug("level 2 weights %s (inner log loss %s)", self.weights_, self.inner_log_loss_)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, K)`` probabilities: the candidates' weighted mean, tempered and clipped."""
        names = list(self.candidates)
        probs = sum(
            self.weights_[:, names.index(name)][None, :] * model.predict_proba(X)
            for name, model in self.models_.items()
        )
        return apply_clipping(temper(probs, self.temperature_), self.clipping_)

    @property
    def choice(self) -> dict:
        """The fitted mixture as JSON: weights per class, rounds, temperature, clipping, inner
        losses."""
        classes = [str(c) for c in self.classes_]
        return {
            "weights": {
                c: {n: float(w) for n, w in zip(self.candidates, row, strict=True) if w > 0}
                for c, row in zip(classes, self.weights_, strict=True)
            },
            "rounds": {n: dict(zip(classes, r, strict=True)) for n, r in self.rounds_.items()},
            "temperature": dict(zip(classes, map(float, self.temperature_), strict=True)),
            "clipping": dict(zip(classes, map(float, self.clipping_), strict=True)),
            "inner_log_loss": self.inner_log_loss_,
        }

    def save(self, folder: Path) -> None:
        """Write the fitted stacker into ``folder`` (``stacker.json`` + booster files)."""
        folder.mkdir(parents=True, exist_ok=True)
        states = {name: model.state(folder) for name, model in self.models_.items()}
        info = {
            "params": {
                "classes": self.classes,
                "candidates": list(self.candidates),
                "select": self.select,
                "se_factor": self.se_factor,
                "temperature_share": self.temperature_share,
                "params": params_dict(self.params or BoostParams()),
                "random_state": self.random_state,
            },
            "weights": self.weights_.tolist(),
            "rounds": self.rounds_,
            "temperature": [float(t) for t in self.temperature_],
            "clipping": [float(b) for b in self.clipping_],
            "inner_log_loss": self.inner_log_loss_,
            "states": states,
        }
        (folder / "stacker.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Stacker:
        """Read what :meth:`save` wrote."""
        info = json.loads((folder / "stacker.json").read_text(encoding="utf-8"))
        p = dict(info["params"])
        p["params"] = BoostParams(**p["params"])
        p["candidates"] = tuple(p["candidates"])
        stacker = cls(**p)
        stacker.weights_ = np.asarray(info["weights"], dtype=np.float64)
        stacker.rounds_ = {n: [int(r) for r in v] for n, v in info["rounds"].items()}
        stacker.clipping_ = np.asarray(info["clipping"], dtype=np.float64)
        # stackers saved before the temperature existed mixed without one (T = 1)
        stacker.temperature_ = np.asarray(
            info.get("temperature", [1.0] * len(stacker.clipping_)), dtype=np.float64
        )
        stacker.inner_log_loss_ = dict(info["inner_log_loss"])
        stacker.models_ = {}
        for name, state in info["states"].items():
            model = stacker._candidate(name)
            if name in stacker.rounds_:
                model.set_params(rounds=stacker.rounds_[name])
            model.load_state(state, folder)
            stacker.models_[name] = model
        k = len(stacker.weights_)
        stacker.classes_ = np.asarray(stacker.classes if stacker.classes else np.arange(k))
        return stacker


def _stage_choice(losses: np.ndarray, se_factor: float) -> int:
    """Index of the earliest stage of ``losses`` ``(n, S)`` (per-row losses per stage) by
    :func:`one_se_choice`."""
    return int(one_se_choice({s: losses[:, s] for s in range(losses.shape[1])}, se_factor))


def _inner_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """Inner fold of each row: one per group when there are at most :data:`MAX_GROUP_FOLDS`
    groups (``train_level2`` passes each row's level-1 fold as its group), else ``folds``
    folds, stratified and grouped."""
    if groups is not None:
        names, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        if 2 <= len(names) <= MAX_GROUP_FOLDS:
            return index
        if len(names) < 2:  # one group: inner folds cannot keep groups apart
            groups = None
    units = len(np.unique(groups)) if groups is not None else len(y)
    return make_folds(y, min(folds, units), seed, groups)
