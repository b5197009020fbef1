"""``train_level1``: train every level-1 model on k folds and write the run directory;
``predict_level1``: level-1 predictions of new clips from a finished run.

The run directory's layout and lineage belong to :class:`pool.rundir.Run`. Every model is a
:class:`pool.estimators.Level1Classifier`, trained fold by fold by the one out-of-fold loop
:func:`pool.oof.cross_fit` on the run's ``folds.csv``.

Memory: the features of the labelled clips are held in RAM or streamed from the stores
block by block (``features_in_memory``, see :func:`pool.data.load_block`); either way the
models see the same batches and give the same predictions. ``predict_level1`` reads each
block of clips once and applies every fold model to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from extract.store import FeatureStore
from pool.config import MODELS, FeatureSource, Level1Config, Level1Error, config_yaml
from pool.data import FeatureBlock, Level1Data, load_block, load_training_data, open_stores
from pool.estimators import Level1Classifier, load_estimator
from pool.folds import check_groups_kept, default_fold_count, make_folds, write_folds
from pool.histogram import SCORE_BATCH
from pool.metrics import evaluate, prior_oof
from pool.oof import cross_fit
from pool.rundir import Run
from pool.train_torch import PREDICT_BATCH

log = logging.getLogger(__name__)


def model_seed(seed: int, model: str, fold: int) -> int:
    """Seed of one model on one fold (independent of which other models are trained)."""
    state = np.random.SeedSequence([seed, MODELS.index(model), fold]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


def estimator(
    name: str, config: Level1Config, classes: list[str], fold: int = 0
) -> Level1Classifier:
    """Model ``name`` of ``config`` as an estimator, seeded for fold ``fold`` (the inner
    early-stopping split of a fold is the same for every model)."""
    return Level1Classifier(
        model=name,
        config=config.settings(name),
        classes=classes,
        inner_val_fraction=config.inner_val_fraction,
        split_seed=config.seed + 1 + fold,
        random_state=model_seed(config.seed, name, fold),
        device=config.device,
        threads=config.threads,
        shuffle_block_clips=config.shuffle_block_clips,
        shuffle_window_mb=config.shuffle_window_mb,
    )


def _fold_params(name: str, config: Level1Config, classes: list[str], fold: int) -> dict:
    return estimator(name, config, classes, fold).get_params()


def _save_fold(
    run: Run,
    name: str,
    targets: np.ndarray,
    classes: list[str],
    record: list[dict],
    fold: int,
    model: Level1Classifier,
    held: np.ndarray,
    out: np.ndarray,
) -> None:
    """After fold ``fold`` of model ``name``: save it, record and log its held-out score."""
    model.save(run.checkpoint(name, fold))
    loss = evaluate(targets[held], out, classes)["log_loss"]
    record.append({"fold": fold, "held_out_log_loss": loss, **model.info})
    log.info(
        "%s fold %d: held-out log loss %.4f (%s)",
        name,
        fold,
        loss,
        ", ".join(f"{key}={value:.4g}" for key, value in model.info.items()),
    )


def existing_folds(config: Level1Config) -> tuple[Path, pd.DataFrame] | None:
    """The folds file to reuse, with its table (``id`` index, ``fold``[, ``group``]): the
    config's ``folds_csv``, else ``RUN/folds.csv`` when present (written by ``jungle
    finetune``, or by an earlier run); None when folds are to be made.

    Raises:
        Level1Error: a missing or unreadable file, or fold numbers other than ``0..k-1``.
    """
    path = config.folds_csv or config.run / "folds.csv"
    if not path.is_file():
        if config.folds_csv is not None:
            raise Level1Error(f"folds file {path} does not exist")
        return None
    try:
        table = pd.read_csv(path, dtype={"id": str, "group": str}).set_index("id")
        fold_of = table["fold"].astype(np.int64)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise Level1Error(f"cannot read folds {path} (columns id, fold[, group]): {exc}") from exc
    present = sorted(set(fold_of))
    if present != list(range(len(present))) or len(present) < 2:
        raise Level1Error(f"{path}: folds must be numbered 0..k-1 with k >= 2, found {present}")
    return path, table.assign(fold=fold_of)


def _folds_from_table(data: Level1Data, path: Path, table: pd.DataFrame) -> np.ndarray:
    """The fold of each clip of ``data`` from a reused folds table; takes its groups for the
    inner splits when the config named none."""
    missing = [cid for cid in data.block.ids if cid not in table.index]
    if missing:
        raise Level1Error(
            f"{len(missing)} labelled clips are not in {path} (e.g. {missing[:3]}); the folds "
            "file must list every clip with features and labels (delete it, or pass another "
            "--folds-csv, to make new folds)"
        )
    rows = table.loc[data.block.ids]
    folds = rows["fold"].to_numpy(dtype=np.int64)
    check_groups_kept(path, folds, data.groups)
    if data.groups is None and "group" in rows:
        data.groups = rows["group"].fillna("").to_numpy(dtype=str)
    return folds


def _open_fold_stores(config: Level1Config, k: int) -> list[list[FeatureStore]]:
    """Every fold's opened stores (the same list for each fold without per-fold stores),
    checked before anything is trained: they exist, have the layers, hold the same clips."""
    if not config.per_fold:
        return [open_stores(config.features)] * k
    per_fold = [open_stores(config.for_fold(fold).features) for fold in range(k)]
    reference = [sorted(store.ids) for store in per_fold[0]]
    for fold, stores in enumerate(per_fold):
        if [sorted(store.ids) for store in stores] != reference:
            raise Level1Error(
                f"the stores of fold {fold} do not hold the same clips as fold 0's; extract "
                "every fold's store from the same videos"
            )
    return per_fold


def train_level1(config: Level1Config, overwrite: bool = False) -> Path:
    """Train ``config.models`` on k folds; write the run directory (module docstring).

    Everything is validated (stores, layers, labels, matching, folds, run directory) before
    features are loaded or anything is trained. Folds are reused from ``folds_csv`` or
    ``RUN/folds.csv`` when present (see :func:`existing_folds`), else made. With per-fold
    stores (``{fold}`` in a store path, e.g. features of backbones fine-tuned per fold by
    ``jungle finetune --fold K``), fold K's models train on, and predict, store K's
    features; the folds must then be the ones the stores were made with.

    Returns:
        The run directory.

    Raises:
        Level1Error: invalid input; the message says what to fix.
    """
    config = config.resolved()
    if not config.labels.is_file():
        raise Level1Error(f"labels file {config.labels} does not exist")
    run = Run(config.run)
    run.check_writable(overwrite)
    reused = existing_folds(config)
    if config.per_fold and reused is None:
        raise Level1Error(
            "per-fold feature stores ({fold} in a --features path) need the folds they were "
            f"made with: {run.file('folds.csv')} (written by `jungle finetune --fold K`) or "
            "--folds-csv"
        )
    k = 1  # new folds: counted once the groups are known; the stores are then shared
    if reused is not None:
        k = int(reused[1]["fold"].max()) + 1
        if config.folds is not None and config.folds != k:
            raise Level1Error(
                f"{reused[0]} has {k} folds but --folds is {config.folds}; drop --folds to reuse "
                "those folds, or delete the file to make new ones"
            )
    stores = _open_fold_stores(config, k)
    data = load_training_data(config.for_fold(0), stores[0])
    if reused is not None:
        folds = _folds_from_table(data, *reused)
        log.info("reusing the %d folds of %s", k, reused[0])
    else:
        k = default_fold_count(config.folds, data.groups)
        folds = make_folds(data.targets, k, config.seed, data.groups)
    config = config.model_copy(update={"folds": k})
    ids, targets, classes, groups = data.block.ids, data.targets, data.classes, data.groups
    n, n_classes = targets.shape
    run.clear()
    run.file("config.yaml").write_text(config_yaml(config), encoding="utf-8")
    run.write_json("classes.json", classes)
    inputs = {
        "stores": _store_layout(config, data.block.layout, stores),
        "meta_fields": config.meta_fields,
        "clips": n,
    }
    run.write_json("inputs.json", inputs)
    write_folds(run.file("folds.csv"), ids, folds, groups)
    run.write_table(run.file("targets.csv"), ids, targets, classes)
    stores[0][0].meta().loc[ids].to_csv(run.file("meta.csv"))
    data.skipped.to_csv(run.file("skipped.csv"), index=False)
    log.info(
        "%d clips, %d classes, %d folds%s%s; models: %s",
        n,
        n_classes,
        k,
        " (grouped)" if groups is not None else "",
        ", one feature store per fold" if config.per_fold else "",
        ", ".join(config.models),
    )
    blocks = {0: data.block}

    def fold_block(fold: int) -> FeatureBlock:
        """Fold ``fold``'s features: its own stores when they are per fold."""
        if fold not in blocks:
            blocks.clear()  # one fold's block at a time
            blocks[fold] = _fold_data(config.for_fold(fold), stores[fold], ids, targets).block
        return blocks[fold]

    training: dict[str, list[dict]] = {}
    scores: dict[str, dict] = {}
    for name in config.models:
        (run.path / "models" / name).mkdir(exist_ok=True)
        training[name] = []

        result = cross_fit(
            estimator(name, config, classes),
            fold_block if config.per_fold else data.block,
            targets,
            folds,
            groups=groups,
            fold_params=partial(_fold_params, name, config, classes),
            on_fold=partial(_save_fold, run, name, targets, classes, training[name]),
        )
        run.write_table(run.oof_path(name), ids, result.oof, classes)
        scores[name] = evaluate(targets, result.oof, classes)
    scores["prior"] = evaluate(targets, prior_oof(targets, folds), classes)
    metrics = {
        "clips": n,
        "folds": k,
        "classes": classes,
        "skipped": len(data.skipped),
        "scores": scores,
        "training": training,
    }
    run.write_lineage(list(dict.fromkeys(store.path for fold in stores for store in fold)))
    run.write_json("metrics.json", metrics)
    return run.path


