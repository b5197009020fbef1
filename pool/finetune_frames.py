"""Frames for ``jungle finetune``, decoded as training goes instead of held in memory.

Every pass over clips (the up-front check, each training epoch, each held-out scoring)
decodes its clips again through stage 1's frame-exact decoder
(:func:`extract.workers.decode_media`: ``frames_per_clip`` frames, the middle frame of equal
segments, squashed to ``size`` x ``size``), in ``workers`` DataLoader processes (0: in this
process) that deliver the clips in order. What one pass holds at once, whatever the number
of clips:

* up to ``2 * workers`` clips decoded ahead (the DataLoader's ``prefetch_factor`` of 2);
* training: a shuffle buffer of ``max(shuffle_frames, batch_size)`` frames (plus one
  clip's) from which batches are drawn at random, and the current batch;
* scoring: one batch of :data:`EVAL_BATCH` frames (plus one clip's).

Per-clip arrays (labels, frame counts) are the only things that grow with the clips.
:class:`FrameLedger` counts the decoded frames this process holds, for the run summary and
the tests.

Decoding is deterministic and the workers return clips in order, and every random draw
(epoch order, shuffle buffer) comes from the caller's generator in this process, so a seed
gives the same batches with any number of workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from extract.discover import Clip
from extract.probe import DecodeError
from extract.progress import clip_progress
from extract.workers import decode_media

log = logging.getLogger(__name__)

#: frames per forward pass when scoring held-out clips.
EVAL_BATCH = 64
#: clips each decoder process works ahead (DataLoader ``prefetch_factor``).
PREFETCH = 2


@dataclass
class FrameLedger:
    """Counts of decoded frames in this process: ``held`` now (received from the decoder and
    not yet released: the clip just received, frames in the shuffle buffer or waiting for a
    scoring batch, the batch being used; a clip being copied into the buffer or a batch
    counts twice) and its ``peak``; ``clips`` decoded (checks included) and ``frames``
    received. Training holds at most ``capacity + 2 * frames_per_clip`` of them (see
    :class:`ShuffleBuffer`), scoring ``batch_size - 1 + 2 * frames_per_clip``."""

    held: int = 0
    peak: int = 0
    clips: int = 0
    frames: int = 0

    def hold(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def release(self, n: int) -> None:
        self.held -= n

    def as_dict(self) -> dict[str, int]:
        """``peak_held``, ``decoded_clips`` and ``received_frames``, for the run summary."""
        return {"peak_held": self.peak, "decoded_clips": self.clips, "received_frames": self.frames}


class Decoded(NamedTuple):
    """One clip of a pass: its ``position`` in the rows asked for, its ``frames``
    ``(U, S, S, 3)`` uint8 (None when not kept or failed), ``count`` of distinct frames
    (0 on failure) and the failure ``reason`` ("" when it decoded)."""

    position: int
    frames: torch.Tensor | None
    count: int
    reason: str


class _DecodeDataset(Dataset):
    """Probes and decodes clip ``i`` (in a DataLoader worker when ``workers > 0``); without
    ``keep`` only the frame count leaves the worker."""

    def __init__(self, clips: Sequence[Clip], frames: int, size: int, keep: bool) -> None:
        self.clips, self.frames, self.size, self.keep = list(clips), frames, size, keep

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, str]:
        clip = self.clips[i]
        try:
            decoded, _ = decode_media(clip, self.frames, self.size)
        except DecodeError as exc:
            return i, None, 0, str(exc)
        except Exception as exc:  # never let one file stop the run
            return i, None, 0, f"unexpected decoder error: {exc!r}"
        frames = decoded.frames  # distinct frames: a short clip has fewer
        return i, (frames if self.keep else None), len(frames), ""


def _worker_init(_: int) -> None:
    """Decoder processes: one thread each and a lower CPU priority, so that they fill the
    gaps of the training process's threads instead of preempting them (as in stage 1)."""
    torch.set_num_threads(1)
    os.nice(10)


