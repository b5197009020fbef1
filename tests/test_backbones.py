"""Backbones: real ImageNet weights and preprocessing, skip taps, local weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extract.backbones import BackboneError, build_backbone
from extract.decode import decode_clip
from extract.features import TapExtractor
from extract.probe import probe

ELEPHANT_CLASSES = {101, 385, 386}  # tusker, Indian elephant, African elephant
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0():  # noqa: ANN201
    return build_backbone()


def test_default_backbone_sees_the_elephant(lite0, shared_data: Path) -> None:  # noqa: ANN001
    clip = shared_data / "chimpandsee" / "ChimpAndSee_ACP000f9bt_exampleK.mp4"
    decoded = decode_clip(clip, probe(clip), 32, (lite0.input_size, lite0.input_size))
    out = TapExtractor(lite0, CPU)(torch.from_numpy(decoded.frames), with_logits=True)
    top5 = out["logits"].softmax(dim=1).mean(dim=0).topk(5).indices.tolist()
    assert ELEPHANT_CLASSES & set(top5), top5


def test_blank_clip_is_not_an_elephant(lite0, shared_data: Path) -> None:  # noqa: ANN001
    clip = shared_data / "chimpandsee" / "ChimpAndSee_ACP000fkyz_exampleA.mp4"  # blank
    decoded = decode_clip(clip, probe(clip), 32, (224, 224))
    out = TapExtractor(lite0, CPU)(torch.from_numpy(decoded.frames), with_logits=True)
    top5 = out["logits"].softmax(dim=1).mean(dim=0).topk(5).indices.tolist()
    assert not ELEPHANT_CLASSES & set(top5)


def test_default_taps_and_pooling(lite0) -> None:  # noqa: ANN001
    assert lite0.taps == ("blocks.2", "blocks.4", "blocks.6", "features")
    frames = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8)
    avg = TapExtractor(lite0, CPU, "avg")(frames)
    assert {k: tuple(v.shape) for k, v in avg.items()} == {
        "blocks.2": (3, 40),
        "blocks.4": (3, 112),
        "blocks.6": (3, 320),
        "features": (3, 1280),
    }
    both = TapExtractor(lite0, CPU, "avgmax")(frames)
    assert both["features"].shape == (3, 2560)
    torch.testing.assert_close(both["features"][:, :1280], avg["features"])
    assert torch.all(both["features"][:, 1280:] >= avg["features"] - 1e-5)  # max >= mean


def test_timm_model_from_local_weights_file(tmp_path: Path) -> None:
    import timm

    reference = timm.create_model("resnet18", pretrained=False).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    backbone = build_backbone("resnet18", weights=weights)
    assert backbone.taps == ("layer1", "layer2", "layer3", "features")
    assert backbone.weights_sha256 and backbone.input_size == 224
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    extractor = TapExtractor(backbone, CPU)
    out = extractor(frames)
    with torch.inference_mode():
        expected = reference.forward_features(extractor.preprocess(frames)).mean(dim=(2, 3))
    torch.testing.assert_close(out["features"], expected)  # the file's weights were loaded
    assert out["layer3"].shape == (2, 256)


def test_pretrainedmodels_architecture_from_local_weights_file(tmp_path: Path) -> None:
    model = build_backbone("pretrainedmodels:resnet18", weights="random").model
    weights = tmp_path / "pm_resnet18.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    backbone = build_backbone("pretrainedmodels:resnet18", weights=weights)
    out = TapExtractor(backbone, CPU)(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert {k: v.shape[1] for k, v in out.items()} == {
        "layer1": 64,
        "layer2": 128,
        "layer3": 256,
        "features": 512,
    }


def test_backbone_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="needs --weights"):
        build_backbone("resnet18")
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("no_such_net", weights="random")
    with pytest.raises(BackboneError, match="does not exist"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(BackboneError, match="does not fit"):
        build_backbone("resnet18", weights=wrong)
    with pytest.raises(BackboneError, match="no module named nope"):
        build_backbone(taps=["blocks.2", "nope"])


def test_hflip_tta_changes_features_keeps_shapes_and_is_flip_invariant(lite0) -> None:  # noqa: ANN001
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    plain = TapExtractor(lite0, CPU)(frames)
    tta = TapExtractor(lite0, CPU, tta="hflip")
    both = tta(frames)
    assert {k: v.shape for k, v in both.items()} == {k: v.shape for k, v in plain.items()}
    assert not torch.allclose(both["features"], plain["features"])
    mirrored = tta(frames.flip(2))  # the same pair of views: the same features
    for k in both:
        torch.testing.assert_close(mirrored[k], both[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["efficientnet_lite0", "pretrainedmodels:resnet18", "torchvision:resnet18"]
)
def test_finetuned_checkpoint_round_trips(tmp_path: Path, name: str) -> None:
    from extract.backbones import reset_head, save_checkpoint

    weights = None if name == "efficientnet_lite0" else "random"
    tuned = build_backbone(name, weights=weights)
    reset_head(tuned, 3)
    with torch.no_grad():  # stand-in for training: move every weight
        for p in tuned.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned.model.eval()
    ckpt = tmp_path / "tuned.pt"
    save_checkpoint(ckpt, tuned, ["a", "b", "c"], {"fold": 0})
    loaded = build_backbone(checkpoint=ckpt)
    assert loaded.taps == tuned.taps and loaded.weights == f"checkpoint:{ckpt.absolute()}"
    assert len(loaded.weights_sha256) == 64
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    a = TapExtractor(tuned, CPU)(frames, with_logits=True)
    b = TapExtractor(loaded, CPU)(frames, with_logits=True)
    assert a["logits"].shape == (2, 3)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pt"
    torch.save({"a": 1}, bogus)
    with pytest.raises(BackboneError, match="not a jungle fine-tuned checkpoint"):
        build_backbone(checkpoint=bogus)
