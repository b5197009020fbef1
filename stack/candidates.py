"""The level-2 candidates: ways to turn level-1 OOF probabilities (and metadata) into one
probability per class. :class:`stack.stacker.Stacker` mixes them, weighted by inner
cross-validation.

Every candidate is an estimator over a level-2 input frame ``X`` (:func:`stack_inputs`:
columns ``MODEL:CLASS`` with level-1 probabilities, then the raw metadata columns) with
``fit(X, y)`` and ``staged_proba(X) -> (n, K, S)``: the probabilities after each of its
``S`` stages (boosting rounds :data:`STAGES` for the tree candidates, one stage otherwise).

=============  ===================================================================
``hedge``      per class, the mean of the level-1 logits with the ``best`` model counted twice
``mean``       per class, the mean of the level-1 models' logits (nothing fitted)
``best``       the level-1 model with the lowest log loss on the training clips
``top2``       per class, the mean of the logits of the two level-1 models with the lowest log
               loss on the training clips (where two models are close, which one is ``best``
               flips from fold to fold)
``blend``      per class, an L2-regularised logistic regression over the level-1 logits of
               that class (``blend_inputs="all"``: of every class; :func:`stack.boost.fit_base`)
``trees_meta`` the blend, plus per class LightGBM + XGBoost boosted from its logits on the
               clip metadata (file size, its z-score per resolution, duration, ...)
``trees_all``  the same with every level-1 probability as tree inputs too (Pri-matrix)
=============  ===================================================================

The stacker mixes :data:`DEFAULT_CANDIDATES` unless told otherwise: every candidate but
``trees_all``. Trees on every level-1 probability learn which model to trust from the
training sites; where a level-1 model breaks on a new site they break with it, and in the
study of docs/level2.md it was the candidate behind level 2's largest misses (s150, the
photo demo). It stays available (``jungle train-level2 --candidates``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from pool.metrics import sigmoid
from stack.boost import (
    BoostParams,
    ClassModel,
    _log_loss,
    _train_lgb,
    _train_xgb,
    base_margin,
    fit_base,
    logit,
)
from stack.inputs import META_COLUMNS, meta_features, size_stats

#: boosting rounds at which the tree candidates are scored (0: the blend itself).
STAGES: tuple[int, ...] = (0, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300)
#: every candidate, simplest first (ties go to the simpler one).
CANDIDATES: tuple[str, ...] = (
    "hedge",
    "mean",
    "best",
    "top2",
    "blend",
    "trees_meta",
    "trees_all",
)
#: the candidates the stacker mixes by default (module docstring).
DEFAULT_CANDIDATES: tuple[str, ...] = ("hedge", "mean", "best", "top2", "blend", "trees_meta")


def stack_inputs(
    level1: Mapping[str, pd.DataFrame], meta: pd.DataFrame, ids: Sequence[str], classes: list[str]
) -> pd.DataFrame:
    """Level-2 input rows ``ids``: ``MODEL:CLASS`` probabilities of every level-1 model
    (sorted by name, classes in ``classes`` order), then the raw metadata columns."""
    ids = list(ids)
    parts = [level1[m].loc[ids, classes].add_prefix(f"{m}:") for m in sorted(level1)]
    parts.append(meta.loc[ids, list(META_COLUMNS)].astype(np.float64))
    return pd.concat(parts, axis=1)


def level1_probs(x: pd.DataFrame, classes: list[str]) -> dict[str, np.ndarray]:
    """``{model: (n, K)}`` level-1 probabilities from a :func:`stack_inputs` frame."""
    models = sorted({c.split(":", 1)[0] for c in x.columns if ":" in c})
    return {m: x[[f"{m}:{k}" for k in classes]].to_numpy(dtype=np.float64) for m in models}


def ranked_models(x: pd.DataFrame, y: np.ndarray, classes: list[str]) -> list[str]:
    """The level-1 models of ``x``, lowest log loss on targets ``y`` first (ties by name)."""
    probs = level1_probs(x, classes)
    losses = {m: _log_loss(np.asarray(y).ravel(), p.ravel()) for m, p in probs.items()}
    return sorted(sorted(losses), key=lambda m: losses[m])


class Candidate(BaseEstimator):
    """Base of the candidates: ``classes`` names the columns of ``y`` (and of ``X``'s
    level-1 blocks). Subclasses implement ``fit``, ``staged_proba`` and the JSON state."""

    stages: tuple[int, ...] = (0,)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, K)`` probabilities at the last stage."""
        return self.staged_proba(X)[:, :, -1]

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self, folder: Path) -> dict:
        """The fitted state as JSON (large parts written into ``folder``)."""
        return {}

    def load_state(self, state: dict, folder: Path) -> None:
        """Restore what :meth:`state` returned."""


