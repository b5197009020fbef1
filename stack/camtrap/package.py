"""The Camtrap DP package itself: its ``datapackage.json`` descriptor and
:func:`write_camtrap_dp`, which writes the tables and the descriptor into a folder
atomically (a sibling temporary folder, then renamed over the old one)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from stack.camtrap.common import CAMTRAP_DP_VERSION, URL, CamtrapError, Photo, jungle_version
from stack.camtrap.inputs import CamtrapInputs, _deployment_ids, check_out_dir
from stack.camtrap.observations import observations_table
from stack.camtrap.project import CamtrapProject
from stack.camtrap.spans import Spans
from stack.camtrap.tables import (
    deployments_table,
    event_id,
    media_id,
    media_table,
    warn_outside,
)
from stack.camtrap.timestamps import utc_times

log = logging.getLogger(__name__)

_BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}"
#: ``profile`` of the written ``datapackage.json``.
PROFILE_URL = f"{_BASE_URL}/camtrap-dp-profile.json"
#: resource name -> its table schema URL (as in the standard's example-datapackage.json).
SCHEMA_URLS: dict[str, str] = {
    name: f"{_BASE_URL}/{name}-table-schema.json"
    for name in ("deployments", "media", "observations")
}


def _spatial(deployments: pd.DataFrame) -> dict:
    lat = deployments["latitude"].astype(float)
    lon = deployments["longitude"].astype(float)
    west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
    if west == east and south == north:
        return {"type": "Point", "coordinates": [west, south]}
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def _temporal(deployments: pd.DataFrame) -> dict:
    first = deployments["start_utc"].idxmin()
    last = deployments["end_utc"].idxmax()
    return {
        "start": deployments.loc[first, "deploymentStart"][:10],
        "end": deployments.loc[last, "deploymentEnd"][:10],
    }


def _taxonomic(taxonomy: pd.DataFrame, observed: set[str]) -> list[dict]:
    out: list[dict] = []
    index: dict[str, dict] = {}
    for rec in taxonomy.to_dict("records"):
        name = rec["scientificName"]
        if name not in observed:
            continue
        if name in index:  # two classes, one taxon: both names
            entry = index[name]
            entry["vernacularNames"]["eng"] += f", {rec['class']}"
            continue
        entry = {"scientificName": name}
        if rec["taxonID"]:
            entry["taxonID"] = rec["taxonID"]
        if rec["taxonRank"]:
            entry["taxonRank"] = rec["taxonRank"]
        entry["vernacularNames"] = {"eng": rec["class"]}
        index[name] = entry
        out.append(entry)
    return out


def _license(value: str, scope: str) -> dict:
    key = "path" if re.match(URL, value) else "name"
    return {key: value, "scope": scope}


def _descriptor(
    project: CamtrapProject,
    deployments: pd.DataFrame,
    taxonomic: list[dict],
    created: str,
    threshold: float,
    levels: list[str],
) -> dict:
    jungle = jungle_version()
    if levels == ["media"]:
        what = "Media-level observations of camera-trap videos"
    elif levels == ["event"]:
        what = "Event-level observations of camera-trap photo sequences"
    else:
        what = "Observations of camera-trap videos (media level) and photo sequences (event level)"
    description = project.description or (
        f"{what} made by jungle {jungle}, a machine classifier, not reviewed by a person: a "
        f"class is observed in a clip when its probability is at least {threshold:g}."
    )
    package: dict = {
        "resources": [
            {
                "name": name,
                "path": f"{name}.csv",
                "profile": "tabular-data-resource",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": url,
            }
            for name, url in SCHEMA_URLS.items()
        ],
        "profile": PROFILE_URL,
        "name": project.name,
        "id": project.id or str(uuid.uuid4()),
        "created": created,
        "title": project.title,
        "contributors": [c.model_dump(exclude_none=True) for c in project.contributors],
        "description": description,
    }
    if project.keywords:
        package["keywords"] = list(project.keywords)
    if project.homepage:
        package["homepage"] = project.homepage
    package["sources"] = [{"title": "jungle", "version": jungle}]
    if project.licenses is not None:
        package["licenses"] = [
            _license(project.licenses.data, "data"),
            _license(project.licenses.media, "media"),
        ]
    if project.bibliographicCitation:
        package["bibliographicCitation"] = project.bibliographicCitation
    package["project"] = {
        **project.project.model_dump(exclude_none=True),
        "observationLevel": levels,
    }
    if project.coordinatePrecision is not None:
        package["coordinatePrecision"] = project.coordinatePrecision
    package["spatial"] = _spatial(deployments)
    package["temporal"] = _temporal(deployments)
    package["taxonomic"] = taxonomic
    return package


def write_camtrap_dp(
    out_dir: Path | str,
    predictions: pd.DataFrame,
    classes: Sequence[str],
    inputs: CamtrapInputs,
    times: Mapping[str, datetime | None],
    durations: Mapping[str, float],
    spans: Spans | None,
    threshold: float,
    photos: Mapping[str, Sequence[Photo]] | None = None,
) -> Path:
    """Write the Camtrap DP package of ``predictions`` into ``out_dir`` (see
    :mod:`stack.camtrap` for the mapping), atomically: into a sibling temporary folder,
    then renamed over ``out_dir`` (a package written earlier is replaced).

    Args:
        out_dir: the package folder (absent, empty, or an earlier package).
        predictions: the table of :func:`stack.predict.predict`: ``filepath`` (clip id),
            one probability column per class, ``status`` (ok/partial/failed), ``error``
            (other columns are ignored).
        classes: the class columns (``blank`` is the no-animal class).
        inputs: :func:`read_camtrap_inputs`.
        times: video clip id -> recording time (every video needs one; timezone-aware, or
            naive: camera-local, read in the deployment's UTC offset). Sequences need none.
        durations: clip id -> seconds (missing or NaN: unknown; the whole-clip event then
            has no length).
        spans: :func:`evidence_spans`, or None (events then cover the whole clip).
        threshold: a class is observed when its probability is at least this (0 < t < 1).
        photos: sequence clip id -> its photos in capture order (:class:`Photo`: path
            relative to the input folder and capture time, which a naive EXIF time is read
            in the deployment's UTC offset). Each photo is a media row; the sequence's
            observations are event-level, from its first photo's time to its last's. Clips
            not listed are videos.

    Returns:
        The path of ``datapackage.json``.

    Raises:
        CamtrapError: ``out_dir`` cannot be replaced, a clip is under no deployment, a
            video or photo has no time, a class column is missing, or the threshold is out
            of range.
    """
    out = check_out_dir(out_dir)
    if not 0 < threshold < 1:
        raise CamtrapError(f"the threshold must be between 0 and 1, not {threshold}")
    classes = list(classes)
    absent = [c for c in ("filepath", "status", *classes) if c not in predictions.columns]
    if absent:
        raise CamtrapError(f"the predictions table lacks column(s) {', '.join(absent)}")
    ids = predictions["filepath"].astype(str).tolist()
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise CamtrapError(f"clip {ids[int(np.flatnonzero(dup)[0])]!r} is predicted twice")
    predictions = predictions.reset_index(drop=True)
    photos = {cid: list(photos[cid]) for cid in ids if cid in photos} if photos else {}
    paths_of = {cid: [p.path for p in items] for cid, items in photos.items()}
    deployment_ids = _deployment_ids(inputs, ids, paths_of)
    deployments = inputs.deployments
    offsets = (
        deployments.set_index("deploymentID")["offset_min"]
        .reindex(deployment_ids)
        .to_numpy(dtype=np.int64)
    )
    # every media file, clip by clip: a video, or each photo of a sequence
    sequence = np.array([cid in photos for cid in ids], dtype=bool)
    paths: list[str] = []
    moments: list[datetime | None] = []
    counts = np.ones(len(ids), dtype=np.int64)
    for i, cid in enumerate(ids):
        if sequence[i]:
            counts[i] = len(photos[cid])
            for photo in photos[cid]:
                paths.append(photo.path)
                moments.append(photo.time)
        else:
            paths.append(cid)
            moments.append(times.get(cid))
    owner = np.repeat(np.arange(len(ids)), counts)
    utc = utc_times(paths, moments, offsets[owner])
    grouped = utc.groupby(owner, sort=True)
    clips = pd.DataFrame(
        {
            "mediaID": [("" if s else media_id(cid)) for cid, s in zip(ids, sequence, strict=True)],
            "eventID": [(event_id(cid) if s else "") for cid, s in zip(ids, sequence, strict=True)],
            "deploymentID": deployment_ids,
            "start": grouped.min().reindex(range(len(ids))).reset_index(drop=True),
            "end": grouped.max().reindex(range(len(ids))).reset_index(drop=True),
            "offset_min": offsets,
        }
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    taxonomy = inputs.taxonomy
    methods = inputs.project.project.captureMethod
    media = media_table(paths, owner, predictions, sequence, deployment_ids, utc, offsets, methods)
    warn_outside(media, utc, deployments)
    observations = observations_table(
        predictions, classes, taxonomy, clips, durations, spans, threshold, stamp
    )
    observed = set(observations["scientificName"]) - {""}
    taxonomic = _taxonomic(taxonomy, observed)
    levels = [
        level for level, there in (("media", ~sequence), ("event", sequence)) if there.any()
    ] or ["media"]
    package = _descriptor(inputs.project, deployments, taxonomic, stamp, threshold, levels)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        tables = {
            "deployments": deployments_table(deployments),
            "media": media,
            "observations": observations,
        }
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False, encoding="utf-8", lineterminator="\n")
        (tmp / "datapackage.json").write_text(
            json.dumps(package, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "Camtrap DP package %s: %d deployments, %d media, %d observations",
        out,
        len(deployments),
        len(media),
        len(observations),
    )
    return out / "datapackage.json"


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (checked to be an earlier package or
    empty) is moved aside first and removed after, or put back if the rename fails."""
    check_out_dir(out)
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
