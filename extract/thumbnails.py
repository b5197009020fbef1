"""Clip thumbnails saved while stage 1 has the frames: one small JPEG per clip, the frame
with the most evidence.

Re-decoding a survey's clips for a report would take hours, so ``jungle predict`` writes a
thumbnail of each clip as its features are made. Which frame: the one an *evidence*
function scores highest among the clip's real frames (``jungle predict`` gives the run's
attention model, :func:`pool.frames.frame_evidence`); without one, the middle real frame.
The frame is the decoded one (squashed to the CNN's square input) stretched back to the
clip's aspect ratio, :data:`THUMB_WIDTH` pixels wide.

Files: ``FOLDER/ab/<sha1 of the clip id>.jpg`` (``ab`` = the first two hex digits, so no
folder holds more than 1/256 of a survey), written through a temporary file and a rename;
a clip extracted again (changed file, retried failure) gets its thumbnail rewritten.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: width in pixels of a thumbnail (height from the clip's aspect ratio).
THUMB_WIDTH = 192
#: JPEG quality of a thumbnail.
THUMB_QUALITY = 80

#: ``(features: layer -> (n, T, C) float16, mask: (n, T) bool, meta: n dicts) -> (n, T)``
#: scores per frame slot; the highest real slot of each clip is its thumbnail.
Evidence = Callable[[dict[str, np.ndarray], np.ndarray, Sequence[dict]], np.ndarray]


def thumbnail_path(folder: Path | str, clip_id: str) -> Path:
    """Where the thumbnail of ``clip_id`` is (or would be) in ``folder``."""
    digest = hashlib.sha1(clip_id.encode("utf-8")).hexdigest()
    return Path(folder) / digest[:2] / f"{digest}.jpg"


@dataclass
class ClipFrames:
    """What the thumbnail of one finished clip is made from."""

    clip_id: str
    frames: np.ndarray  #: ``(U, H, W, 3)`` uint8, the distinct decoded frames (or a tensor)
    rows: np.ndarray  #: ``(T,)`` slot → row of ``frames``
    mask: np.ndarray  #: ``(T,)`` True on real slots
    features: dict[str, np.ndarray]  #: layer → ``(T, C)`` float16
    meta: dict  #: the clip's metadata (``width``, ``height``)


class Thumbnailer:
    """Writes the thumbnails of finished clips into ``folder`` (see the module doc)."""

    def __init__(
        self, folder: Path | str, evidence: Evidence | None = None, width: int = THUMB_WIDTH
    ) -> None:
        self.folder = Path(folder)
        self.evidence = evidence
        self.width = width

    def write(self, clips: Sequence[ClipFrames]) -> None:
        """Write one thumbnail per clip of ``clips`` (:meth:`render`, then :meth:`save`).
        Failures are logged, never raised: a missing thumbnail must not cost a clip its
        features."""
        for clip_id, jpeg in self.render(clips).items():
            self.save(clip_id, jpeg)

    def render(self, clips: Sequence[ClipFrames]) -> dict[str, bytes]:
        """Clip id → the JPEG of its thumbnail (no file written: the Ray engine renders on
        the CNN's node and the run's process saves). An evidence function that fails falls
        back to the middle frames; a frame that cannot be encoded is logged and left out."""
        if not clips:
            return {}
        try:
            slots = self.best_slots(clips)
        except Exception as exc:  # noqa: BLE001 (a thumbnail must never cost a clip)
            log.warning("thumbnail evidence failed (%s): using the middle frames", exc)
            slots = _middle_slots(np.stack([np.asarray(c.mask, dtype=bool) for c in clips]))
        out: dict[str, bytes] = {}
        for clip, slot in zip(clips, slots, strict=True):
            frame = clip.frames[int(clip.rows[slot])]
            if hasattr(frame, "cpu"):  # a torch tensor (frames decoded on the GPU)
                frame = frame.cpu().numpy()
            try:
                out[clip.clip_id] = encode_thumbnail(frame, _aspect(clip.meta), self.width)
            except (OSError, ValueError) as exc:
                log.warning("%s: thumbnail not made (%s)", clip.clip_id, exc)
        return out

    def save(self, clip_id: str, jpeg: bytes) -> None:
        """Write a rendered thumbnail into the folder (temporary file + rename); a file that
        cannot be written is logged and skipped."""
        path = thumbnail_path(self.folder, clip_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("%s: thumbnail not written (%s)", clip_id, exc)

    def best_slots(self, clips: Sequence[ClipFrames]) -> np.ndarray:
        """The slot of each clip's thumbnail: highest evidence among real slots, or the
        middle real slot without an evidence function."""
        masks = np.stack([np.asarray(c.mask, dtype=bool) for c in clips])
        if self.evidence is None:
            return _middle_slots(masks)
        layers = list(clips[0].features)
        features = {k: np.stack([c.features[k] for c in clips]) for k in layers}
        scores = np.asarray(self.evidence(features, masks, [c.meta for c in clips]), dtype=float)
        scores = np.where(masks, scores, -np.inf)
        return np.argmax(scores, axis=1)


def encode_thumbnail(frame: np.ndarray, aspect: float, width: int = THUMB_WIDTH) -> bytes:
    """``frame`` (``(H, W, 3)`` uint8 RGB) as a JPEG ``width`` pixels wide with ``aspect``
    (width / height).

    Raises:
        OSError, ValueError: the frame cannot be encoded.
    """
    height = max(1, round(width / aspect))
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB")
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return buffer.getvalue()


def _middle_slots(masks: np.ndarray) -> np.ndarray:
    """The middle real slot of each row of ``(n, T)`` masks (real slots are a prefix)."""
    return (masks.sum(axis=1) - 1) // 2


def _aspect(meta: dict) -> float:
    """Width / height of the clip (1 when unknown)."""
    try:
        w, h = float(meta.get("width") or 0), float(meta.get("height") or 0)
    except (TypeError, ValueError):
        return 1.0
    return w / h if w > 0 and h > 0 else 1.0
