"""`make demo`: the whole job on generated camera-trap clips, on a fresh machine.

1. generate clips at six sites (scripts/make_demo_data.py); four are for training, two are
   held out entirely (never seen by any model);
2. extract features of the training clips (`jungle features`);
3. train the level-1 models with folds grouped by site (`jungle train-level1`);
4. train the level-2 stacker on their OOF predictions (`jungle train-level2`);
5. predict the held-out sites from their video files (`jungle predict`);
6. score those predictions against the held-out labels (`jungle evaluate`).

Every number printed is measured in this run. Sizes are chosen to finish well within
15 minutes on a 2-core CPU (160x120 clips, 16 frames per clip, 720 clips: 480 for training).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.config import FeaturesConfig  # noqa: E402
from extract.console import setup_logging  # noqa: E402
from extract.pipeline import extract_features  # noqa: E402
from pool.config import Level1Config  # noqa: E402
from pool.metrics import metrics_table  # noqa: E402
from pool.run import train_level1  # noqa: E402
from scripts.make_demo_data import generate_demo  # noqa: E402
from stack.evaluate import evaluate_predictions, report_tables  # noqa: E402
from stack.predict import predict  # noqa: E402
from stack.train import train_level2  # noqa: E402

TRAIN_SITES = ("siteA", "siteB", "siteC", "siteD")
HELDOUT_SITES = ("siteE", "siteF")


def split_manifests(data: Path) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``heldout.csv`` (``filepath,label,site``) beside labels.csv."""
    with (data / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    paths = []
    for name, sites in (("train", TRAIN_SITES), ("heldout", HELDOUT_SITES)):
        path = data / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["filepath", "label", "site"])
            writer.writeheader()
            writer.writerows(r for r in rows if r["site"] in sites)
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo", help="working folder")
    parser.add_argument("--clips", type=int, default=720, help="clips over all six sites")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--image-size", type=int, default=160, help="CNN input side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console(stderr=True)
    setup_logging(console)
    logging.getLogger("extract").setLevel(logging.WARNING)
    started = time.perf_counter()
    out = args.out.absolute()
    data = out / "data"

    console.rule("1. generate demo clips")
    if not (data / "labels.csv").is_file():
        generate_demo(data, n_clips=args.clips, sites=TRAIN_SITES + HELDOUT_SITES, seed=args.seed)
    train_csv, heldout_csv = split_manifests(data)
    console.print(
        f"clips and labels in {data} (train sites {TRAIN_SITES}, held out {HELDOUT_SITES})"
    )

    console.rule("2. jungle features (training sites)")
    features = FeaturesConfig(frames=args.frames, image_size=args.image_size)
    store = out / "train.h5"
    summary = extract_features(train_csv, store, features)
    console.print(f"{summary.ok} clips in {store} ({summary.processing_seconds:.0f} s)")

    console.rule("3. jungle train-level1 (folds grouped by site)")
    run = out / "run"
    config = Level1Config(
        features=[store],
        labels=train_csv,
        run=run,
        folds=len(TRAIN_SITES),
        group_column="site",
        seed=args.seed,
    )
    train_level1(config.resolved(), overwrite=True)

    console.rule("4. jungle train-level2")
    scores = train_level2(run, seed=args.seed)
    console.print(metrics_table(scores, title="out-of-fold scores on the training sites"))

    console.rule("5. jungle predict (held-out sites)")
    predictions = out / "predictions.csv"
    result = predict(heldout_csv, run, predictions)
    console.print(
        f"{result.ok} ok, {result.partial} partial, {result.failed} failed → {predictions}"
    )

    console.rule("6. jungle evaluate (held-out sites)")
    for table in report_tables(evaluate_predictions(predictions, heldout_csv)):
        console.print(table)
    console.print(
        f"[bold green]demo done[/] in {time.perf_counter() - started:.0f} s. Predictions: "
        f"{predictions}; run directory: {run}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
