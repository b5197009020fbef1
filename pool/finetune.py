"""``jungle finetune``: fine-tune an ImageNet backbone into a frame classifier of the species.

What it does
------------
Every labelled clip is decoded once through stage 1's frame-exact decoder
(:func:`extract.decode.decode_clip`: ``frames_per_clip`` frames, the middle frame of equal
segments, squashed to ``image_size``), and its frames are held in memory as uint8 (the size
is logged before decoding). Each frame carries its clip's labels, ``blank`` included, and
the network learns them with a multi-label binary cross-entropy. An epoch visits every
decoded training frame once in random order or, with ``balanced``, draws as many frames
from clips picked by a class-balanced :class:`~torch.utils.data.WeightedRandomSampler`
(a clip weighs ``1 / count`` of its rarest class). Training runs in two phases with AdamW,
each with a linear learning-rate warm-up (``warmup_fraction`` of its steps) and a cosine
decay:

1. ``epochs_head`` epochs of the new classifier head only (the trunk frozen), ``lr_head``;
   the head starts at the class prior (zero weights, bias ``logit(frequency)``);
2. ``epochs_full`` epochs of the whole network (or of the parameters from module
   ``unfreeze_from`` on, e.g. ``blocks.4``) and the head, at the lower ``lr_full``.

Batch-norm statistics stay frozen (``train_bn: true`` updates them, which needs large
batches). Augmentations, applied per frame on whole batches: horizontal flip, a small
random crop resized back (``crop_min_area``), brightness and contrast jitter
(``color_jitter``). The fine-tuned network is saved with
:func:`extract.backbones.save_checkpoint` (registry name, classes, input size,
normalisation, taps, and the training facts) for ``jungle features --checkpoint``.

Outputs (``RUN`` is ``--run``)::

    RUN/folds.csv                      with --fold: made here if absent, reused by level 1
    RUN/finetune/<backbone>_fold<K>.pt    the checkpoint of fold K (``_all.pt``: all clips)
    RUN/finetune/<backbone>_fold<K>.json  summary: per-epoch losses, held-out metrics...

Folds and honest out-of-fold predictions
----------------------------------------
A backbone fine-tuned on a clip has seen its labels, so features it makes of that clip are
better than features of an unseen clip would be. If level-1 fold K were trained and
evaluated on features of such a backbone, its out-of-fold predictions of fold K would be
too good, and every choice made from them (level-1 models, level-2 stacking, settings)
would be biased. Hence the protocol:

* ``--fold K`` fine-tunes on the training part of fold K only (the clips whose fold in
  ``folds.csv`` is not K); fold K's clips are only evaluated (reported, never used to pick
  an epoch). Run it for every K in ``0..k-1``.
* Extract one feature store per fold with its checkpoint
  (``jungle features VIDEOS --checkpoint RUN/finetune/<backbone>_foldK.pt --out ...``);
  level-1 fold K must read store K (train on the others' rows of it, predict fold K).
* Cost: k fine-tunings and k feature extractions instead of one of each.
* The cheap alternative, ``--fold`` omitted, fine-tunes on every labelled clip: its
  features leak labels into any out-of-fold prediction of those clips, so it must not be
  used for model selection or stacking (a warning says so). It suits a final model refit
  on all clips, for new clips only.

Folds come from ``--folds-csv``, else ``RUN/folds.csv`` when it exists, else they are made
here with :func:`pool.folds.make_folds` (``folds``, ``seed``, ``group_column`` /
``group_by_folder``) over the labelled clips in the order of ``--videos`` and written to
``RUN/folds.csv``. Fold ids are clip ids relative to ``--videos``, as in the feature store,
so ``--videos`` must be the same source that ``jungle features`` reads.

Runs are deterministic for a seed on the CPU (the global torch RNG is forked, so callers'
random state is untouched).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from extract.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneError,
    build_backbone,
    reset_head,
    save_checkpoint,
)
from extract.config import check_device, read_settings
from extract.console import fail, setup_logging, sigterm_as_interrupt, stderr_console
from extract.decode import decode_clip
from extract.discover import Clip, DiscoveryError, discover
from extract.probe import DecodeError, probe
from extract.progress import clip_progress
from pool.config import Level1Error
from pool.folds import make_folds, read_folds, write_folds
from pool.labels import read_labels
from pool.metrics import class_log_loss, evaluate
from pool.train_torch import seeded

log = logging.getLogger(__name__)

#: frames per forward pass when evaluating held-out clips.
EVAL_BATCH = 64


class FinetuneError(ValueError):
    """Invalid input or settings for fine-tuning; the message says what and how to fix it."""


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run. Defaults are the documented defaults."""

    model_config = ConfigDict(extra="forbid")

    videos: Path = Field(description="folder of videos or CSV manifest, as for `jungle features`")
    labels: Path = Field(description="labels CSV (pool.labels layouts)")
    run: Path = Field(description="run directory: folds.csv and finetune/ are written there")
    backbone: str = Field(DEFAULT_BACKBONE, description="registry name of the CNN")
    weights: str | None = Field(None, description="local weights file (not for the default)")
    fold: int | None = Field(
        None, ge=0, description="train on fold K's training part; None: on every labelled clip"
    )
    folds_csv: Path | None = Field(None, description="folds.csv to use; default RUN/folds.csv")
    folds: int = Field(5, ge=2, le=100, description="k when folds.csv is made here")
    group_column: str | None = Field(None, description="labels column of groups, for new folds")
    group_by_folder: bool = Field(False, description="group clips by parent folder (new folds)")
    skip_missing: bool = Field(False, description="skip label rows that match no video")
    frames_per_clip: int = Field(8, ge=1, le=512, description="frames decoded per clip")
    image_size: int | None = Field(None, ge=32, le=1024, description="default: backbone's")
    epochs_head: int = Field(2, ge=0, le=1000, description="epochs training the head only")
    epochs_full: int = Field(6, ge=0, le=1000, description="epochs training the network")
    lr_head: float = Field(1e-3, gt=0.0, le=1.0)
    lr_full: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="linear warm-up share of each phase's steps"
    )
    unfreeze_from: str | None = Field(
        None, description="train parameters from this module on (e.g. blocks.4); None: all"
    )
    train_bn: bool = Field(False, description="update batch-norm statistics while training")
    batch_size: int = Field(32, ge=1, le=4096, description="frames per training step")
    balanced: bool = Field(False, description="class-balanced sampling of clips")
    augment: bool = Field(True, description="hflip, small crops, brightness/contrast jitter")
    crop_min_area: float = Field(0.75, gt=0.0, le=1.0, description="smallest crop (area)")
    color_jitter: float = Field(0.2, ge=0.0, lt=1.0, description="brightness/contrast +-")
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads of torch")
    workers: int = Field(2, ge=0, le=64, description="decoder processes (0: in-process)")

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.epochs_head + self.epochs_full < 1:
            raise ValueError("epochs_head + epochs_full must be at least 1")
        if self.group_column is not None and self.group_by_folder:
            raise ValueError("give either group_column or group_by_folder, not both")
        return self

    def resolved(self) -> FinetuneConfig:
        """A copy with every path made absolute (against the current directory)."""
        paths = {"videos": self.videos, "labels": self.labels, "run": self.run}
        if self.folds_csv is not None:
            paths["folds_csv"] = self.folds_csv
        return self.model_copy(update={k: v.expanduser().absolute() for k, v in paths.items()})