def _fold_data(
    config: Level1Config,
    stores: list[FeatureStore],
    ids: list[str],
    targets: np.ndarray,
) -> Level1Data:
    """Fold K's data (its own stores), checked to be the same clips and targets as fold 0's."""
    data = load_training_data(config, stores)
    if data.block.ids != ids or not np.array_equal(data.targets, targets):
        raise Level1Error(
            f"the stores {[str(s.path) for s in config.features]} do not give the same "
            "labelled clips as fold 0's stores"
        )
    return data


def _store_layout(
    config: Level1Config, layout: list[dict], stores: list[list[FeatureStore]]
) -> list[dict]:
    """``inputs.json``'s per-store entries: fold 0's layout, and for a per-fold store its
    path pattern and each fold's path and extraction settings (``stores``: per fold)."""
    items = []
    for i, (source, item) in enumerate(zip(config.features, layout, strict=True)):
        if source.per_fold:
            folds = [
                {"path": str(fold[i].path), "extraction": fold[i].extraction} for fold in stores
            ]
            item = item | {"path": str(source.path), "per_fold": folds}
        items.append(item)
    return items


def load_fold_models(
    run_dir: Path | str,
    stores: Sequence[Path | str],
    models: Sequence[str] | None = None,
    device: str = "auto",
) -> tuple[Run, list[FeatureSource], dict[str, list[Level1Classifier]]]:
    """The run, the sources of the new clips' ``stores`` (checked against the run's
    inputs, see :func:`predict_level1`) and every fold model of ``models`` (default all).

    Raises:
        Level1Error: not a finished run, stores that do not match, unknown or missing models.
    """
    run = Run(run_dir)
    run.require_level1()
    config = run.config()
    trained = run.inputs()["stores"]
    if len(stores) != len(trained):
        raise Level1Error(f"the run was trained on {len(trained)} store(s), got {len(stores)}")
    sources = [
        FeatureSource(path=Path(p), layers=item["layers"])
        for p, item in zip(stores, trained, strict=True)
    ]
    for source, item in zip(sources, trained, strict=True):
        if source.per_fold != ("per_fold" in item):
            wanted = (
                "one store per fold (a path with {fold})"
                if "per_fold" in item
                else ("one store for every fold (a path without {fold})")
            )
            raise Level1Error(f"{source.path}: the run was trained on {wanted} here")
    names = list(models) if models is not None else config.models
    unknown = [m for m in names if m not in config.models]
    if unknown:
        raise Level1Error(f"the run has no model {unknown}; it has {config.models}")
    checkpoints = {}
    for name in names:
        paths = [run.checkpoint(name, fold) for fold in range(config.folds)]
        if not all(p.is_file() for p in paths):
            raise Level1Error(
                f"{run.path}: checkpoints of {name} are missing, expected {config.folds}"
            )
        checkpoints[name] = paths
    fold_models = {
        name: [load_estimator(path, device) for path in paths]
        for name, paths in checkpoints.items()
    }
    return run, sources, fold_models


