"""Run a backbone over frames and pool the tapped activations (skip connections)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from extract.backbones import FEATURES_TAP, Backbone


class TapExtractor:
    """Pooled activations of a backbone's tapped modules for batches of uint8 frames.

    Frames go in as ``(B, H, W, 3)`` uint8 (any device); out comes ``{tap: (B, C)}`` in
    float32, pooled by ``pooling``: ``avg`` (global average), ``max`` (global max) or
    ``avgmax`` (both, concatenated: ``2C`` channels). On CUDA the network runs under float16
    autocast; on the CPU in float32, or bfloat16 autocast when ``precision="bfloat16"``
    (several times faster on CPUs with AMX, slightly different numbers). ``tta="hflip"``
    averages every output over the frames and their horizontal mirror images (twice the
    CNN work, same shapes).
    """

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        pooling: str = "avg",
        precision: str = "float32",
        tta: str = "none",
    ) -> None:
        if pooling not in ("avg", "max", "avgmax"):
            raise ValueError(f"pooling must be avg, max or avgmax, not {pooling!r}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16, not {precision!r}")
        if tta not in ("none", "hflip"):
            raise ValueError(f"tta must be none or hflip, not {tta!r}")
        self.precision = precision
        self.tta = tta
        self.backbone = backbone
        self.device = device
        self.pooling = pooling
        self.model = backbone.model.to(device).to(memory_format=torch.channels_last)
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(backbone.mean, device=device).view(shape) * 255.0
        self._std = torch.tensor(backbone.std, device=device).view(shape) * 255.0
        self._modules = dict(self.model.named_modules())

    @property
    def compute_precision(self) -> str:
        """The arithmetic the CNN really runs in: ``float16`` (autocast) on CUDA, else the
        ``precision`` setting (recorded per clip as ``meta/precision``)."""
        return "float16" if self.device.type == "cuda" else self.precision

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` RGB → normalised float ``(B, 3, H, W)``, channels_last."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, with_logits: bool = False) -> dict[str, torch.Tensor]:
        """Pooled features per tap (and ImageNet ``logits`` when asked). With
        ``tta="hflip"`` each output is the mean over the frames and their mirror images."""
        x = self.preprocess(frames)
        out = self._forward(x, with_logits)
        if self.tta == "hflip":
            flipped = self._forward(x.flip(-1), with_logits)
            out = {k: (v + flipped[k]) / 2 for k, v in out.items()}
        return out

    def _forward(self, x: torch.Tensor, with_logits: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.device.type == "cuda":
            autocast = torch.autocast("cuda", dtype=torch.float16)
        elif self.precision == "bfloat16":
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            autocast = contextlib.nullcontext()
        with autocast, self._hooks(out):
            final = self.backbone.forward_features(x)
            out[FEATURES_TAP] = self._pool(final)
            if with_logits:
                out["logits"] = self.backbone.logits(final).float()
        return out

    def _pool(self, act: torch.Tensor) -> torch.Tensor:
        if act.ndim == 3:  # token sequences (B, N, C) of transformer backbones
            act = act.transpose(1, 2).unsqueeze(-1)
        act = act.float()
        if self.pooling == "avg":
            return act.mean(dim=(2, 3))
        if self.pooling == "max":
            return act.amax(dim=(2, 3))
        return torch.cat([act.mean(dim=(2, 3)), act.amax(dim=(2, 3))], dim=1)

    @contextlib.contextmanager
    def _hooks(self, out: dict[str, torch.Tensor]) -> Iterator[None]:
        handles = []
        for tap in self.backbone.taps:
            if tap == FEATURES_TAP:
                continue

            def hook(_m: nn.Module, _i: object, output: torch.Tensor, tap: str = tap) -> None:
                out[tap] = self._pool(output)

            handles.append(self._modules[tap].register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
