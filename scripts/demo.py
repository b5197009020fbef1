"""`make demo`: the whole job on generated camera-trap clips, on a fresh machine.

1. generate clips at six sites (scripts/make_demo_data.py); four are for training, two are
   held out entirely (never seen by any model);
2. extract features of the training clips (`jungle features`);
3. train the level-1 models with folds grouped by site (`jungle train-level1`);
4. train the level-2 stacker on their OOF predictions (`jungle train-level2`);
5. predict the held-out sites from their video files (`jungle predict`);
6. score those predictions against the held-out labels (`jungle evaluate`, with its plots);
7. the HTML report of those predictions (`jungle report`); step 5 also writes them as a
   Camtrap DP package (`--camtrap-dp`, with demo deployments and taxonomy written here).

Every number printed is measured in this run. Sizes are chosen to finish well within
15 minutes on a 2-core CPU (160x120 clips, 16 frames per clip, 720 clips: 480 for training).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
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
from stack.evaluate import evaluation, match_predictions, report_tables, save_plots  # noqa: E402
from stack.predict import CamtrapRequest, predict  # noqa: E402
from stack.report import write_report  # noqa: E402
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


#: scientific names of the demo's classes (the taxonomy a Camtrap DP package needs).
TAXONOMY = {
    "chimpanzee": "Pan troglodytes",
    "duiker": "Cephalophus",
    "elephant": "Loxodonta cyclotis",
    "hog": "Potamochoerus porcus",
    "leopard": "Panthera pardus",
}


def camtrap_inputs(data: Path, media: str = "*.mp4") -> tuple[Path, Path]:
    """``deployments.csv`` (one made-up camera per site folder, around the time the clips
    were generated: the times of the files matching ``media`` are their recording times)
    and ``taxonomy.csv``."""
    stamps = [p.stat().st_mtime for p in data.rglob(media)]
    start = datetime.fromtimestamp(min(stamps), UTC) - timedelta(days=1)
    end = datetime.fromtimestamp(max(stamps), UTC) + timedelta(days=1)
    deployments = data / "deployments.csv"
    with deployments.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["deploymentID", "folder", "latitude", "longitude", "deploymentStart", "deploymentEnd"]
        )
        for k, site in enumerate(TRAIN_SITES + HELDOUT_SITES):
            writer.writerow(
                [
                    f"demo-{site}",
                    site,
                    f"{5.75 + 0.02 * k:.4f}",
                    f"{-7.10 - 0.03 * k:.4f}",
                    start.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    end.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                ]
            )
    taxonomy = data / "taxonomy.csv"
    with taxonomy.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "scientificName"])
        writer.writerows(TAXONOMY.items())
    return deployments, taxonomy


def demo_console() -> Console:
    """The demos' console (stderr) with logging set up; stage 1's per-clip logs muted."""
    console = Console(stderr=True)
    setup_logging(console)
    logging.getLogger("extract").setLevel(logging.WARNING)
    return console


def train_levels(console: Console, store: Path, labels: Path, run: Path, seed: int) -> Path:
    """Steps 3 and 4 of the demos: level 1 with folds grouped by site (one per training
    site), then level 2; prints the out-of-fold scores. Returns the run directory."""
    config = Level1Config(
        features=[store],
        labels=labels,
        run=run,
        folds=len(TRAIN_SITES),
        group_column="site",
        seed=seed,
    )
    train_level1(config.resolved(), overwrite=True)
    console.rule("4. jungle train-level2")
    scores = train_level2(run, seed=seed)
    console.print(metrics_table(scores, title="out-of-fold scores on the training sites"))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo", help="working folder")
    parser.add_argument("--clips", type=int, default=720, help="clips over all six sites")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--image-size", type=int, default=160, help="CNN input side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = demo_console()
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
    run = train_levels(console, store, train_csv, out / "run", args.seed)

    console.rule("5. jungle predict (held-out sites)")
    predictions = out / "predictions.csv"
    deployments, taxonomy = camtrap_inputs(data)
    package = out / "camtrap-dp"
    result = predict(
        heldout_csv, run, predictions, camtrap=CamtrapRequest(package, deployments, taxonomy)
    )
    console.print(
        f"{result.ok} ok, {result.partial} partial, {result.failed} failed → {predictions}; "
        f"Camtrap DP package in {package}",
        soft_wrap=True,
    )

    console.rule("6. jungle evaluate (held-out sites)")
    matched = match_predictions(predictions, heldout_csv)
    result = evaluation(matched)
    for table in report_tables(result):
        console.print(table)
    plots = save_plots(matched, result["scores"], out, predictions.stem)
    console.print("plots: " + ", ".join(p.name for p in plots), soft_wrap=True)

    console.rule("7. jungle report")
    report = write_report(predictions, out / "report.html", run=run, labels=heldout_csv)
    console.print(
        f"{report.out}: {report.clips} clips, {report.thumbnails} thumbnails", soft_wrap=True
    )
    console.print(
        f"[bold green]demo done[/] in {time.perf_counter() - started:.0f} s. Predictions: "
        f"{predictions}; report: {report.out}; run directory: {run}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
