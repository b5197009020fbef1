"""The ``jungle`` command line. Each subcommand is a thin layer over a library function;
user errors are printed as one clear line (exit code 2), never as a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extract.console import (
    comma_list,
    fail,
    setup_logging,
    sigterm_as_interrupt,
    stderr_console,
)

app = typer.Typer(
    name="jungle",
    help="Species in camera-trap videos: features, level-1 models, level-2 stacker, predictions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = stderr_console()


@app.callback()
def _root() -> None:
    """jungle: which species appear in camera-trap video clips."""


@app.command()
def features(
    videos: Annotated[
        Path,
        typer.Argument(
            help="Folder of videos and/or photos (recursive), CSV with a 'filepath' column "
            "(videos), or CSV with 'file_name,seq_id[,datetime]' (photo sequences)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="HDF5 feature store to write or extend.")
    ],
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (see configs/features.yaml).")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Backbone: efficientnet_lite0 (default), a timm name, or pretrainedmodels:ARCH."
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local weights file for backbones other than the default.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tuned backbone from `jungle finetune` (replaces --backbone/--weights)."
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated module names to tap (default: the backbone's)."),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            help="Frames per clip \\[default: 32; 10 when every clip is a photo sequence]."
        ),
    ] = None,
    sequence_gap: Annotated[
        float | None,
        typer.Option(
            help="Photos of a folder more than this many seconds apart start a new sequence; "
            "0: every photo alone \\[default: 10]."
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Frame side in pixels \\[default: the backbone's].")
    ] = None,
    pooling: Annotated[
        str | None, typer.Option(help="avg | max | avgmax \\[default: avg].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N \\[default: auto].")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Decoder processes \\[default: 2; on a GPU every core but two, 2-32]."),
    ] = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            help="auto | cpu | nvdec: decode on the GPU's video engines where available "
            "(needs jungle[gpu]; frame-exact streams only), or on the CPU \\[default: cpu]."
        ),
    ] = None,
    batch_frames: Annotated[
        int | None, typer.Option(help="Frames per CNN batch \\[default: 64; 512 on a GPU].")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="float32 | bfloat16: CPU CNN arithmetic \\[default: float32]."),
    ] = None,
    tta: Annotated[
        str | None,
        typer.Option(
            help="none | hflip: average features of frames and their mirror images "
            "\\[default: none]."
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="local | ray: decode and CNN on this machine, or as a Ray Data pipeline "
            "(needs jungle[ray]) \\[default: local]."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: address of a running Ray cluster (HEAD:6379 or auto) "
            "\\[default: start Ray on this machine]."
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: process only the I-th of N slices of the clip list (job arrays); "
            "join the N stores with `jungle merge`."
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Process clips that failed in an earlier run again.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store made with other settings.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Extract skip-connection CNN features of every clip into an HDF5 store.

    Resumable: run the same command again after an interruption and finished clips are
    skipped. Exit code 0 when at least one clip is in the store, 1 when none succeeded,
    2 for invalid input or settings.
    """
    setup_logging(err, verbose)
    from extract.backbones import BackboneError
    from extract.config import ConfigError, load_config
    from extract.discover import DiscoveryError
    from extract.pipeline import extract_features, parse_shard
    from extract.ray_engine import RayEngineError
    from extract.store import StoreError
    from extract.workers import DecoderPoolError

    overrides = {
        "backbone": backbone,
        "weights": weights,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "layers": comma_list(layers) if layers else None,
        "frames": frames,
        "sequence_gap": sequence_gap,
        "image_size": image_size,
        "pooling": pooling,
        "device": device,
        "workers": workers,
        "decoder": decoder,
        "batch_frames": batch_frames,
        "precision": precision,
        "tta": tta,
        "engine": engine,
        "ray_address": ray_address,
    }
    sigterm_as_interrupt()
    try:
        cfg = load_config(config, overrides)
        summary = extract_features(
            videos,
            out,
            cfg,
            show_progress=progress,
            retry_failed=retry_failed,
            overwrite=overwrite,
            shard=parse_shard(shard) if shard else None,
        )
    except (
        ConfigError,
        DiscoveryError,
        BackboneError,
        StoreError,
        RayEngineError,
        DecoderPoolError,
    ) as exc:
        raise fail(err, str(exc)) from None
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted:[/] finished clips are saved; run the same command to resume.",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    err.print(
        f"[bold green]done[/] in {summary.seconds:.1f} s: {summary.ok} clips in {summary.out} "
        f"({summary.partial} partial), {summary.failed} failed (see {summary.failed_csv}); "
        f"{summary.processed} processed now, {summary.already_done} were already done.",
        soft_wrap=True,
        highlight=False,
    )
    if summary.ok == 0:
        raise typer.Exit(1)


@app.command()
def merge(
    stores: Annotated[list[Path], typer.Argument(help="Feature stores to merge (two or more).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged store to write (new).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Merge feature stores (e.g. the --shard I/N slices of a survey) into a new store.

    Only stores made with the same extraction settings from the same folder merge; a clip
    in two stores with different file contents is an error.
    """
    setup_logging(err, verbose)
    from extract.assemble import merge_stores
    from extract.lock import StoreLock
    from extract.store import StoreError

    try:
        with StoreLock(out.absolute()):
            n_ok, n_failed = merge_stores(stores, out)
    except StoreError as exc:
        raise fail(err, str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] nothing was written.")
        raise typer.Exit(130) from None
    err.print(
        f"[bold green]done[/]: {n_ok} clips and {n_failed} failed rows in {out}",
        highlight=False,
        soft_wrap=True,
    )


def _register() -> None:
    """Commands of the later stages, defined next to their code (modules that import their
    library code only when a command runs: ``jungle features`` loads no level-1/2 code)."""
    from pool.cli import finetune_command, train_level1_command
    from stack.cli import evaluate_command, predict_command, report_command, train_level2_command

    app.command("train-level1")(train_level1_command)
    app.command("train-level2")(train_level2_command)
    app.command("predict")(predict_command)
    app.command("evaluate")(evaluate_command)
    app.command("report")(report_command)
    app.command("finetune")(finetune_command)


_register()


def main() -> None:
    """Entry point of the ``jungle`` console script."""
    app()


if __name__ == "__main__":
    main()