class BestSingle(Candidate):
    """The level-1 model with the lowest log loss on the training rows."""

    def __init__(self, classes: list[str] | None = None) -> None:
        self.classes = classes

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BestSingle:
        self.model_ = ranked_models(X, y, self.classes or [])[0]
        return self

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:
        return level1_probs(X, self.classes or [])[self.model_][:, :, None]

    def state(self, folder: Path) -> dict:
        return {"model": self.model_}

    def load_state(self, state: dict, folder: Path) -> None:
        self.model_ = state["model"]


class MeanLogit(Candidate):
    """Per class, the sigmoid of the mean level-1 logit (nothing is fitted)."""

    def __init__(self, classes: list[str] | None = None) -> None:
        self.classes = classes

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> MeanLogit:
        self.models_ = sorted(level1_probs(X, self.classes or []))
        return self

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:
        probs = level1_probs(X, self.classes or [])
        z = np.mean([logit(probs[m]) for m in self.models_], axis=0)
        return sigmoid(z)[:, :, None]

    def state(self, folder: Path) -> dict:
        return {"models": self.models_}

    def load_state(self, state: dict, folder: Path) -> None:
        self.models_ = list(state["models"])


class HedgeLogit(BestSingle):
    """Per class, the sigmoid of the weighted mean of the level-1 logits in which the model
    with the lowest log loss on the training rows counts twice (weight 2/(M+1), the others
    1/(M+1)): between ``mean`` and ``best``, the bet when neither is consistently better.
    Where the models are close, which one is "best" changes from fold to fold, and a pick
    of either by inner loss often lands on the worse one for the held-out fold."""

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> HedgeLogit:
        super().fit(X, y)
        self.models_ = sorted(level1_probs(X, self.classes or []))
        return self

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:
        probs = level1_probs(X, self.classes or [])
        total = sum(logit(probs[m]) for m in self.models_) + logit(probs[self.model_])
        return sigmoid(total / (len(self.models_) + 1))[:, :, None]

    def state(self, folder: Path) -> dict:
        return {"model": self.model_, "models": self.models_}

    def load_state(self, state: dict, folder: Path) -> None:
        self.model_, self.models_ = state["model"], list(state["models"])


class TopTwoLogit(MeanLogit):
    """Per class, the sigmoid of the mean logit of the two level-1 models with the lowest log
    loss on the training rows (the one model when there is only one)."""

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> TopTwoLogit:
        self.models_ = ranked_models(X, y, self.classes or [])[:2]
        return self


class LogisticBlend(Candidate):
    """Per class, a logistic regression over every level-1 logit (:func:`fit_base`)."""

    def __init__(self, classes: list[str] | None = None, c: float = 0.1, own: bool = True) -> None:
        self.classes = classes
        self.c = c
        self.own = own

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LogisticBlend:
        probs = level1_probs(X, self.classes or [])
        self.base_ = fit_base(np.asarray(y), probs, self.c, self.own)
        return self

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        return base_margin(level1_probs(X, self.classes or []), self.base_)

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:
        return sigmoid(self.margin(X))[:, :, None]

    def state(self, folder: Path) -> dict:
        return {"base": self.base_}

    def load_state(self, state: dict, folder: Path) -> None:
        self.base_ = state["base"]


