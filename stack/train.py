"""``train_level2``: the gradient-boosting stacker, cross-validated on the run's folds.

For every fold K of ``folds.csv`` the class models are trained on the level-1 OOF
predictions (and metadata) of the clips outside fold K and predict fold K, so the level-2
OOF predictions are as honest as level 1's: no clip is ever predicted by a model that saw
its label, at either level. Within a fold, each class model boosts from the base blend of
level-1 models (a logistic regression fit on the training part); its numbers of rounds are chosen by
inner cross-validation over the training part (grouped like the folds), 0 allowed.
Per-class clipping bounds are then tuned on the level-2 OOF (:func:`stack.boost.tune_clipping`).

Written into the run directory::

    level2/model.json       classes, level-1 models used, feature columns, clipping, params
    level2/fold_K/          per class: class_NN.lgb.txt + class_NN.xgb.json (or .const.json),
                            stats.json (file-size statistics of fold K's training clips),
                            base.json (the base blend the boosting starts from: per class a
                            logistic regression over level-1 logits, fit on fold K's
                            training clips)
    level2/oof.csv          level-2 OOF probabilities (clipped), id x class
    metrics.json            gains ``scores.level2`` (and the unclipped blend, ``level2_raw``)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from extract.store import FeatureStore
from pool.config import Level1Error
from pool.folds import make_folds
from pool.metrics import evaluate
from pool.run import read_oof, read_targets
from stack.boost import (
    BoostParams,
    ClassModel,
    apply_clipping,
    base_margin,
    fit_base,
    fit_class_model,
    params_dict,
    tune_clipping,
)
from stack.inputs import level2_matrix, size_stats

log = logging.getLogger(__name__)

LEVEL2 = "level2"


class Level2Error(ValueError):
    """A level-2 step cannot run as asked; the message says what to fix."""


def class_file(k: int) -> str:
    """File stem of class ``k``'s models (class names may hold spaces)."""
    return f"class_{k:02d}"


def read_run(run: Path) -> tuple[list[str], list[str], pd.DataFrame]:
    """Classes, level-1 models with OOF predictions, and ``folds.csv`` of a level-1 run."""
    if not (run / "metrics.json").is_file():
        raise Level2Error(f"{run} is not a finished level-1 run (run `jungle train-level1` first)")
    classes = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    models = sorted(p.stem for p in (run / "oof").glob("*.csv"))
    if not models:
        raise Level2Error(f"{run}/oof holds no level-1 predictions")
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str, "group": str}).set_index("id")
    return classes, models, folds


def run_meta(run: Path) -> pd.DataFrame:
    """Metadata of the run's training clips (from its first feature store)."""
    inputs = json.loads((run / "inputs.json").read_text(encoding="utf-8"))
    first = inputs["stores"][0]
    path = Path(first["per_fold"][0]["path"] if "per_fold" in first else first["path"])
    if not path.is_file():
        raise Level2Error(f"feature store {path} of this run is missing (moved or deleted?)")
    return FeatureStore(path).meta()


