"""Torch meta-models over the frames of a clip: ``attention``, ``gru`` and ``pool``.

Every net takes ``x`` ``(B, T, C)`` float features, ``mask`` ``(B, T)`` bool (True on real
frames, a prefix of each row) and ``meta`` ``(B, M)`` raw metadata, and returns ``(B, K)``
logits (one sigmoid per class). Inputs are standardised inside the net with statistics of
the fold's training part (buffers, so a checkpoint is self-contained).
"""

from __future__ import annotations

import torch
from torch import nn

from pool.config import NetConfig

#: width of the metadata branch.
META_WIDTH = 16
#: standardised metadata is clamped to [-META_CLAMP, META_CLAMP].
META_CLAMP = 5.0


class InputNorm(nn.Module):
    """Fixed standardisation of frame features and metadata (NaN metadata becomes 0)."""

    def __init__(self, in_dim: int, n_meta: int) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.register_buffer("m_mean", torch.zeros(n_meta))
        self.register_buffer("m_std", torch.ones(n_meta))

    def set_statistics(
        self, x_mean: torch.Tensor, x_std: torch.Tensor, m_mean: torch.Tensor, m_std: torch.Tensor
    ) -> None:
        """Copy the training-part statistics into the buffers."""
        for name, value in zip(
            ("x_mean", "x_std", "m_mean", "m_std"), (x_mean, x_std, m_mean, m_std), strict=True
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def meta(self, meta: torch.Tensor) -> torch.Tensor:
        """Standardised metadata, clamped to +-:data:`META_CLAMP` (values far outside the
        training range, e.g. another camera's file sizes, must not saturate the net)."""
        z = torch.nan_to_num((meta - self.m_mean) / self.m_std, nan=0.0)
        return z.clamp(-META_CLAMP, META_CLAMP)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``(B, T)`` scores over the real frames only (padding gets weight 0)."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)


def masked_range(e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max minus min over real frames of ``(B, T, D)`` → ``(B, D)``."""
    m = mask.unsqueeze(-1)
    high = e.masked_fill(~m, float("-inf")).amax(dim=1)
    low = e.masked_fill(~m, float("inf")).amin(dim=1)
    return high - low


def masked_mean(e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real frames of ``(B, T, D)`` → ``(B, D)``."""
    m = mask.unsqueeze(-1).to(e.dtype)
    return (e * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real frames of ``(B, T, D)`` → ``(B, D)``."""
    return e.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


class _MetaNet(nn.Module):
    """Shared parts: input standardisation, optional metadata branch, MLP head."""

    def __init__(self, in_dim: int, n_meta: int, n_classes: int, cfg: NetConfig) -> None:
        super().__init__()
        self.norm = InputNorm(in_dim, n_meta)
        use_meta = cfg.use_meta and n_meta > 0
        self.meta_branch = (
            nn.Sequential(nn.Linear(n_meta, META_WIDTH), nn.ReLU()) if use_meta else None
        )
        self.meta_width = META_WIDTH if use_meta else 0

    @staticmethod
    def head(in_width: int, cfg: NetConfig, n_classes: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(in_width, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, n_classes),
        )

    def set_prior(self, prior: torch.Tensor) -> None:
        """Start from the class-prior baseline: output biases = log-odds of ``prior``."""
        p = torch.as_tensor(prior, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            self.classify[-1].bias.copy_(torch.log(p) - torch.log1p(-p))

    def with_meta(self, parts: list[torch.Tensor], meta: torch.Tensor) -> torch.Tensor:
        if self.meta_branch is not None:
            parts.append(self.meta_branch(self.norm.meta(meta)))
        return torch.cat(parts, dim=1)


class AttentionNet(_MetaNet):
    """Per-frame LayerNorm and embedding, attention over real frames (softmax, weighted sum),
    concatenated with max−min of the embeddings over frames and the metadata branch."""

    def __init__(self, in_dim: int, n_meta: int, n_classes: int, cfg: NetConfig) -> None:
        super().__init__(in_dim, n_meta, n_classes, cfg)
        h = cfg.hidden
        self.embed = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.score = nn.Sequential(nn.Linear(h, h // 2), nn.Tanh(), nn.Linear(h // 2, 1))
        self.classify = self.head(2 * h + self.meta_width, cfg, n_classes)

    def attention(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` attention weights of embedded frames ``e``: 0 on padding, summing to
        1 over each clip's real frames."""
        return masked_softmax(self.score(e).squeeze(-1), mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        e = self.embed(self.norm.frames(x))
        weights = self.attention(e, mask)
        attended = (weights.unsqueeze(-1) * e).sum(dim=1)
        return self.classify(self.with_meta([attended, masked_range(e, mask)], meta))


class GRUNet(_MetaNet):
    """Per-frame LayerNorm and embedding, bidirectional GRU over the real frames, attention-
    weighted average of its outputs, max−min of the embeddings, metadata branch."""

    def __init__(self, in_dim: int, n_meta: int, n_classes: int, cfg: NetConfig) -> None:
        super().__init__(in_dim, n_meta, n_classes, cfg)
        h = cfg.hidden
        self.embed = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.gru = nn.GRU(h, h // 2, batch_first=True, bidirectional=True)
        width = 2 * (h // 2)
        self.score = nn.Sequential(nn.Linear(width, h // 2), nn.Tanh(), nn.Linear(h // 2, 1))
        self.classify = self.head(width + h + self.meta_width, cfg, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        e = self.embed(self.norm.frames(x))
        lengths = mask.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            e, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        weights = masked_softmax(self.score(out).squeeze(-1), mask)
        attended = (weights.unsqueeze(-1) * out).sum(dim=1)
        return self.classify(self.with_meta([attended, masked_range(e, mask)], meta))


class PoolNet(_MetaNet):
    """Per-frame LayerNorm of the standardised features, then their mean and max over real
    frames → MLP (the baseline)."""

    def __init__(self, in_dim: int, n_meta: int, n_classes: int, cfg: NetConfig) -> None:
        super().__init__(in_dim, n_meta, n_classes, cfg)
        self.frame_norm = nn.LayerNorm(in_dim)
        self.classify = self.head(2 * in_dim + self.meta_width, cfg, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        z = self.frame_norm(self.norm.frames(x))
        return self.classify(self.with_meta([masked_mean(z, mask), masked_max(z, mask)], meta))


NETS: dict[str, type[_MetaNet]] = {"attention": AttentionNet, "gru": GRUNet, "pool": PoolNet}


def build_net(name: str, in_dim: int, n_meta: int, n_classes: int, cfg: NetConfig) -> _MetaNet:
    """A fresh net ``name`` (``attention``, ``gru`` or ``pool``) for the given sizes."""
    return NETS[name](in_dim, n_meta, n_classes, cfg)
