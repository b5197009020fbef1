"""Times in a Camtrap DP package: parsed with their UTC offset, written as
``YYYY-MM-DDThh:mm:ss`` plus ``Z`` or ``±hh:mm`` (the form of the standard's examples);
naive (camera-local EXIF) times read in their deployment's offset (:func:`utc_times`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from stack.camtrap.common import CamtrapError, examples

log = logging.getLogger(__name__)


def parse_time(text: str, where: str, column: str) -> datetime:
    """The ISO 8601 date and time ``text`` of ``column``, with its UTC offset.

    Raises:
        CamtrapError: (naming ``where``) ``text`` is empty, not a date and time, has no
            UTC offset or one that is not whole minutes.
    """
    if not text:
        raise CamtrapError(f"{where}: {column} is empty")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or "T" not in text.upper().replace(" ", "T"):
        raise CamtrapError(
            f"{where}: {column} {text!r} is not an ISO 8601 date and time "
            "(e.g. 2024-03-01T08:00:00+01:00)"
        )
    offset = value.utcoffset()
    if offset is None:
        raise CamtrapError(
            f"{where}: {column} {text!r} has no UTC offset; add one, e.g. {text}Z or {text}+01:00"
        )
    if offset % timedelta(minutes=1):
        raise CamtrapError(f"{where}: {column} {text!r}: the UTC offset must be whole minutes")
    return value


def offset_minutes(value: datetime) -> int:
    """The UTC offset of ``value`` in minutes east of UTC (0 without one)."""
    offset = value.utcoffset() or timedelta(0)
    return int(offset.total_seconds() // 60)


def _offset_text(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(int(minutes)), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def render_time(value: datetime) -> str:
    """``value`` as ``YYYY-MM-DDThh:mm:ss`` plus its own offset (``Z`` for UTC)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + _offset_text(offset_minutes(value))


def as_ns(values: pd.Series) -> np.ndarray:
    """Timestamps as nanoseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(values).as_unit("ns").asi8


def render_times(utc: pd.Series, offset_min: np.ndarray) -> pd.Series:
    """UTC timestamps (whole seconds) as ``YYYY-MM-DDThh:mm:ss`` + ``Z``/``±hh:mm`` in the
    given offsets (minutes east of UTC)."""
    offsets = np.asarray(offset_min, dtype=np.int64)
    ns = as_ns(utc) + offsets * 60_000_000_000
    text = np.datetime_as_string(ns.astype("datetime64[ns]"), unit="s")
    suffix = pd.Series(offsets).map({int(m): _offset_text(int(m)) for m in np.unique(offsets)})
    return pd.Series(text, index=utc.index, dtype=object) + suffix.to_numpy(dtype=object)


def utc_times(
    names: Sequence[str], values: Sequence[datetime | None], offsets: np.ndarray
) -> pd.Series:
    """The time of each media file (``values``, named ``names``) in UTC. A naive time is
    camera-local, as cameras write EXIF: it is read in the file's deployment's UTC offset
    (``offsets``, minutes east of UTC, one per value); an aware time is converted as it is.

    Raises:
        CamtrapError: files without a time (the first few named).
    """
    absent = [name for name, v in zip(names, values, strict=True) if v is None]
    if absent:
        raise CamtrapError(f"{len(absent)} media file(s) have no time stamp: {examples(absent)}")
    zones: dict[int, timezone] = {}
    aware: list[datetime] = []
    for value, minutes in zip(values, np.asarray(offsets, dtype=np.int64).tolist(), strict=True):
        if value.tzinfo is None or value.utcoffset() is None:  # type: ignore[union-attr]
            zone = zones.get(minutes)
            if zone is None:
                zone = zones[minutes] = timezone(timedelta(minutes=minutes))
            value = value.replace(tzinfo=zone)  # type: ignore[union-attr]
        aware.append(value)  # type: ignore[arg-type]
    return pd.Series(pd.to_datetime(aware, utc=True), dtype="datetime64[ns, UTC]")
