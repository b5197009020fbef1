"""``train_level2``: the stacker, cross-validated on the run's folds; ``predict_level2``.

For every fold K of ``folds.csv`` a :class:`stack.stacker.Stacker` is fitted on the level-1
OOF predictions (and metadata) of the clips outside fold K, choosing its method by inner
cross-validation on those clips only, and predicts fold K. So the level-2 OOF predictions
are as honest as level 1's: no clip is predicted by a model that saw its label, at either
level, and nothing about a held-out fold is used to choose anything for it.

Written into the run directory (:class:`pool.rundir.Run`)::

    level2/model.json       classes, level-1 models used, the level-1 lineage id trained on,
                            settings, and per fold its stacker's mixture weights
    level2/fold_K/          fold K's stacker (stacker.json + booster files)
    level2/oof.csv          level-2 OOF probabilities, id x class
    metrics.json            gains ``scores.level2`` and ``level2`` (the choices)

Prediction: level 1 is the mean of the level-1 fold models; level 2 the mean of the level-2
fold stackers applied to it (each clipped by its own bounds).
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from pool.config import Level1Error
from pool.metrics import evaluate
from pool.oof import cross_fit
from pool.rundir import Run
from stack.boost import BoostParams, params_dict
from stack.candidates import CANDIDATES, DEFAULT_CANDIDATES, stack_inputs
from stack.stacker import Stacker

log = logging.getLogger(__name__)


class Level2Error(ValueError):
    """A level-2 step cannot run as asked; the message says what to fix."""


#: how far level 2's OOF log loss may be above the best level-1 model's before
#: :func:`train_level2` warns (the bound of docs/level2.md).
LEVEL2_TOLERANCE = 0.002


def against_best_level1(scores: dict[str, dict], models: list[str]) -> dict:
    """Level 2 against the best of the level-1 ``models`` in ``scores`` (OOF metrics by
    name, ``level2`` among them): the model, both log losses and their ratio, and
    whether level 2 is within :data:`LEVEL2_TOLERANCE` of it."""
    best = min(models, key=lambda m: (scores[m]["log_loss"], m))
    best_loss, level2 = scores[best]["log_loss"], scores["level2"]["log_loss"]
    return {
        "model": best,
        "log_loss": best_loss,
        "level2_log_loss": level2,
        "ratio": level2 / best_loss if best_loss > 0 else float("inf"),
        "within_tolerance": level2 <= best_loss + LEVEL2_TOLERANCE,
    }


def report_against_level1(comparison: dict) -> None:
    """Log level 2 against the best level-1 model; a warning when level 2 is worse than it
    by more than :data:`LEVEL2_TOLERANCE` (its predictions would then be worse than that
    model's alone, on data like the run's)."""
    c = comparison
    if c["within_tolerance"]:
        log.info(
            "level 2 OOF log loss %.4f: %.3fx the best level-1 model's (%s %.4f)",
            c["level2_log_loss"],
            c["ratio"],
            c["model"],
            c["log_loss"],
        )
        return
    log.warning(
        "level 2 OOF log loss %.4f is above the best level-1 model's (%s %.4f) by %.4f: on "
        "new sites its predictions are likely worse than %s's alone (docs/level2.md, 'What "
        "still fails'; the default candidates and --select overall stayed within %.3f of "
        "the best level-1 model on every set measured there)",
        c["level2_log_loss"],
        c["model"],
        c["log_loss"],
        c["level2_log_loss"] - c["log_loss"],
        c["model"],
        LEVEL2_TOLERANCE,
    )


def _level1_id(run: Run) -> str:
    try:
        return run.level1_id()
    except Level1Error as exc:
        raise Level2Error(str(exc)) from None


def train_level2(
    run: Path | str,
    params: BoostParams | None = None,
    seed: int = 0,
    select: str = "overall",
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    se_factor: float = 1.0,
) -> dict:
    """Train the stacker on a finished level-1 run; returns every OOF score of the run.

    Args:
        candidates: the stacker's candidates (:data:`stack.candidates.CANDIDATES`; default
            :data:`stack.candidates.DEFAULT_CANDIDATES`).

    Raises:
        Level2Error: not a finished level-1 run, level-1 files changed since it was made, or
            an unknown or repeated candidate.
    """
    names = set(candidates)
    if not candidates or len(names) != len(candidates) or not names <= set(CANDIDATES):
        raise Level2Error(
            f"level-2 candidates must be distinct names among {', '.join(CANDIDATES)}; "
            f"got {', '.join(candidates) or 'none'}"
        )
    run = Run(run)
    params = params or BoostParams()
    lineage = _level1_id(run)
    classes = run.classes()
    models = run.level1_models()
    if not models:
        raise Level2Error(f"{run.path}/oof holds no level-1 predictions")
    folds = run.folds()
    ids = list(folds.index)
    targets = run.targets().loc[ids, classes].to_numpy(dtype=np.float64)
    x = stack_inputs({m: run.oof(m) for m in models}, run.meta(), ids, classes)
    # level 2's inner folds: the level-1 folds (see stack.stacker); they keep groups apart
    fold_of = folds["fold"].to_numpy()
    out_dir = run.level2_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    choices: dict[int, dict] = {}
    stacker = Stacker(
        classes,
        tuple(candidates),
        select=select,
        se_factor=se_factor,
        params=params,
        random_state=seed,
    )
    result = cross_fit(
        stacker,
        x,
        targets,
        fold_of,
        groups=fold_of.astype(str),
        fold_params=lambda fold: {"random_state": seed + 1000 * fold},
        on_fold=partial(_save_fold, out_dir, choices),
    )
    oof = result.oof
    picked = _mean_weights(choices, candidates)
    info = {
        "classes": classes,
        "level1_models": models,
        "level1_lineage": lineage,
        "folds": [int(f) for f in result.folds],
        "select": select,
        "se_factor": se_factor,
        "candidates": list(candidates),
        "params": params_dict(params),
        "seed": seed,
        "choices": {str(f): c for f, c in choices.items()},
    }
    (out_dir / "model.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    run.write_table(out_dir / "oof.csv", ids, oof, classes)
    metrics = run.metrics()
    metrics["scores"] = {
        k: v for k, v in metrics["scores"].items() if not k.startswith("level2")
    } | {"level2": evaluate(targets, oof, classes)}
    comparison = against_best_level1(metrics["scores"], models)
    metrics["level2"] = {
        "chosen": picked,
        "temperature": _fold_temperatures(choices),
        "against_best_level1": comparison,
        "folds": info["choices"],
    }
    run.write_json("metrics.json", metrics)
    log.info("level 2 mixture weights (mean over folds and classes): %s", picked)
    report_against_level1(comparison)
    return metrics["scores"]


def _save_fold(
    out_dir: Path, choices: dict, fold: int, model: Stacker, held: np.ndarray, out: np.ndarray
) -> None:
    model.save(out_dir / f"fold_{fold}")
    choices[fold] = model.choice
    per_class = {
        json.dumps({n: round(w, 3) for n, w in weights.items()})
        for weights in model.choice["weights"].values()
    }
    temperature = sorted(set(np.round(model.temperature_, 3).tolist()))
    log.info(
        "level 2 fold %d: weights %s, temperature %s",
        fold,
        per_class.pop() if len(per_class) == 1 else model.choice["weights"],
        temperature,
    )


def _mean_weights(choices: dict[int, dict], candidates: tuple[str, ...]) -> dict[str, float]:
    """Each candidate's mixture weight, averaged over folds and classes (3 decimals)."""
    rows = [w for c in choices.values() for w in c["weights"].values()]
    means = {n: float(np.mean([w.get(n, 0.0) for w in rows])) for n in candidates}
    return {n: round(v, 3) for n, v in means.items() if v > 0}


