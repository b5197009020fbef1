"""``jungle report``: one self-contained HTML page over a predictions CSV.

The page (no internet needed) shows the clips per predicted class; one card per clip (an
``article`` with ``data-clip-id``) with its thumbnail and top-3 classes, filterable by
class and sortable by probability, a page of cards at a time (page size from
:data:`PAGE_SIZES`, so a survey of 100k clips never puts 100k images in the page); the
failed clips with their reasons; with ``--run``, the run's out-of-fold scores; with
``--labels``, the scores, per-class precision and recall, the confusion matrix and the
blank-removal curve (the plots of :mod:`stack.plots`, inline).

The thumbnails are the ones ``jungle predict`` saved while it had the frames
(:func:`stack.predict.thumbnails_dir`); they are linked (or copied) into ``REPORT_files/``
beside the page, so the page and that folder can be moved or archived together. The clip
table travels inside the page as JSON (about 230 bytes per clip with 24 classes).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import numpy as np
import pandas as pd

from extract.thumbnails import thumbnail_path
from pool.rundir import Run
from stack.evaluate import match_predictions, score_matched
from stack.formats import with_filepath
from stack.plots import blank_curve, confusion, figures, png_bytes
from stack.predict import thumbnails_dir
from stack.report_options import PAGE_SIZES
from stack.train import Level2Error

log = logging.getLogger(__name__)

#: the file that marks a report's image folder (only such a folder is ever replaced).
MARKER = ".jungle-report"
#: failed clips listed in the page (all of them are in the predictions CSV).
MAX_FAILED_ROWS = 2000
_STATUS = ("ok", "partial", "failed")


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote."""

    out: Path
    clips: int  #: clips with probabilities (cards)
    failed: int
    thumbnails: int  #: cards with a thumbnail
    files: Path  #: the folder beside the page


def report_files(out: Path) -> Path:
    """The folder of a report's images (``REPORT_files`` beside ``REPORT.html``)."""
    return out.with_name(out.stem + "_files")


def write_report(
    predictions: Path | str,
    out: Path | str,
    *,
    run: Path | str | None = None,
    labels: Path | str | None = None,
    page_size: int = 60,
) -> ReportSummary:
    """Write the HTML report of ``predictions`` (a CSV of ``jungle predict``, default
    format) to ``out`` and its thumbnails to :func:`report_files`.

    Raises:
        Level2Error: not a predictions CSV of ``jungle predict``, a page size not in
            :data:`PAGE_SIZES`, a run whose classes differ, labels that match no clip.
    """
    predictions, out = Path(predictions).absolute(), Path(out).absolute()
    if page_size not in PAGE_SIZES:
        raise Level2Error(f"--page-size must be one of {', '.join(map(str, PAGE_SIZES))}")
    table = _read_predictions(predictions)
    classes = _classes(table, run)
    ok = table["status"].isin(("ok", "partial")).to_numpy()
    probs = table.loc[ok, classes].to_numpy(dtype=np.float64)
    if np.isnan(probs).any():
        raise Level2Error(f"{predictions}: a clip marked ok has no probabilities")
    files = report_files(out)
    thumbs = _copy_thumbnails(thumbnails_dir(predictions), table.loc[ok, "filepath"], files)
    top = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=int)
    partial = (table.loc[ok, "status"] == "partial").to_numpy()
    rows = [
        [cid, thumb, int(part), int(t), *p]
        for cid, thumb, part, t, p in zip(
            table.loc[ok, "filepath"],
            thumbs,
            partial,
            top,
            np.round(probs, 4).tolist(),
            strict=True,
        )
    ]
    failed = table.loc[table["status"] == "failed", ["filepath", "error"]].fillna("")
    counts = np.bincount(top, minlength=len(classes))
    data = {
        "about": _about(predictions, len(rows), len(failed)),
        "classes": classes,
        "page_size": page_size,
        "page_sizes": list(PAGE_SIZES),
        "counts": [[c, int(n)] for c, n in zip(classes, counts, strict=True)]
        + [["failed", len(failed)]],
        "clips": rows,
        "failed": failed.head(MAX_FAILED_ROWS).to_numpy().tolist(),
        "failed_note": (
            f"the first {MAX_FAILED_ROWS} of {len(failed)} (all are in {predictions.name})"
            if len(failed) > MAX_FAILED_ROWS
            else ("none" if failed.empty else "")
        ),
    }
    page = resources.files("stack").joinpath("report_page.html").read_text(encoding="utf-8")
    page = page.replace("<!--RUN-->", _run_section(run) if run is not None else "", 1)
    evaluation = _evaluation_section(table, labels) if labels is not None else ""
    page = page.replace("<!--EVALUATION-->", evaluation, 1)
    head, tail = page.split("/*DATA*/", 1)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(head)
        # inside <script> no text may open a tag or comment: every < > & as \u escapes
        json.dump(data, _ScriptSafe(handle), ensure_ascii=False, separators=(",", ":"))
        handle.write(tail)
    os.replace(tmp, out)
    return ReportSummary(out, len(rows), len(failed), sum(bool(t) for t in thumbs), files)


