"""When in each clip each class shows: :func:`evidence_spans` reads the per-frame timeline
into a :class:`SpanTable` (the ``eventStart``/``eventEnd`` of the observations)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: clip id -> class -> ``(first, last)`` seconds of its evidence (a :class:`SpanTable`, or
#: any mapping of that shape).
Spans: TypeAlias = Mapping[str, Mapping[str, tuple[float, float]]]


class SpanTable(Spans):
    """Clip id -> class -> ``(first, last)`` seconds of its evidence, as returned by
    :func:`evidence_spans`. Held as arrays (two floats per clip and class), so it stays
    small for a million clips; ``table[clip][cls]`` gives a tuple."""

    def __init__(
        self,
        ids: Sequence[str],
        classes: Sequence[str],
        first: np.ndarray,
        last: np.ndarray,
    ) -> None:
        self.classes = list(classes)
        self._col = {c: k for k, c in enumerate(self.classes)}
        self._row = {cid: i for i, cid in enumerate(ids)}
        self._first = first
        self._last = last

    def __getitem__(self, clip_id: str) -> Mapping[str, tuple[float, float]]:
        return _ClipSpans(self, self._row[clip_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._row

    def span(self, row: int, cls: str) -> tuple[float, float]:
        """The ``(first, last)`` span of class ``cls`` in the clip of row ``row``."""
        k = self._col[cls]
        return float(self._first[row, k]), float(self._last[row, k])


class _ClipSpans(Mapping[str, tuple[float, float]]):
    """One clip's row of a :class:`SpanTable`."""

    def __init__(self, table: SpanTable, row: int) -> None:
        self._table, self._rownum = table, row

    def __getitem__(self, cls: str) -> tuple[float, float]:
        if cls not in self._table._col:
            raise KeyError(cls)
        return self._table.span(self._rownum, cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.classes)

    def __len__(self) -> int:
        return len(self._table.classes)

    def __repr__(self) -> str:
        return repr(dict(self))


def _block_spans(
    table: pd.DataFrame, classes: list[str], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans of the clips of ``table`` (each clip's frames complete): ids, first, last."""
    codes, ids = pd.factorize(table["filepath"], sort=False)
    times = table["time_s"].to_numpy(dtype=np.float64)
    scores = table[classes].to_numpy(dtype=np.float64)
    n_frames = np.bincount(codes, minlength=len(ids))
    hit = scores >= threshold
    timed = np.where(hit, times[:, None], np.nan)
    grouped = pd.DataFrame(timed).groupby(codes, sort=True)
    first = grouped.min().reindex(range(len(ids))).to_numpy(dtype=np.float64)
    last = grouped.max().reindex(range(len(ids))).to_numpy(dtype=np.float64)
    # fallback: frames whose attention is above uniform (1 / real frames of the clip); when
    # none is (all equal), every frame of the clip
    attention = table["attention"].to_numpy(dtype=np.float64)
    above = attention > 1.0 / n_frames[codes]
    frame_t = pd.DataFrame({"all": times, "above": np.where(above, times, np.nan)}).groupby(
        codes, sort=True
    )
    lo, hi = frame_t.min(), frame_t.max()
    fb_first = lo["above"].fillna(lo["all"]).to_numpy(dtype=np.float64)
    fb_last = hi["above"].fillna(hi["all"]).to_numpy(dtype=np.float64)
    missing = np.isnan(first)
    first = np.where(missing, fb_first[:, None], first)
    last = np.where(missing, fb_last[:, None], last)
    return np.asarray(ids, dtype=object), first, last


def evidence_spans(
    tables: Iterable[pd.DataFrame], classes: Sequence[str], threshold: float
) -> SpanTable:
    """When in each clip each class shows, from the per-frame timeline.

    Args:
        tables: the per-frame tables of :func:`pool.frames.predict_frames` (columns
            ``filepath, frame_index, time_s, attention`` and one frame-classifier
            probability column per class), streamed: only the spans are kept, never the
            tables (a clip whose rows continue into the next table is carried over).
        classes: the class columns to describe.
        threshold: a frame is evidence for a class when its score is at least this.

    Returns:
        clip id -> class -> ``(first, last)`` ``time_s`` (seconds from the clip's start):
        the first and last frames whose score for the class reaches ``threshold``; for a
        class no frame reaches, the first and last frames whose attention weight is above
        uniform (``attention > 1 / number of frames of the clip``), or all the clip's
        frames when none is. Every clip of the tables has a span for every class. A clip
        that appears again after other clips (not the case for ``predict_frames``) gets the
        union of its spans.
    """
    classes = list(classes)
    ids_parts: list[np.ndarray] = []
    first_parts: list[np.ndarray] = []
    last_parts: list[np.ndarray] = []
    carry: pd.DataFrame | None = None

    def consume(block: pd.DataFrame) -> None:
        ids, first, last = _block_spans(block, classes, threshold)
        ids_parts.append(ids)
        first_parts.append(first)
        last_parts.append(last)

    for table in tables:
        if table.empty:
            continue
        table = table[["filepath", "time_s", "attention", *classes]]
        if carry is not None:
            table = pd.concat([carry, table], ignore_index=True)
        names = table["filepath"].to_numpy(dtype=object)
        changes = np.flatnonzero(names[1:] != names[:-1])
        tail = int(changes[-1]) + 1 if len(changes) else 0
        carry = table.iloc[tail:]
        if tail:
            consume(table.iloc[:tail])
    if carry is not None and len(carry):
        consume(carry)
    if not ids_parts:
        empty = np.zeros((0, len(classes)))
        return SpanTable([], classes, empty, empty)
    ids = np.concatenate(ids_parts)
    first = np.concatenate(first_parts)
    last = np.concatenate(last_parts)
    if len(pd.unique(ids)) != len(ids):  # a clip split over non-adjacent rows: merge
        first = pd.DataFrame(first).groupby(ids, sort=False).min().to_numpy(dtype=np.float64)
        last = pd.DataFrame(last).groupby(ids, sort=False).max().to_numpy(dtype=np.float64)
        ids = np.asarray(pd.unique(ids), dtype=object)
    return SpanTable(list(ids), classes, first, last)
