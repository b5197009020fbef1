"""``jungle train-level1``: a thin command over :func:`pool.run.train_level1`.

Registered in :mod:`jungle.cli` with ``app.command("train-level1")(train_level1_command)``.
User errors print one red line on stderr and exit with code 2.
"""

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from pool.config import Level1Error, load_config
from pool.metrics import metrics_table
from pool.run import train_level1


def _setup_logging(console: Console, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


def train_level1_command(
    features: Annotated[
        list[Path] | None,
        typer.Option(
            "--features",
            help="Feature store (repeat for several backbones). A path with {fold} is one "
            "store per fold: fold K trains on and predicts store K (fine-tuned per fold).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV: 'filepath,label' or 'filepath' + one 0/1 column per class."),
    ] = None,
    run: Annotated[Path | None, typer.Option(help="Run directory to write.")] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: attention,gru,pool,histogram,sequence \\[default: all]."
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(help="Number of folds \\[default: 5, or those of a reused folds.csv]."),
    ] = None,
    folds_csv: Annotated[
        Path | None,
        typer.Option(help="Folds to reuse \\[default: RUN/folds.csv if present, else made]."),
    ] = None,
    group_column: Annotated[
        str | None, typer.Option(help="Labels column of groups (e.g. site) kept within a fold.")
    ] = None,
    group_by_folder: Annotated[
        bool | None,
        typer.Option(
            "--group-by-folder/--no-group-by-folder",
            help="Group clips by parent folder \\[default: no].",
        ),
    ] = None,
    skip_missing: Annotated[
        bool | None,
        typer.Option(
            "--skip-missing/--no-skip-missing",
            help="Skip label rows without features (listed in skipped.csv) \\[default: error].",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed \\[default: 0].")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N \\[default: auto].")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads \\[default: torch's].")] = None,
    features_in_memory: Annotated[
        str | None,
        typer.Option(
            help="auto | true | false: hold the features in RAM, or stream them from the "
            "stores block by block \\[default: auto, RAM up to features_budget_gb].",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (see configs/level1.yaml).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the files of an earlier run in --run.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Train the level-1 meta-models on k folds; write OOF predictions, checkpoints, metrics.

    Exit code 0 on success, 2 for invalid input or settings.
    """
    err = Console(stderr=True)
    _setup_logging(err, verbose)
    overrides = {
        "features": [str(p) for p in features] if features else None,
        "labels": str(labels) if labels is not None else None,
        "run": str(run) if run is not None else None,
        "models": [m.strip() for m in models.split(",") if m.strip()] if models else None,
        "folds": folds,
        "folds_csv": str(folds_csv) if folds_csv is not None else None,
        "group_column": group_column,
        "group_by_folder": group_by_folder,
        "skip_missing": skip_missing,
        "seed": seed,
        "device": device,
        "threads": threads,
        "features_in_memory": features_in_memory,
    }
    try:
        cfg = load_config(config, overrides)
        out = train_level1(cfg, overwrite=overwrite)
    except Level1Error as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    Console().print(metrics_table(metrics["scores"]))
    skipped = (
        f", {metrics['skipped']} label rows skipped (skipped.csv)" if metrics["skipped"] else ""
    )
    err.print(f"[bold green]done[/]: {metrics['clips']} clips, run in {out}{skipped}")
