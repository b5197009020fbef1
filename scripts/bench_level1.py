"""Benchmark of level-1 training memory: peak RSS of ``train_level1`` against the number of
clips, with features streamed from the store (and, for contrast, held in memory).

For each size (default 10,000 and 100,000 clips) a synthetic feature store is written
(default 32 frames x 256 dims float16, 16 KB per clip: 0.16 GB and 1.6 GB of features), then
every measurement runs ``pool.run.train_level1`` in a *fresh* Python process, which reports
its peak resident set size at the end: ``VmHWM`` of ``/proc/self/status`` (Linux), else
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. A process that only imports jungle (torch,
lightgbm, ...) gives the baseline. The child also counts what it read through
``FeatureStore.features``: the largest read (clips) and the total (GB).

Usage::

    python scripts/bench_level1.py [--clips 10000,100000] [--frames 32] [--dims 256]
        [--models pool] [--folds 2] [--epochs 1] [--window-mb 32] [--modes stream,memory]
        [--threads 2] [--workdir DIR] [--keep]

Defaults keep the whole benchmark to a few minutes on 2 CPU cores: one model (``pool``),
two folds, one epoch. ``--window-mb`` sets ``shuffle_window_mb`` (the features the batch
shuffler holds at once; the level-1 default is 256 MB) below the 10k store's size so that
both sizes stream through full windows: with streaming, peak memory is the import baseline
plus about one window, one read and the models, plus small per-clip arrays (ids, masks,
metadata, targets, OOF), whatever the number of clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _peak_rss_gb() -> tuple[float, str]:
    """This process's peak RSS in GB and how it was read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "ru_maxrss"


def child(config_path: str | None) -> None:
    """Run one measurement (in a fresh process) and print a JSON line."""
    import numpy as np

    from extract.store import FeatureStore
    from pool.config import load_config
    from pool.run import train_level1

    result: dict[str, object] = {}
    if config_path is not None:
        reads: list[int] = []
        original = FeatureStore.features

        def counted(store, layers=None, rows=None):  # noqa: ANN001, ANN202
            x = original(store, layers, rows)
            reads.append(len(x))
            result["clip_bytes"] = int(x[0].nbytes) if len(x) else result.get("clip_bytes", 0)
            return x

        FeatureStore.features = counted  # type: ignore[method-assign]
        config = load_config(Path(config_path), {})
        start = time.perf_counter()
        run = train_level1(config, overwrite=True)
        result["seconds"] = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
        result["log_loss"] = {m: s["log_loss"] for m, s in metrics["scores"].items()}
        result["largest_read_clips"] = int(max(reads))
        result["read_gb"] = float(np.sum(reads) * result["clip_bytes"] / 1e9)
    result["peak_rss_gb"], result["how"] = _peak_rss_gb()
    print("RESULT " + json.dumps(result))


def measure(config: Path | None) -> dict:
    """Run :func:`child` in a fresh interpreter; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    cmd += [str(config)] if config is not None else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"measurement failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def write_store(folder: Path, clips: int, frames: int, dims: int) -> tuple[Path, Path, float]:
    """A synthetic store and its labels CSV in ``folder`` (reused when already there)."""
    from pool.synthetic import SyntheticSpec, write_synthetic_store

    store, labels = folder / "features.h5", folder / "labels.csv"
    if store.is_file() and labels.is_file():
        return store, labels, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    first = min(32, dims // 4)
    spec = SyntheticSpec(
        clips=clips,
        frames=frames,
        layers=(("blocks.4", first), ("features", dims - first)),
        sites=20,
        seed=0,
    )
    start = time.perf_counter()
    table = write_synthetic_store(store, spec, shard_clips=1000)
    table.to_csv(labels, index=False)
    return store, labels, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clips", default="10000,100000", help="store sizes, comma-separated")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--models", default="pool")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the torch models")
    parser.add_argument("--frame-steps", type=int, default=100, help="histogram, if run")
    parser.add_argument("--window-mb", type=float, default=32.0, help="shuffle_window_mb")
    parser.add_argument("--modes", default="stream,memory", help="stream and/or memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the stores in --workdir")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child or None)
        return

    import yaml
    from rich.console import Console
    from rich.table import Table

    from pool.config import Level1Config, config_yaml

    sizes = [int(v) for v in args.clips.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    console = Console(width=170)
    console.print(
        f"level-1 memory benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(dir=args.workdir) if not args.keep else None
    base = Path(tmp.name) if tmp is not None else args.workdir or Path("bench_level1")
    try:
        baseline = measure(None)
        console.print(
            f"baseline (fresh process importing jungle, no training): peak RSS "
            f"{baseline['peak_rss_gb']:.2f} GB ({baseline['how']})"
        )
        rows = []
        for clips in sizes:
            folder = base / f"store_{clips}_{args.frames}x{args.dims}"
            store, labels, seconds = write_store(folder, clips, args.frames, args.dims)
            gb = clips * args.frames * args.dims * 2 / 1e9
            made = f"written in {seconds:.0f} s" if seconds else "reused"
            console.print(f"store of {clips} clips: {gb:.2f} GB of features ({made})")
            for mode in modes:
                config = Level1Config(
                    features=[str(store)],
                    labels=str(labels),
                    run=str(folder / f"run_{mode}"),
                    models=models,
                    folds=args.folds,
                    device="cpu",
                    threads=args.threads,
                    features_in_memory=mode == "memory",
                    shuffle_window_mb=args.window_mb,
                    attention={"epochs": args.epochs, "patience": args.epochs},
                    gru={"epochs": args.epochs, "patience": args.epochs},
                    pool={"epochs": args.epochs, "patience": args.epochs},
                    histogram={"frame_steps": args.frame_steps, "n_estimators": 50},
                )
                path = folder / f"config_{mode}.yaml"
                path.write_text(config_yaml(config))
                yaml.safe_load(path.read_text())  # loadable
                result = measure(path)
                console.print(f"  {mode}: {json.dumps(result)}")
                rows.append((clips, gb, mode, result))
    finally:
        if tmp is not None:
            tmp.cleanup()

    table = Table(
        title=f"train-level1 peak RSS: models {','.join(models)}, {args.folds} folds, "
        f"{args.epochs} epoch(s), {args.frames} frames x {args.dims} dims, "
        f"shuffle_window_mb {args.window_mb:g}, {args.threads} threads, CPU"
    )
    for column in (
        "clips",
        "features GB",
        "features",
        "peak RSS GB",
        "above baseline GB",
        "largest read (clips)",
        "read from store GB",
        "seconds",
        "OOF log loss",
    ):
        table.add_column(column, justify="left" if column == "features" else "right")
    for clips, gb, mode, r in rows:
        losses = r["log_loss"]
        table.add_row(
            f"{clips:,}",
            f"{gb:.2f}",
            "streamed" if mode == "stream" else "in memory",
            f"{r['peak_rss_gb']:.2f}",
            f"{r['peak_rss_gb'] - baseline['peak_rss_gb']:+.2f}",
            f"{r['largest_read_clips']:,}",
            f"{r['read_gb']:.1f}",
            f"{r['seconds']:.0f}",
            ", ".join(f"{m} {v:.4f}" for m, v in losses.items() if m != "prior"),
        )
    console.print(table)
    console.print(
        f"baseline: a fresh process importing jungle peaks at {baseline['peak_rss_gb']:.2f} GB "
        f"({baseline['how']}); every row is its own fresh process."
    )


if __name__ == "__main__":
    main()
