"""What every part of the Camtrap DP writer shares: its error, the standard's version, a
photo of a sequence (:class:`Photo`) and small text helpers."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

import numpy as np

from stack.train import Level2Error

log = logging.getLogger(__name__)

#: the Camtrap DP version written.
CAMTRAP_DP_VERSION = "1.0.2"
#: what the table schemas read as a missing value (``missingValues``), besides "".
MISSING_VALUES = frozenset({"NA", "NaN", "nan"})
#: a URL, as the project YAML and the package licenses take it.
URL = r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$"


class CamtrapError(Level2Error):
    """The Camtrap DP inputs or output folder cannot be used; the message says what to fix."""


class Photo(NamedTuple):
    """One photo of a sequence clip: a media row of its own in a Camtrap DP package."""

    #: the photo's path relative to the input folder, ``/`` separated.
    path: str
    #: its capture time: timezone-aware, or naive (an EXIF time: camera-local, read in its
    #: deployment's UTC offset); None when unknown (an error when the package is written).
    time: datetime | None


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def examples(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items`` quoted, then how many more there are."""
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def number_text(values: np.ndarray) -> list[str]:
    """Floats as the shortest positional text that reads back to the same value; NaN ''."""
    return ["" if math.isnan(v) else np.format_float_positional(v, trim="-") for v in values]


def jungle_version() -> str:
    """The installed version of jungle (``unknown`` when it is not installed)."""
    try:
        return version("jungle")
    except PackageNotFoundError:
        return "unknown"
