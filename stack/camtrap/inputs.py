"""What the user gives for a Camtrap DP package, read and checked before any video work:
the deployments CSV (:func:`read_deployments`), the taxonomy CSV (:func:`read_taxonomy`)
and the project YAML, together :class:`CamtrapInputs` (:func:`read_camtrap_inputs`); the
deployment of each clip, a sequence's from its photos (:func:`check_clips`), and the package
folder
(:func:`check_out_dir`)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pool.labels import BLANK
from stack.camtrap.common import MISSING_VALUES, CamtrapError, examples, one_line
from stack.camtrap.project import CamtrapProject, read_project
from stack.camtrap.timestamps import offset_minutes, parse_time, render_time

log = logging.getLogger(__name__)

#: the columns a deployments CSV must have.
DEPLOYMENT_COLUMNS: tuple[str, ...] = (
    "deploymentID", "folder", "latitude", "longitude", "deploymentStart", "deploymentEnd",
)  # fmt: skip
#: optional deployments CSV columns copied as given (free-text fields of the standard).
DEPLOYMENT_TEXT_COLUMNS: tuple[str, ...] = (
    "locationID", "locationName", "setupBy", "cameraID", "cameraModel", "habitat",
    "deploymentGroups", "deploymentTags", "deploymentComments",
)  # fmt: skip
#: optional deployments CSV columns checked against the standard's vocabulary.
_FEATURE_TYPES = (
    "roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass",
    "roadBridge", "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree",
)  # fmt: skip
_BOOLEAN_COLUMNS = ("timestampIssues", "baitUse")
_DEPLOYMENT_OPTIONAL = (*DEPLOYMENT_TEXT_COLUMNS, "featureType", *_BOOLEAN_COLUMNS)
#: taxonomy CSV columns: required, then optional (copied into ``taxonomic``).
TAXONOMY_COLUMNS: tuple[str, ...] = ("class", "scientificName")
TAXONOMY_OPTIONAL: tuple[str, ...] = ("taxonRank", "taxonID")
_TAXON_RANKS = (
    "kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies",
)  # fmt: skip
#: class name (case-insensitive) whose observations have ``observationType`` ``human``.
HUMAN = "human"


@dataclass
class CamtrapInputs:
    """Everything the user gives for a Camtrap DP package, read and checked before any
    video work (:func:`read_camtrap_inputs`)."""

    deployments: pd.DataFrame  #: :func:`read_deployments`
    taxonomy: pd.DataFrame  #: :func:`read_taxonomy`
    project: CamtrapProject  #: :func:`read_project`


def read_camtrap_inputs(
    deployments: Path | str,
    taxonomy: Path | str,
    project: Path | str | None,
    classes: Sequence[str],
) -> CamtrapInputs:
    """Read and check the deployments CSV, the taxonomy CSV (for the model's ``classes``)
    and the optional project YAML.

    Raises:
        CamtrapError: see :func:`read_deployments`, :func:`read_taxonomy`,
            :func:`read_project`.
    """
    return CamtrapInputs(
        deployments=read_deployments(deployments),
        taxonomy=read_taxonomy(taxonomy, classes),
        project=read_project(project),
    )


def _read_table(path: Path, what: str, required: Sequence[str]) -> pd.DataFrame:
    """The CSV ``path`` as text, names and values stripped, with the ``required`` columns."""
    try:
        table = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True
        )
    except FileNotFoundError:
        raise CamtrapError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CamtrapError(f"{path}: cannot read the {what} CSV ({one_line(str(exc))})") from None
    except pd.errors.EmptyDataError:
        raise CamtrapError(f"{path}: the {what} CSV is empty") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise CamtrapError(
            f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(required)}; "
            f"found {', '.join(table.columns) or 'none'})"
        )
    return table.apply(lambda col: col.str.strip())


def _warn_ignored(table: pd.DataFrame, path: Path, *known: Sequence[str]) -> None:
    """Warn about the columns of ``table`` in none of ``known``."""
    ignored = [c for c in table.columns if not any(c in columns for columns in known)]
    if ignored:
        log.warning("%s: ignoring column(s) %s", path, ", ".join(ignored))


def _row(path: Path, i: int, key: str = "") -> str:
    """``FILE row N`` for data row ``i`` (0-based): N counts the header as row 1."""
    return f"{path} row {i + 2}" + (f" ({key})" if key else "")


def _is_absolute(path: str) -> bool:
    """True for a ``/``-separated path that is absolute (``/...`` or a drive ``C:...``)."""
    return path.startswith("/") or re.match(r"^[A-Za-z]:", path) is not None


def _normalize_folder(text: str, where: str) -> str:
    folder = text.replace("\\", "/").strip()
    if _is_absolute(folder):
        raise CamtrapError(
            f"{where}: folder {text!r} must be relative to the input folder, not absolute"
        )
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CamtrapError(f"{where}: folder {text!r} must not contain '..'")
    return "/".join(parts)


def _coordinate(text: str, where: str, column: str, bound: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CamtrapError(f"{where}: {column} {text!r} is not a number")
    if not -bound <= value <= bound:
        raise CamtrapError(
            f"{where}: {column} {value:g} is outside -{bound:g}..{bound:g} (decimal degrees, WGS84)"
        )
    return value


def _optional_value(column: str, value: str, where: str) -> str:
    """An optional deployments column's ``value``, checked (and booleans lower-cased)."""
    if column == "featureType" and value and value not in _FEATURE_TYPES:
        raise CamtrapError(
            f"{where}: featureType {value!r} is not one of {', '.join(_FEATURE_TYPES)}"
        )
    if column in _BOOLEAN_COLUMNS and value:
        if value.lower() not in ("true", "false"):
            raise CamtrapError(f"{where}: {column} {value!r} is not true or false")
        return value.lower()
    return value


def read_deployments(path: Path | str) -> pd.DataFrame:
    """Read and check the deployments CSV.

    Columns: ``deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd``
    (ISO 8601 times with a UTC offset; ``folder`` relative to the input folder, ``/``
    separated, ``""`` or ``.`` for all of it), and optionally the free-text deployment
    fields of the standard (:data:`DEPLOYMENT_TEXT_COLUMNS`), ``featureType`` and
    ``timestampIssues``/``baitUse`` (true/false), which are copied into deployments.csv.
    Other columns are ignored with a warning.

    Returns:
        One row per deployment, file order: ``deploymentID``, ``folder`` (normalized: no
        leading/trailing ``/``, ``""`` for the whole input), ``latitude``, ``longitude``
        (float), ``deploymentStart``, ``deploymentEnd`` (rendered as written to the
        package, each with its own offset), ``start_utc``, ``end_utc`` (UTC timestamps),
        ``offset_min`` (UTC offset of ``deploymentStart`` in minutes: media times of the
        deployment are rendered with it), then the optional columns present.
        ``attrs["source"]`` is the file.

    Raises:
        CamtrapError: missing columns, an empty file, an empty or duplicate deploymentID, a
            duplicate folder, latitude/longitude not numbers or out of range, a time
            without UTC offset, start after end (each naming the file and row).
    """
    path = Path(path)
    table = _read_table(path, "deployments", DEPLOYMENT_COLUMNS)
    if table.empty:
        raise CamtrapError(f"{path}: no deployments (the CSV has a header only)")
    _warn_ignored(table, path, DEPLOYMENT_COLUMNS, _DEPLOYMENT_OPTIONAL)
    optional = [c for c in _DEPLOYMENT_OPTIONAL if c in table.columns]
    seen_id: dict[str, int] = {}
    seen_folder: dict[str, int] = {}
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        dep = rec["deploymentID"]
        where = _row(path, i, f"deploymentID {dep!r}" if dep else "")
        if not dep:
            raise CamtrapError(f"{where}: deploymentID is empty")
        if dep in MISSING_VALUES:
            raise CamtrapError(f"{where}: deploymentID {dep!r} reads as a missing value")
        if dep in seen_id:
            raise CamtrapError(
                f"{where}: deploymentID {dep!r} is also on row {seen_id[dep] + 2}; "
                "deploymentIDs must be unique"
            )
        seen_id[dep] = i
        folder = _normalize_folder(rec["folder"], where)
        if folder in seen_folder:
            raise CamtrapError(
                f"{where}: folder {rec['folder']!r} is also the folder of row "
                f"{seen_folder[folder] + 2}; each folder belongs to one deployment"
            )
        seen_folder[folder] = i
        latitude = _coordinate(rec["latitude"], where, "latitude", 90.0)
        longitude = _coordinate(rec["longitude"], where, "longitude", 180.0)
        start = parse_time(rec["deploymentStart"], where, "deploymentStart")
        end = parse_time(rec["deploymentEnd"], where, "deploymentEnd")
        if start > end:
            raise CamtrapError(
                f"{where}: deploymentStart {rec['deploymentStart']} is after deploymentEnd "
                f"{rec['deploymentEnd']}"
            )
        rows.append(
            {
                "deploymentID": dep,
                "folder": folder,
                "latitude": latitude,
                "longitude": longitude,
                "deploymentStart": render_time(start),
                "deploymentEnd": render_time(end),
                "start_utc": pd.Timestamp(start).tz_convert("UTC"),
                "end_utc": pd.Timestamp(end).tz_convert("UTC"),
                "offset_min": offset_minutes(start),
                **{c: _optional_value(c, rec[c], where) for c in optional},
            }
        )
    out = pd.DataFrame(rows)
    out["start_utc"] = pd.to_datetime(out["start_utc"], utc=True)
    out["end_utc"] = pd.to_datetime(out["end_utc"], utc=True)
    out.attrs["source"] = str(path)
    return out


def read_taxonomy(path: Path | str, classes: Sequence[str]) -> pd.DataFrame:
    """Read the taxonomy CSV (``class,scientificName``, optional ``taxonRank``,
    ``taxonID``) for the model's ``classes``.

    Returns:
        One row per class of ``classes`` but ``blank``, in that order: ``class``,
        ``scientificName``, ``taxonRank``, ``taxonID`` (``""`` where not given) and
        ``observationType`` (``human`` for a class named human in any letter case, else
        ``animal``). Rows for other classes are dropped.

    Raises:
        CamtrapError: missing columns, a class listed twice, an empty scientificName, a
            taxonRank outside the profile's vocabulary, or classes missing (all named).
    """
    path = Path(path)
    table = _read_table(path, "taxonomy", TAXONOMY_COLUMNS)
    _warn_ignored(table, path, TAXONOMY_COLUMNS, TAXONOMY_OPTIONAL)
    for column in TAXONOMY_OPTIONAL:
        if column not in table.columns:
            table[column] = ""
    dup = table["class"].duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        name = table["class"].iloc[i]
        raise CamtrapError(f"{_row(path, i)}: class {name!r} is listed twice")
    needed = [c for c in classes if c != BLANK]
    listed = set(table["class"])
    missing = [c for c in needed if c not in listed]
    if missing:
        raise CamtrapError(
            f"{path}: {len(missing)} class(es) of the model are not listed: "
            f"{', '.join(missing)} (add a row class,scientificName for each)"
        )
    table = table.reset_index(names="row")
    table = table.set_index("class").loc[needed].reset_index()
    for rec in table.to_dict("records"):
        where = _row(path, int(rec["row"]), f"class {rec['class']!r}")
        if not rec["scientificName"] or rec["scientificName"] in MISSING_VALUES:
            raise CamtrapError(f"{where}: scientificName is empty")
        if rec["taxonRank"] and rec["taxonRank"] not in _TAXON_RANKS:
            raise CamtrapError(
                f"{where}: taxonRank {rec['taxonRank']!r} is not one of {', '.join(_TAXON_RANKS)}"
            )
    table["observationType"] = np.where(table["class"].str.lower() == HUMAN, "human", "animal")
    out = table[["class", "scientificName", "taxonRank", "taxonID", "observationType"]]
    out.attrs["source"] = str(path)
    return out.reset_index(drop=True)


def _outside(clip_id: str) -> bool:
    """True when a clip id is not a path inside the input folder (a manifest entry
    outside the manifest's folder is kept absolute)."""
    return _is_absolute(clip_id) or ".." in clip_id.split("/")


def _assign(folders: Mapping[str, str], clip_ids: Iterable[str]) -> list[str | None]:
    """The deployment of each clip: the longest folder prefix of its id listed in
    ``folders`` (folder -> deploymentID), None when none is. O(depth) per clip: each
    parent folder is looked up once (cached), never a loop over the deployments."""
    cache: dict[str, str | None] = {}
    out: list[str | None] = []
    for cid in clip_ids:
        parent = cid.rpartition("/")[0]
        if parent not in cache:
            found, folder = None, parent
            while True:
                if folder in folders:
                    found = folders[folder]
                    break
                if not folder:
                    break
                folder = folder.rpartition("/")[0]
            cache[parent] = found
        out.append(cache[parent])
    return out


def _deployment_ids(
    inputs: CamtrapInputs,
    clip_ids: Sequence[str],
    photos: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Every clip's deploymentID: a video's from its id, a sequence's (a clip of
    ``photos``: clip id -> its photos' paths relative to the input folder) from its photos'
    paths, which must all lie under one deployment (see :func:`check_clips` for the
    errors). O(files)."""
    photos = photos or {}
    paths: list[str] = []  # every file, clip by clip
    owner: list[int] = []  # the clip of each file
    starts: list[int] = []  # each clip's first file in ``paths``
    for i, cid in enumerate(clip_ids):
        starts.append(len(paths))
        files = photos.get(cid)
        if files is None:
            files = (cid,)
        elif not files:
            raise CamtrapError(f"sequence {cid!r} has no photos")
        paths.extend(files)
        owner.extend([i] * len(files))
    outside = [k for k, p in enumerate(paths) if _outside(p)]
    if outside:
        n_clips = len({owner[k] for k in outside})
        raise CamtrapError(
            f"{n_clips} clip(s) are not inside the input folder: "
            f"{examples([paths[k] for k in outside])}; "
            "Camtrap DP needs paths relative to it (put the manifest in a folder above "
            "all clips)"
        )
    deps = inputs.deployments
    folders = dict(zip(deps["folder"], deps["deploymentID"], strict=True))
    found = _assign(folders, paths)
    lost = [k for k, d in enumerate(found) if d is None]
    if lost:
        source = deps.attrs.get("source", "the deployments CSV")
        listed = examples([f or "." for f in deps["folder"]])
        n_clips = len({owner[k] for k in lost})
        raise CamtrapError(
            f"{n_clips} clip(s) are under no deployment folder of {source}: "
            f"{examples([paths[k] for k in lost])} (folders: {listed})"
        )
    out = [found[i] for i in starts]
    if photos:
        ends = [*starts[1:], len(paths)]
        for cid, first, stop, dep in zip(clip_ids, starts, ends, out, strict=True):
            other = next((d for d in found[first + 1 : stop] if d != dep), None)
            if other is not None:
                raise CamtrapError(
                    f"sequence {cid!r}: its photos lie under two deployments ({dep}, {other}); "
                    "an event belongs to one deployment (put the sequence's photos in one "
                    "deployment folder)"
                )
    return out  # type: ignore[return-value]


def check_clips(
    inputs: CamtrapInputs,
    clip_ids: Sequence[str],
    photos: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Check that every clip lies under a deployment's folder (call before video work): a
    video by its id, a sequence (a clip of ``photos``: clip id -> its photos' paths relative
    to the input folder, ``/`` separated) by its photos, all under one deployment.

    Raises:
        CamtrapError: naming the first few files under no deployment folder (or outside
            the input folder) and how many there are, or a sequence whose photos lie under
            two deployments.
    """
    _deployment_ids(inputs, list(clip_ids), photos)


def check_out_dir(out_dir: Path | str) -> Path:
    """The absolute package folder, when it may be (re)written: absent, empty, or a
    package written earlier (holds ``datapackage.json``). Call it before video work too.

    Raises:
        CamtrapError: it is a file, or a non-empty folder without ``datapackage.json``.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise CamtrapError(f"{out}: exists and is not a folder; cannot write a package")
        if not (out / "datapackage.json").is_file() and any(out.iterdir()):
            raise CamtrapError(
                f"{out}: the folder is not empty and holds no datapackage.json (not an "
                "earlier package); refusing to replace it: give a new or empty folder"
            )
    return out
