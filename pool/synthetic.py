"""Synthetic feature stores with known labels, for tests and the level-1 benchmark.

Each clip has ``frames`` frame vectors: a site background plus per-frame noise. In a clip
with a species, that species' prototype (a random direction of length ``amplitude``) is
added to a short run of 2-4 consecutive real frames only, so models that find the right
frames (attention, frame-level statistics) beat mean pooling. Some clips hold two species,
some are short (padded cyclically at the end and masked, like real extraction), some are
blank. Stores are written through :mod:`extract.store` as shards, then assembled.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from extract.assemble import assemble
from extract.store import ClipFeatures, Failure, ShardBuffer, write_shard
from pool.labels import BLANK

SPECIES: tuple[str, ...] = ("chimpanzee", "duiker", "elephant", "hog", "leopard", "monkey")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate (defaults: a small store for tests)."""

    clips: int = 400
    frames: int = 24
    layers: tuple[tuple[str, int], ...] = (("blocks.4", 16), ("features", 48))
    species: tuple[str, ...] = SPECIES
    sites: int = 6
    visible: tuple[int, int] = (2, 4)  #: range of frames showing a species (inclusive)
    amplitude: float = 4.0  #: length of a species prototype, in units of the frame noise
    blank_fraction: float = 0.25
    pair_fraction: float = 0.1  #: clips with two species
    short_fraction: float = 0.15  #: clips with fewer real frames than slots
    failed: int = 0  #: clips listed as failed at extraction
    seed: int = 0


def _labels(spec: SyntheticSpec, rng: np.random.Generator) -> list[list[int]]:
    """Species indices per clip (empty for blank); frequencies fall off as 1/(rank+1)."""
    weights = 1.0 / np.arange(1, len(spec.species) + 1)
    weights /= weights.sum()
    out = []
    for _ in range(spec.clips):
        u = rng.random()
        if u < spec.blank_fraction:
            out.append([])
        elif u < spec.blank_fraction + spec.pair_fraction:
            out.append(sorted(rng.choice(len(spec.species), 2, replace=False, p=weights).tolist()))
        else:
            out.append([int(rng.choice(len(spec.species), p=weights))])
    return out


def _features(
    spec: SyntheticSpec,
    labels: Sequence[list[int]],
    site: np.ndarray,
    rng: np.random.Generator,
    backgrounds: np.ndarray,
    prototypes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, T, C)`` float16 features and ``(n, T)`` mask of one batch of clips."""
    n, t = len(labels), spec.frames
    c = prototypes.shape[1]
    x = rng.standard_normal((n, t, c), dtype=np.float32) + backgrounds[site][:, None, :]
    lengths = np.full(n, t)
    short = rng.random(n) < spec.short_fraction
    lengths[short] = rng.integers(max(spec.visible[1] + 1, t // 3), t, size=int(short.sum()))
    for i, species in enumerate(labels):
        for s in species:
            run = int(rng.integers(spec.visible[0], spec.visible[1] + 1))
            start = int(rng.integers(0, lengths[i] - run + 1))
            x[i, start : start + run] += prototypes[s]
    slots = np.arange(t)
    mask = slots[None, :] < lengths[:, None]
    source = slots[None, :] % lengths[:, None]  # cyclic padding, as extraction does
    x = np.take_along_axis(x, source[:, :, None], axis=1)
    return x.astype(np.float16), mask


def write_synthetic_store(
    path: Path, spec: SyntheticSpec, root: Path | None = None, shard_clips: int = 1000
) -> pd.DataFrame:
    """Write a feature store of ``spec.clips`` synthetic clips at ``path``.

    Clip ids are ``site{s}/clip_{i:05d}.mp4`` and paths ``root/<id>`` (``root`` defaults to
    ``path.parent / "videos"``; no video file is created).

    Returns:
        The labels, columns ``filepath`` (the id), ``label`` (``blank``, a species or two
        joined by ``;``) and ``site``; failed clips are included (they have labels too).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent / "videos"
    rng = np.random.default_rng(spec.seed)
    dims = sum(width for _, width in spec.layers)
    backgrounds = rng.normal(0.0, 1.0, (spec.sites, dims)).astype(np.float32)
    directions = rng.standard_normal((len(spec.species), dims)).astype(np.float32)
    prototypes = spec.amplitude * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    labels = _labels(spec, rng)
    site = rng.integers(0, spec.sites, size=spec.clips)
    ids = [f"site{site[i]}/clip_{i:05d}.mp4" for i in range(spec.clips)]
    failed = set(rng.choice(spec.clips, size=spec.failed, replace=False).tolist())
    layer_names = [name for name, _ in spec.layers]
    attrs = {
        "extraction": {
            "backbone": "synthetic",
            "layers": layer_names,
            "frames": spec.frames,
            "image_size": 224,
            "pooling": "avg",
        }
    }
    parts = path.with_name(path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    shards = []
    try:
        for begin in range(0, spec.clips, shard_clips):
            chunk = range(begin, min(begin + shard_clips, spec.clips))
            x, mask = _features(
                spec, [labels[i] for i in chunk], site[list(chunk)], rng, backgrounds, prototypes
            )
            buffer = ShardBuffer()
            for j, i in enumerate(chunk):
                if i in failed:
                    buffer.failed.append(Failure(ids[i], "synthetic decode error"))
                    continue
                buffer.ok.append(_clip(ids[i], root, x[j], mask[j], layer_names, spec, rng))
            shard = parts / f"shard_{begin // shard_clips:05d}.h5"
            write_shard(shard, buffer, layer_names, attrs)
            shards.append(shard)
        assemble(path, shards, attrs)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    names = [";".join(spec.species[s] for s in species) if species else BLANK for species in labels]
    return pd.DataFrame({"filepath": ids, "label": names, "site": [f"site{s}" for s in site]})


def _clip(
    cid: str,
    root: Path,
    x: np.ndarray,
    mask: np.ndarray,
    layers: Sequence[str],
    spec: SyntheticSpec,
    rng: np.random.Generator,
) -> ClipFeatures:
    widths = np.cumsum([0] + [w for _, w in spec.layers])
    fps = float(rng.choice([15.0, 30.0]))
    frame_count = int(mask.sum()) * 15
    width, height = (1280, 720) if rng.random() < 0.5 else (640, 360)
    meta = {
        "file_size": int(rng.integers(1_000_000, 20_000_000)),
        "width": width,
        "height": height,
        "fps": fps,
        "frame_count": frame_count,
        "duration": frame_count / fps,
        "bitrate": int(rng.integers(500_000, 8_000_000)),
        "codec": "h264",
        "container": "mp4",
        "decoder": "synthetic",
        "partial": False,
    }
    return ClipFeatures(
        clip_id=cid,
        path=str(root / cid),
        meta=meta,
        frame_index=np.arange(len(mask), dtype=np.int32),
        mask=mask,
        features={name: x[:, widths[k] : widths[k + 1]] for k, name in enumerate(layers)},
    )
