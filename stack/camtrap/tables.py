"""The deployments and media tables of a Camtrap DP package (``deployments.csv``,
``media.csv``: a row per video, a row per photo of a sequence), and how a file is named in
them (:func:`media_id`, :func:`event_id`, :func:`file_path`, :func:`media_type`)."""

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
#: schema's pattern requires ``image|video|audio/...``; :mod:`mimetypes` gives non-video
#: types for some video extensions). Photos have one of the image extensions below.
MEDIA_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
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
    """The ``mediaID`` of a video clip or a photo: the first 16 hex digits of the SHA-1 of
    its id (a photo's: its path relative to the input folder)."""
    return hashlib.sha1(clip_id.encode("utf-8")).hexdigest()[:16]


def event_id(clip_id: str) -> str:
    """The ``eventID`` of a sequence clip's observations: the first 16 hex digits of the
    SHA-1 of ``event:`` + its id (never the mediaID of its first photo, whose path a
    folder sequence's id is)."""
    return hashlib.sha1(f"event:{clip_id}".encode()).hexdigest()[:16]


def media_type(clip_id: str) -> str:
    """The IANA media type of a clip or photo from its extension (:data:`MEDIA_TYPES`); an
    unknown extension gives ``video/x-EXT`` (``video/x-unknown`` without one)."""
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
    paths: list[str],
    owner: np.ndarray,
    predictions: pd.DataFrame,
    sequence: np.ndarray,
    deployment_ids: list[str],
    utc: pd.Series,
    offsets: np.ndarray,
    capture_methods: Sequence[str],
) -> pd.DataFrame:
    """``media.csv``: one row per file of ``paths`` (a video clip, or a photo of a sequence
    clip), failed clips included, each in its clip's deployment's UTC offset.

    Args:
        paths: every file, clip by clip (a sequence's photos in capture order), relative to
            the input folder.
        owner: the clip (row of ``predictions``) of each file.
        predictions: the predictions table (``status``, ``error``).
        sequence: per clip, True for a sequence of photos.
        deployment_ids, offsets: per clip, its deploymentID and UTC offset (minutes).
        utc: per file, its time (UTC).
        capture_methods: the project's capture methods.

    Raises:
        CamtrapError: two files with one mediaID (one file listed twice).
    """
    n = len(paths)
    status, errors = clip_status(predictions)
    status, errors, is_photo = status[owner], errors[owner], sequence[owner]
    encoded_paths = [file_path(path) for path in paths]
    encoded = [path for path, e in zip(paths, encoded_paths, strict=True) if path != e]
    if encoded:
        log.warning(
            "%d clip path(s) break the Camtrap DP filePath pattern (leading '.' or '~', or "
            "'..' in a name) and are written percent-encoded: %s",
            len(encoded),
            examples(encoded),
        )
    what = np.where(is_photo, "the sequence", "the clip")
    failed_text = np.char.add(
        np.where(is_photo, "the sequence could not", "could not"),
        np.char.add(" be decoded or analysed: ", errors.astype(str)),
    )
    comments = np.where(
        status == "failed",
        failed_text,
        np.where(
            status == "partial",
            np.char.add("only part of ", np.char.add(what, " could be decoded")),
            "",
        ),
    )
    out = pd.DataFrame("", index=range(n), columns=list(MEDIA_FIELDS))
    out["mediaID"] = [media_id(path) for path in paths]
    out["deploymentID"] = np.asarray(deployment_ids, dtype=object)[owner]
    out["captureMethod"] = capture_methods[0] if len(capture_methods) == 1 else ""
    out["timestamp"] = render_times(utc.dt.floor("s"), offsets[owner]).to_numpy()
    out["filePath"] = encoded_paths
    out["filePublic"] = "false"
    out["fileName"] = [path.rpartition("/")[2] for path in paths]
    out["fileMediatype"] = [media_type(path) for path in paths]
    out["mediaComments"] = comments.astype(object)
    dup = out["mediaID"].duplicated()
    if dup.any():  # a photo in two sequences; else 64-bit hashes of distinct ids: never
        raise CamtrapError(
            f"mediaID collision for {paths[int(np.flatnonzero(dup)[0])]!r} (listed twice?)"
        )
    return out


def warn_outside(media: pd.DataFrame, utc: pd.Series, deployments: pd.DataFrame) -> None:
    """Warn, per deployment, about media files whose time ``utc`` is outside its
    start..end."""
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
            "%d media file(s) of deployment %s have a time stamp outside its start..end "
            "(%s..%s), e.g. %s at %s (camera clock wrong, or the file under the wrong folder?)",
            len(group),
            dep,
            row["start_utc"].isoformat(),
            row["end_utc"].isoformat(),
            group["filePath"].iloc[0],
            group["timestamp"].iloc[0],
        )
