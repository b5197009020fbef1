"""``train_level1``: train every level-1 model on k folds and write the run directory;
``predict_level1``: level-1 predictions of new clips from a finished run.

Run directory layout::

    RUN/
      config.yaml          the resolved config (absolute paths, every default spelled out)
      classes.json         output classes, in column order (sorted species, then "blank")
      inputs.json          per store: path, layers, channels per layer, frames, extraction
      folds.csv            id, fold[, group]: made once, reused by every model and level 2
      targets.csv          id + one 0/1 column per class (the labels as matched)
      skipped.csv          filepath, reason: label rows without features (--skip-missing)
      oof/MODEL.csv        id + one probability column per class, every labelled clip once
      models/MODEL/fold_K.pt   checkpoint of fold K (torch.load(..., weights_only=True))
      metrics.json         OOF scores per model and for the class prior, per-fold details
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pool.config import MODELS, FeatureSource, Level1Config, Level1Error, config_yaml, load_config
from pool.data import FeatureBlock, Level1Data, load_block, load_training_data, open_stores
from pool.folds import inner_split, make_folds, write_folds
from pool.histogram import HistogramModel, fit_histogram
from pool.labels import BLANK
from pool.metrics import evaluate, prior_oof
from pool.train_torch import NetModel, fit_net, resolve_device

log = logging.getLogger(__name__)

#: files and folders a run writes (``--overwrite`` removes only these).
RUN_ITEMS = (
    "config.yaml",
    "classes.json",
    "inputs.json",
    "folds.csv",
    "targets.csv",
    "skipped.csv",
    "oof",
    "models",
    "metrics.json",
)

FoldModel = NetModel | HistogramModel


def model_seed(seed: int, model: str, fold: int) -> int:
    """Seed of one model on one fold (independent of which other models are trained)."""
    state = np.random.SeedSequence([seed, MODELS.index(model), fold]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


def _check_run_dir(run: Path, overwrite: bool) -> None:
    """Refuse to write into an earlier run unless ``overwrite``."""
    present = [name for name in RUN_ITEMS if (run / name).exists()]
    if present and not overwrite:
        raise Level1Error(
            f"{run} already holds a level-1 run ({', '.join(present)}); choose another --run "
            "or pass --overwrite"
        )
    if run.exists() and not run.is_dir():
        raise Level1Error(f"run directory {run} is a file")


def _prepare_run_dir(run: Path) -> None:
    """Remove an earlier run's files (only those a run writes) and create the folders."""
    present = [name for name in RUN_ITEMS if (run / name).exists()]
    for name in present:
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (run / "oof").mkdir(parents=True, exist_ok=True)
    (run / "models").mkdir(exist_ok=True)


def fit_fold_model(
    name: str,
    config: Level1Config,
    data: Level1Data,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
    device: torch.device,
) -> FoldModel:
    """Train model ``name`` on ``fit_rows``, stopping early on ``val_rows``."""
    if name == "histogram":
        return fit_histogram(
            config.histogram,
            data.block,
            data.targets,
            data.groups,
            data.classes.index(BLANK) if BLANK in data.classes else None,
            fit_rows,
            val_rows,
            seed,
            device,
            config.threads,
        )
    return fit_net(
        name, config.net(name), data.block, data.targets, fit_rows, val_rows, seed, device
    )


def load_fold_model(path: Path, device: torch.device | str = "cpu") -> FoldModel:
    """Load a fold checkpoint written by :func:`train_level1`."""
    device = torch.device(device)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["kind"] == "histogram":
        return HistogramModel.from_checkpoint(ckpt, device)
    return NetModel.from_checkpoint(ckpt, device)


def _write_oof(path: Path, ids: Sequence[str], probs: np.ndarray, classes: list[str]) -> None:
    table = pd.DataFrame(probs, columns=classes)
    table.insert(0, "id", list(ids))
    table.to_csv(path, index=False, float_format="%.7g")


def read_targets(run_dir: Path | str) -> pd.DataFrame:
    """The 0/1 targets of a run's labelled clips: indexed by clip id, one column per class."""
    return pd.read_csv(Path(run_dir) / "targets.csv", dtype={"id": str}).set_index("id")


def read_oof(run_dir: Path | str, model: str) -> pd.DataFrame:
    """OOF probabilities of ``model`` from a run: indexed by clip id, one column per class."""
    return pd.read_csv(Path(run_dir) / "oof" / f"{model}.csv", dtype={"id": str}).set_index("id")


