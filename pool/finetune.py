"""``jungle finetune``: fine-tune an ImageNet backbone into a frame classifier of the species.

What it does
------------
Frames come from stage 1's frame-exact decoder (:func:`extract.decode.decode_clip`:
``frames_per_clip`` frames, the middle frame of equal segments, squashed to
``image_size``). Each frame carries its clip's labels, ``blank`` included, and the network
learns them with a multi-label binary cross-entropy. An epoch takes every training clip
once in random order or, with ``balanced``, clips drawn with replacement by class-balanced
weight (a clip weighs ``1 / count`` of its rarest class) until they carry as many frames;
either way it has as many frames as the training clips. Training runs in two phases with
AdamW, each with a linear learning-rate warm-up (``warmup_fraction`` of its steps) and a
cosine decay:

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

Frames are decoded as training goes, never all held (:mod:`pool.finetune_frames`):

* first every labelled clip is decoded once as a check, in ``workers`` processes that keep
  only its frame count; a clip that fails is logged, listed under ``failed`` in the summary
  and left out (so the check costs one pass of decoding);
* every epoch decodes its clips again in ``workers`` processes (up to two clips each ahead
  of training) and mixes their frames into batches through a shuffle buffer of
  ``shuffle_frames`` frames; held-out clips are decoded again each time they are scored;
* memory is flat in the number of clips: the buffer, a batch, the clips decoded ahead and
  per-clip labels. The summary's ``frames_in_memory`` records the most frames held at once.

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

Runs are deterministic for a seed on the CPU, with any number of ``workers`` (decoding is
deterministic, clips arrive in order, and every random draw is made in this process; the
global torch RNG is forked, so callers' random state is untouched).

The code lives in :mod:`pool.finetune_config` (settings), :mod:`pool.finetune_inputs`
(labels, folds), :mod:`pool.finetune_frames` (decoding, epochs, shuffle buffer) and
:mod:`pool.finetune_train` (augmentation, phases, scoring); this module runs them and
re-exports their public names. The command, ``finetune_command``, is defined in
:mod:`pool.cli` so that the command line is built without torch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from extract.backbones import build_backbone, reset_head, save_checkpoint
from pool.finetune_config import FinetuneConfig, FinetuneError, checkpoint_path, load_config
from pool.finetune_frames import (
    EVAL_BATCH,
    PREFETCH,
    CheckedClips,
    FrameLedger,
    FrameSource,
    ShuffleBuffer,
    check_clips,
    epoch_clips,
    eval_batches,
)
from pool.finetune_inputs import LabelledClips, fold_split, match_clips
from pool.finetune_train import (
    FrameNormaliser,
    Phase,
    held_out_scores,
    init_head,
    lr_factor,
    train_phases,
    trainable_parameters,
)
from pool.train_torch import seeded

__all__ = [
    "EVAL_BATCH",
    "CheckedClips",
    "FinetuneConfig",
    "FinetuneError",
    "FrameLedger",
    "FrameNormaliser",
    "FrameSource",
    "LabelledClips",
    "ShuffleBuffer",
    "check_clips",
    "checkpoint_path",
    "epoch_clips",
    "eval_batches",
    "finetune",
    "fold_split",
    "held_out_scores",
    "init_head",
    "load_config",
    "lr_factor",
    "match_clips",
    "trainable_parameters",
]

log = logging.getLogger(__name__)


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


def frames_in_memory(config: FinetuneConfig) -> int:
    """Most decoded frames in memory at once, whatever the number of clips: the shuffle
    buffer (allocated once: ``max(shuffle_frames, batch_size)`` plus one clip), and either a
    training batch and the clip being added, or a scoring batch of :data:`EVAL_BATCH` being
    assembled (twice while it is joined), plus the clips the decoder processes work ahead."""
    fpc = config.frames_per_clip
    buffer = max(config.shuffle_frames, config.batch_size) + fpc
    ahead = PREFETCH * config.workers * fpc
    return buffer + max(config.batch_size + fpc, 2 * EVAL_BATCH + fpc) + ahead


def finetune(config: FinetuneConfig, overwrite: bool = False, show_progress: bool = False) -> Path:
    """Fine-tune ``config.backbone`` into a frame classifier; save it for ``--checkpoint``.

    Everything (labels, clips, folds, backbone, output path) is validated before any clip
    is decoded. See the module docstring for the protocol and the outputs.

    Args:
        config: the settings.
        overwrite: replace an existing checkpoint of the same backbone and fold.
        show_progress: draw a progress bar while the clips are checked.

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
        log.info(
            "%s, %d classes: %d training clips, %d held-out clips (fold %s); %d frames per "
            "clip at %d px, decoded every epoch by %d workers: at most about %.0f MB of frames "
            "in memory",
            config.backbone,
            n_classes,
            len(train_rows),
            len(held_rows),
            "all" if config.fold is None else config.fold,
            config.frames_per_clip,
            size,
            config.workers,
            frames_in_memory(config) * size * size * 3 / 2**20,
        )
        source = FrameSource(data.clips, config.frames_per_clip, size, config.workers)
        checked = check_clips(source, np.concatenate([train_rows, held_rows]), show_progress)
        train, held = checked.subset(train_rows), checked.subset(held_rows)
        if not len(train.rows):
            raise FinetuneError("no training clip could be decoded (see the warnings above)")
        head_params = [p for p in backbone.model.parameters() if id(p) in head]
        init_head(head_params, data.targets[train.rows].mean(axis=0))
        backbone.model.to(device).to(memory_format=torch.channels_last)
        phases = [
            Phase("head", config.epochs_head, config.lr_head, head_params),
            Phase("full", config.epochs_full, config.lr_full, full),
        ]
        history = train_phases(backbone, phases, source, train, held, data.targets, config, device)
        normaliser = FrameNormaliser(backbone, device)
        held_scores = (
            held_out_scores(backbone, source, held.rows, data.targets, normaliser, data.classes)
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
        "decoded_frames": {"train": train.n_frames, "held_out": held.n_frames},
        "frames_in_memory": {
            "shuffle_buffer": max(config.shuffle_frames, config.batch_size),
            **source.ledger.as_dict(),
        },
        "failed": checked.failed,
        "history": history,
        "seconds": time.perf_counter() - started,
        **{k: v for k, v in info.items() if k != "train_ids"},
    }
    summary_path = out.with_suffix(".json")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log.info("saved %s (summary %s)", out, summary_path.name)
    return out
