"""Level 1 and level 2 on several generated data sets: the OOF table behind the defaults.

Each SET is a folder holding ``features.h5`` (``jungle features``) and a labels CSV with a
``site`` column (``scripts/make_demo_data.py`` writes one). For each set: level 1 is trained
with folds grouped by site (every model, default settings; skipped when ``SET/run`` is
already trained), then level 2 with the default mixture (one set of weights, ``overall``),
with ``--select class`` (weights per class), with no standard-error margin on the boosting
rounds (``se_factor`` 0), and restricted to each single candidate, to show what the mixture
gains. ``chosen`` is each candidate's mean weight.
Prints one markdown table of OOF log losses (and blank accuracy) per set.

Example (the sets of the issue-10 study, with every figure: docs/level2.md)::

    python scripts/make_demo_data.py study/s150 --clips 150 --seed 101 ...
    jungle features study/s150/labels.csv --out study/s150/features.h5 --frames 16
    python scripts/study_level2.py study/s150 study/s500 ...
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pool.config import Level1Config  # noqa: E402
from pool.run import train_level1  # noqa: E402
from pool.rundir import Run  # noqa: E402
from stack.boost import BoostParams  # noqa: E402
from stack.candidates import CANDIDATES, DEFAULT_CANDIDATES  # noqa: E402
from stack.train import train_level2  # noqa: E402


def level1(folder: Path, labels: str, seed: int) -> Run:
    """Train level 1 on ``folder`` (unless done); folds grouped by site."""
    run = Run(folder / "run")
    if (run.path / "lineage.json").is_file():
        return run
    table = pd.read_csv(folder / labels)
    sites = table["site"].nunique()
    config = Level1Config(
        features=[folder / "features.h5"],
        labels=folder / labels,
        run=run.path,
        folds=min(5, sites),
        group_column="site",
        seed=seed,
    )
    train_level1(config.resolved(), overwrite=True)
    return run


def markdown(rows: list[dict]) -> str:
    """A markdown table of ``rows`` (floats with 4 decimals)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="set folders")
    parser.add_argument("--labels", default="labels.csv", help="labels CSV inside each set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--singles", action="store_true", help="also each candidate alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for folder in args.sets:
        labels = args.labels if (folder / args.labels).is_file() else "labels.csv"
        started = time.perf_counter()
        run = level1(folder, labels, args.seed)
        l1_seconds = time.perf_counter() - started
        scores = run.metrics()["scores"]
        row = {"set": folder.name, "clips": run.metrics()["clips"]}
        for name in run.level1_models():
            row[name] = scores[name]["log_loss"]
        best = min(row[m] for m in run.level1_models())
        row["prior"] = scores["prior"]["log_loss"]
        variants = [("level2_class", "class", DEFAULT_CANDIDATES, 1.0)]
        variants += [("level2_se0", "overall", DEFAULT_CANDIDATES, 0.0)]
        if args.singles:
            variants += [(f"only_{c}", "overall", (c,), 1.0) for c in CANDIDATES]
        variants.append(("level2", "overall", DEFAULT_CANDIDATES, 1.0))  # last: the default stays
        seconds = {}
        for label, select, candidates, se_factor in variants:
            started = time.perf_counter()
            result = train_level2(
                run.path,
                BoostParams(),
                seed=args.seed,
                select=select,
                candidates=candidates,
                se_factor=se_factor,
            )
            seconds[label] = time.perf_counter() - started
            row[label] = result["level2"]["log_loss"]
            if label == "level2":
                row["blank_acc_l2"] = result["level2"]["blank_accuracy"]
                chosen = run.metrics()["level2"]["chosen"]
        row["level2/best"] = row["level2"] / best
        row["chosen"] = ", ".join(f"{k}:{v}" for k, v in sorted(chosen.items()))
        row["seconds"] = f"L1 {l1_seconds:.0f}, L2 {seconds['level2']:.0f}"
        rows.append(row)
        print(markdown([row]), flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
