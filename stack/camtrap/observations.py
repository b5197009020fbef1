"""The observations table of a Camtrap DP package (``observations.csv``): the observations
of each clip from its class probabilities (:func:`observations_table`), media-level for a
video, event-level for a sequence of photos."""

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
    clips: pd.DataFrame,
    durations: Mapping[str, float],
    spans: Spans | None,
    threshold: float,
    stamp: str,
) -> pd.DataFrame:
    """``observations.csv``: the observations of each clip of ``predictions`` (see
    :mod:`stack.camtrap` for the rules), in clip order, numbered per clip.

    Args:
        predictions: the predictions table (``filepath``, a column per class, ``status``,
            ``error``), one row per row of ``clips``.
        classes: the class columns (``blank`` is the no-animal class).
        taxonomy: :func:`~stack.camtrap.inputs.read_taxonomy`.
        clips: per clip: ``mediaID`` (a video's; ``""`` for a sequence), ``eventID`` (a
            sequence's; ``""`` for a video), ``deploymentID``, ``start`` (UTC: a video's
            time, a sequence's first photo's), ``end`` (UTC: a sequence's last photo's;
            unused for a video) and ``offset_min`` (its deployment's UTC offset).
        durations: clip id -> seconds (video events of unknown length end where they start).
        spans: clip id -> class -> evidence span, or None (whole-clip events); unused for
            sequences, whose events run from their first photo to their last.
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
    sequence = (clips["eventID"] != "").to_numpy(dtype=bool)

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
                f"not classified: the {'sequence' if sequence[r] else 'clip'} could not be "
                "decoded or analysed: " + (errors[r] or "no features were produced for this clip")
                for r in failed
            ],
        ]
    ).astype(object)
    n_obs = len(row)
    seq = np.arange(n_obs)
    order = np.lexsort((seq, row))  # clip order, then the order above
    row, kinds, cls, prob, comments = (a[order] for a in (row, kinds, cls, prob, comments))
    number = pd.Series(row).groupby(row).cumcount().to_numpy() + 1

    # event times: a video's time + evidence span, else the whole clip; a sequence's first
    # to last photo
    dur = np.array([_duration(durations.get(cid)) for cid in ids], dtype=np.float64)
    start_s = np.zeros(n_obs)
    end_s = dur[row]
    animal = cls != ""
    for j in np.flatnonzero(animal):
        span = _span_of(spans, ids[row[j]], cls[j])
        if span is not None:
            start_s[j], end_s[j] = span
    base = clips["start"].iloc[row].reset_index(drop=True)
    event_start = (base + pd.to_timedelta(start_s, unit="s")).dt.floor("s")
    event_end = (base + pd.to_timedelta(end_s, unit="s")).dt.ceil("s")
    event = pd.Series(sequence[row])
    if event.any():
        event_start = event_start.mask(event, base.dt.floor("s"))
        event_end = event_end.mask(
            event, clips["end"].iloc[row].reset_index(drop=True).dt.ceil("s")
        )
    row_offsets = clips["offset_min"].to_numpy(dtype=np.int64)[row]

    machine = kinds != "unclassified"
    sci = taxa["scientificName"].reindex(cls[animal]).to_numpy(dtype=object)
    scientific = np.full(n_obs, "", dtype=object)
    scientific[animal] = sci
    media_ids = clips["mediaID"].to_numpy(dtype=object)[row]
    event_ids = clips["eventID"].to_numpy(dtype=object)[row]
    keys = np.where(event.to_numpy(dtype=bool), event_ids, media_ids)
    out = pd.DataFrame("", index=range(n_obs), columns=list(OBSERVATION_FIELDS))
    out["observationID"] = [f"{m}_{k}" for m, k in zip(keys, number, strict=True)]
    out["deploymentID"] = clips["deploymentID"].to_numpy(dtype=object)[row]
    out["mediaID"] = media_ids
    out["eventID"] = event_ids
    out["eventStart"] = render_times(event_start, row_offsets).to_numpy()
    out["eventEnd"] = render_times(event_end, row_offsets).to_numpy()
    out["observationLevel"] = np.where(event.to_numpy(dtype=bool), "event", "media")
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
