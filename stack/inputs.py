"""Level-2 metadata features: what the tree candidates of :mod:`stack.candidates` see of a
clip besides its level-1 probabilities.

Metadata features (from the feature store's ``meta`` table):

* ``file_size``, ``log_file_size`` (natural log of bytes), ``width``, ``height``, ``fps``,
  ``duration``, ``frame_count``, ``bitrate``;
* ``file_size_z``: the z-score of ``log_file_size`` within the clip's (width, height) group,
  with each group's mean and standard deviation taken from the *training* clips (saved with
  the model). Empty clips compress to smaller files than clips of the same camera with an
  animal moving, so this carries signal that raw size hides when cameras differ. A group
  with fewer than :data:`MIN_GROUP` training clips uses the statistics of all clips.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

META_FEATURES: tuple[str, ...] = (
    "file_size",
    "log_file_size",
    "file_size_z",
    "width",
    "height",
    "fps",
    "duration",
    "frame_count",
    "bitrate",
)
MIN_GROUP = 5
#: raw metadata columns level 2 reads (from the feature store's ``meta`` table).
META_COLUMNS: tuple[str, ...] = (
    "file_size",
    "width",
    "height",
    "fps",
    "duration",
    "frame_count",
    "bitrate",
)


def size_stats(meta: pd.DataFrame) -> dict:
    """Per-(width, height) mean and std of log file size, and the overall ones, as JSON-able
    dict (fit on training clips only)."""
    log_size = np.log(meta["file_size"].to_numpy(dtype=np.float64).clip(1))
    overall = {"mean": float(log_size.mean()), "std": float(log_size.std() or 1.0)}
    groups = {}
    keys = meta["width"].astype(int).astype(str) + "x" + meta["height"].astype(int).astype(str)
    for key, values in pd.Series(log_size, index=meta.index).groupby(keys.to_numpy()):
        if len(values) >= MIN_GROUP:
            groups[str(key)] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=0) or 1.0),
            }
    return {"overall": overall, "groups": groups}


def meta_features(meta: pd.DataFrame, stats: Mapping) -> pd.DataFrame:
    """The :data:`META_FEATURES` columns for the clips of ``meta`` (index kept)."""
    log_size = np.log(meta["file_size"].to_numpy(dtype=np.float64).clip(1))
    keys = meta["width"].astype(int).astype(str) + "x" + meta["height"].astype(int).astype(str)
    means = np.array([stats["groups"].get(k, stats["overall"])["mean"] for k in keys])
    stds = np.array([stats["groups"].get(k, stats["overall"])["std"] for k in keys])
    out = pd.DataFrame(index=meta.index)
    out["file_size"] = meta["file_size"].astype(np.float64)
    out["log_file_size"] = log_size
    out["file_size_z"] = (log_size - means) / stds
    for name in ("width", "height", "fps", "duration", "frame_count", "bitrate"):
        out[name] = meta[name].astype(np.float64)
    return out[list(META_FEATURES)]
