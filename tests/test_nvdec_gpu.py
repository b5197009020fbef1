"""NVDEC on a GPU (marker ``gpu``: ``make test-gpu``; ``make test`` and CI deselect them).

Needs a CUDA GPU, ``pip install "jungle[gpu]"`` (PyNvVideoCodec) and the driver's
``libnvcuvid.so.1``. Not run on the development machine of 2026-11-24 (no GPU lent): see
BENCHMARKS.md and the issue notes for what has been run where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extract.backbones import build_backbone
from extract.config import FeaturesConfig
from extract.decode import decode_clip
from extract.discover import discover
from extract.features import TapExtractor
from extract.hybrid import decode_hybrid
from extract.nvdec import NvdecDecoder, nvdec_accepts, nvdec_unavailable
from extract.pipeline import extract_features
from extract.probe import DecodeError, probe
from extract.store import FeatureStore
from tests.media import CODECS, extension, indexed_clip, read_index, truncate

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvdec() -> NvdecDecoder:
    reason = nvdec_unavailable(torch.device("cuda"))
    assert reason is None, reason  # a GPU test run on a machine without NVDEC is an error
    return NvdecDecoder(torch.device("cuda"))


def _accepted_kinds(folder: Path) -> list[str]:
    kinds = []
    for kind in CODECS:
        if nvdec_accepts(probe(indexed_clip(folder / f"{kind}.{extension(kind)}", 4, kind))):
            kinds.append(kind)
    return kinds


def test_nvdec_is_frame_exact_on_every_stream_the_gate_accepts(
    tmp_path: Path, nvdec: NvdecDecoder
) -> None:
    kinds = _accepted_kinds(tmp_path)
    assert "h264_mp4" in kinds and "hevc_mp4" in kinds
    for kind in kinds:
        n = 300 if kind == "h264_mp4_gop250" else 90
        clip = indexed_clip(tmp_path / f"long_{kind}.{extension(kind)}", n, kind)
        info = probe(clip)
        for frames, size in [(8, (320, 240)), (32, (224, 224)), (45, (64, 64)), (n + 7, (96, 96))]:
            got = nvdec.decode(clip, info, frames, size)  # (n + 7: a short clip, padded)
            assert got.frames.is_cuda and got.frames.dtype == torch.uint8
            assert got.frames.shape[1:] == (size[1], size[0], 3)
            decoded = [read_index(f) for f in got.frames.cpu().numpy()]
            assert decoded == sorted(set(got.frame_index.tolist())), (kind, frames)
            cpu = decode_clip(clip, info, frames, size)
            assert np.array_equal(got.frame_index, cpu.frame_index)
            assert np.array_equal(got.mask, cpu.mask)


def test_a_reused_nvdec_decoder_is_frame_exact(tmp_path: Path, nvdec: NvdecDecoder) -> None:
    lengths = (40, 300, 90, 12)
    clips = [indexed_clip(tmp_path / f"c{n}.mp4", n, "h264_mp4") for n in lengths]
    before = nvdec.decoders.opened
    # one thread, one stream kind: one decoder, reconfigured for each clip; the clips differ
    # in length, so a decoder still reading its last clip would sample other frames
    for clip, n in list(zip(clips, lengths, strict=True)) * 2:
        info = probe(clip)
        got = nvdec.decode(clip, info, 32, (224, 224))
        assert got.n_frames == n, clip.name
        decoded = [read_index(f) for f in got.frames.cpu().numpy()]
        assert decoded == sorted(set(got.frame_index.tolist())), clip.name
        cpu = decode_clip(clip, info, 32, (224, 224))
        assert np.array_equal(got.frame_index, cpu.frame_index), clip.name
        assert np.array_equal(got.mask, cpu.mask), clip.name
    assert nvdec.decoders.opened - before <= 1 and nvdec.decoders.reuse


def test_a_dedicated_nvdec_process_hands_over_exact_frames_on_the_gpu(tmp_path: Path) -> None:
    lengths = (40, 300, 90, 12, 64, 33)
    (tmp_path / "v").mkdir()
    for n in lengths:
        indexed_clip(tmp_path / "v" / f"c{n:03d}.mp4", n, "h264_mp4")
    clips = discover(tmp_path / "v")[1]
    items = decode_hybrid(
        clips, gpu_decode=None, frames=32, size=224, threads=2, workers=0, timeout=120,
        journal_dir=tmp_path / "parts", accepts=nvdec_accepts, process_device="cuda:0",
    )  # fmt: skip
    got = {clip.clip_id: item for clip, item in items}  # every item kept to the end
    assert sorted(got) == [c.clip_id for c in clips]
    for clip in clips:
        item = got[clip.clip_id]
        assert item["ok"] and item["meta"]["decoder"] == "nvdec", item
        frames = item["frames"]
        assert frames.is_cuda and frames.dtype == torch.uint8  # copied into this process
        decoded = [read_index(f) for f in frames[item["rows"]].cpu().numpy()]
        assert decoded == list(item["frame_index"]), clip.clip_id
        cpu = decode_clip(clip.path, probe(clip.path), 32, (224, 224))
        assert np.array_equal(item["frame_index"], cpu.frame_index), clip.clip_id


def test_nvdec_on_a_cut_off_clip_fails_or_returns_the_requested_frames(
    tmp_path: Path, nvdec: NvdecDecoder
) -> None:
    whole = indexed_clip(tmp_path / "whole.mp4", 150, "h264_mp4_faststart")
    cut = truncate(whole, tmp_path / "cut.mp4", 0.6)
    info = probe(cut)
    if not nvdec_accepts(info):
        return  # the CPU decodes it (and marks it partial)
    try:
        got = nvdec.decode(cut, info, 32, (320, 240))
    except DecodeError:
        return  # the hybrid scheduler then decodes it on the CPU
    decoded = [read_index(f) for f in got.frames.cpu().numpy()]
    assert decoded == sorted(set(got.frame_index.tolist()))  # never other frames


def test_nvdec_and_cpu_features_agree_on_the_real_clips(
    shared_data: Path, nvdec: NvdecDecoder
) -> None:
    backbone = build_backbone("efficientnet_lite0", None, None)
    extractor = TapExtractor(backbone, torch.device("cuda"))
    clips = sorted((shared_data / "chimpandsee").glob("*.mp4"))
    assert clips
    for clip in clips:
        info = probe(clip)
        assert nvdec_accepts(info), info
        gpu = nvdec.decode(clip, info, 32, (224, 224))
        cpu = decode_clip(clip, info, 32, (224, 224))
        a = extractor(gpu.frames, with_logits=True)
        b = extractor(torch.from_numpy(cpu.frames), with_logits=True)
        for tap in backbone.taps:
            cosine = torch.nn.functional.cosine_similarity(a[tap], b[tap], dim=1)
            assert cosine.min().item() >= 0.99, (clip.name, tap, cosine.min().item())
        top_a = set(a["logits"].mean(0).topk(5).indices.tolist())
        top_b = set(b["logits"].mean(0).topk(5).indices.tolist())
        assert top_a == top_b, clip.name


@pytest.mark.parametrize("host", ["thread", "process"])
def test_features_with_nvdec_record_the_decoder_and_float16(
    tmp_path: Path, clip_folder: Path, host: str
) -> None:
    config = FeaturesConfig(
        frames=8, image_size=64, device="cuda", decoder="nvdec", nvdec_host=host
    )
    summary = extract_features(clip_folder, tmp_path / "f.h5", config, show_progress=False)
    assert summary.ok == 5
    meta = FeatureStore(tmp_path / "f.h5").meta()
    assert meta.loc["site A/cam 1/clip one.mp4", "decoder"] == "nvdec"
    assert meta.loc["Taï/éléphant.mp4", "decoder"] == "nvdec"
    assert meta.loc["site A/b.AVI", "decoder"] == "pyav"  # refused by the gate
    assert (meta["precision"] == "float16").all()


def test_ray_engine_decodes_with_nvdec_in_its_gpu_actor(tmp_path: Path, clip_folder: Path) -> None:
    pytest.importorskip("ray", reason='the Ray engine needs pip install "jungle[ray]"')
    config = FeaturesConfig(
        frames=8, image_size=64, device="cuda", decoder="nvdec", engine="ray", workers=1
    )
    summary = extract_features(clip_folder, tmp_path / "ray.h5", config, show_progress=False)
    local = config.model_copy(update={"engine": "local"})
    extract_features(clip_folder, tmp_path / "local.h5", local, show_progress=False)
    assert summary.ok == 5
    a, b = FeatureStore(tmp_path / "local.h5"), FeatureStore(tmp_path / "ray.h5")
    assert b.meta().loc["site A/cam 1/clip one.mp4", "decoder"] == "nvdec"
    assert b.meta().loc["site A/b.AVI", "decoder"] == "pyav"
    rows = [a.ids.index(i) for i in b.ids]
    real = torch.from_numpy(b.mask())  # (clips, frames): padding slots are all zeros
    np.testing.assert_array_equal(a.mask()[rows], b.mask())
    fa = torch.from_numpy(a.features(rows=rows).astype("float32"))[real]
    fb = torch.from_numpy(b.features().astype("float32"))[real]
    assert torch.nn.functional.cosine_similarity(fa, fb, dim=-1).min().item() >= 0.99
