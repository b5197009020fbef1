"""Every documented backbone builds offline (random weights) with its documented taps."""

from __future__ import annotations

import pytest
import torch

from extract.backbones import build_backbone
from extract.features import TapExtractor

#: name -> (input size, {tap: channels}); the same table is in the README.
ZOO: dict[str, tuple[int, dict[str, int]]] = {
    "efficientnet_lite0": (
        224,
        {"blocks.2": 40, "blocks.4": 112, "blocks.6": 320, "features": 1280},
    ),
    "resnet50": (224, {"layer1": 256, "layer2": 512, "layer3": 1024, "features": 2048}),
    "inception_resnet_v2": (
        299,
        {"conv2d_4a": 192, "repeat": 320, "repeat_1": 1088, "features": 1536},
    ),
    "efficientnet_b3": (288, {"blocks.2": 48, "blocks.4": 136, "blocks.6": 384, "features": 1536}),
    "seresnext50_32x4d": (224, {"layer1": 256, "layer2": 512, "layer3": 1024, "features": 2048}),
    "convnext_tiny": (224, {"stages.0": 96, "stages.1": 192, "stages.2": 384, "features": 768}),
    "pretrainedmodels:inceptionresnetv2": (
        299,
        {"mixed_5b": 320, "mixed_6a": 1088, "mixed_7a": 2080, "features": 1536},
    ),
    "pretrainedmodels:inceptionv4": (
        299,
        {"features.5": 384, "features.9": 384, "features.17": 1024, "features": 1536},
    ),
    "pretrainedmodels:nasnetalarge": (
        331,
        {"cell_5": 1008, "cell_11": 2016, "cell_15": 4032, "features": 4032},
    ),
    "pretrainedmodels:se_resnext50_32x4d": (
        224,
        {"layer1": 256, "layer2": 512, "layer3": 1024, "features": 2048},
    ),
    "pretrainedmodels:resnet152": (
        224,
        {"layer1": 256, "layer2": 512, "layer3": 1024, "features": 2048},
    ),
    "torchvision:resnet50": (224, {"layer1": 256, "layer2": 512, "layer3": 1024, "features": 2048}),
    "torchvision:efficientnet_b0": (
        224,
        {"features.3": 40, "features.5": 112, "features.7": 320, "features": 1280},
    ),
    "torchvision:convnext_tiny": (
        224,
        {"features.1": 96, "features.3": 192, "features.5": 384, "features": 768},
    ),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_entry_builds_offline_with_documented_taps(name: str) -> None:
    size, taps = ZOO[name]
    weights = None if name == "efficientnet_lite0" else "random"
    backbone = build_backbone(name, weights=weights)
    assert backbone.input_size == size
    assert list(backbone.taps) == list(taps)
    side = 128 if size > 224 else 64  # inception-style nets need room for valid padding
    frames = torch.randint(0, 256, (2, side, side, 3), dtype=torch.uint8)
    out = TapExtractor(backbone, torch.device("cpu"))(frames)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c) for k, c in taps.items()}
    assert all(torch.isfinite(v).all() for v in out.values())
