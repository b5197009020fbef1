"""Level-2 building blocks: per-class gradient boosting (LightGBM and XGBoost, blended),
the logistic base blend of level-1 logits, and probability clipping.

Targets are multi-label (a clip can hold two species; ``blank`` is a class of its own), so
each class gets its own binary models: one LightGBM and one XGBoost booster, whose
probabilities are averaged with equal weights. Boosting does not start from a constant but
from a *base margin*: per class, an L2-regularised logistic regression over the logits of
every level-1 model for every class, fit on the training part (:func:`fit_base`); the trees
learn corrections to that blend. How many rounds (0 allowed), which inputs, and whether
trees are used at all is chosen by :class:`stack.stacker.Stacker`'s inner cross-validation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import xgboost as xgb
from sklearn.linear_model import LogisticRegression

from pool.metrics import logit as clipped_logit
from pool.metrics import sigmoid

log = logging.getLogger(__name__)

#: clipping bounds tried per class on level-2 OOF (see :func:`tune_clipping`).
CLIP_GRID: tuple[float, ...] = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2)
EPS = 1e-7
#: level-1 probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before taking logits.
LOGIT_EPS = 1e-5


@dataclass(frozen=True)
class BoostParams:
    """Level-2 settings: the boosters' (small data: shallow trees) and the inner choice's."""

    #: most boosting rounds of a tree candidate (scored at :data:`stack.candidates.STAGES`).
    rounds: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    max_depth: int = 4
    min_child_samples: int = 10
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    #: inner cross-validation folds of the level-2 choice (:class:`stack.stacker.Stacker`).
    inner_folds: int = 3
    #: the blend's inputs per class: ``own`` (each model's logit of that class) or ``all``
    #: (every model's logit of every class), see :func:`fit_base`.
    blend_inputs: str = "own"
    #: inverse L2 strength of the base blend's logistic regressions (:func:`fit_base`),
    #: chosen on the generated sets (docs/level2.md).
    base_c: float = 0.03
    threads: int = 2


class ClassModel:
    """One class's blended LightGBM + XGBoost model over a base margin (or a constant).

    A booster with 0 rounds adds nothing: its probability is the base blend's.
    """

    def __init__(
        self,
        lgb_model: lgb.Booster | None,
        xgb_model: xgb.Booster | None,
        rounds: tuple[int, int] = (0, 0),
        constant: float | None = None,
    ) -> None:
        self.lgb_model = lgb_model
        self.xgb_model = xgb_model
        self.rounds = rounds
        self.constant = constant

    def predict(self, x: np.ndarray, margin: np.ndarray, rounds: int | None = None) -> np.ndarray:
        """``(n,)`` probability of the class for inputs ``x`` and base margins ``margin``
        (after ``rounds`` boosting rounds when given, at most those trained)."""
        if self.constant is not None:
            return np.full(len(x), self.constant)
        lgb_rounds, xgb_rounds = self.rounds
        if rounds is not None:
            lgb_rounds, xgb_rounds = min(rounds, lgb_rounds), min(rounds, xgb_rounds)
        z_lgb = margin.astype(np.float64)
        if lgb_rounds:
            z_lgb = z_lgb + self.lgb_model.predict(x, num_iteration=lgb_rounds, raw_score=True)
        z_xgb = margin.astype(np.float64)
        if xgb_rounds:
            z_xgb = z_xgb + self.xgb_model.predict(
                xgb.DMatrix(x), iteration_range=(0, xgb_rounds), output_margin=True
            )
        return (sigmoid(z_lgb) + sigmoid(z_xgb)) / 2

    def save(self, folder: Path, name: str) -> None:
        """Write ``NAME.json`` (rounds or constant), ``NAME.lgb.txt`` and ``NAME.xgb.json``
        (boosters with at least one round)."""
        info = {
            "constant": self.constant,
            "lgb_rounds": self.rounds[0],
            "xgb_rounds": self.rounds[1],
        }
        (folder / f"{name}.json").write_text(json.dumps(info), encoding="utf-8")
        if self.rounds[0]:
            self.lgb_model.save_model(str(folder / f"{name}.lgb.txt"))
        if self.rounds[1]:
            self.xgb_model.save_model(str(folder / f"{name}.xgb.json"))

    @classmethod
    def load(cls, folder: Path, name: str) -> ClassModel:
        """Read what :meth:`save` wrote."""
        info = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        rounds = (int(info["lgb_rounds"]), int(info["xgb_rounds"]))
        lgb_model = lgb.Booster(model_file=str(folder / f"{name}.lgb.txt")) if rounds[0] else None
        xgb_model = None
        if rounds[1]:
            xgb_model = xgb.Booster()
            xgb_model.load_model(str(folder / f"{name}.xgb.json"))
        return cls(lgb_model, xgb_model, rounds, info["constant"])


def _lgb_params(params: BoostParams, seed: int) -> dict:
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "max_depth": params.max_depth,
        "min_child_samples": params.min_child_samples,
        "subsample": params.subsample,
        "subsample_freq": 1,
        "colsample_bytree": params.colsample,
        "reg_lambda": params.reg_lambda,
        "num_threads": params.threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def _xgb_params(params: BoostParams, seed: int) -> dict:
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "eta": params.learning_rate,
        "max_depth": params.max_depth,
        "min_child_weight": 1.0,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample,
        "lambda": params.reg_lambda,
        "nthread": params.threads,
        "seed": seed,
        "tree_method": "hist",
    }


def _train_lgb(
    x: np.ndarray,
    y: np.ndarray,
    margin: np.ndarray,
    rounds: int,
    params: BoostParams,
    seed: int,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[lgb.Booster, list[float]]:
    """Train LightGBM from ``margin``; with ``val = (x, y, margin)`` also return the
    validation log loss after each round."""
    data = lgb.Dataset(_owned(x), _owned(y), init_score=_owned(margin))
    record: dict = {}
    valid = []
    if val is not None:
        valid = [
            lgb.Dataset(_owned(val[0]), _owned(val[1]), init_score=_owned(val[2]), reference=data)
        ]
    booster = lgb.train(
        _lgb_params(params, seed),
        data,
        num_boost_round=rounds,
        valid_sets=valid,
        valid_names=["val"] if valid else None,
        callbacks=[lgb.record_evaluation(record)],
    )
    return booster, list(record.get("val", {}).get("binary_logloss", []))


def _owned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous array (LightGBM warns about, and copies, strided views)."""
    return np.ascontiguousarray(x, dtype=np.float64)


