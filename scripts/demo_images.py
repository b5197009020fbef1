"""`make demo-images`: the whole job on generated camera-trap photo bursts.

1. generate photo bursts at six sites (scripts/make_demo_data.py --images): JPEGs with EXIF
   capture times, ``labels.csv`` (ids: each burst's first photo) and the Hakuna Ma-Data
   layout (``train_metadata.csv``, ``train_labels.csv``); four sites train, two are held out;
2. extract features of the training sites' sequences from a Hakuna metadata CSV (one clip
   per ``seq_id``; `jungle features METADATA.csv`);
3. train the level-1 models on Hakuna-layout labels, folds grouped by site;
4. train the level-2 stacker;
5. predict the held-out sites from their folders: photos grouped into sequences by capture
   time (`--sequence-gap`, default 10 s), one row per sequence; also a Camtrap DP package;
6. score those predictions against the held-out labels (`jungle evaluate`).

Every number printed is measured in this run (about 5 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.config import FeaturesConfig  # noqa: E402
from extract.pipeline import extract_features  # noqa: E402
from scripts.demo import (  # noqa: E402
    HELDOUT_SITES,
    TRAIN_SITES,
    camtrap_inputs,
    demo_console,
    train_levels,
)  # noqa: E402
from scripts.make_demo_data import generate_demo  # noqa: E402
from stack.evaluate import evaluation, match_predictions, report_tables  # noqa: E402
from stack.predict import CamtrapRequest, predict  # noqa: E402


def split_hakuna(data: Path) -> tuple[Path, Path, Path]:
    """The training sites' ``train_meta.csv`` (file_name,seq_id,datetime) and
    ``train_seq_labels.csv`` (seq_id, class columns, empty, site), and a folder ``heldout/``
    that links the held-out sites' photo folders."""
    with (data / "train_metadata.csv").open(newline="", encoding="utf-8") as fh:
        meta = list(csv.DictReader(fh))
    with (data / "train_labels.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        label_fields = list(reader.fieldnames or [])
        labels = list(reader)
    site_of = {r["seq_id"]: r["file_name"].split("/")[0] for r in meta}
    train_meta = data / "train_meta.csv"
    with train_meta.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file_name", "seq_id", "datetime"])
        writer.writeheader()
        writer.writerows(r for r in meta if site_of[r["seq_id"]] in TRAIN_SITES)
    train_labels = data / "train_seq_labels.csv"
    with train_labels.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*label_fields, "site"])
        writer.writeheader()
        for row in labels:
            if site_of[row["seq_id"]] in TRAIN_SITES:
                writer.writerow({**row, "site": site_of[row["seq_id"]]})
    heldout = data.parent / "heldout"
    heldout.mkdir(exist_ok=True)
    for site in HELDOUT_SITES:
        link = heldout / site
        if not link.exists():
            os.symlink(data / site, link)
    return train_meta, train_labels, heldout


def heldout_labels(data: Path) -> Path:
    """``heldout.csv``: the held-out sequences' labels (filepath = first photo)."""
    with (data / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["site"] in HELDOUT_SITES]
    path = data / "heldout.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["filepath", "label", "site"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo-images", help="working folder")
    parser.add_argument("--sequences", type=int, default=720, help="bursts over six sites")
    parser.add_argument("--image-size", type=int, default=160, help="CNN input side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = demo_console()
    started = time.perf_counter()
    out = args.out.absolute()
    data = out / "data"

    console.rule("1. generate demo photo bursts")
    if not (data / "train_metadata.csv").is_file():
        generate_demo(
            data,
            n_clips=args.sequences,
            sites=TRAIN_SITES + HELDOUT_SITES,
            seed=args.seed,
            images=True,
        )
    train_meta, train_labels, heldout = split_hakuna(data)
    heldout_csv = heldout_labels(data)
    console.print(f"bursts in {data} (train sites {TRAIN_SITES}, held out {HELDOUT_SITES})")

    console.rule("2. jungle features (training sites, Hakuna metadata CSV)")
    store = out / "train.h5"
    summary = extract_features(train_meta, store, FeaturesConfig(image_size=args.image_size))
    console.print(f"{summary.ok} sequences in {store} ({summary.processing_seconds:.0f} s)")

    console.rule("3. jungle train-level1 (Hakuna labels, folds grouped by site)")
    run = train_levels(console, store, train_labels, out / "run", args.seed)

    console.rule("5. jungle predict (held-out sites' folders, grouped by capture time)")
    predictions = out / "predictions.csv"
    deployments, taxonomy = camtrap_inputs(data, media="*.JPG")
    package = out / "camtrap-dp"
    result = predict(
        heldout, run, predictions, camtrap=CamtrapRequest(package, deployments, taxonomy)
    )
    console.print(
        f"{result.clips} sequences: {result.ok} ok, {result.partial} partial, {result.failed} "
        f"failed → {predictions}; Camtrap DP package in {package}",
        soft_wrap=True,
    )

    console.rule("6. jungle evaluate (held-out sites)")
    for table in report_tables(evaluation(match_predictions(predictions, heldout_csv))):
        console.print(table)
    console.print(
        f"[bold green]demo-images done[/] in {time.perf_counter() - started:.0f} s. "
        f"Predictions: {predictions}; run directory: {run}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