def predict_level1(
    run_dir: Path | str,
    stores: Sequence[Path | str],
    models: Sequence[str] | None = None,
    device: str = "auto",
    ids: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Level-1 probabilities of the clips of ``stores``: the mean over a run's fold models.

    Args:
        run_dir: a finished :func:`train_level1` run.
        stores: feature stores of the new clips, one per store of the run, in the same order
            (same backbones and layers). Where the run used one store per fold, give a path
            with ``{fold}``: fold K's models then read store K (the new clips' features made
            with fold K's backbone).
        models: which models (default: every model of the run).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        ids: the clips to predict, in this order (each must be in every store); default
            every clip of the first store.

    Returns:
        ``{model: DataFrame}`` indexed by clip id, one column per class (run's order).

    Raises:
        Level1Error: not a finished run, or stores that do not match the run's inputs.
    """
    run, sources, fold_models = load_fold_models(run_dir, stores, models, device)
    config, classes, inputs = run.config(), run.classes(), run.inputs()
    trained = inputs["stores"]
    names = list(fold_models)
    per_fold = any(source.per_fold for source in sources)
    # folds that read the same stores share one pass over the clips
    passes = [[fold] for fold in range(config.folds)] if per_fold else [list(range(config.folds))]
    sums: dict[str, np.ndarray] = {}
    seen_ids: list[str] | None = None
    for folds in passes:
        block = load_block(
            [s.for_fold(folds[0]) for s in sources],
            inputs["meta_fields"],
            ids=ids,
            in_memory=config.features_in_memory,
            budget_gb=config.features_budget_gb,
            read_mb=config.shuffle_window_mb,
        )
        _check_compatible(block, trained)
        if seen_ids is not None and block.ids != seen_ids:
            raise Level1Error(f"the stores of fold {folds[0]} hold other clips than fold 0's")
        seen_ids = block.ids
        for name in names:
            sums.setdefault(name, np.zeros((len(block), len(classes)), dtype=np.float64))
        step = _predict_chunk(block.features.chunk_clips)
        for start in range(0, len(block), step):
            part = block.subset(np.arange(start, min(start + step, len(block))))
            for fold in folds:
                for name in names:
                    probs = fold_models[name][fold].predict_proba(part)
                    sums[name][start : start + len(part)] += probs.astype(np.float64)
    return {
        name: pd.DataFrame(
            (total / config.folds).astype(np.float32),
            index=pd.Index(seen_ids or [], name="id"),
            columns=classes,
        )
        for name, total in sums.items()
    }


def _predict_chunk(limit: int) -> int:
    """Clips read at once by :func:`predict_level1`: at most ``limit`` (the block's
    ``chunk_clips``), a multiple of the models' prediction batches where possible (so the
    batches are those of a prediction over the whole block)."""
    unit = min(max(PREDICT_BATCH, SCORE_BATCH), limit)
    return max(unit, limit // unit * unit)


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
