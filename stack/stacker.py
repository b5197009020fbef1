"""``Stacker``: the level-2 estimator, which picks its own method by inner cross-validation.

``fit(X, y, groups)`` on a fold's training part only:

1. split the rows into inner folds: one per group (``train_level2`` gives each clip its
   level-1 fold as group, so an inner fold is one level-1 fold model's OOF predictions, as
   the held-out fold is another model's: the choice sees the shift between fold models
   that a held-out fold will show), else ``inner_folds`` stratified, grouped folds;
2. get the inner out-of-fold probabilities of every candidate of :mod:`stack.candidates`
   (:func:`pool.oof.cross_fit`), at every stage (boosting rounds) of the tree candidates;
3. choose, by inner OOF log loss: with ``select="overall"`` (the default) one candidate for
   every class (a tree candidate's rounds still per class); with ``select="class"`` the
   candidate and rounds of each class separately. Rounds: per candidate and class, the
   fewest whose mean inner loss is within ``se_factor`` standard errors (of the per-clip
   loss difference) of the lowest. Candidate: walking the candidates simplest first (the
   order of :data:`~stack.candidates.CANDIDATES`, starting from ``hedge``: the mean of the
   level-1 logits with the best model counted twice), a more complex one replaces the
   current one only when its inner loss is lower by more than ``se_factor`` standard errors
   *and* lower in every inner fold (:func:`consistent_choice`). Level-1 fold models can
   differ a lot on small data, and a blend learnt on some of them often does not carry over
   to another: a candidate must win clearly and consistently to be taken;
4. choose the per-class clipping bounds on the chosen inner OOF probabilities
   (:func:`stack.boost.tune_clipping`);
5. refit the chosen candidate(s) on every training row.

So nothing about the held-out fold is used to choose anything; the outer OOF of the stacker
(:func:`stack.train.train_level2`) is as honest as level 1's. When no combination beats the
best level-1 model on data it has not seen, the stacker stays with ``hedge`` (or ``mean`` or
``best`` where one of them is consistently better).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from pool.folds import make_folds
from pool.oof import cross_fit
from stack.boost import EPS, BoostParams, apply_clipping, params_dict, tune_clipping
from stack.candidates import CANDIDATES, Candidate, make_candidate

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


def _clearly_better(
    new: np.ndarray, old: np.ndarray, se_factor: float, inner: np.ndarray | None = None
) -> bool:
    """True when per-row losses ``new`` beat ``old`` by more than ``se_factor`` standard
    errors of the paired difference and, with ``inner`` given, in every inner fold."""
    diff = old - new
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    if not np.mean(diff) > se_factor * se + 1e-12:
        return False
    if inner is None:
        return True
    return all(np.mean(diff[inner == j]) > 0 for j in np.unique(inner))


def consistent_choice(losses: dict[str, np.ndarray], se_factor: float, inner: np.ndarray) -> str:
    """Walk the candidates simplest first; move to a candidate only when it is clearly
    better than the current one (:func:`_clearly_better`, in every inner fold too)."""
    names = list(losses)
    current = names[0]
    for name in names[1:]:
        if _clearly_better(losses[name], losses[current], se_factor, inner):
            current = name
    return current


class Stacker(BaseEstimator):
    """Level 2 (see the module docstring).

    Args:
        classes: class names, the columns of ``y`` and of the level-1 blocks of ``X``.
        candidates: which candidates to consider (default all, :data:`CANDIDATES`).
        select: ``overall`` or ``class`` (see step 3).
        se_factor: standard errors a more complex candidate must win by (0: plain argmin).
        params: booster settings and ``inner_folds``, ``base_c``.
        random_state: seed of the inner folds and of the boosters.
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        candidates: tuple[str, ...] = CANDIDATES,
        select: str = "overall",
        se_factor: float = 1.0,
        params: BoostParams | None = None,
        random_state: int = 0,
    ) -> None:
        self.classes = classes
        self.candidates = candidates
        self.select = select
        self.se_factor = se_factor
        self.params = params
        self.random_state = random_state

    def _candidate(self, name: str) -> Candidate:
        params = self.params or BoostParams()
        return make_candidate(name, list(self.classes or []), params, self.random_state)

    def fit(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None = None) -> Stacker:
        """Choose and fit (module docstring) on level-2 inputs ``X`` and targets ``y``."""
        y = np.asarray(y, dtype=np.float64)
        params = self.params or BoostParams()
        if self.select not in ("overall", "class"):
            raise ValueError(f"select must be 'overall' or 'class', got {self.select!r}")
        inner = _inner_folds(y, groups, params.inner_folds, self.random_state)
        k = y.shape[1]
        staged, losses = {}, {}
        for name in self.candidates:
            result = cross_fit(self._candidate(name), X, y, inner, method="staged_proba")
            staged[name] = result.oof
            losses[name] = row_losses(y, result.oof)  # (n, K, S)
        # per candidate and class: the fewest rounds within se_factor SE of the best stage
        stage = {
            n: np.array([_stage_choice(losses[n][:, c, :], self.se_factor) for c in range(k)])
            for n in losses
        }
        at_stage = {n: losses[n][:, np.arange(k), stage[n]] for n in losses}  # (n, K)
        if self.select == "overall":
            per_row = {n: v.sum(axis=1) for n, v in at_stage.items()}
            picks = [consistent_choice(per_row, self.se_factor, inner)] * k
        else:
            picks = [
                consistent_choice({n: v[:, c] for n, v in at_stage.items()}, self.se_factor, inner)
                for c in range(k)
            ]
        stage_of = [int(stage[picks[c]][c]) for c in range(k)]
        inner_oof = np.stack([staged[picks[c]][:, c, stage_of[c]] for c in range(k)], axis=1)
        self.clipping_ = tune_clipping(y, inner_oof)
        self.picks_ = picks
        self.models_: dict[str, Candidate] = {}
        self.rounds_: list[int] = []
        for c in range(k):
            cand = self._candidate(picks[c])
            self.rounds_.append(int(cand.stages[stage_of[c]]))
        for name in dict.fromkeys(picks):
            model = self._candidate(name)
            if "rounds" in model.get_params():
                # rounds of the classes that use this candidate (others: 0, never read)
                rounds = [self.rounds_[c] if picks[c] == name else 0 for c in range(k)]
                model.set_params(rounds=rounds)
            self.models_[name] = model.fit(X, y)
        self.inner_log_loss_ = {n: float(at_stage[n].mean()) for n in self.candidates}
        self.classes_ = np.asarray(self.classes if self.classes else np.arange(k))
        log.debug("level 2 chose %s (inner log loss %s)", picks, self.inner_log_loss_)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, K)`` clipped probabilities."""
        outs = {name: model.predict_proba(X) for name, model in self.models_.items()}
        probs = np.stack([outs[self.picks_[c]][:, c] for c in range(len(self.picks_))], axis=1)
        return apply_clipping(probs, self.clipping_)

    @property
    def choice(self) -> dict:
        """What was chosen, as JSON: candidate and rounds per class, clipping, inner losses."""
        names = [str(c) for c in self.classes_]
        return {
            "candidate": dict(zip(names, self.picks_, strict=True)),
            "rounds": dict(zip(names, self.rounds_, strict=True)),
            "clipping": dict(zip(names, map(float, self.clipping_), strict=True)),
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
                "params": params_dict(self.params or BoostParams()),
                "random_state": self.random_state,
            },
            "picks": self.picks_,
            "rounds": self.rounds_,
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
        stacker.picks_ = list(info["picks"])
        stacker.rounds_ = [int(r) for r in info["rounds"]]
        stacker.clipping_ = np.asarray(info["clipping"], dtype=np.float64)
        stacker.inner_log_loss_ = dict(info["inner_log_loss"])
        stacker.models_ = {}
        for name, state in info["states"].items():
            model = stacker._candidate(name)
            if "rounds" in model.get_params():
                model.set_params(rounds=stacker.rounds_)
            model.load_state(state, folder)
            stacker.models_[name] = model
        k = len(stacker.picks_)
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
