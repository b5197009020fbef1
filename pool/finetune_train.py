"""The training loop of ``jungle finetune``: augmentation and normalisation of frame
batches, the trainable parameters of each phase, the learning-rate schedule, the phases
themselves, and held-out scoring; frames come from :mod:`pool.finetune_frames`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract.backbones import Backbone
from pool.finetune_config import FinetuneConfig, FinetuneError
from pool.finetune_frames import (
    EVAL_BATCH,
    CheckedClips,
    FrameSource,
    ShuffleBuffer,
    epoch_clips,
    eval_batches,
)
from pool.metrics import class_log_loss, evaluate

log = logging.getLogger(__name__)


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


def held_out_scores(
    backbone: Backbone,
    source: FrameSource,
    rows: np.ndarray,
    targets: np.ndarray,
    normaliser: FrameNormaliser,
    classes: list[str] | None = None,
    batch_size: int = EVAL_BATCH,
) -> dict:
    """Scores of the frame classifier on clips ``rows``, decoded as they are scored
    (``batch_size`` frames per forward pass):
    ``frame_bce`` (mean over frames and classes, each frame against its clip's labels) and
    ``clip_log_loss`` (frame probabilities averaged per clip, mean binary log loss over
    classes). With ``classes``, every clip-level metric of :func:`pool.metrics.evaluate` is
    added. Only per-clip sums are kept; a clip that fails to decode now is left out."""
    rows = np.asarray(rows, dtype=np.int64)
    y_clip = torch.from_numpy(targets[rows])
    sums = torch.zeros(len(rows), y_clip.shape[1], dtype=torch.float64)
    count = torch.zeros(len(rows), dtype=torch.int64)
    bce = 0.0
    backbone.model.eval()
    for frames, positions in eval_batches(source, rows, batch_size):
        with torch.inference_mode(), _autocast(normaliser.device):
            x = normaliser(frames)
            logits = backbone.logits(backbone.forward_features(x)).float().cpu()
        y = y_clip[positions]
        bce += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        sums.index_add_(0, positions, torch.sigmoid(logits).double())
        count += torch.bincount(positions, minlength=len(rows))
    scored = count > 0
    if not scored.any():
        raise FinetuneError("no held-out clip could be decoded for scoring")
    probs = (sums[scored] / count[scored, None]).float().numpy()
    truth = y_clip[scored].numpy()
    scores = {
        "frame_bce": bce / (int(count.sum()) * y_clip.shape[1]),
        "clip_log_loss": float(class_log_loss(truth, probs).mean()),
    }
    if classes is not None:
        scores.update(evaluate(truth, probs, classes))
    return scores


@dataclass
class Phase:
    """One training phase: its ``name``, ``epochs``, learning rate and parameters."""

    name: str
    epochs: int
    lr: float
    params: list[nn.Parameter]


def train_phases(
    backbone: Backbone,
    phases: list[Phase],
    source: FrameSource,
    train: CheckedClips,
    held: CheckedClips,
    targets: np.ndarray,
    config: FinetuneConfig,
    device: torch.device,
) -> list[dict]:
    """Run the phases; return one record per epoch (train loss, held-out scores, time).

    An epoch decodes its clips (:func:`pool.finetune_frames.epoch_clips`) through a
    :class:`~pool.finetune_frames.ShuffleBuffer` of ``shuffle_frames``; it has as many
    frames as one pass over the training clips, hence ``ceil(frames / batch_size)`` steps.
    """
    model = backbone.model
    normaliser = FrameNormaliser(backbone, device, config.crop_min_area, config.color_jitter)
    generator = torch.Generator().manual_seed(config.seed)
    y_train = torch.from_numpy(targets[train.rows])
    buffer = ShuffleBuffer(source, config.shuffle_frames, config.batch_size)
    n_frames = train.n_frames
    history: list[dict] = []
    for phase in phases:
        if not phase.epochs:
            continue
        model.requires_grad_(False)
        for p in phase.params:
            p.requires_grad_(True)
        optimiser = torch.optim.AdamW(phase.params, lr=phase.lr, weight_decay=config.weight_decay)
        steps = phase.epochs * math.ceil(n_frames / config.batch_size)
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
            order = epoch_clips(y_train.numpy(), train.counts, config.balanced, generator)
            total, seen = 0.0, 0
            for frames, positions in buffer.epoch(train.rows, order, n_frames, generator):
                x = normaliser(frames, generator if config.augment else None)
                y = y_train[positions].to(device)
                with _autocast(device):
                    logits = backbone.logits(backbone.forward_features(x)).float()
                loss = F.binary_cross_entropy_with_logits(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(positions)
                seen += len(positions)
            if not seen:
                raise FinetuneError("no training clip could be decoded in this epoch")
            record = {
                "phase": phase.name,
                "epoch": len(history) + 1,
                "train_loss": total / seen,
            }
            if len(held.rows):
                scores = held_out_scores(backbone, source, held.rows, targets, normaliser)
                record.update({f"held_out_{k}": v for k, v in scores.items()})
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
