"""The observations table of a Camtrap DP package (``observations.csv``): media-level
observations of each clip from its class probabilities (:func:`observations_table`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pool.labels import BLANK
from stack.camtrap.common import jungle_version, number_text
from stack.camtrap.spans import Spans
from stack.camtrap.tables import clip_status
from stack.camtrap.timestamps import render_times

log = logging.getLogger(__name__)

#: columns of observations.csv, in the table schema's order.
OBSERVATION_FIELDS: tuple[str, ...] = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
    "observationLevel", "observationType", "cameraSetupType", "scientificName", "count",
    "lifeStage", "sex", "behavior", "individualID", "individualPositionRadius",
    "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth", "bboxHeight",
    "classificationMethod", "classifiedBy", "classificationTimestamp",
    "classificationProbability", "observationTags", "observationComments",
)  # fmt: skip


def observations_table(
    predictions: pd.DataFrame,
    classes: list[str],
    taxonomy: pd.DataFrame,
    media: pd.DataFrame,
    utc: pd.Series,
    offsets: np.ndarray,
    durations: Mapping[str, float],
    spans: Spans | None,
    threshold: float,
    stamp: str,
) -> pd.DataFrame:
    """``observations.csv``: the observations of each clip of ``predictions`` (see
    :mod:`stack.camtrap` for the rules), in clip order, numbered per clip.

    Args:
        predictions: the predictions table (``filepath``, a column per class, ``status``,
            ``error``), one row per row of ``media``.
        classes: the class columns (``blank`` is the no-animal class).
        taxonomy: :func:`~stack.camtrap.inputs.read_taxonomy`.
        media: :func:`~stack.camtrap.tables.media_table` (mediaID and deploymentID).
        utc: each clip's time (UTC); ``offsets``: its deployment's UTC offset (minutes).
        durations: clip id -> seconds (events of unknown length end where they start).
        spans: clip id -> class -> evidence span, or None (whole-clip events).
        threshold: a class is observed when its probability is at least this.
        stamp: ``classificationTimestamp`` of the machine observations.
    """
    ids = predictions["filepath"].astype(str).tolist()
    n = len(ids)
    probs = predictions[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    status, errors = clip_status(predictions)
    classified = (status != "failed") & ~np.isnan(probs).any(axis=1)
    species = [k for k, c in enumerate(classes) if c != BLANK]
    blank = next((k for k, c in enumerate(classes) if c == BLANK), None)

    # one observation per non-blank class at or above the threshold, most likely first
    sp_probs = probs[:, species] if species else np.zeros((n, 0))
    hit = classified[:, None] & (sp_probs >= threshold)
    rows, cols = np.nonzero(hit)
    p_hit = sp_probs[rows, cols]
    order = np.lexsort((cols, -p_hit, rows))
    rows, cols, p_hit = rows[order], cols[order], p_hit[order]
    hit_cls = np.asarray([classes[species[c]] for c in cols], dtype=object)

    has_hit = hit.any(axis=1)
    rest = np.flatnonzero(classified & ~has_hit)
    p_blank = probs[rest, blank] if blank is not None else np.full(len(rest), np.nan)
    is_blank = p_blank >= threshold
    failed = np.flatnonzero(~classified)

    taxa = taxonomy.set_index("class")
    kinds = np.concatenate(
        [
            taxa["observationType"].reindex(hit_cls).to_numpy(dtype=object),
            np.where(is_blank, "blank", "unknown").astype(object),
            np.full(len(failed), "unclassified", dtype=object),
        ]
    )
    row = np.concatenate([rows, rest, failed]).astype(np.int64)
    cls = np.concatenate([hit_cls, np.full(len(rest) + len(failed), "", dtype=object)])
    prob = np.concatenate(
        [p_hit, np.where(is_blank, p_blank, np.nan), np.full(len(failed), np.nan)]
    )
    comments = np.concatenate(
        [
            np.full(len(rows), "", dtype=object),
            [
                "" if b else _unknown_comment(probs[r], classes, species, threshold)
                for r, b in zip(rest, is_blank, strict=True)
            ],
            [
                "not classified: the clip could not be decoded or analysed: "
                + (errors[r] or "no features were produced for this clip")
                for r in failed
            ],
        ]
    ).astype(object)
    n_obs = len(row)
    seq = np.arange(n_obs)
    order = np.lexsort((seq, row))  # clip order, then the order above
    row, kinds, cls, prob, comments = (a[order] for a in (row, kinds, cls, prob, comments))
    number = pd.Series(row).groupby(row).cumcount().to_numpy() + 1

    # event times: clip time + evidence span, else the whole clip
    dur = np.array([_duration(durations.get(cid)) for cid in ids], dtype=np.float64)
    start_s = np.zeros(n_obs)
    end_s = dur[row]
    animal = cls != ""
    for j in np.flatnonzero(animal):
        span = _span_of(spans, ids[row[j]], cls[j])
        if span is not None:
            start_s[j], end_s[j] = span
    base = utc.iloc[row].reset_index(drop=True)
    event_start = (base + pd.to_timedelta(start_s, unit="s")).dt.floor("s")
    event_end = (base + pd.to_timedelta(end_s, unit="s")).dt.ceil("s")
    row_offsets = offsets[row]

    machine = kinds != "unclassified"
    sci = taxa["scientificName"].reindex(cls[animal]).to_numpy(dtype=object)
    scientific = np.full(n_obs, "", dtype=object)
    scientific[animal] = sci
    media_ids = media["mediaID"].to_numpy(dtype=object)[row]
    out = pd.DataFrame("", index=range(n_obs), columns=list(OBSERVATION_FIELDS))
    out["observationID"] = [f"{m}_{k}" for m, k in zip(media_ids, number, strict=True)]
    out["deploymentID"] = media["deploymentID"].to_numpy(dtype=object)[row]
    out["mediaID"] = media_ids
    out["eventStart"] = render_times(event_start, row_offsets).to_numpy()
    out["eventEnd"] = render_times(event_end, row_offsets).to_numpy()
    out["observationLevel"] = "media"
    out["observationType"] = kinds
    out["scientificName"] = scientific
    out["classificationMethod"] = np.where(machine, "machine", "")
    out["classifiedBy"] = np.where(machine, f"jungle {jungle_version()}", "")
    out["classificationTimestamp"] = np.where(machine, stamp, "")
    out["classificationProbability"] = number_text(np.clip(prob, 0.0, 1.0))
    out["observationComments"] = comments
    return out


def _duration(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _unknown_comment(
    probs: np.ndarray, classes: list[str], species: list[int], threshold: float
) -> str:
    text = f"no class reached the threshold {threshold:g}"
    if species:
        k = max(species, key=lambda s: probs[s])
        text += f" (most likely: {classes[k]}, {probs[k]:.3f})"
    return text


def _span_of(spans: Spans | None, clip_id: str, cls: str) -> tuple[float, float] | None:
    if spans is None:
        return None
    clip = spans.get(clip_id)
    if clip is None:
        return None
    span = clip.get(cls)
    if span is None:
        return None
    first, last = float(span[0]), float(span[1])
    if not (math.isfinite(first) and math.isfinite(last)) or first > last:
        return None
    return max(first, 0.0), max(last, 0.0)
