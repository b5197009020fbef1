"""`make demo-finetune`: do backbones fine-tuned per fold beat the frozen one, through level
1 and level 2? Run after `make demo` (it reuses the demo's clips, folds and frozen run).

1. for every fold K of the demo run's ``folds.csv``: ``jungle finetune --fold K`` (fine-tune
   on the other folds' training clips only) and ``jungle features --checkpoint`` of the
   training clips with that checkpoint → ``features_fold{K}.h5``;
2. ``jungle train-level1 --features features_fold{fold}.h5`` (fold K's models train on and
   predict store K) and ``jungle train-level2``, on the same folds as the frozen run;
3. print the OOF scores of the frozen run and of the fine-tuned run side by side, then
   predict the held-out sites with the fine-tuned run (one extraction per fold checkpoint)
   and score them like the demo does.

Every number printed is measured in this run. Sizes default to a budget of about 20 minutes
on a 2-core CPU: 4 frames per clip, one head epoch and two epochs of the last blocks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.config import FeaturesConfig  # noqa: E402
from extract.pipeline import extract_features  # noqa: E402
from pool.config import Level1Config  # noqa: E402
from pool.finetune import finetune  # noqa: E402
from pool.finetune import load_config as finetune_config  # noqa: E402
from pool.folds import read_folds  # noqa: E402
from pool.metrics import metrics_table  # noqa: E402
from pool.run import train_level1  # noqa: E402
from pool.rundir import Run  # noqa: E402
from scripts.demo import demo_console  # noqa: E402
from stack.evaluate import evaluate_predictions, report_tables  # noqa: E402
from stack.predict import predict  # noqa: E402
from stack.train import train_level2  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=REPO / "demo", help="`make demo` folder")
    parser.add_argument("--frames-per-clip", type=int, default=4, help="fine-tuning frames")
    parser.add_argument("--epochs-head", type=int, default=1)
    parser.add_argument("--epochs-full", type=int, default=2)
    parser.add_argument("--unfreeze-from", default="blocks.5", help="train from this module on")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = demo_console()
    started = time.perf_counter()
    demo = args.demo.absolute()
    frozen_run, train_csv = demo / "run", demo / "data" / "train.csv"
    if not (frozen_run / "level2" / "model.json").is_file():
        raise SystemExit(f"{frozen_run} is not a finished demo run: run `make demo` first")
    frozen = Run(frozen_run).inputs()["stores"][0]["extraction"]
    run = demo / "finetuned"
    run.mkdir(exist_ok=True)
    shutil.copy(frozen_run / "folds.csv", run / "folds.csv")  # the same folds as the frozen run
    k = int(read_folds(run).max()) + 1

    for fold in range(k):
        console.rule(f"1. jungle finetune --fold {fold}, then features with its checkpoint")
        config = finetune_config(
            None,
            {
                "videos": str(train_csv),
                "labels": str(train_csv),
                "run": str(run),
                "fold": fold,
                "image_size": frozen["image_size"],
                "frames_per_clip": args.frames_per_clip,
                "epochs_head": args.epochs_head,
                "epochs_full": args.epochs_full,
                "unfreeze_from": args.unfreeze_from,
                "threads": args.threads,
                "seed": args.seed,
            },
        )
        checkpoint = finetune(config, overwrite=True)
        store = run / f"features_fold{fold}.h5"
        features = FeaturesConfig(
            checkpoint=str(checkpoint), frames=frozen["frames"], image_size=frozen["image_size"]
        )
        summary = extract_features(train_csv, store, features)
        tuned = json.loads(checkpoint.with_suffix(".json").read_text())
        console.print(
            f"fold {fold}: {checkpoint.name} ({tuned['seconds']:.0f} s, frames decoded every "
            f"epoch, at most {tuned['frames_in_memory']['peak_held']} held at once), "
            f"{summary.ok} clips in {store.name}"
        )

    console.rule("2. jungle train-level1 (store K for fold K) and train-level2")
    level1 = Level1Config(
        features=[str(run / "features_fold{fold}.h5")],
        labels=train_csv,
        run=run,
        group_column="site",
        seed=args.seed,
    )
    train_level1(level1.resolved(), overwrite=True)
    tuned = train_level2(run, seed=args.seed)
    before = Run(frozen_run).metrics()["scores"]
    rows = {f"frozen {m}": s for m, s in before.items() if m != "prior"}
    rows |= {f"fine-tuned {m}": s for m, s in tuned.items() if m != "prior"}
    console.print(metrics_table(rows, title="out-of-fold scores on the training sites"))
    gain = before["level2"]["log_loss"] - tuned["level2"]["log_loss"]
    console.print(
        f"level 2 log loss: frozen {before['level2']['log_loss']:.4f}, fine-tuned "
        f"{tuned['level2']['log_loss']:.4f} ({'lower' if gain > 0 else 'not lower'} by "
        f"{abs(gain):.4f})"
    )

    console.rule("3. jungle predict (held-out sites) with the fine-tuned run")
    predictions = demo / "predictions_finetuned.csv"
    result = predict(demo / "data" / "heldout.csv", run, predictions)
    console.print(f"{result.ok} ok, {result.partial} partial, {result.failed} failed")
    for table in report_tables(evaluate_predictions(predictions, demo / "data" / "heldout.csv")):
        console.print(table)
    console.print(f"done in {time.perf_counter() - started:.0f} s; fine-tuned run: {run}")


if __name__ == "__main__":
    main()