def load_config(path: Path | None, overrides: dict[str, object]) -> FinetuneConfig:
    """Read a YAML config (optional), apply the non-None ``overrides``, validate, resolve paths.

    Raises:
        FinetuneError: unreadable YAML, unknown keys, missing or invalid values, with every
            problem listed.
    """
    return read_settings(FinetuneConfig, path, overrides, FinetuneError, "finetune").resolved()


def checkpoint_path(config: FinetuneConfig) -> Path:
    """``RUN/finetune/<backbone>_fold<K>.pt`` (``_all.pt`` without a fold)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.backbone)
    part = "all" if config.fold is None else f"fold{config.fold}"
    return config.run / "finetune" / f"{name}_{part}.pt"


# ----------------------------------------------------------------------------- inputs


@dataclass
class LabelledClips:
    """The labelled clips of a run, in the order of the video source."""

    clips: list[Clip]
    classes: list[str]
    targets: np.ndarray  #: ``(n, K)`` float32
    groups: list[str] | None


def match_clips(config: FinetuneConfig) -> LabelledClips:
    """Read the labels and find each row's clip among ``config.videos``.

    A row's ``filepath`` (relative to the CSV's folder, or absolute) is resolved and compared
    with the resolved paths of the clips; failing that, the path as written is compared with
    the clip ids (paths relative to the video source).

    Raises:
        FinetuneError: no row matches a clip, or some rows match none (unless
            ``skip_missing``), or two rows are the same clip.
        Level1Error: an invalid labels file (see :func:`pool.labels.read_labels`).
        DiscoveryError: an unusable video source.
    """
    if not config.labels.is_file():
        raise FinetuneError(f"labels file {config.labels} does not exist")
    table = read_labels(config.labels, config.group_column)
    _, clips = discover(config.videos)
    if not clips:
        raise FinetuneError(f"{config.videos}: no video files found")
    by_path = {os.path.realpath(c.path): i for i, c in enumerate(clips)}
    by_id = {c.clip_id: i for i, c in enumerate(clips)}
    base = table.source.parent
    found: list[int | None] = []
    for filepath in table.filepaths:
        hit = by_path.get(os.path.realpath(os.path.join(base, filepath)))
        if hit is None:
            rel = posixpath.normpath(filepath.replace("\\", "/")).removeprefix("./")
            hit = by_id.get(rel)
        found.append(hit)
    lost = [row for row, hit in enumerate(found) if hit is None]
    if len(lost) == len(found):
        raise FinetuneError(
            f"no row of {config.labels} matches a clip of {config.videos} (e.g. "
            f"{table.filepaths[0]!r}); label file paths are relative to the CSV's folder"
        )
    if lost:
        lines = ", ".join(f"line {r + 2} {table.filepaths[r]!r}" for r in lost[:6])
        more = f" and {len(lost) - 6} more" if len(lost) > 6 else ""
        if not config.skip_missing:
            raise FinetuneError(
                f"{len(lost)} of {len(found)} rows of {config.labels} match no clip of "
                f"{config.videos}: {lines}{more}. Fix the labels, or pass --skip-missing"
            )
        log.warning("skipping %d label rows that match no clip: %s%s", len(lost), lines, more)
    hits = pd.Series([h for h in found if h is not None])
    if hits.duplicated().any():
        dup = sorted({clips[h].clip_id for h in hits[hits.duplicated()]})
        raise FinetuneError(f"several label rows are the same clip: {dup[:6]}")
    rows = np.array([r for r, h in enumerate(found) if h is not None], dtype=np.int64)
    rows = rows[np.argsort([found[r] for r in rows], kind="stable")]  # video-source order
    chosen = [clips[int(found[r])] for r in rows]
    if config.group_by_folder:
        groups = [posixpath.dirname(c.clip_id) for c in chosen]
    elif table.groups is not None:
        groups = [table.groups[r] for r in rows]
    else:
        groups = None
    return LabelledClips(chosen, table.classes, table.targets[rows], groups)


def fold_split(config: FinetuneConfig, data: LabelledClips) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, held-out rows)`` of ``data`` for ``config.fold``.

    Without a fold every clip trains and none is held out. With one, folds are read from
    ``folds_csv`` (or ``RUN/folds.csv``), or made and written to ``RUN/folds.csv``. Clips that
    a ``folds.csv`` does not list are left out of both parts (with a warning).

    Raises:
        FinetuneError: a missing ``folds_csv``, a ``folds.csv`` about other clips, or a fold
            that does not exist.
    """
    n = len(data.clips)
    if config.fold is None:
        log.warning(
            "no --fold: fine-tuning on every labelled clip. Features of these clips made with "
            "this backbone leak their labels into level-1 out-of-fold predictions; use it for "
            "new clips only, or fine-tune per fold (--fold K) for honest OOF"
        )
        return np.arange(n), np.zeros(0, dtype=np.int64)
    path = config.folds_csv or config.run / "folds.csv"
    ids = [c.clip_id for c in data.clips]
    if path.is_file():
        try:
            table = read_folds(path)
            fold_of = table.reindex(ids).to_numpy(dtype=np.float64)
        except (OSError, KeyError, ValueError) as exc:  # unreadable, no column, duplicate ids
            raise FinetuneError(f"cannot read folds {path}: {exc}") from exc
        listed = ~np.isnan(fold_of)
        if not listed.any():
            raise FinetuneError(
                f"{path} lists none of the labelled clips of {config.videos} (its ids look like "
                f"{list(table.index[:2])}, the clips' like {ids[:2]}); pass the --videos source "
                "the feature store was extracted from"
            )
        if not listed.all():
            log.warning(
                "%d labelled clips are not in %s (e.g. %s): they are not used",
                int((~listed).sum()),
                path,
                [i for i, ok in zip(ids, listed, strict=True) if not ok][:3],
            )
        folds = np.where(listed, fold_of, -1).astype(np.int64)
        present = sorted(set(table.tolist()))
        log.info("folds from %s", path)
    elif config.folds_csv is not None:
        raise FinetuneError(f"folds file {config.folds_csv} does not exist")
    else:
        if config.fold >= config.folds:
            raise FinetuneError(f"fold {config.fold} does not exist with {config.folds} folds")
        try:
            folds = make_folds(data.targets, config.folds, config.seed, data.groups)
        except Level1Error as exc:
            raise FinetuneError(str(exc)) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        write_folds(path, ids, folds, data.groups)
        present = list(range(config.folds))
        log.info("made %d folds over %d labelled clips: %s", config.folds, n, path)
    if config.fold not in present:
        raise FinetuneError(
            f"fold {config.fold} is not in {path}, whose folds are {min(present)}-{max(present)}"
        )
    held = np.flatnonzero(folds == config.fold)
    train = np.flatnonzero((folds >= 0) & (folds != config.fold))
    if not len(train):
        raise FinetuneError(f"fold {config.fold}'s training part has no clip")
    return train, held