@dataclass
class FrameSource:
    """How the frames of ``clips`` (indexed by row) are decoded, and the ledger of a run."""

    clips: Sequence[Clip]
    frames_per_clip: int
    size: int
    workers: int = 0
    ledger: FrameLedger = field(default_factory=FrameLedger)

    def decode(self, rows: Sequence[int] | np.ndarray, keep: bool = True) -> Iterator[Decoded]:
        """Decode clips ``rows`` in this order (``workers`` processes, results in order).

        With ``keep`` an item's frames count as held by the ledger until the next item is
        asked for (the consumer copies or releases them by then).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        loader = DataLoader(
            _DecodeDataset([self.clips[r] for r in rows], self.frames_per_clip, self.size, keep),
            batch_size=None,
            num_workers=self.workers,
            prefetch_factor=PREFETCH if self.workers else None,
            worker_init_fn=_worker_init if self.workers else None,
            generator=torch.Generator().manual_seed(0),  # the global RNG stays untouched
        )
        for i, frames, count, reason in loader:
            self.ledger.clips += 1
            held = len(frames) if frames is not None else 0
            self.ledger.frames += held
            self.ledger.hold(held)
            try:
                yield Decoded(int(i), frames, int(count), reason)
            finally:
                self.ledger.release(held)


@dataclass
class CheckedClips:
    """Clips that decoded in the up-front check: their ``rows`` (of the labelled clips) and
    ``counts`` of distinct frames; ``failed`` lists ``{"id", "reason"}`` of the others."""

    rows: np.ndarray
    counts: np.ndarray
    failed: list[dict]

    @property
    def n_frames(self) -> int:
        """Frames of one pass over the clips."""
        return int(self.counts.sum())

    def subset(self, rows: np.ndarray) -> CheckedClips:
        """The clips among ``rows`` that decoded (``failed`` stays with the whole check)."""
        keep = np.isin(self.rows, rows)
        return CheckedClips(self.rows[keep], self.counts[keep], [])


def check_clips(source: FrameSource, rows: np.ndarray, show_progress: bool = False) -> CheckedClips:
    """Decode every clip ``rows`` once, keeping only its frame count (the frames are dropped
    in the decoder process). A clip that cannot be decoded is logged, listed in
    :attr:`CheckedClips.failed` and left out of the run."""
    rows = np.asarray(rows, dtype=np.int64)
    kept: list[int] = []
    counts: list[int] = []
    failed: list[dict] = []
    with clip_progress(len(rows), enabled=show_progress, label="checking clips") as advance:
        for item in source.decode(rows, keep=False):
            clip = source.clips[rows[item.position]]
            if item.reason:
                log.warning("%s: %s (left out)", clip.path, item.reason)
                failed.append({"id": clip.clip_id, "reason": item.reason})
            else:
                kept.append(item.position)
                counts.append(item.count)
            advance(1)
    return CheckedClips(rows[kept], np.asarray(counts, dtype=np.int64), failed)


def epoch_clips(
    targets: np.ndarray, counts: np.ndarray, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """Clips (positions in ``targets``/``counts``) of one epoch, in the order they are
    decoded: every clip once in random order or (``balanced``) clips drawn with replacement
    by class-balanced weight (``1 / count`` of the clip's rarest class) until they carry as
    many frames as one pass over every clip."""
    n = len(counts)
    if not balanced:
        return torch.randperm(n, generator=generator)
    y = torch.from_numpy(targets) > 0.5
    per_class = y.sum(dim=0).clamp(min=1).float()
    weight = (y.float() / per_class).amax(dim=1)  # 1 / count of the clip's rarest class
    frames = torch.from_numpy(np.asarray(counts, dtype=np.int64))
    budget = int(frames.sum())
    if not budget:
        return torch.zeros(0, dtype=torch.int64)
    drawn: list[torch.Tensor] = []
    carried = 0
    while carried < budget:
        draw = torch.multinomial(weight.double(), n, replacement=True, generator=generator)
        drawn.append(draw)
        carried += int(frames[draw].sum())
    order = torch.cat(drawn)
    enough = int(torch.searchsorted(torch.cumsum(frames[order], 0), budget)) + 1
    return order[:enough]


class ShuffleBuffer:
    """Mixes the frames of consecutive clips into training batches.

    Clips' frames go into a preallocated uint8 buffer of ``capacity`` (at least
    ``batch_size``) plus one clip's frames; whenever it holds ``capacity`` frames a batch of
    ``batch_size`` is drawn from it at random (the holes are filled from its end), and at
    the end of the epoch the rest is drawn. A frame is drawn with probability
    ``batch_size / capacity`` at each step, so a clip's frames are spread over about
    ``capacity / batch_size`` steps and a batch mixes frames of up to
    ``capacity / frames_per_clip`` clips. Every frame of the epoch's clips is drawn once.
    """

    def __init__(self, source: FrameSource, capacity: int, batch_size: int) -> None:
        self.source = source
        self.batch_size = batch_size
        self.capacity = max(capacity, batch_size)
        s = source.size
        n = self.capacity + source.frames_per_clip
        self.frames = torch.empty(n, s, s, 3, dtype=torch.uint8)
        self.clip_of = torch.empty(n, dtype=torch.int64)
        self.fill = 0

    def epoch(
        self, rows: np.ndarray, order: torch.Tensor, budget: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(frames (B, S, S, 3) uint8, positions (B,))`` of one epoch: the clips
        ``rows[order]`` decoded in that order, ``budget`` frames in all (fewer only if a clip
        fails now). ``positions`` index ``rows``. A batch counts as held by the ledger until
        the next one is asked for."""
        ledger = self.source.ledger
        remaining = budget
        self.fill = 0
        order_np = order.numpy()
        try:
            for item in self.source.decode(rows[order_np]):
                if item.frames is None:
                    clip = self.source.clips[rows[order_np[item.position]]]
                    log.warning("%s: %s (skipped in this epoch)", clip.path, item.reason)
                    continue
                k = len(item.frames)
                self.frames[self.fill : self.fill + k] = item.frames
                self.clip_of[self.fill : self.fill + k] = int(order_np[item.position])
                self.fill += k
                ledger.hold(k)
                while self.fill >= self.capacity and remaining > 0:
                    take = min(self.batch_size, remaining)
                    remaining -= take
                    yield from self._draw(take, generator)
                if remaining <= 0:
                    break
            while self.fill and remaining > 0:
                take = min(self.batch_size, self.fill, remaining)
                remaining -= take
                yield from self._draw(take, generator)
        finally:
            ledger.release(self.fill)
            self.fill = 0

    def _draw(
        self, k: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Take ``k`` frames at random out of the buffer, yield them as one batch."""
        fill = self.fill
        pick = torch.randperm(fill, generator=generator)[:k]
        batch = self.frames[pick], self.clip_of[pick]  # copies
        left = torch.ones(fill, dtype=torch.bool)
        left[pick] = False
        movers = torch.arange(fill - k, fill)[left[fill - k :]]  # kept frames at the end
        holes = pick[pick < fill - k]  # taken frames before the end
        self.frames[holes] = self.frames[movers]
        self.clip_of[holes] = self.clip_of[movers]
        self.fill = fill - k
        try:
            yield batch
        finally:
            self.source.ledger.release(k)


def eval_batches(
    source: FrameSource, rows: np.ndarray, batch_size: int = EVAL_BATCH
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(frames (B, S, S, 3) uint8, positions (B,))`` of the frames of clips
    ``rows`` in order (``batch_size`` frames each, across clip boundaries; the last one
    shorter). ``positions`` index ``rows``. A clip that fails now is logged and skipped."""
    ledger = source.ledger
    frames: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    pending = 0
    try:
        for item in source.decode(rows):
            if item.frames is None:
                clip = source.clips[rows[item.position]]
                log.warning("%s: %s (not scored)", clip.path, item.reason)
                continue
            frames.append(item.frames)
            positions.append(torch.full((len(item.frames),), item.position, dtype=torch.int64))
            pending += len(item.frames)
            ledger.hold(len(item.frames))
            while pending >= batch_size:
                x, p = torch.cat(frames), torch.cat(positions)
                frames, positions = [x[batch_size:]], [p[batch_size:]]
                pending -= batch_size
                try:
                    yield x[:batch_size], p[:batch_size]
                finally:
                    ledger.release(batch_size)
        if pending:
            x, p = torch.cat(frames), torch.cat(positions)
            frames, positions = [], []
            pending, last = 0, len(x)
            try:
                yield x, p
            finally:
                ledger.release(last)
    finally:
        ledger.release(pending)
