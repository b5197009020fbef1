"""Training and prediction of the torch meta-models for one fold.

Early stopping watches the loss on an *inner* validation part carved out of the fold's
training part; the held-out fold is only ever predicted. Features are read through the
block's :class:`~pool.data.FeatureReader`: training batches in the order of
:class:`~pool.data.BlockShuffle`, predictions :data:`PREDICT_BATCH` clips at a time, so the
same code runs on features held in memory or streamed from the stores. Runs are
deterministic for a seed on the CPU (the global torch RNG is forked, so callers' random
state is untouched); on CUDA, cuDNN's GRU kernels may differ in the last bits between runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pool.config import NetConfig
from pool.data import (
    BlockShuffle,
    FeatureBlock,
    frame_moments,
    meta_moments,
    sequential,
    shuffled_batches,
)
from pool.nets import AttentionNet, build_net

log = logging.getLogger(__name__)

#: clips per forward pass when predicting.
PREDICT_BATCH = 256


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's RNGs seeded to ``seed``, restoring them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def to_tensors(
    x: np.ndarray, block: FeatureBlock, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 features ``x`` (of clips ``rows``), their bool ``mask`` and ``meta`` on
    ``device``."""
    x_t = torch.from_numpy(x).to(device).float()
    mask = torch.from_numpy(block.mask[rows]).to(device)
    meta = torch.from_numpy(block.meta[rows]).to(device)
    return x_t, mask, meta


@dataclass
class NetModel:
    """A trained torch meta-model of one fold, with what is needed to rebuild it."""

    name: str
    net: torch.nn.Module
    config: NetConfig
    sizes: dict[str, int]  #: in_dim, n_meta, n_classes
    info: dict[str, float] = field(default_factory=dict)  #: best_epoch, epochs, val_loss, seconds

    @torch.no_grad()
    def predict(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), K)`` float32 probabilities for clips ``rows`` (default all)."""
        rows = np.arange(len(block)) if rows is None else np.asarray(rows)
        self.net.eval()
        device = next(self.net.parameters()).device
        out = np.empty((len(rows), self.sizes["n_classes"]), dtype=np.float32)
        for pos, x in sequential(block.features, rows, PREDICT_BATCH):
            logits = self.net(*to_tensors(x, block, rows[pos], device))
            out[pos] = torch.sigmoid(logits).cpu().numpy()
        return out

    @torch.no_grad()
    def frame_attention(self, block: FeatureBlock, rows: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), T)`` float32 attention weights of an ``attention`` model (0 on
        padding, summing to 1 over each clip's real frames).

        Raises:
            ValueError: the model has no attention (``gru``, ``pool``).
        """
        if not isinstance(self.net, AttentionNet):
            raise ValueError(f"the {self.name} model has no per-frame attention")
        rows = np.arange(len(block)) if rows is None else np.asarray(rows)
        self.net.eval()
        device = next(self.net.parameters()).device
        out = np.empty((len(rows), block.mask.shape[1]), dtype=np.float32)
        for pos, x in sequential(block.features, rows, PREDICT_BATCH):
            x_t, mask, _ = to_tensors(x, block, rows[pos], device)
            embedded = self.net.embed(self.net.norm.frames(x_t))
            out[pos] = self.net.attention(embedded, mask).cpu().numpy()
        return out

    def checkpoint(self) -> dict:
        """A dict for ``torch.save`` (loadable with ``weights_only=True``)."""
        return {
            "kind": "net",
            "model": self.name,
            "config": self.config.model_dump(),
            "sizes": dict(self.sizes),
            "info": dict(self.info),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device) -> NetModel:
        """Rebuild a model saved by :meth:`checkpoint`."""
        config = NetConfig(**ckpt["config"])
        sizes = ckpt["sizes"]
        net = build_net(ckpt["model"], sizes["in_dim"], sizes["n_meta"], sizes["n_classes"], config)
        net.load_state_dict(ckpt["state_dict"])
        return cls(ckpt["model"], net.to(device).eval(), config, sizes, ckpt["info"])


def bce(probs: np.ndarray, targets: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy over clips and classes."""
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))


def fit_net(
    name: str,
    cfg: NetConfig,
    block: FeatureBlock,
    targets: np.ndarray,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    seed: int,
    device: torch.device,
    shuffle: BlockShuffle | None = None,
) -> NetModel:
    """Train net ``name`` on ``fit_rows``, keeping the epoch with the lowest loss on ``val_rows``.

    Standardisation statistics come from ``fit_rows`` and ``val_rows`` (the fold's training
    part). Training stops after ``cfg.patience`` epochs without improvement. Each epoch's
    batches follow ``shuffle`` (default :class:`~pool.data.BlockShuffle`'s defaults).
    """
    start = time.perf_counter()
    shuffle = shuffle or BlockShuffle()
    train_rows = np.sort(np.concatenate([fit_rows, val_rows]))
    fit_rows = np.sort(fit_rows)
    x_mean, x_std = frame_moments(block.features, block.mask, train_rows)
    m_mean, m_std = meta_moments(block.meta, train_rows)
    sizes = {
        "in_dim": block.dims,
        "n_meta": block.meta.shape[1],
        "n_classes": targets.shape[1],
    }
    rng = np.random.default_rng(seed)
    with seeded(seed, device):
        net = build_net(name, sizes["in_dim"], sizes["n_meta"], sizes["n_classes"], cfg)
        net.norm.set_statistics(*map(torch.from_numpy, (x_mean, x_std, m_mean, m_std)))
        net.set_prior(torch.from_numpy(targets[fit_rows].mean(axis=0)))
        net.to(device)
        model = NetModel(name, net, cfg, sizes)
        optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        y_all = torch.from_numpy(targets.astype(np.float32))
        best_loss, best_epoch, best_state, waited = math.inf, -1, None, 0
        epoch = 0
        for epoch in range(cfg.epochs):
            net.train()
            windows = shuffle.epoch(fit_rows, rng, block.features.clip_bytes)
            for rows, x in shuffled_batches(block.features, windows, cfg.batch_size):
                logits = net(*to_tensors(x, block, rows, device))
                loss = F.binary_cross_entropy_with_logits(logits, y_all[rows].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                optimiser.step()
            val_loss = bce(model.predict(block, val_rows), targets[val_rows])
            log.debug("%s epoch %d: inner validation loss %.4f", name, epoch + 1, val_loss)
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
        net.load_state_dict(best_state)
    net.eval()
    model.info = {
        "best_epoch": best_epoch + 1,
        "epochs": epoch + 1,
        "val_loss": best_loss,
        "seconds": time.perf_counter() - start,
    }
    return model