def train_level2(run: Path | str, params: BoostParams | None = None, seed: int = 0) -> dict:
    """Train the stacker on a finished level-1 run; returns the level-2 scores.

    Raises:
        Level2Error: not a finished level-1 run, or its inputs are missing.
    """
    run = Path(run)
    params = params or BoostParams()
    classes, models, folds = read_run(run)
    ids = list(folds.index)
    try:
        targets = read_targets(run).loc[ids, classes].to_numpy(dtype=np.float64)
    except (KeyError, FileNotFoundError, Level1Error) as exc:
        raise Level2Error(f"{run}: cannot read the run's targets ({exc})") from exc
    level1 = {m: read_oof(run, m) for m in models}
    meta = run_meta(run)
    groups = folds["group"].to_numpy() if "group" in folds else None
    fold_of = folds["fold"].to_numpy()
    out_dir = run / LEVEL2
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    oof = np.full(targets.shape, np.nan)
    columns: list[str] = []
    for fold in np.unique(fold_of):
        train = fold_of != fold
        train_ids = [i for i, t in zip(ids, train, strict=True) if t]
        held_ids = [i for i, t in zip(ids, train, strict=True) if not t]
        stats = size_stats(meta.loc[train_ids])
        x_train = level2_matrix(level1, meta, stats, train_ids, params.tree_inputs)
        x_held = level2_matrix(level1, meta, stats, held_ids, params.tree_inputs)
        columns = list(x_train.columns)
        inner = _inner_folds(
            targets[train], None if groups is None else groups[train], params, seed + int(fold)
        )
        probs_train = _class_probs(level1, train_ids, classes)
        base = fit_base(targets[train], probs_train, params.base_c)
        margin_train = base_margin(probs_train, base)
        margin_held = base_margin(_class_probs(level1, held_ids, classes), base)
        fold_dir = out_dir / f"fold_{fold}"
        fold_dir.mkdir()
        (fold_dir / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
        (fold_dir / "base.json").write_text(json.dumps(base, indent=1), encoding="utf-8")
        for k in range(len(classes)):
            model = fit_class_model(
                x_train.to_numpy(),
                targets[train, k],
                margin_train[:, k],
                inner,
                params,
                seed + 1000 * int(fold) + k,
            )
            model.save(fold_dir, class_file(k))
            oof[~train, k] = model.predict(x_held.to_numpy(), margin_held[:, k])
        log.info("level 2 fold %d: trained on %d clips", fold, int(train.sum()))
    bounds = tune_clipping(targets, oof)
    clipped = apply_clipping(oof, bounds)
    model_info = {
        "classes": classes,
        "level1_models": models,
        "columns": columns,
        "folds": [int(f) for f in np.unique(fold_of)],
        "clipping": dict(zip(classes, map(float, bounds), strict=True)),
        "params": params_dict(params),
        "seed": seed,
        "blend": "mean of LightGBM and XGBoost probabilities, one binary model per class, "
        "each boosted from the fold's base blend (logistic regression over level-1 logits)",
        "prediction": "level-1: mean of the level-1 fold models; level-2: mean of the "
        "level-2 fold models applied to it; then per-class clipping",
    }
    (out_dir / "model.json").write_text(json.dumps(model_info, indent=1), encoding="utf-8")
    table = pd.DataFrame(clipped, columns=classes)
    table.insert(0, "id", ids)
    table.to_csv(out_dir / "oof.csv", index=False, float_format="%.7g")
    scores = {
        "level2": evaluate(targets, clipped, classes),
        "level2_raw": evaluate(targets, oof, classes),
    }
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["scores"] = {
        k: v for k, v in metrics["scores"].items() if not k.startswith("level2")
    } | scores
    metrics["level2"] = {"clipping": model_info["clipping"], "level1_models": models}
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return metrics["scores"]


def _inner_folds(
    targets: np.ndarray, groups: np.ndarray | None, params: BoostParams, seed: int
) -> np.ndarray:
    """Inner fold of each training row (``params.inner_folds``, fewer when there are fewer
    groups), stratified and grouped like the outer folds."""
    units = len(np.unique(groups)) if groups is not None else len(targets)
    if units < 2:  # one group: inner folds cannot keep groups apart
        groups, units = None, len(targets)
    return make_folds(targets, min(params.inner_folds, units), seed, groups)


def _class_probs(
    level1: dict[str, pd.DataFrame], ids: list[str], classes: list[str]
) -> dict[str, np.ndarray]:
    """Level-1 probabilities per model as ``(len(ids), K)`` arrays in class order."""
    return {m: frame.loc[ids, classes].to_numpy(dtype=np.float64) for m, frame in level1.items()}


def load_level2(
    run: Path,
) -> tuple[dict, dict[int, tuple[dict, dict[str, float], list[ClassModel]]]]:
    """``model.json`` and, per fold, (file-size stats, base blend, class models) of a
    trained stacker."""
    out_dir = run / LEVEL2
    if not (out_dir / "model.json").is_file():
        raise Level2Error(f"{run} has no level-2 model (run `jungle train-level2 --run {run}`)")
    info = json.loads((out_dir / "model.json").read_text(encoding="utf-8"))
    folds = {}
    for fold in info["folds"]:
        fold_dir = out_dir / f"fold_{fold}"
        stats = json.loads((fold_dir / "stats.json").read_text(encoding="utf-8"))
        base = json.loads((fold_dir / "base.json").read_text(encoding="utf-8"))
        models = [ClassModel.load(fold_dir, class_file(k)) for k in range(len(info["classes"]))]
        folds[fold] = (stats, base, models)
    return info, folds


def predict_level2(
    run: Path | str, level1: dict[str, pd.DataFrame], meta: pd.DataFrame
) -> pd.DataFrame:
    """Level-2 probabilities for clips with level-1 predictions ``level1`` (per model,
    indexed by id) and metadata ``meta``: the mean over the level-2 fold models, clipped."""
    run = Path(run)
    info, folds = load_level2(run)
    missing = [m for m in info["level1_models"] if m not in level1]
    if missing:
        raise Level2Error(f"level-1 predictions of {missing} are needed by the stacker")
    ids = list(next(iter(level1.values())).index)
    used = {m: level1[m] for m in info["level1_models"]}
    per_fold = []
    for stats, base, models in folds.values():
        x = level2_matrix(used, meta, stats, ids, info["params"]["tree_inputs"])
        if list(x.columns) != info["columns"]:
            raise Level2Error("level-2 inputs do not match the trained columns")
        margin = base_margin(_class_probs(used, ids, info["classes"]), base)
        per_fold.append(
            np.stack([m.predict(x.to_numpy(), margin[:, k]) for k, m in enumerate(models)], axis=1)
        )
    probs = np.mean(per_fold, axis=0)
    bounds = np.array([info["clipping"][c] for c in info["classes"]])
    return pd.DataFrame(
        apply_clipping(probs, bounds), index=pd.Index(ids, name="id"), columns=info["classes"]
    )