def _fold_splits(
    data: Level1Data, folds: np.ndarray, config: Level1Config
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold: ``(fit rows, inner validation rows, held-out rows)``; the inner split of a
    fold is shared by every model."""
    splits = []
    for fold in range(config.folds):
        held = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        groups = data.groups[train] if data.groups is not None else None
        is_val = inner_split(
            data.targets[train], config.inner_val_fraction, config.seed + 1 + fold, groups
        )
        splits.append((train[~is_val], train[is_val], held))
    return splits


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch CPU threads (if given), restoring the number after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_level1(config: Level1Config, overwrite: bool = False) -> Path:
    """Train ``config.models`` on k folds; write the run directory (module docstring).

    Everything is validated (stores, layers, labels, matching, folds, run directory) before
    features are loaded or anything is trained.

    Returns:
        The run directory.

    Raises:
        Level1Error: invalid input; the message says what to fix.
    """
    config = config.resolved()
    if not config.labels.is_file():
        raise Level1Error(f"labels file {config.labels} does not exist")
    stores = open_stores(config.features)
    run = config.run
    _check_run_dir(run, overwrite)
    data = load_training_data(config, stores)
    n, k = data.targets.shape
    folds = make_folds(data.targets, config.folds, config.seed, data.groups)
    splits = _fold_splits(data, folds, config)
    _prepare_run_dir(run)
    ids = data.block.ids
    (run / "config.yaml").write_text(config_yaml(config), encoding="utf-8")
    (run / "classes.json").write_text(json.dumps(data.classes, indent=1) + "\n", encoding="utf-8")
    inputs = {"stores": data.block.layout, "meta_fields": config.meta_fields, "clips": n}
    (run / "inputs.json").write_text(json.dumps(inputs, indent=1) + "\n", encoding="utf-8")
    write_folds(run / "folds.csv", ids, folds, data.groups)
    _write_oof(run / "targets.csv", ids, data.targets, data.classes)
    data.skipped.to_csv(run / "skipped.csv", index=False)
    log.info(
        "%d clips, %d classes, %d folds%s; models: %s",
        n,
        k,
        config.folds,
        " (grouped)" if data.groups is not None else "",
        ", ".join(config.models),
    )

    device = resolve_device(config.device)

    scores: dict[str, dict] = {}
    training: dict[str, list[dict]] = {}
    with torch_threads(config.threads):
        for name in config.models:
            (run / "models" / name).mkdir(exist_ok=True)
            log.info("training %s on %d folds", name, config.folds)
            oof = np.full((n, k), np.nan, dtype=np.float32)
            training[name] = []
            for fold, (fit_rows, val_rows, held) in enumerate(splits):
                model = fit_fold_model(
                    name,
                    config,
                    data,
                    fit_rows,
                    val_rows,
                    model_seed(config.seed, name, fold),
                    device,
                )
                oof[held] = model.predict(data.block, held)
                torch.save(model.checkpoint(), run / "models" / name / f"fold_{fold}.pt")
                fold_loss = evaluate(data.targets[held], oof[held], data.classes)["log_loss"]
                training[name].append({"fold": fold, "held_out_log_loss": fold_loss, **model.info})
                log.info(
                    "%s fold %d/%d: held-out log loss %.4f (%s)",
                    name,
                    fold + 1,
                    config.folds,
                    fold_loss,
                    ", ".join(f"{key}={value:.4g}" for key, value in model.info.items()),
                )
            _write_oof(run / "oof" / f"{name}.csv", ids, oof, data.classes)
            scores[name] = evaluate(data.targets, oof, data.classes)
    scores["prior"] = evaluate(data.targets, prior_oof(data.targets, folds), data.classes)
    metrics = {
        "clips": n,
        "folds": config.folds,
        "classes": data.classes,
        "skipped": len(data.skipped),
        "scores": scores,
        "training": training,
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return run


def predict_level1(
    run_dir: Path | str,
    stores: Sequence[Path | str],
    models: Sequence[str] | None = None,
    device: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Level-1 probabilities of every clip of ``stores``: the mean over a run's fold models.

    Args:
        run_dir: a finished :func:`train_level1` run.
        stores: feature stores of the new clips, one per store of the run, in the same order
            (same backbones and layers).
        models: which models (default: every model of the run).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``{model: DataFrame}`` indexed by clip id, one column per class (run's order).

    Raises:
        Level1Error: not a finished run, or stores that do not match the run's inputs.
    """
    run = Path(run_dir)
    if not (run / "metrics.json").is_file():
        raise Level1Error(f"{run} is not a finished level-1 run (no metrics.json)")
    config = load_config(run / "config.yaml", {})
    classes = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    inputs = json.loads((run / "inputs.json").read_text(encoding="utf-8"))
    trained = inputs["stores"]
    if len(stores) != len(trained):
        raise Level1Error(f"the run was trained on {len(trained)} store(s), got {len(stores)}")
    sources = [
        FeatureSource(path=Path(p), layers=item["layers"])
        for p, item in zip(stores, trained, strict=True)
    ]
    block = load_block(sources, inputs["meta_fields"])
    _check_compatible(block, trained)
    names = list(models) if models is not None else config.models
    unknown = [m for m in names if m not in config.models]
    if unknown:
        raise Level1Error(f"the run has no model {unknown}; it has {config.models}")
    torch_device = resolve_device(device)
    result = {}
    for name in names:
        paths = sorted((run / "models" / name).glob("fold_*.pt"))
        if len(paths) != config.folds:
            raise Level1Error(f"{run}: {len(paths)} checkpoints of {name}, expected {config.folds}")
        probs = _mean_prediction([load_fold_model(p, torch_device) for p in paths], block)
        result[name] = pd.DataFrame(probs, index=pd.Index(block.ids, name="id"), columns=classes)
    return result


def _mean_prediction(fold_models: list[FoldModel], block: FeatureBlock) -> np.ndarray:
    return np.mean([m.predict(block) for m in fold_models], axis=0, dtype=np.float64).astype(
        np.float32
    )


def _check_compatible(block: FeatureBlock, trained: list[dict]) -> None:
    for new, old in zip(block.layout, trained, strict=True):
        if new["dims"] != old["dims"]:
            raise Level1Error(
                f"{new['path']}: layers {new['layers']} have {new['dims']} channels, the run was "
                f"trained on {old['dims']}"
            )
        for key in ("backbone", "image_size", "pooling", "frames"):
            if new["extraction"].get(key) != old["extraction"].get(key):
                log.warning(
                    "%s: extraction %s is %r, the run was trained with %r",
                    new["path"],
                    key,
                    new["extraction"].get(key),
                    old["extraction"].get(key),
                )