class _ScriptSafe:
    """A text sink that writes ``<``, ``>`` and ``&`` as JSON ``\\u`` escapes (valid JSON,
    inert inside an HTML ``<script>`` element, whatever the clip ids hold)."""

    _TABLE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle

    def write(self, text: str) -> int:
        return self.handle.write(text.translate(self._TABLE))


def _read_predictions(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(
            path,
            dtype={"filepath": str, "seq_id": str, "error": str},
            keep_default_na=False,
            na_values=[""],
        )
        table = with_filepath(table)
    except FileNotFoundError:
        raise Level2Error(f"{path}: no such predictions file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise Level2Error(f"{path}: not a readable CSV ({exc})") from None
    need = {"filepath", "top_label", "status"}
    if not need <= set(table.columns):
        raise Level2Error(
            f"{path} is not a predictions CSV of `jungle predict` (default --format csv): it "
            f"lacks {sorted(need - set(table.columns))}"
        )
    bad = sorted(set(table["status"].dropna()) - set(_STATUS))
    if bad or table["status"].isna().any():
        raise Level2Error(f"{path}: unknown status values {bad or ['(empty)']}")
    if "error" not in table:
        table["error"] = ""
    return table


def _classes(table: pd.DataFrame, run: Path | str | None) -> list[str]:
    """The class columns: the run's classes, or the columns between ``filepath`` and
    ``top_label`` (the layout ``jungle predict`` writes)."""
    columns = list(table.columns)
    guessed = columns[1 : columns.index("top_label")]
    if run is None:
        if not guessed:
            raise Level2Error("the predictions CSV has no class columns")
        return guessed
    classes = Run(run).classes()
    missing = [c for c in classes if c not in columns]
    if missing or set(guessed) - set(classes):
        raise Level2Error(
            f"the predictions were not made with the run {run}: its classes are {classes}, "
            f"the CSV has {guessed}"
        )
    return classes


def _copy_thumbnails(source: Path, ids: pd.Series, files: Path) -> list[str]:
    """Link (or copy) each clip's thumbnail into ``files/thumbs/<xx>/<n>.jpg`` (``xx`` = n
    mod 256 in hex: no folder holds more than 1/256 of them); return the URLs relative to
    the page ("" where ``jungle predict`` saved none). The folder is rebuilt; one that
    jungle did not make (no :data:`MARKER` in it) is refused, never deleted.

    Raises:
        Level2Error: ``files`` exists and is not a report folder.
    """
    if files.exists() and not (files / MARKER).is_file():
        raise Level2Error(
            f"{files} exists and was not made by `jungle report`; move it away or choose "
            "another --out"
        )
    tmp = files.with_name(files.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "thumbs").mkdir(parents=True)
    (tmp / MARKER).write_text("made by jungle report; replaced by the next one\n")
    url = quote(files.name)
    found = []
    for n, cid in enumerate(ids):
        src = thumbnail_path(source, cid)
        if not src.is_file():
            found.append("")
            continue
        sub = f"{n % 256:02x}"
        dst = tmp / "thumbs" / sub / f"{n}.jpg"
        dst.parent.mkdir(exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        found.append(f"{url}/thumbs/{sub}/{n}.jpg")
    missing = found.count("")
    if missing:
        log.warning(
            "%d of %d clips have no thumbnail in %s (predicted with --no-thumbnails, or by an "
            "older jungle)",
            missing,
            len(found),
            source,
        )
    shutil.rmtree(files, ignore_errors=True)
    os.replace(tmp, files)
    return found


def _about(predictions: Path, clips: int, failed: int) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{predictions.name}: {clips} clips predicted, {failed} failed; made {made}"


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _run_section(run: Path | str) -> str:
    """The run's level-1 models and their out-of-fold scores."""
    metrics = Run(run).metrics()
    rows = [
        [name, _fmt(s["log_loss"]), _fmt(s["top1_accuracy"]), _fmt(s["blank_accuracy"])]
        for name, s in metrics.get("scores", {}).items()
    ]
    about = (
        f"{html.escape(str(Path(run).absolute()))}: {metrics.get('clips', '?')} training "
        f"clips, {metrics.get('folds', '?')} folds"
    )
    header = ["model", "OOF log loss", "top-1 acc", "blank acc"]
    return f'<h2>Run</h2><div class="meta">{about}</div>' + _table(header, rows, "run-scores")


def _evaluation_section(table: pd.DataFrame, labels: Path | str) -> str:
    """Scores against ``labels``: headline, per class, confusion matrix, plots."""
    m = match_predictions(table, labels)
    s = score_matched(m)
    head = _table(
        ["clips", "log loss", "top-1 acc", "blank acc", "macro F1"],
        [
            [
                str(len(m.ids)),
                _fmt(s["log_loss"]),
                _fmt(s["top1_accuracy"]),
                _fmt(s["blank_accuracy"]),
                _fmt(s["macro_f1"]),
            ]
        ],
        "scores",
    )
    per_class = _table(
        ["class", "precision", "recall", "log loss", "clips"],
        [
            [
                c,
                _fmt(s["precision"][c]),
                _fmt(s["recall"][c]),
                _fmt(s["class_log_loss"][c]),
                str(s["support"][c]),
            ]
            for c in m.classes
        ],
        "per-class",
    )
    counts = confusion(m.targets, m.probs)
    matrix = _table(
        ["true \\ predicted", *m.classes],
        [[c, *map(str, counts[i])] for i, c in enumerate(m.classes)],
        "confusion",
    )
    curve = blank_curve(m.targets, m.probs, m.classes)
    removal = "<p>no curve: the labels need a blank class with blank and animal clips</p>"
    if curve is not None:
        removal = _table(
            ["animal clips lost at most", "blank clips removed"],
            [[f"{x:.0%}", f"{curve.removed_at(x):.1%}"] for x in (0.0, 0.01, 0.02, 0.05)],
            "blank-removal",
        )
    images = "".join(
        f'<img alt="{name}" data-plot="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(png_bytes(fig)).decode("ascii")}">'
        for name, fig in figures(m.targets, m.probs, m.classes, s).items()
    )
    notes = f"{m.failed} failed, {m.unlabelled} without a label, {m.missing} labels unmatched"
    return (
        f'<h2>Against the labels</h2><div class="meta">{html.escape(notes)}</div>{head}'
        f"<h3>Per class (probability 0.5)</h3>{per_class}"
        f"<h3>Confusion matrix (rows: true class, columns: predicted top class)</h3>{matrix}"
        f"<h3>Blank removal</h3>{removal}"
        f'<div class="plots">{images}</div>'
    )
