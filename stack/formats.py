"""Other shapes of the predictions table of :mod:`stack.predict` (``--format``).

``csv`` (the default) is the table itself. ``timelapse`` is what Timelapse
(https://timelapse.ucalgary.ca) imports into a video/image set: its four standard columns
``File`` (file name), ``RelativePath`` (folder relative to the set's root, ``\\``
separators as Timelapse writes them, empty at the root), ``DateTime`` (``YYYY-MM-DD
HH:MM:SS``, UTC, from :func:`extract.timestamps.clip_timestamp`; a photo's EXIF time as the
camera wrote it) and ``DeleteFlag``
(``false``), then one column per class (probability) and ``top_label``. A failed clip keeps
its row with empty probabilities and label, never made-up numbers. A photo sequence gets a
row per photo (Timelapse's image sets hold photos), each with its own capture time and the
sequence's probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pandas as pd

FORMATS: tuple[str, ...] = ("csv", "timelapse")


def timelapse_table(
    table: pd.DataFrame,
    classes: list[str],
    times: Mapping[str, datetime | None],
    photos: Mapping[str, Sequence[tuple[str, datetime | None]]] | None = None,
) -> pd.DataFrame:
    """The Timelapse import table of a predictions ``table`` (one row per clip, same order;
    a sequence's row repeated for each of its photos).

    Args:
        table: the output of :func:`stack.predict.predict` (``filepath`` = clip id).
        classes: the class columns, in order.
        times: clip id → recording time (UTC), None or absent where unknown.
        photos: sequence clip id → its photos ``(path relative to the input folder, capture
            time)`` in order (:class:`stack.camtrap.Photo`).
    """
    photos = photos or {}
    paths: list[PurePosixPath] = []
    stamps: list[str] = []
    rows: list[int] = []
    for row, cid in enumerate(table["filepath"]):
        members = photos.get(cid) or [(cid, times.get(cid))]
        for path, when in members:
            paths.append(PurePosixPath(path))
            stamps.append(_stamp(when))
            rows.append(row)
    parent = [str(p.parent) for p in paths]
    out = pd.DataFrame(
        {
            "File": [p.name for p in paths],
            "RelativePath": ["" if d == "." else d.replace("/", "\\") for d in parent],
            "DateTime": stamps,
            "DeleteFlag": "false",
        }
    )
    picked = table.iloc[rows]
    for name in classes:
        out[name] = picked[name].to_numpy()
    out["top_label"] = picked["top_label"].to_numpy()
    return out


def _stamp(when: datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


#: the key column of a predictions CSV: ``filepath`` (clip id), or ``seq_id`` where the
#: input was a metadata CSV of photo sequences (:func:`stack.predict.predict`).
KEY_COLUMNS: tuple[str, ...] = ("filepath", "seq_id")


def with_filepath(table: pd.DataFrame) -> pd.DataFrame:
    """A predictions table read from CSV with its key column named ``filepath`` (a
    ``seq_id`` column is renamed when there is no ``filepath``)."""
    if "filepath" not in table.columns and "seq_id" in table.columns:
        return table.rename(columns={"seq_id": "filepath"})
    return table
