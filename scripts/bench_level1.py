"""Benchmark of level-1 training: seconds per fold and peak memory per model.

Builds a synthetic feature store (default 10,000 clips x 32 frames x 1,300 dims, float16,
about 0.8 GB of features) in a temporary folder, loads it once, then trains each model on
one fold of a k-fold split (or on every fold with ``--all-folds``) and prints a table.

Memory: the peak resident set size (RSS) of this process while a step runs, minus the RSS
before it, read from ``VmHWM`` in ``/proc/self/status`` after resetting it through
``/proc/self/clear_refs`` (Linux). Where the reset is not allowed, the increase of
``resource.getrusage`` ``ru_maxrss`` (the process's lifetime peak) is shown instead, which
under-reports later steps. On CUDA the peak of ``torch.cuda.max_memory_allocated`` is shown
too. The "load" row shows that the store is held once: its RSS increase is about the size
of the float16 array.

Usage::

    python scripts/bench_level1.py [--clips 10000] [--frames 32] [--dims 1300] [--epochs 5]
        [--models attention,gru,pool,histogram] [--all-folds] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from pool.config import MODELS, Level1Config
from pool.data import Level1Data, load_block
from pool.folds import inner_split, make_folds
from pool.labels import read_labels
from pool.metrics import evaluate
from pool.run import fit_fold_model, model_seed
from pool.synthetic import SyntheticSpec, write_synthetic_store
from pool.train_torch import resolve_device

log = logging.getLogger("bench_level1")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(step: Callable[[], object]) -> tuple[object, float, float, str]:
    """Run ``step``; return (result, seconds, peak RSS increase in GB, how it was measured)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, how = _status_kb("VmRSS"), "VmHWM"
    except OSError:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    peak = (
        _status_kb("VmHWM")
        if how == "VmHWM"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    return result, seconds, (peak - before) / 1e6, how


def train_and_predict(
    name: str,
    config: Level1Config,
    data: Level1Data,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    seed: int,
    device: torch.device,
) -> np.ndarray:
    """Train ``name`` on one fold's (fit, inner validation) rows; predict its held-out rows."""
    fit_rows, val_rows, held = split
    model = fit_fold_model(name, config, data, fit_rows, val_rows, seed, device)
    return model.predict(data.block, held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--dims", type=int, default=1300)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--all-folds", action="store_true", help="train every fold, not one")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the torch models")
    parser.add_argument("--frame-steps", type=int, default=600, help="histogram frame classifier")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store = Path(tmp) / "bench.h5"
        first = min(20, args.dims - 1)
        spec = SyntheticSpec(
            clips=args.clips,
            frames=args.frames,
            layers=(("blocks.2", first), ("features", args.dims - first)),
            species=tuple(f"species{i}" for i in range(args.classes)),
            sites=20,
        )
        start = time.perf_counter()
        labels = write_synthetic_store(store, spec, shard_clips=500)
        log.info(
            "store written in %.1f s (%.2f GB)",
            time.perf_counter() - start,
            store.stat().st_size / 1e9,
        )
        config = Level1Config(
            features=[str(store)],
            labels=str(Path(tmp) / "labels.csv"),
            run=str(Path(tmp) / "run"),
            folds=args.folds,
            device=args.device,
            threads=args.threads,
            attention={"epochs": args.epochs, "patience": args.epochs},
            gru={"epochs": args.epochs, "patience": args.epochs},
            pool={"epochs": args.epochs, "patience": args.epochs, "use_meta": False},
            histogram={"frame_steps": args.frame_steps},
        )
        rows = []
        block, seconds, gb, how = measure(lambda: load_block(config.features, config.meta_fields))
        rows.append(("load store", seconds, gb, f"array {block.x.nbytes / 1e9:.2f} GB float16"))

        labels.to_csv(config.labels, index=False)
        table = read_labels(config.labels)
        order = {f: i for i, f in enumerate(table.filepaths)}
        targets = table.targets[[order[cid] for cid in block.ids]]
        skipped = pd.DataFrame(columns=["filepath", "reason"])
        data = Level1Data(block, table.classes, targets, None, skipped)
        folds = make_folds(targets, config.folds, config.seed)
        device = resolve_device(args.device)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            per_fold, peaks, losses = [], [], []
            for fold in range(config.folds if args.all_folds else 1):
                held = np.flatnonzero(folds == fold)
                train = np.flatnonzero(folds != fold)
                is_val = inner_split(targets[train], config.inner_val_fraction, fold)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                step = functools.partial(
                    train_and_predict,
                    name,
                    config,
                    data,
                    (train[~is_val], train[is_val], held),
                    model_seed(config.seed, name, fold),
                    device,
                )
                probs, seconds, gb, how = measure(step)
                per_fold.append(seconds)
                peaks.append(gb)
                losses.append(evaluate(targets[held], probs, table.classes)["log_loss"])
                log.info("%s fold %d: %.1f s, peak +%.2f GB", name, fold, seconds, gb)
            note = f"held-out log loss {np.mean(losses):.4f}"
            if device.type == "cuda":
                note += f", GPU peak {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB"
            rows.append((name, float(np.mean(per_fold)), max(peaks), note))

    out = Table(
        title=f"level-1 benchmark: {args.clips} clips x {args.frames} frames x {args.dims} dims, "
        f"{device}, {torch.get_num_threads()} threads, torch epochs {args.epochs}"
    )
    for column in ("step", "seconds per fold", f"peak RSS increase GB ({how})", "notes"):
        out.add_column(column)
    for step_name, seconds, gb, note in rows:
        out.add_row(step_name, f"{seconds:.1f}", f"{gb:.2f}", note)
    Console().print(out)


if __name__ == "__main__":
    main()