# ----------------------------------------------------------------------------- frames


@dataclass
class FrameBank:
    """Decoded frames of some clips, held as one uint8 tensor."""

    frames: torch.Tensor  #: ``(F, S, S, 3)`` uint8
    clip_of: torch.Tensor  #: ``(F,)`` int64 position of each frame's clip in ``rows``
    rows: np.ndarray  #: rows (of :class:`LabelledClips`) of the clips that decoded
    failed: list[dict]  #: ``{"id", "reason"}`` of the clips that did not

    @property
    def start(self) -> torch.Tensor:
        """``(C,)`` first frame of each clip."""
        counts = self.count
        return torch.cumsum(counts, 0) - counts

    @property
    def count(self) -> torch.Tensor:
        """``(C,)`` frames of each clip."""
        return torch.bincount(self.clip_of, minlength=len(self.rows))


class _DecodeDataset(Dataset):
    """Probes and decodes clip ``i`` (in a DataLoader worker when ``workers > 0``)."""

    def __init__(self, clips: Sequence[Clip], frames: int, size: int) -> None:
        self.clips, self.frames, self.size = list(clips), frames, size

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        clip = self.clips[i]
        try:
            decoded = decode_clip(clip.path, probe(clip.path), self.frames, (self.size, self.size))
        except DecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # never let one file stop the run
            return i, None, f"unexpected decoder error: {exc!r}"
        return i, decoded.frames, ""


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def decode_frames(
    clips: Sequence[Clip],
    rows: np.ndarray,
    frames_per_clip: int,
    size: int,
    workers: int,
    show_progress: bool = False,
) -> FrameBank:
    """Decode ``frames_per_clip`` frames of each clip ``rows`` at ``size`` x ``size``.

    The frames go straight into one preallocated uint8 tensor (no second copy). A clip that
    cannot be decoded is reported in :attr:`FrameBank.failed` and left out.
    """
    wanted = [clips[r] for r in rows]
    loader = DataLoader(
        _DecodeDataset(wanted, frames_per_clip, size),
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
    )
    bank = torch.empty(len(wanted) * frames_per_clip, size, size, 3, dtype=torch.uint8)
    counts: list[int] = []
    kept: list[int] = []
    failed: list[dict] = []
    filled = 0
    with clip_progress(len(wanted), enabled=show_progress, label="decoding") as advance:
        for i, frames, reason in loader:
            if frames is None:
                log.warning("%s: %s (left out)", wanted[i].path, reason)
                failed.append({"id": wanted[i].clip_id, "reason": reason})
            else:
                frames = torch.as_tensor(frames)  # distinct frames: a short clip has fewer
                bank[filled : filled + len(frames)] = frames
                filled += len(frames)
                counts.append(len(frames))
                kept.append(i)
            advance(1)
    clip_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=int))
    return FrameBank(bank[:filled], clip_of, np.asarray(rows)[kept], failed)