def _fold_temperatures(choices: dict[int, dict]) -> dict[str, float]:
    """Each fold's mixture temperature, averaged over classes."""
    return {str(f): float(np.mean(list(c["temperature"].values()))) for f, c in choices.items()}


def load_level2(run: Path | str) -> tuple[dict, dict[int, Stacker]]:
    """``model.json`` and the fold stackers of a trained level 2.

    Raises:
        Level2Error: no level 2, or one trained on another level 1 than the run's.
    """
    run = Run(run)
    out_dir = run.level2_dir
    if not (out_dir / "model.json").is_file():
        raise Level2Error(
            f"{run.path} has no level-2 model (run `jungle train-level2 --run {run.path}`)"
        )
    info = json.loads((out_dir / "model.json").read_text(encoding="utf-8"))
    try:
        run.check_level2(info.get("level1_lineage"))
    except Level1Error as exc:
        raise Level2Error(str(exc)) from None
    stackers = {int(f): Stacker.load(out_dir / f"fold_{f}") for f in info["folds"]}
    return info, stackers


def predict_level2(
    run: Path | str, level1: dict[str, pd.DataFrame], meta: pd.DataFrame
) -> pd.DataFrame:
    """Level-2 probabilities for clips with level-1 predictions ``level1`` (per model,
    indexed by id) and metadata ``meta``: the mean over the level-2 fold stackers."""
    info, stackers = load_level2(run)
    missing = [m for m in info["level1_models"] if m not in level1]
    if missing:
        raise Level2Error(f"level-1 predictions of {missing} are needed by the stacker")
    ids = list(next(iter(level1.values())).index)
    used = {m: level1[m] for m in info["level1_models"]}
    x = stack_inputs(used, meta, ids, info["classes"])
    probs = np.mean([s.predict_proba(x) for s in stackers.values()], axis=0)
    return pd.DataFrame(probs, index=pd.Index(ids, name="id"), columns=info["classes"])
