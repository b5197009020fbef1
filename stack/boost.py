"""Per-class gradient boosting (LightGBM and XGBoost, blended) and probability clipping.

Targets are multi-label (a clip can hold two species; ``blank`` is a class of its own), so
each class gets its own binary model: one LightGBM and one XGBoost classifier, whose
probabilities are averaged with equal weights. A class that is constant in a fold's training
part gets a constant model (its training frequency). Boosting rounds are chosen by early
stopping on an inner validation split of the training part, never on the held-out fold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import xgboost as xgb

log = logging.getLogger(__name__)

#: clipping bounds tried per class on level-2 OOF (see :func:`tune_clipping`).
CLIP_GRID: tuple[float, ...] = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2)
EPS = 1e-7


@dataclass(frozen=True)
class BoostParams:
    """Hyper-parameters shared by every class model (small data: shallow trees)."""

    rounds: int = 600
    learning_rate: float = 0.03
    num_leaves: int = 15
    max_depth: int = 4
    min_child_samples: int = 10
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    early_stopping: int = 50
    threads: int = 2


class ClassModel:
    """One class's blended LightGBM + XGBoost model (or a constant)."""

    def __init__(
        self, lgb_model: lgb.Booster | None, xgb_model: xgb.Booster | None, constant: float | None
    ) -> None:
        self.lgb_model = lgb_model
        self.xgb_model = xgb_model
        self.constant = constant

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` probability of the class."""
        if self.constant is not None:
            return np.full(len(x), self.constant)
        p_lgb = self.lgb_model.predict(x, num_iteration=self.lgb_model.best_iteration or None)
        p_xgb = self.xgb_model.predict(
            xgb.DMatrix(x), iteration_range=(0, self.xgb_model.best_iteration + 1)
        )
        return (np.asarray(p_lgb) + np.asarray(p_xgb)) / 2

    def save(self, folder: Path, name: str) -> None:
        """Write ``NAME.lgb.txt`` and ``NAME.xgb.json`` (or ``NAME.const.json``)."""
        if self.constant is not None:
            (folder / f"{name}.const.json").write_text(json.dumps({"p": self.constant}))
            return
        self.lgb_model.save_model(str(folder / f"{name}.lgb.txt"))
        self.xgb_model.save_model(str(folder / f"{name}.xgb.json"))

    @classmethod
    def load(cls, folder: Path, name: str) -> ClassModel:
        """Read what :meth:`save` wrote."""
        const = folder / f"{name}.const.json"
        if const.is_file():
            return cls(None, None, float(json.loads(const.read_text())["p"]))
        booster = xgb.Booster()
        booster.load_model(str(folder / f"{name}.xgb.json"))
        return cls(lgb.Booster(model_file=str(folder / f"{name}.lgb.txt")), booster, None)


def fit_class_model(
    x: np.ndarray, y: np.ndarray, inner: np.ndarray, params: BoostParams, seed: int
) -> ClassModel:
    """Fit one class. ``inner`` marks the rows used for early stopping only."""
    fit, val = ~inner, inner
    if y[fit].min() == y[fit].max():
        return ClassModel(None, None, float(np.clip(y[fit].mean(), EPS, 1 - EPS)))
    lgb_params = {
        "objective": "binary",
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
    train_set = lgb.Dataset(x[fit], y[fit])
    val_set = lgb.Dataset(x[val], y[val], reference=train_set)
    lgb_model = lgb.train(
        lgb_params,
        train_set,
        num_boost_round=params.rounds,
        valid_sets=[val_set],
        callbacks=[lgb.early_stopping(params.early_stopping, verbose=False)],
    )
    xgb_params = {
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
    dtrain = xgb.DMatrix(x[fit], label=y[fit])
    dval = xgb.DMatrix(x[val], label=y[val])
    xgb_model = xgb.train(
        xgb_params,
        dtrain,
        num_boost_round=params.rounds,
        evals=[(dval, "val")],
        early_stopping_rounds=params.early_stopping,
        verbose_eval=False,
    )
    return ClassModel(lgb_model, xgb_model, None)


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
