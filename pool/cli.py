"""``jungle train-level1`` and ``jungle finetune``: thin commands over
:func:`pool.run.train_level1` and :func:`pool.finetune.finetune`.

Registered in :mod:`jungle.cli` with ``app.command("train-level1")(train_level1_command)``
and ``app.command("finetune")(finetune_command)``. User errors print one red line on stderr
and exit with code 2. Each command imports its library code (torch and the models) when it
runs, so that building the command line stays light.
"""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from extract.console import (
    comma_list,
    fail,
    setup_logging,
    sigterm_as_interrupt,
    stderr_console,
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
        typer.Option(
            help="Number of folds \\[default: 5 (one per group with fewer groups), or those "
            "of a reused folds.csv]."
        ),
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
    err = stderr_console()
    setup_logging(err, verbose)
    from pool.config import Level1Error, load_config
    from pool.metrics import metrics_table
    from pool.run import train_level1

    overrides = {
        "features": [str(p) for p in features] if features else None,
        "labels": str(labels) if labels is not None else None,
        "run": str(run) if run is not None else None,
        "models": comma_list(models) if models else None,
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


def finetune_command(
    videos: Annotated[
        Path | None,
        typer.Option(help="Folder of videos or CSV manifest (the one `jungle features` reads)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV: 'filepath,label' or 'filepath' + one 0/1 column per class."),
    ] = None,
    run: Annotated[
        Path | None, typer.Option(help="Run directory (folds.csv, finetune/ are written there).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone registry name (default: efficientnet_lite0).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local weights file for backbones other than the default.")
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option(help="Train on fold K's training part only (default: all clips, see docs)."),
    ] = None,
    folds_csv: Annotated[
        Path | None, typer.Option(help="folds.csv to use (default: RUN/folds.csv, else made).")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(help="k when folds.csv is made here (default: 5, one per group with fewer)."),
    ] = None,
    group_column: Annotated[
        str | None, typer.Option(help="Labels column of groups (e.g. site), for new folds.")
    ] = None,
    group_by_folder: Annotated[
        bool | None,
        typer.Option(
            "--group-by-folder/--no-group-by-folder",
            help="Group clips by parent folder, for new folds (default: no).",
        ),
    ] = None,
    skip_missing: Annotated[
        bool | None,
        typer.Option(
            "--skip-missing/--no-skip-missing",
            help="Skip label rows that match no video (default: error).",
        ),
    ] = None,
    frames_per_clip: Annotated[
        int | None, typer.Option(help="Frames decoded per clip (default: 8).")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Frame side in pixels (default: the backbone's).")
    ] = None,
    epochs_head: Annotated[
        int | None, typer.Option(help="Epochs of the head alone (default: 2).")
    ] = None,
    epochs_full: Annotated[
        int | None, typer.Option(help="Epochs of the whole network (default: 6).")
    ] = None,
    lr_head: Annotated[
        float | None, typer.Option(help="Head learning rate (default: 1e-3).")
    ] = None,
    lr_full: Annotated[
        float | None, typer.Option(help="Network learning rate (default: 1e-4).")
    ] = None,
    unfreeze_from: Annotated[
        str | None,
        typer.Option(help="Train only from this module on, e.g. blocks.4 (default: all)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Frames per step (default: 32).")] = None,
    shuffle_frames: Annotated[
        int | None,
        typer.Option(help="Frames held to mix batches across clips (default: 512)."),
    ] = None,
    balanced: Annotated[
        bool | None,
        typer.Option("--balanced/--no-balanced", help="Class-balanced sampling (default: no)."),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Flip, crop, brightness/contrast (default: yes)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: 0).")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default: auto).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decoder processes, decoding while training (default: 2).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (see configs/finetune.yaml).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing checkpoint of this backbone and fold.")
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar while checking the clips.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Fine-tune a backbone into a frame classifier; save it for `jungle features --checkpoint`.

    To keep level-1 out-of-fold predictions honest, fine-tune one backbone per fold
    (--fold K) and extract one feature store per fold. Exit code 0 on success, 2 for
    invalid input or settings.
    """
    err = stderr_console()
    setup_logging(err, verbose)
    from extract.backbones import BackboneError
    from extract.discover import DiscoveryError
    from pool.config import Level1Error
    from pool.finetune import FinetuneError, finetune, load_config

    overrides = {
        "videos": str(videos) if videos is not None else None,
        "labels": str(labels) if labels is not None else None,
        "run": str(run) if run is not None else None,
        "backbone": backbone,
        "weights": weights,
        "fold": fold,
        "folds_csv": str(folds_csv) if folds_csv is not None else None,
        "folds": folds,
        "group_column": group_column,
        "group_by_folder": group_by_folder,
        "skip_missing": skip_missing,
        "frames_per_clip": frames_per_clip,
        "image_size": image_size,
        "epochs_head": epochs_head,
        "epochs_full": epochs_full,
        "lr_head": lr_head,
        "lr_full": lr_full,
        "unfreeze_from": unfreeze_from,
        "batch_size": batch_size,
        "shuffle_frames": shuffle_frames,
        "balanced": balanced,
        "augment": augment,
        "seed": seed,
        "device": device,
        "threads": threads,
        "workers": workers,
    }
    sigterm_as_interrupt()
    try:
        cfg = load_config(config, overrides)
        out = finetune(cfg, overwrite=overwrite, show_progress=progress)
    except (FinetuneError, Level1Error, BackboneError, DiscoveryError) as exc:
        raise fail(err, str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] nothing was saved.", soft_wrap=True)
        raise typer.Exit(130) from None
    summary = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    held = summary["held_out"]
    scores = f", held-out clip log loss {held['clip_log_loss']:.4f}" if held is not None else ""
    err.print(
        f"[bold green]done[/] in {summary['seconds']:.0f} s: {out} (final train loss "
        f"{summary['final_train_loss']:.4f}{scores}); use it with `jungle features VIDEOS "
        f"--checkpoint {out} --out FEATURES.h5`",
        highlight=False,
        soft_wrap=True,
    )
