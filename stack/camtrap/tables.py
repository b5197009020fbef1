"""The deployments and media tables of a Camtrap DP package (``deployments.csv``,
``media.csv``), and how a clip is named in them (:func:`media_id`, :func:`file_path`,
:func:`media_type`)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from stack.camtrap.common import CamtrapError, examples, number_text
from stack.camtrap.timestamps import as_ns, render_times

log = logging.getLogger(__name__)

#: columns of deployments.csv, in the table schema's order.
DEPLOYMENT_FIELDS: tuple[str, ...] = (
    "deploymentID", "locationID", "locationName", "latitude", "longitude",
    "coordinateUncertainty", "deploymentStart", "deploymentEnd", "setupBy", "cameraID",
    "cameraModel", "cameraDelay", "cameraHeight", "cameraDepth", "cameraTilt",
    "cameraHeading", "detectionDistance", "timestampIssues", "baitUse", "featureType",
    "habitat", "deploymentGroups", "deploymentTags", "deploymentComments",
)  # fmt: skip
#: columns of media.csv, in the table schema's order.
MEDIA_FIELDS: tuple[str, ...] = (
    "mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic",
    "fileName", "fileMediatype", "exifData", "favorite", "mediaComments",
)  # fmt: skip

#: media type per extension (lower case); any other extension EXT gives ``video/x-EXT`` (the
#: schema's pattern requires ``video/...``; :mod:`mimetypes` gives non-video types for some).
MEDIA_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".asf": "video/x-ms-asf",
    ".wmv": "video/x-ms-asf",
    ".mkv": "video/x-matroska",
    ".mts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".ts": "video/mp2t",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".webm": "video/webm",
    ".3gp": "video/3gpp",
    ".ogv": "video/ogg",
    ".flv": "video/x-flv",
}

#: the media schema's ``filePath`` pattern: no leading ``.``, ``/`` or ``~``, no ``..``.
_FILE_PATH = re.compile(r"^(?=^[^./~])(^((?!\.{2}).)*$).*$")


def media_id(clip_id: str) -> str:
    """The ``mediaID`` of a clip: the first 16 hex digits of the SHA-1 of its id."""
    return hashlib.sha1(clip_id.encode("utf-8")).hexdigest()[:16]


def media_type(clip_id: str) -> str:
    """The IANA media type of a clip from its extension (:data:`MEDIA_TYPES`); an unknown
    extension gives ``video/x-EXT`` (``video/x-unknown`` without one)."""
    name = clip_id.rpartition("/")[2]
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix]
    ext = re.sub(r"[^a-z0-9.+-]", "", suffix[1:])
    return f"video/x-{ext or 'unknown'}"


def file_path(clip_id: str) -> str:
    """``media.filePath`` of a clip: its id, unless the id breaks the schema's pattern (a
    leading ``.`` or ``~``, or ``..`` in a name): then it is percent-encoded as a relative
    URL (``%2E`` for the offending dots, ``%7E`` for a leading ``~``)."""
    if _FILE_PATH.match(clip_id):
        return clip_id
    encoded = quote(clip_id, safe="/")
    encoded = re.sub(r"\.(?=\.)", "%2E", encoded)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded.startswith("~"):
        encoded = "%7E" + encoded[1:]
    return encoded


def clip_status(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each clip's ``status`` (ok/partial/failed) and ``error`` text (``""`` when the
    predictions table has no error column, or no error for the clip)."""
    status = predictions["status"].astype(str).to_numpy()
    errors = (
        predictions["error"].fillna("").astype(str).to_numpy()
        if "error" in predictions.columns
        else np.full(len(predictions), "", dtype=object)
    )
    return status, errors


def deployments_table(deployments: pd.DataFrame) -> pd.DataFrame:
    """``deployments.csv``: every deployment of :func:`~stack.camtrap.inputs.read_deployments`
    (with or without clips), the schema's columns, as text."""
    out = pd.DataFrame("", index=range(len(deployments)), columns=list(DEPLOYMENT_FIELDS))
    for column in DEPLOYMENT_FIELDS:
        if column in ("latitude", "longitude"):
            out[column] = number_text(deployments[column].to_numpy(dtype=np.float64))
        elif column in deployments.columns:
            out[column] = deployments[column].astype(str).to_numpy()
    return out


def media_table(
    ids: list[str],
    predictions: pd.DataFrame,
    deployment_ids: list[str],
    utc: pd.Series,
    offsets: np.ndarray,
    capture_methods: Sequence[str],
) -> pd.DataFrame:
    """``media.csv``: one row per clip of ``ids`` (the rows of ``predictions``), failed
    clips included, in its deployment's UTC offset (``offsets``, minutes).

    Raises:
        CamtrapError: two clips with one mediaID.
    """
    n = len(ids)
    status, errors = clip_status(predictions)
    paths = [file_path(cid) for cid in ids]
    encoded = [cid for cid, p in zip(ids, paths, strict=True) if cid != p]
    if encoded:
        log.warning(
            "%d clip path(s) break the Camtrap DP filePath pattern (leading '.' or '~', or "
            "'..' in a name) and are written percent-encoded: %s",
            len(encoded),
            examples(encoded),
        )
    comments = np.where(
        status == "failed",
        np.char.add("could not be decoded or analysed: ", errors.astype(str)),
        np.where(status == "partial", "only part of the clip could be decoded", ""),
    )
    out = pd.DataFrame("", index=range(n), columns=list(MEDIA_FIELDS))
    out["mediaID"] = [media_id(cid) for cid in ids]
    out["deploymentID"] = deployment_ids
    out["captureMethod"] = capture_methods[0] if len(capture_methods) == 1 else ""
    out["timestamp"] = render_times(utc.dt.floor("s"), offsets).to_numpy()
    out["filePath"] = paths
    out["filePublic"] = "false"
    out["fileName"] = [cid.rpartition("/")[2] for cid in ids]
    out["fileMediatype"] = [media_type(cid) for cid in ids]
    out["mediaComments"] = comments.astype(object)
    dup = out["mediaID"].duplicated()
    if dup.any():  # 64-bit hashes of distinct ids: practically never
        raise CamtrapError(f"mediaID collision for clip {ids[int(np.flatnonzero(dup)[0])]!r}")
    return out


def warn_outside(media: pd.DataFrame, utc: pd.Series, deployments: pd.DataFrame) -> None:
    """Warn, per deployment, about clips whose time ``utc`` is outside its start..end."""
    bounds = deployments.set_index("deploymentID")[["start_utc", "end_utc"]]
    start = as_ns(bounds["start_utc"].reindex(media["deploymentID"]))
    end = as_ns(bounds["end_utc"].reindex(media["deploymentID"]))
    moment = as_ns(utc)
    outside = (moment < start) | (moment > end)
    if not outside.any():
        return
    bad = media.loc[outside, ["deploymentID", "filePath", "timestamp"]]
    for dep, group in bad.groupby("deploymentID", sort=False):
        row = bounds.loc[dep]
        log.warning(
            "%d clip(s) of deployment %s have a time stamp outside its start..end (%s..%s), "
            "e.g. %s at %s (camera clock wrong, or the clip under the wrong folder?)",
            len(group),
            dep,
            row["start_utc"].isoformat(),
            row["end_utc"].isoformat(),
            group["filePath"].iloc[0],
            group["timestamp"].iloc[0],
        )