# ----------------------------------------------------------------------------- model


class FrameNormaliser:
    """uint8 ``(B, H, W, 3)`` frames → augmented, normalised float ``(B, 3, H, W)``.

    Normalisation is that of :meth:`extract.features.TapExtractor.preprocess`: RGB scaled to
    [0, 1], minus the backbone's mean, over its std, in channels_last memory format.
    Augmentation (when ``generator`` is given) draws per frame, vectorised over the batch:
    a horizontal flip with probability 1/2, a crop of ``crop_min_area``..1 of the area
    (aspect ratio 3/4..4/3 where it fits, at a random place) resized back to the full frame,
    and brightness and contrast factors in ``1 +- color_jitter``.
    """

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        crop_min_area: float = 0.75,
        color_jitter: float = 0.2,
    ) -> None:
        shape = (1, 3, 1, 1)
        self.device = device
        self.mean = torch.tensor(backbone.mean, device=device).view(shape) * 255.0
        self.std = torch.tensor(backbone.std, device=device).view(shape) * 255.0
        self.crop_min_area = crop_min_area
        self.color_jitter = color_jitter

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised frames; augmented with draws from ``generator`` (a CPU generator)."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if generator is not None:
            x = self.augment(x, generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flip, crop and colour-jitter float frames ``(B, 3, H, W)`` in [0, 255]."""
        b = len(x)
        u = torch.rand(b, 6, generator=generator).to(x.device)
        area = self.crop_min_area + (1.0 - self.crop_min_area) * u[:, 0]
        # aspect ratio in 3/4..4/3, narrowed so that the crop fits: area <= aspect <= 1/area
        spread = torch.clamp(-torch.log(area), max=math.log(4 / 3))
        aspect = torch.exp((2 * u[:, 1] - 1) * spread)
        sx = torch.sqrt(area * aspect)  # crop width / frame width
        sy = torch.sqrt(area / aspect)
        tx = (2 * u[:, 2] - 1) * (1 - sx)  # crop centre, in [-1, 1] coordinates
        ty = (2 * u[:, 3] - 1) * (1 - sy)
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).to(x.device)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = sx * flip
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        j = self.color_jitter
        brightness = (1 + j * (2 * u[:, 4] - 1)).view(b, 1, 1, 1)
        contrast = (1 + j * (2 * u[:, 5] - 1)).view(b, 1, 1, 1)
        grey = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - grey) * contrast + grey).mul(brightness).clamp(0.0, 255.0)


def trainable_parameters(
    model: nn.Module, head: set[int], unfreeze_from: str | None
) -> list[nn.Parameter]:
    """The parameters of the full phase: those from module ``unfreeze_from`` on (in
    registration order, which is forward order for the registry's models; all when None),
    plus the head's.

    Raises:
        FinetuneError: no parameter lives under ``unfreeze_from``.
    """
    named = list(model.named_parameters())
    if unfreeze_from is None:
        return [p for _, p in named]
    prefix = unfreeze_from.rstrip(".")
    first = next(
        (i for i, (n, _) in enumerate(named) if n == prefix or n.startswith(prefix + ".")), None
    )
    if first is None:
        top = ", ".join(n for n, _ in model.named_children())
        raise FinetuneError(
            f"unfreeze_from {unfreeze_from!r}: no parameter under that module (top-level "
            f"modules: {top})"
        )
    return [p for i, (_, p) in enumerate(named) if i >= first or id(p) in head]


def init_head(params: Sequence[nn.Parameter], prior: np.ndarray) -> None:
    """Start the new classifier at the class prior: zero weights, bias ``logit(prior)``
    (the first steps then refine the prior instead of undoing random outputs)."""
    p = torch.from_numpy(np.clip(prior, 1e-3, 1 - 1e-3).astype(np.float32))
    with torch.no_grad():
        for param in params:
            if param.ndim == 1 and len(param) == len(p):
                param.copy_(torch.logit(p))
            else:
                param.zero_()


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: a linear warm-up over the first
    ``warmup`` fraction of the steps, then a cosine decay towards zero."""
    ramp = min(1.0, (step + 1) / max(1.0, warmup * total)) if warmup > 0 else 1.0
    return ramp * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _set_mode(model: nn.Module, train_bn: bool) -> None:
    """Training mode (dropout on); batch-norm layers stay in eval mode unless ``train_bn``."""
    model.train()
    if not train_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on GPUs that support it (no loss scaling needed), else nothing."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frame_logits(
    backbone: Backbone, frames: torch.Tensor, normaliser: FrameNormaliser
) -> torch.Tensor:
    """``(F, K)`` float32 logits of uint8 frames ``(F, S, S, 3)``, in eval mode, batched."""
    backbone.model.eval()
    out = []
    with torch.inference_mode(), _autocast(normaliser.device):
        for batch in frames.split(EVAL_BATCH):
            x = normaliser(batch)
            out.append(backbone.logits(backbone.forward_features(x)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def held_out_scores(
    backbone: Backbone,
    bank: FrameBank,
    targets: np.ndarray,
    normaliser: FrameNormaliser,
    classes: list[str] | None = None,
) -> dict:
    """Scores of the frame classifier on ``bank``: ``frame_bce`` (mean over frames and
    classes, each frame against its clip's labels) and ``clip_log_loss`` (frame
    probabilities averaged per clip, mean binary log loss over classes). With ``classes``,
    every clip-level metric of :func:`pool.metrics.evaluate` is added."""
    logits = frame_logits(backbone, bank.frames, normaliser)
    y_clip = torch.from_numpy(targets[bank.rows])
    frame_bce = F.binary_cross_entropy_with_logits(logits, y_clip[bank.clip_of]).item()
    sums = torch.zeros(len(bank.rows), logits.shape[1]).index_add_(
        0, bank.clip_of, torch.sigmoid(logits)
    )
    probs = (sums / bank.count[:, None]).numpy()
    scores = {
        "frame_bce": frame_bce,
        "clip_log_loss": float(class_log_loss(y_clip.numpy(), probs).mean()),
    }
    if classes is not None:
        scores.update(evaluate(y_clip.numpy(), probs, classes))
    return scores


def epoch_order(
    bank: FrameBank, targets: np.ndarray, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """Frame indices of one epoch: every frame once in random order, or (``balanced``) as
    many draws of clips by class-balanced weight, each with a frame taken at random."""
    n = len(bank.frames)
    if not balanced:
        return torch.randperm(n, generator=generator)
    y = torch.from_numpy(targets[bank.rows]) > 0.5
    per_class = y.sum(dim=0).clamp(min=1).float()
    weight = (y.float() / per_class).amax(dim=1)  # 1 / count of the clip's rarest class
    clips = torch.tensor(
        list(WeightedRandomSampler(weight.double(), n, replacement=True, generator=generator))
    )
    offset = (torch.rand(n, generator=generator) * bank.count[clips]).long()
    return bank.start[clips] + offset


@dataclass
class _Phase:
    name: str
    epochs: int
    lr: float
    params: list[nn.Parameter]


def _train(
    backbone: Backbone,
    phases: list[_Phase],
    train: FrameBank,
    held: FrameBank | None,
    targets: np.ndarray,
    config: FinetuneConfig,
    device: torch.device,
) -> list[dict]:
    """Run the phases; return one record per epoch (train loss, held-out scores, time)."""
    model = backbone.model
    normaliser = FrameNormaliser(backbone, device, config.crop_min_area, config.color_jitter)
    generator = torch.Generator().manual_seed(config.seed)
    y_frames = torch.from_numpy(targets[train.rows])[train.clip_of]
    history: list[dict] = []
    for phase in phases:
        if not phase.epochs:
            continue
        model.requires_grad_(False)
        for p in phase.params:
            p.requires_grad_(True)
        optimiser = torch.optim.AdamW(phase.params, lr=phase.lr, weight_decay=config.weight_decay)
        steps = phase.epochs * math.ceil(len(train.frames) / config.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, partial(lr_factor, total=steps, warmup=config.warmup_fraction)
        )
        n_params = sum(p.numel() for p in phase.params)
        log.info(
            "phase %s: %d epochs, lr %.2g, %.2fM trainable parameters",
            phase.name,
            phase.epochs,
            phase.lr,
            n_params / 1e6,
        )
        for epoch in range(phase.epochs):
            started = time.perf_counter()
            _set_mode(model, config.train_bn)
            order = epoch_order(train, targets, config.balanced, generator)
            total, seen = 0.0, 0
            for idx in order.split(config.batch_size):
                x = normaliser(train.frames[idx], generator if config.augment else None)
                y = y_frames[idx].to(device)
                with _autocast(device):
                    logits = backbone.logits(backbone.forward_features(x)).float()
                loss = F.binary_cross_entropy_with_logits(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            record = {
                "phase": phase.name,
                "epoch": len(history) + 1,
                "train_loss": total / seen,
            }
            if held is not None and len(held.rows):
                record.update(
                    {
                        f"held_out_{k}": v
                        for k, v in held_out_scores(backbone, held, targets, normaliser).items()
                    }
                )
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            extra = (
                f", held-out frame BCE {record['held_out_frame_bce']:.4f}, clip log loss "
                f"{record['held_out_clip_log_loss']:.4f}"
                if "held_out_frame_bce" in record
                else ""
            )
            log.info(
                "%s epoch %d/%d: train loss %.4f%s (%.1f s)",
                phase.name,
                epoch + 1,
                phase.epochs,
                record["train_loss"],
                extra,
                record["seconds"],
            )
    model.requires_grad_(False)
    model.eval()
    return history


# ----------------------------------------------------------------------------- run


class _Threads:
    """Context manager setting torch's CPU threads, restoring the previous number."""

    def __init__(self, threads: int | None) -> None:
        self.threads, self.before = threads, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneError(f"--device {name} was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def finetune(config: FinetuneConfig, overwrite: bool = False, show_progress: bool = False) -> Path:
    """Fine-tune ``config.backbone`` into a frame classifier; save it for ``--checkpoint``.

    Everything (labels, clips, folds, backbone, output path) is validated before frames
    are decoded. See the module docstring for the protocol and the outputs.

    Args:
        config: the settings.
        overwrite: replace an existing checkpoint of the same backbone and fold.
        show_progress: draw a progress bar while decoding.

    Returns:
        The checkpoint path, ``RUN/finetune/<backbone>_fold<K>.pt`` (or ``_all.pt``); its
        summary is the ``.json`` file beside it.

    Raises:
        FinetuneError, Level1Error (labels), BackboneError, DiscoveryError: invalid input;
            the message says what to fix.
    """
    started = time.perf_counter()
    config = config.resolved()
    out = checkpoint_path(config)
    if out.exists() and not overwrite:
        raise FinetuneError(f"{out} already exists; pass --overwrite to replace it")
    device = _resolve_device(config.device)
    data = match_clips(config)
    train_rows, held_rows = fold_split(config, data)
    n_classes = len(data.classes)
    with _Threads(config.threads), seeded(config.seed, device):
        backbone = build_backbone(config.backbone, config.weights)
        before = {id(p) for p in backbone.model.parameters()}
        reset_head(backbone, n_classes)
        head = {id(p) for p in backbone.model.parameters()} - before
        full = trainable_parameters(backbone.model, head, config.unfreeze_from)
        size = config.image_size or backbone.input_size
        n_clips = len(train_rows) + len(held_rows)
        mb = n_clips * config.frames_per_clip * size * size * 3 / 2**20
        log.info(
            "%s, %d classes: %d training clips, %d held-out clips (fold %s); decoding %d frames "
            "per clip at %d px: about %.0f MB of frames in memory",
            config.backbone,
            n_classes,
            len(train_rows),
            len(held_rows),
            "all" if config.fold is None else config.fold,
            config.frames_per_clip,
            size,
            mb,
        )
        train = decode_frames(
            data.clips, train_rows, config.frames_per_clip, size, config.workers, show_progress
        )
        held = decode_frames(
            data.clips, held_rows, config.frames_per_clip, size, config.workers, show_progress
        )
        if not len(train.rows):
            raise FinetuneError("no training clip could be decoded (see the warnings above)")
        head_params = [p for p in backbone.model.parameters() if id(p) in head]
        init_head(head_params, data.targets[train.rows].mean(axis=0))
        backbone.model.to(device).to(memory_format=torch.channels_last)
        phases = [
            _Phase("head", config.epochs_head, config.lr_head, head_params),
            _Phase("full", config.epochs_full, config.lr_full, full),
        ]
        history = _train(backbone, phases, train, held, data.targets, config, device)
        normaliser = FrameNormaliser(backbone, device)
        held_scores = (
            held_out_scores(backbone, held, data.targets, normaliser, data.classes)
            if len(held.rows)
            else None
        )
    backbone.model.to("cpu")
    backbone.input_size = size
    info = {
        "fold": config.fold,
        "train_clips": len(train.rows),
        "train_ids": [data.clips[r].clip_id for r in train.rows],
        "held_out_clips": len(held.rows),
        "epochs_head": config.epochs_head,
        "epochs_full": config.epochs_full,
        "final_train_loss": history[-1]["train_loss"],
        "held_out": held_scores,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, backbone, data.classes, info)
    summary = {
        "checkpoint": str(out),
        "backbone": config.backbone,
        "classes": data.classes,
        "image_size": size,
        "frames_per_clip": config.frames_per_clip,
        "decoded_frames": {"train": len(train.frames), "held_out": len(held.frames)},
        "failed": train.failed + held.failed,
        "history": history,
        "seconds": time.perf_counter() - started,
        **{k: v for k, v in info.items() if k != "train_ids"},
    }
    summary_path = out.with_suffix(".json")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log.info("saved %s (summary %s)", out, summary_path.name)
    return out


# ----------------------------------------------------------------------------- command


def finetune_command(
    videos: Annotated[
        Path | None,
        typer.Option(help="Folder of videos or CSV manifest (the one `jungle features` reads)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Labels CSV: 'filepath,label' or 'filepath' + one 0/1 column per class."),
    ] = None,
    run: Annotated[
        Path | None, typer.Option(help="Run directory (folds.csv, finetune/ are written there).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone registry name (default: efficientnet_lite0).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local weights file for backbones other than the default.")
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option(help="Train on fold K's training part only (default: all clips, see docs)."),
    ] = None,
    folds_csv: Annotated[
        Path | None, typer.Option(help="folds.csv to use (default: RUN/folds.csv, else made).")
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="k when folds.csv is made here (default: 5).")
    ] = None,
    group_column: Annotated[
        str | None, typer.Option(help="Labels column of groups (e.g. site), for new folds.")
    ] = None,
    group_by_folder: Annotated[
        bool | None,
        typer.Option(
            "--group-by-folder/--no-group-by-folder",
            help="Group clips by parent folder, for new folds (default: no).",
        ),
    ] = None,
    skip_missing: Annotated[
        bool | None,
        typer.Option(
            "--skip-missing/--no-skip-missing",
            help="Skip label rows that match no video (default: error).",
        ),
    ] = None,
    frames_per_clip: Annotated[
        int | None, typer.Option(help="Frames decoded per clip (default: 8).")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Frame side in pixels (default: the backbone's).")
    ] = None,
    epochs_head: Annotated[
        int | None, typer.Option(help="Epochs of the head alone (default: 2).")
    ] = None,
    epochs_full: Annotated[
        int | None, typer.Option(help="Epochs of the whole network (default: 6).")
    ] = None,
    lr_head: Annotated[
        float | None, typer.Option(help="Head learning rate (default: 1e-3).")
    ] = None,
    lr_full: Annotated[
        float | None, typer.Option(help="Network learning rate (default: 1e-4).")
    ] = None,
    unfreeze_from: Annotated[
        str | None,
        typer.Option(help="Train only from this module on, e.g. blocks.4 (default: all)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Frames per step (default: 32).")] = None,
    balanced: Annotated[
        bool | None,
        typer.Option("--balanced/--no-balanced", help="Class-balanced sampling (default: no)."),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Flip, crop, brightness/contrast (default: yes)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: 0).")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default: auto).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoder processes (default: 2).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings (see configs/finetune.yaml).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing checkpoint of this backbone and fold.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while decoding.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Fine-tune a backbone into a frame classifier; save it for `jungle features --checkpoint`.

    To keep level-1 out-of-fold predictions honest, fine-tune one backbone per fold
    (--fold K) and extract one feature store per fold. Exit code 0 on success, 2 for
    invalid input or settings.
    """
    err = stderr_console()
    setup_logging(err, verbose)
    overrides = {
        "videos": str(videos) if videos is not None else None,
        "labels": str(labels) if labels is not None else None,
        "run": str(run) if run is not None else None,
        "backbone": backbone,
        "weights": weights,
        "fold": fold,
        "folds_csv": str(folds_csv) if folds_csv is not None else None,
        "folds": folds,
        "group_column": group_column,
        "group_by_folder": group_by_folder,
        "skip_missing": skip_missing,
        "frames_per_clip": frames_per_clip,
        "image_size": image_size,
        "epochs_head": epochs_head,
        "epochs_full": epochs_full,
        "lr_head": lr_head,
        "lr_full": lr_full,
        "unfreeze_from": unfreeze_from,
        "batch_size": batch_size,
        "balanced": balanced,
        "augment": augment,
        "seed": seed,
        "device": device,
        "threads": threads,
        "workers": workers,
    }
    sigterm_as_interrupt()
    try:
        cfg = load_config(config, overrides)
        out = finetune(cfg, overwrite=overwrite, show_progress=progress)
    except (FinetuneError, Level1Error, BackboneError, DiscoveryError) as exc:
        raise fail(err, str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] nothing was saved.", soft_wrap=True)
        raise typer.Exit(130) from None
    summary = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    held = summary["held_out"]
    scores = f", held-out clip log loss {held['clip_log_loss']:.4f}" if held is not None else ""
    err.print(
        f"[bold green]done[/] in {summary['seconds']:.0f} s: {out} (final train loss "
        f"{summary['final_train_loss']:.4f}{scores}); use it with `jungle features VIDEOS "
        f"--checkpoint {out} --out FEATURES.h5`",
        highlight=False,
        soft_wrap=True,
    )
