"""Training labels: parse a labels CSV into a clip × class target matrix.

Two layouts are accepted (columns are matched after stripping whitespace):

* ``filepath,label[,...]``: ``label`` is a class name, ``blank``, or several class names
  joined by ``;`` (other columns, such as a site, are kept as extras).
* ``filepath,<class>,<class>,...``: one 0/1 column per class (the Pri-matrix and Hakuna
  Ma-Data submission layout). Every column other than ``filepath`` (and the group column,
  when one is given) must be a class column of 0/1 values.
* ``seq_id,<class>,...,empty``: the Hakuna Ma-Data ``train_labels.csv`` of photo sequences
  (:mod:`extract.sequences`): ``seq_id`` is the clip id (the ``seq_id`` of the metadata CSV
  given to ``jungle features``) and ``empty`` is ``blank``.

``blank`` is always an output class, the last column: classes are the sorted species names
followed by ``blank``. A blank clip has target 1 for ``blank`` and 0 for every species; a
clip with a species has ``blank`` = 0. In the 0/1 layout a ``blank`` column is optional; a
row without any species is then blank. Both layouts give the same targets for the same
labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pool.config import Level1Error

BLANK = "blank"
SEPARATOR = ";"


@dataclass(frozen=True)
class LabelTable:
    """Parsed labels: one row per clip, in CSV order."""

    source: Path  #: the CSV file
    filepaths: list[str]  #: ``filepath`` as written
    classes: list[str]  #: sorted species, then ``blank``
    targets: np.ndarray  #: ``(n, K)`` float32 of 0/1
    groups: list[str] | None  #: values of the group column, when one was asked for

    def __len__(self) -> int:
        return len(self.filepaths)


def _rows(indices: np.ndarray | list[int], filepaths: pd.Series, limit: int = 5) -> str:
    """``line 3 (a.mp4), line 7 (b.mp4), ... and N more`` for CSV data rows ``indices``."""
    indices = list(indices)
    shown = ", ".join(f"line {i + 2} ({filepaths.iloc[i]!r})" for i in indices[:limit])
    more = len(indices) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def read_labels(path: Path | str, group_column: str | None = None) -> LabelTable:
    """Parse the labels CSV at ``path`` (layouts in the module docstring).

    Args:
        path: the CSV file.
        group_column: name of a column holding group ids (e.g. a site); required to exist.

    Raises:
        Level1Error: unreadable file, no ``filepath`` column, empty or duplicate file paths,
            unknown layout, empty labels, ``blank`` combined with a species, non-0/1 values,
            missing group column or empty group values; the message names the CSV lines.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise Level1Error(f"cannot read labels {path}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise Level1Error(f"labels {path} is empty") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda col: col.str.strip())
    frame = _from_hakuna(frame)
    if "filepath" not in frame.columns:
        raise Level1Error(
            f"labels {path}: no 'filepath' column (columns are {list(frame.columns)}); expected "
            "'filepath,label' or 'filepath' plus one 0/1 column per class"
        )
    if frame.empty:
        raise Level1Error(f"labels {path} has no rows")
    if frame.columns.duplicated().any():
        dup = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise Level1Error(f"labels {path}: duplicate columns {dup}")
    paths = frame["filepath"]
    empty = np.flatnonzero(paths == "")
    if len(empty):
        raise Level1Error(f"labels {path}: empty filepath at {_rows(empty, paths)}")
    dup = np.flatnonzero(paths.duplicated(keep=False).to_numpy())
    if len(dup):
        raise Level1Error(
            f"labels {path}: the same filepath is listed twice at {_rows(dup, paths)}"
        )

    groups = None
    if group_column is not None:
        if group_column not in frame.columns:
            raise Level1Error(
                f"labels {path}: no group column {group_column!r} (columns are "
                f"{list(frame.columns)})"
            )
        missing = np.flatnonzero(frame[group_column] == "")
        if len(missing):
            raise Level1Error(f"labels {path}: empty {group_column!r} at {_rows(missing, paths)}")
        groups = frame[group_column].tolist()

    if "label" in frame.columns:
        classes, targets = _parse_label_column(path, frame)
    else:
        others = [c for c in frame.columns if c not in ("filepath", group_column)]
        classes, targets = _parse_onehot(path, frame, others)
    return LabelTable(path, paths.tolist(), classes, targets, groups)


def _from_hakuna(frame: pd.DataFrame) -> pd.DataFrame:
    """The Hakuna Ma-Data ``train_labels.csv`` layout (``seq_id`` plus one 0/1 column per
    class, ``empty`` for no animal) in jungle's one-hot layout: ``seq_id`` is the clip id
    (``filepath``), ``empty`` is ``blank``. Other layouts are returned as they are."""
    if "filepath" in frame.columns or "seq_id" not in frame.columns:
        return frame
    renames = {"seq_id": "filepath"}
    if "empty" in frame.columns and BLANK not in frame.columns:
        renames["empty"] = BLANK
    return frame.rename(columns=renames)


def _parse_label_column(path: Path, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    paths = frame["filepath"]
    names = [[n.strip() for n in value.split(SEPARATOR)] for value in frame["label"]]
    empty = [i for i, row in enumerate(names) if any(n == "" for n in row)]
    if empty:
        raise Level1Error(
            f"labels {path}: empty label (or empty name between '{SEPARATOR}') at "
            f"{_rows(empty, paths)}; use '{BLANK}' for clips without animals"
        )
    mixed = [i for i, row in enumerate(names) if BLANK in row and len(row) > 1]
    if mixed:
        raise Level1Error(
            f"labels {path}: '{BLANK}' combined with a species at {_rows(mixed, paths)}"
        )
    species = sorted({n for row in names for n in row} - {BLANK})
    classes = [*species, BLANK]
    column = {name: k for k, name in enumerate(classes)}
    targets = np.zeros((len(names), len(classes)), dtype=np.float32)
    rows = np.repeat(np.arange(len(names)), [len(r) for r in names])
    cols = np.array([column[n] for row in names for n in row], dtype=np.int64)
    targets[rows, cols] = 1.0
    return classes, targets


def _parse_onehot(
    path: Path, frame: pd.DataFrame, columns: list[str]
) -> tuple[list[str], np.ndarray]:
    paths = frame["filepath"]
    if not columns:
        raise Level1Error(
            f"labels {path}: only a 'filepath' column; add 'label' or one 0/1 column per class"
        )
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in columns if not values[c].isin([0, 1]).all()]
    if bad:
        first = np.flatnonzero(~values[bad[0]].isin([0, 1]).to_numpy())
        raise Level1Error(
            f"labels {path}: columns {bad} are not 0/1 class columns (first bad value in "
            f"{bad[0]!r} at {_rows(first, paths, limit=1)}); a labels file has either a "
            "'label' column or only 0/1 class columns besides 'filepath' (pass "
            "--group-column for a group column such as a site)"
        )
    species = sorted(c for c in columns if c != BLANK)
    if not species:
        raise Level1Error(f"labels {path}: no species column, only {columns}")
    y = values[species].to_numpy(dtype=np.float32)
    has_species = y.sum(axis=1) > 0
    if BLANK in columns:
        blank = values[BLANK].to_numpy(dtype=np.float32)
        both = np.flatnonzero(has_species & (blank > 0))
        if len(both):
            raise Level1Error(
                f"labels {path}: '{BLANK}' = 1 with a species at {_rows(both, paths)}"
            )
        neither = np.flatnonzero(~has_species & (blank == 0))
        if len(neither):
            raise Level1Error(
                f"labels {path}: no class is 1 (not even '{BLANK}') at {_rows(neither, paths)}"
            )
    else:
        blank = (~has_species).astype(np.float32)
    targets = np.concatenate([y, blank[:, None]], axis=1)
    return [*species, BLANK], targets
