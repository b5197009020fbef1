"""``jungle train-level2``, ``jungle predict``, ``jungle evaluate`` and ``jungle report``
(thin commands over :mod:`stack.train`, :mod:`stack.predict`, :mod:`stack.evaluate` and
:mod:`stack.report`).

Only what the options need is imported here; each command imports its library code when it
runs, so that ``jungle features`` and ``--help`` never load LightGBM, XGBoost or the level-1
and level-2 code.
"""

from __future__ import annotations

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
from extract.sequences import DEFAULT_SEQUENCE_GAP
from stack.report_options import PAGE_SIZES


def user_errors() -> tuple[type[Exception], ...]:
    """The errors of invalid input or settings, printed as one line (exit code 2)."""
    from extract.backbones import BackboneError
    from extract.config import ConfigError
    from extract.discover import DiscoveryError
    from extract.ray_engine import RayEngineError
    from extract.store import StoreError
    from extract.workers import DecoderPoolError
    from pool.config import Level1Error
    from stack.train import Level2Error

    return (
        Level2Error,
        Level1Error,
        DiscoveryError,
        BackboneError,
        StoreError,
        ConfigError,
        RayEngineError,
        DecoderPoolError,
    )


def train_level2_command(
    run: Annotated[Path, typer.Option(help="A finished `jungle train-level1` run directory.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="Threads of LightGBM and XGBoost.")] = 2,
    select: Annotated[
        str,
        typer.Option(
            help="Mixture weights of the level-2 candidates, by inner cross-validation: "
            "'overall' (one set for every class) or per 'class'."
        ),
    ] = "overall",
    candidates: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated candidates to mix, among hedge, mean, best, top2, blend, "
            "trees_meta, trees_all (default: all but trees_all)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Train the level-2 stacker on the run's folds: per fold, a weighted mean (weights by
    inner cross-validation) of the mean of the level-1 logits with the best model counted
    twice, their plain mean, the best model, the mean logit of the best two, a logistic
    blend, and the blend plus LightGBM + XGBoost on metadata (optionally on the level-1
    probabilities too: trees_all); print every OOF score and the weights."""
    err = stderr_console()
    setup_logging(err, verbose)
    from pool.metrics import metrics_table
    from pool.rundir import Run
    from stack.boost import BoostParams
    from stack.train import Level2Error, train_level2

    errors = user_errors()
    try:
        if select not in ("overall", "class"):
            raise Level2Error(f"--select must be 'overall' or 'class', not {select!r}")
        chosen = {} if candidates is None else {"candidates": tuple(comma_list(candidates))}
        scores = train_level2(run, BoostParams(threads=threads), seed=seed, select=select, **chosen)
    except errors as exc:
        raise fail(err, str(exc)) from None
    err.print(metrics_table(scores, title="out-of-fold scores (prior, level 1, level 2)"))
    level2 = Run(run).metrics()["level2"]
    err.print(
        "level-2 mixture weights (mean over folds and classes): "
        + ", ".join(f"{name} {w:.2f}" for name, w in level2["chosen"].items())
        + "; temperature per fold: "
        + ", ".join(f"{t:.2f}" for t in level2["temperature"].values()),
        highlight=False,
    )
    err.print(f"level-2 models and OOF predictions in {Path(run) / 'level2'}", soft_wrap=True)


def predict_command(
    videos: Annotated[
        Path,
        typer.Argument(
            help="Folder of videos and/or photos (recursive), CSV of paths, or CSV with "
            "'file_name,seq_id[,datetime]' (photo sequences)."
        ),
    ],
    run: Annotated[Path, typer.Option(help="A run trained with train-level1 and train-level2.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions CSV to write.")],
    threshold: Annotated[
        float | None, typer.Option(help="Add 0/1 CLASS_present columns at this probability.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Also list the K most probable classes.")] = 1,
    fmt: Annotated[
        str, typer.Option("--format", help="csv | timelapse (a Timelapse import table).")
    ] = "csv",
    per_frame: Annotated[
        Path | None,
        typer.Option(help="Also write a per-frame timeline CSV (attention and frame scores)."),
    ] = None,
    thumbnails: Annotated[
        bool,
        typer.Option(help="Save a thumbnail of each clip (for `jungle report`) in OUT.features/."),
    ] = True,
    camtrap_dp: Annotated[
        Path | None,
        typer.Option(
            help="Also write a Camtrap DP 1.0.2 package into this folder (needs --deployments "
            "and --taxonomy; classes observed at --threshold, default 0.5)."
        ),
    ] = None,
    deployments: Annotated[
        Path | None,
        typer.Option(
            help="Camtrap DP: deploymentID,folder,latitude,longitude,deploymentStart,"
            "deploymentEnd (ISO 8601 with UTC offset)."
        ),
    ] = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Camtrap DP: class,scientificName for every class.")
    ] = None,
    camtrap_project: Annotated[
        Path | None,
        typer.Option(help="Camtrap DP: project metadata YAML (configs/camtrap-project.yaml)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(help="Decoder processes [default: 2; on a GPU every core but two, 2-32]."),
    ] = None,
    shard_clips: Annotated[
        int | None, typer.Option(help="Clips per crash-safe feature shard [default: 32].")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local | ray: stage 1 on this machine or on Ray (jungle[ray]).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: address of a running Ray cluster [default: start Ray here]."
        ),
    ] = None,
    sequence_gap: Annotated[
        float,
        typer.Option(
            help="Photos of a folder more than this many seconds apart start a new sequence "
            "(0: every photo alone)."
        ),
    ] = DEFAULT_SEQUENCE_GAP,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Predict every clip of VIDEOS: one CSV row per clip (failed clips keep their row with
    the reason). Features are cached beside the CSV: a re-run resumes.

    Exit code 0 when at least one clip was predicted, 1 when every clip failed, 2 for
    invalid input.
    """
    err = stderr_console()
    setup_logging(err, verbose)
    from stack.predict import CamtrapRequest, predict
    from stack.train import Level2Error

    errors = user_errors()
    sigterm_as_interrupt()
    try:
        camtrap = None
        if camtrap_dp is not None:
            if deployments is None or taxonomy is None:
                raise Level2Error("--camtrap-dp needs --deployments and --taxonomy")
            camtrap = CamtrapRequest(camtrap_dp, deployments, taxonomy, camtrap_project)
        elif deployments or taxonomy or camtrap_project:
            raise Level2Error(
                "--deployments, --taxonomy and --camtrap-project go with --camtrap-dp DIR"
            )
        summary = predict(
            videos,
            run,
            out,
            threshold=threshold,
            top_k=top_k,
            fmt=fmt,
            per_frame=per_frame,
            thumbnails=thumbnails,
            camtrap=camtrap,
            device=device,
            workers=workers,
            shard_clips=shard_clips,
            engine=engine,
            ray_address=ray_address,
            sequence_gap=sequence_gap,
            show_progress=progress,
        )
    except errors as exc:
        raise fail(err, str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] run the same command again to resume.")
        raise typer.Exit(130) from None
    err.print(
        f"[bold green]done[/] in {summary.seconds:.1f} s: {summary.clips} clips, "
        f"{summary.ok} ok, {summary.partial} partial, {summary.failed} failed → {summary.out}",
        soft_wrap=True,
        highlight=False,
    )
    if summary.ok + summary.partial == 0:
        raise typer.Exit(1)


def evaluate_command(
    predictions: Annotated[Path, typer.Option(help="Predictions CSV (from `jungle predict`).")],
    labels: Annotated[Path, typer.Option(help="Labels CSV (any layout train-level1 accepts).")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores as JSON here.")
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(help="Folder of the PNG plots [default: the predictions CSV's folder]."),
    ] = None,
) -> None:
    """Score predictions against labels: mean binary log loss, top-1 accuracy, blank-vs-animal
    accuracy, macro F1 and per-class precision/recall; save the confusion matrix, the
    per-class precision/recall and the blank-removal curve as PNG files
    (PREDICTIONS.confusion.png, .per_class.png, .blank_removal.png)."""
    err = stderr_console()
    from stack.evaluate import evaluation, match_predictions, report_tables, save_plots

    errors = user_errors()
    try:
        matched = match_predictions(predictions, labels)
    except (*errors, FileNotFoundError) as exc:
        raise fail(err, str(exc)) from None
    result = evaluation(matched)
    out = Console()
    for table in report_tables(result):
        out.print(table)
    notes = []
    for key, what in (
        ("failed", "failed clips"),
        ("unlabelled", "predictions without a label"),
        ("missing", "labelled clips without a prediction"),
    ):
        if result[key]:
            notes.append(f"{result[key]} {what} not scored")
    if notes:
        err.print("; ".join(notes), soft_wrap=True)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    try:
        pngs = save_plots(matched, result["scores"], plots or predictions.parent, predictions.stem)
    except OSError as exc:
        raise fail(err, f"plots not saved: {exc}") from None
    err.print("plots: " + ", ".join(str(p) for p in pngs), soft_wrap=True, highlight=False)


def report_command(
    predictions: Annotated[Path, typer.Option(help="Predictions CSV (from `jungle predict`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")],
    run: Annotated[
        Path | None, typer.Option(help="The run that made them (adds its OOF scores).")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV: adds scores, confusion matrix, blank-removal curve."),
    ] = None,
    page_size: Annotated[
        int, typer.Option(help=f"Clip cards per page, one of {', '.join(map(str, PAGE_SIZES))}.")
    ] = 60,
) -> None:
    """Write one self-contained HTML page over PREDICTIONS: clips per class, a card per clip
    with its thumbnail and top-3 classes (filter, sort, pages), failed clips with reasons;
    thumbnails go in OUT_files/ beside the page."""
    err = stderr_console()
    setup_logging(err, False)
    from stack.report import write_report

    errors = user_errors()
    try:
        summary = write_report(predictions, out, run=run, labels=labels, page_size=page_size)
    except (*errors, OSError) as exc:
        raise fail(err, str(exc)) from None
    err.print(
        f"[bold green]report[/] {summary.out}: {summary.clips} clips "
        f"({summary.thumbnails} with a thumbnail), {summary.failed} failed; images in "
        f"{summary.files}",
        soft_wrap=True,
        highlight=False,
    )
