"""Meta-model building blocks: padding never leaks into a prediction; statistics are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pool.config import NetConfig
from pool.histogram import STATISTICS, clip_statistics
from pool.nets import build_net


@pytest.mark.parametrize("name", ["attention", "gru", "pool"])
def test_padding_frames_do_not_change_the_output(name: str) -> None:
    torch.manual_seed(0)
    net = build_net(name, in_dim=12, n_meta=3, n_classes=4, cfg=NetConfig(hidden=16)).eval()
    x = torch.randn(5, 10, 12)
    lengths = torch.tensor([10, 7, 3, 1, 9])
    mask = torch.arange(10)[None, :] < lengths[:, None]
    meta = torch.randn(5, 3)
    meta[0, 1] = float("nan")  # unknown metadata is allowed
    changed = x.clone()
    changed[~mask] = 1000.0 * torch.randn(int((~mask).sum()), 12)
    with torch.no_grad():
        out = net(x, mask, meta)
        out_changed = net(changed, mask, meta)
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    torch.testing.assert_close(out, out_changed)
    # real frames do matter
    real_changed = x.clone()
    real_changed[2, 0] += 5.0 * torch.randn(12)
    with torch.no_grad():
        assert not torch.allclose(net(real_changed, mask, meta)[2], out[2])


def test_clip_statistics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    n, t, k, bins = 7, 11, 3, 10
    probs = rng.random((n, t, k)).astype(np.float32)
    lengths = np.array([11, 5, 1, 2, 8, 11, 3])
    mask = np.arange(t)[None, :] < lengths[:, None]
    stats = clip_statistics(probs, mask, bins).reshape(n, k, len(STATISTICS) + bins)
    for i in range(n):
        for c in range(k):
            p = probs[i, : lengths[i], c]
            expected = [
                p.mean(),
                np.median(p),
                p.min(),
                p.max(),
                np.quantile(p, 0.1),
                np.quantile(p, 0.9),
            ]
            np.testing.assert_allclose(stats[i, c, : len(STATISTICS)], expected, rtol=1e-5)
            hist = np.histogram(p, bins=bins, range=(0.0, 1.0))[0] / lengths[i]
            np.testing.assert_allclose(stats[i, c, len(STATISTICS) :], hist, rtol=1e-6)


def test_metadata_outside_the_training_range_does_not_saturate() -> None:
    """A field constant in training (one camera resolution) reads 0 on any new value, and
    other fields are clamped: a 720-px clip after 160-px training clips stays in range."""
    from pool.data import meta_moments
    from pool.nets import META_CLAMP, InputNorm

    rng = np.random.default_rng(0)
    meta = np.column_stack([np.full(50, 160.0), rng.normal(10.0, 1.0, 50)]).astype(np.float32)
    mean, std = meta_moments(meta, np.arange(50))
    assert np.isinf(std[0]) and np.isfinite(std[1])
    norm = InputNorm(4, 2)
    norm.set_statistics(np.zeros(4), np.ones(4), mean, std)
    z = norm.meta(torch.tensor([[720.0, 10.0], [160.0, 1e6], [720.0, float("nan")]]))
    assert z[:, 0].abs().max() == 0
    assert z[0, 1].abs() < 1 and z[1, 1] == META_CLAMP and z[2, 1] == 0