class BlendTrees(LogisticBlend):
    """The logistic blend plus per-class LightGBM + XGBoost boosted from its logits.

    Args:
        inputs: ``meta`` (tree inputs: :func:`stack.inputs.meta_features`) or ``all`` (also
            every level-1 probability).
        rounds: boosting rounds per class (one number for every class, or one per class); a
            class with 0 rounds is the blend. ``staged_proba`` scores :data:`STAGES` up to it.
        params: the boosters' settings; ``random_state``: their seed.
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        c: float = 0.1,
        own: bool = True,
        inputs: str = "meta",
        rounds: int | list[int] = 300,
        params: BoostParams | None = None,
        random_state: int = 0,
    ) -> None:
        super().__init__(classes, c, own)
        self.inputs = inputs
        self.rounds = rounds
        self.params = params
        self.random_state = random_state

    @property
    def stages(self) -> tuple[int, ...]:  # type: ignore[override]
        top = max(self.rounds) if isinstance(self.rounds, list) else self.rounds
        return tuple(s for s in STAGES if s <= top)

    def _tree_inputs(self, X: pd.DataFrame) -> np.ndarray:
        meta = meta_features(X[list(META_COLUMNS)], self.stats_)
        if self.inputs == "all":
            probs = X[[c for c in X.columns if ":" in c]]
            return np.column_stack([probs.to_numpy(np.float64), meta.to_numpy(np.float64)])
        return meta.to_numpy(np.float64)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BlendTrees:
        super().fit(X, y)
        y = np.asarray(y, dtype=np.float64)
        params = self.params or BoostParams()
        self.stats_ = size_stats(X[list(META_COLUMNS)])
        x = self._tree_inputs(X)
        margin = self.margin(X)
        k = y.shape[1]
        rounds = self.rounds if isinstance(self.rounds, list) else [self.rounds] * k
        self.trees_: list[ClassModel] = []
        for c in range(k):
            seed = self.random_state + c
            if rounds[c] == 0 or y[:, c].min() == y[:, c].max():
                self.trees_.append(ClassModel(None, None))  # the blend alone
                continue
            lgb_model = _train_lgb(x, y[:, c], margin[:, c], rounds[c], params, seed)[0]
            xgb_model = _train_xgb(x, y[:, c], margin[:, c], rounds[c], params, seed)[0]
            self.trees_.append(ClassModel(lgb_model, xgb_model, (rounds[c], rounds[c])))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, K)`` probabilities, each class after its own number of rounds."""
        x, margin = self._tree_inputs(X), self.margin(X)
        return np.stack([m.predict(x, margin[:, c]) for c, m in enumerate(self.trees_)], axis=1)

    def staged_proba(self, X: pd.DataFrame) -> np.ndarray:
        x = self._tree_inputs(X)
        margin = self.margin(X)
        stages = self.stages
        out = np.empty((len(X), len(self.trees_), len(stages)))
        for c, model in enumerate(self.trees_):
            for s, r in enumerate(stages):
                out[:, c, s] = model.predict(x, margin[:, c], min(r, model.rounds[0]))
        return out

    def state(self, folder: Path) -> dict:
        for c, model in enumerate(self.trees_):
            model.save(folder, f"{self.inputs}_class_{c:02d}")
        return {"base": self.base_, "stats": self.stats_}

    def load_state(self, state: dict, folder: Path) -> None:
        self.base_, self.stats_ = state["base"], state["stats"]
        k = len(self.base_["intercept"])
        self.trees_ = [ClassModel.load(folder, f"{self.inputs}_class_{c:02d}") for c in range(k)]


def make_candidate(
    name: str, classes: list[str], params: BoostParams, random_state: int
) -> Candidate:
    """Candidate ``name`` (one of :data:`CANDIDATES`), unfitted."""
    if name == "best":
        return BestSingle(classes)
    if name == "mean":
        return MeanLogit(classes)
    if name == "hedge":
        return HedgeLogit(classes)
    if name == "top2":
        return TopTwoLogit(classes)
    own = params.blend_inputs == "own"
    if name == "blend":
        return LogisticBlend(classes, params.base_c, own)
    if name in ("trees_meta", "trees_all"):
        inputs = name.split("_", 1)[1]
        return BlendTrees(classes, params.base_c, own, inputs, params.rounds, params, random_state)
    raise ValueError(f"unknown level-2 candidate {name!r}; choose from {CANDIDATES}")


def dump_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