def _train_xgb(
    x: np.ndarray,
    y: np.ndarray,
    margin: np.ndarray,
    rounds: int,
    params: BoostParams,
    seed: int,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[xgb.Booster, list[float]]:
    """Train XGBoost from ``margin``; with ``val`` also return the per-round log loss."""
    data = xgb.DMatrix(x, label=y, base_margin=margin)
    record: dict = {}
    evals = []
    if val is not None:
        evals = [(xgb.DMatrix(val[0], label=val[1], base_margin=val[2]), "val")]
    booster = xgb.train(
        _xgb_params(params, seed),
        data,
        num_boost_round=rounds,
        evals=evals,
        evals_result=record,
        verbose_eval=False,
    )
    return booster, list(record.get("val", {}).get("logloss", []))


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]`` first."""
    return clipped_logit(p, LOGIT_EPS)


def fit_base(
    targets: np.ndarray, probs: Mapping[str, np.ndarray], c: float, own_class: bool = False
) -> dict:
    """The base blend: per class, an L2-regularised logistic regression over the logits of
    the level-1 models. Fit it on the training part only.

    Args:
        targets: ``(n, K)`` 0/1.
        probs: level-1 probabilities per model, each ``(n, K)`` aligned with ``targets``.
        c: inverse regularisation strength (scikit-learn's ``C``); small: close to the prior.
        own_class: True: class k's regression sees only every model's logit of class k (M
            weights); False: every model's logit of every class (M x K weights, so a class
            can borrow from the others, e.g. a low ``blank`` probability).

    Returns:
        JSON-able ``{"models", "coef" (K x M*K), "intercept" (K)}`` for :func:`base_margin`;
        a class constant in ``targets`` gets zero weights and its frequency's logit.
    """
    models = sorted(probs)
    x = _base_inputs(probs, models)
    n_classes = targets.shape[1]
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.zeros(n_classes)
    for k in range(n_classes):
        y = targets[:, k]
        if y.min() == y.max():
            intercept[k] = float(logit(np.array([y.mean()]))[0])
            continue
        cols = np.arange(k, x.shape[1], n_classes) if own_class else np.arange(x.shape[1])
        model = LogisticRegression(C=c, max_iter=5000).fit(x[:, cols], y)
        coef[k, cols], intercept[k] = model.coef_[0], model.intercept_[0]
    return {"models": models, "coef": coef.tolist(), "intercept": intercept.tolist()}


def base_margin(probs: Mapping[str, np.ndarray], base: Mapping) -> np.ndarray:
    """``(n, K)`` base logits of the blend ``base`` (:func:`fit_base`) for ``probs``."""
    x = _base_inputs(probs, base["models"])
    return x @ np.asarray(base["coef"]).T + np.asarray(base["intercept"])[None, :]


def _base_inputs(probs: Mapping[str, np.ndarray], models: list[str]) -> np.ndarray:
    return np.column_stack([logit(probs[m]) for m in models])


def tune_clipping(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class clipping bounds chosen on level-2 OOF predictions.

    Rule: for each class, the ``c`` of :data:`CLIP_GRID` that minimises the OOF binary log
    loss of ``clip(p, c, 1 - c)`` (ties: the smallest ``c``). Clipping only trims
    over-confident mistakes; it never changes a ranking.

    Returns:
        ``(K,)`` bounds.
    """
    bounds = np.zeros(targets.shape[1])
    for k in range(targets.shape[1]):
        losses = [_log_loss(targets[:, k], np.clip(probs[:, k], c, 1 - c)) for c in CLIP_GRID]
        bounds[k] = CLIP_GRID[int(np.argmin(np.round(losses, 12)))]
    return bounds


def apply_clipping(probs: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Clip column k of ``probs`` to ``[bounds[k], 1 - bounds[k]]``."""
    return np.clip(probs, bounds[None, :], 1 - bounds[None, :])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def params_dict(params: BoostParams) -> dict:
    """The parameters as a JSON-able dict."""
    return asdict(params)
