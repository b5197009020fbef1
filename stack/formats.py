"""Other shapes of the predictions table of :mod:`stack.predict` (``--format``).

``csv`` (the default) is the table itself. ``timelapse`` is what Timelapse
(https://timelapse.ucalgary.ca) imports into a video/image set: its four standard columns
``File`` (file name), ``RelativePath`` (folder relative to the set's root, ``\\``
separators as Timelapse writes them, empty at the root), ``DateTime`` (``YYYY-MM-DD
HH:MM:SS``, UTC, from :func:`extract.timestamps.clip_timestamp`; a photo's EXIF time as the
camera wrote it) and ``DeleteFlag``
(``false``), then one column per class (probability) and ``top_label``. A failed clip keeps
its row with empty probabilities and label, never made-up numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pandas as pd

FORMATS: tuple[str, ...] = ("csv", "timelapse")


def timelapse_table(
    table: pd.DataFrame, classes: list[str], times: Mapping[str, datetime | None]
) -> pd.DataFrame:
    """The Timelapse import table of a predictions ``table`` (one row per clip, same order).

    Args:
        table: the output of :func:`stack.predict.predict` (``filepath`` = clip id).
        classes: the class columns, in order.
        times: clip id → recording time (UTC), None or absent where unknown.
    """
    ids = [PurePosixPath(cid) for cid in table["filepath"]]
    parent = [str(p.parent) for p in ids]
    out = pd.DataFrame(
        {
            "File": [p.name for p in ids],
            "RelativePath": ["" if d == "." else d.replace("/", "\\") for d in parent],
            "DateTime": [_stamp(times.get(str(p))) for p in ids],
            "DeleteFlag": "false",
        }
    )
    for name in classes:
        out[name] = table[name].to_numpy()
    out["top_label"] = table["top_label"].to_numpy()
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
