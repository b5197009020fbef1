"""Frame sampling is frame-exact on every codec; short, cut-off and real clips."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import pytest

from extract.decode import decode_clip, sample_indices, uses_random_access
from extract.probe import probe
from tests.media import CODECS, extension, indexed_clip, read_index, truncate

N_SOURCE = 150


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("indexed")
    return {k: indexed_clip(root / f"{k}.{extension(k)}", N_SOURCE, k) for k in CODECS}


def _shown(decoded) -> list[int]:  # noqa: ANN001 - DecodedClip
    return [read_index(decoded.frames[row]) for row in decoded.slot_rows]


def test_sample_indices_even_and_strictly_increasing() -> None:
    for n, t in [(360, 32), (45, 45), (1000, 45), (33, 32)]:
        index, mask = sample_indices(n, t)
        assert mask.all() and len(index) == t
        assert np.all(np.diff(index) > 0) and index[0] >= 0 and index[-1] < n
        gaps = np.diff(index)
        assert gaps.max() - gaps.min() <= 1  # evenly spaced over the whole clip
        assert index[0] <= n / t and index[-1] >= n - n / t - 1


def test_sample_indices_short_clip_padded_by_repetition() -> None:
    index, mask = sample_indices(5, 12)
    assert index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert mask.tolist() == [True] * 5 + [False] * 7


@pytest.mark.parametrize("kind", list(CODECS))
@pytest.mark.parametrize("n_frames", [32, 45])
def test_every_returned_frame_is_the_requested_index(
    clips: dict[str, Path], kind: str, n_frames: int
) -> None:
    info = probe(clips[kind])
    decoded = decode_clip(clips[kind], info, n_frames, (224, 224))
    expected, _ = sample_indices(N_SOURCE, n_frames)
    assert decoded.frame_index.tolist() == expected.tolist()
    assert _shown(decoded) == expected.tolist()
    assert decoded.frames.shape == (n_frames, 224, 224, 3) and decoded.frames.dtype == np.uint8
    assert decoded.mask.all() and not decoded.partial and decoded.n_frames == N_SOURCE


def test_streams_decord_seeks_wrongly_in_are_decoded_sequentially(
    clips: dict[str, Path],
) -> None:
    # decord's own random access really is wrong on these two (the reason for the rule) ...
    for kind in ("mpeg4_bframes_avi", "wmv2_asf"):
        reader = decord.VideoReader(str(clips[kind]))
        wanted = sample_indices(len(reader), 32)[0].tolist()
        got = [read_index(f) for f in reader.get_batch(wanted).asnumpy()]
        assert got != wanted
        assert not uses_random_access(probe(clips[kind]))
        assert decode_clip(clips[kind], probe(clips[kind]), 32, (64, 64)).decoder == "pyav"
    # ... and exact on these, which keep decord's faster random access.
    for kind in ("h264_mp4", "h264_mkv", "mjpeg_avi"):
        assert uses_random_access(probe(clips[kind]))
        assert decode_clip(clips[kind], probe(clips[kind]), 32, (64, 64)).decoder == "decord"


@pytest.mark.parametrize("kind", ["h264_mp4", "mpeg4_bframes_avi", "wmv2_asf", "mjpeg_avi"])
def test_short_clip_uses_every_frame_once_and_masks_padding(tmp_path: Path, kind: str) -> None:
    path = indexed_clip(tmp_path / f"short.{extension(kind)}", 7, kind)
    decoded = decode_clip(path, probe(path), 32, (96, 96))
    assert decoded.mask.tolist() == [True] * 7 + [False] * 25
    assert _shown(decoded) == [i % 7 for i in range(32)]
    assert len(decoded.frames) == 7  # padding is not decoded again


@pytest.mark.parametrize(
    "kind,decoder",
    [("h264_mp4_faststart", "pyav"), ("mpeg4_bframes_avi", "pyav"), ("mjpeg_avi", "decord")],
)
def test_cut_off_clip_yields_the_frames_that_exist_marked_partial(
    clips: dict[str, Path], tmp_path: Path, kind: str, decoder: str
) -> None:
    cut = truncate(clips[kind], tmp_path / f"cut.{extension(kind)}", 0.6)
    if kind == "h264_mp4_faststart":  # decord cannot read this one at all
        with pytest.raises(decord.DECORDError):
            reader = decord.VideoReader(str(cut))
            reader.get_batch(sample_indices(len(reader), 32)[0].tolist())
    info = probe(cut)
    assert info.frame_count == N_SOURCE  # the header still claims the planned length
    decoded = decode_clip(cut, info, 32, (96, 96))
    assert decoded.partial and decoded.decoder == decoder
    assert 20 < decoded.n_frames < 0.8 * N_SOURCE
    assert decoded.frame_index.tolist() == sample_indices(decoded.n_frames, 32)[0].tolist()
    assert _shown(decoded) == decoded.frame_index.tolist()


def test_every_real_lowres_clip_decodes(shared_data: Path) -> None:
    files = sorted(p for p in (shared_data / "camtrap-lowres").rglob("*") if p.is_file())
    assert len(files) == 19
    containers = set()
    for path in files:
        info = probe(path)
        decoded = decode_clip(path, info, 32, (64, 64))
        containers.add(info.container.split(",")[0])
        assert decoded.n_frames >= 6 and decoded.mask.sum() == min(32, decoded.n_frames)
        assert decoded.frames.std() > 1.0, path  # real pixels, not a blank buffer
        assert not decoded.partial, path
    assert containers == {"avi", "asf", "mov"}
