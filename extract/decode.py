"""Frame-exact sampling of N frames per clip.

Two decoders, chosen per stream:

* ``decord`` random access (``VideoReader.get_batch``), resized at decode time, for
  streams where its seeking is exact: H.264/VP9 in MP4/MOV/MKV and intra-only
  MJPEG. With ``device="cuda"`` and a CUDA build of decord it decodes on the GPU.
* ``pyav`` sequential decoding that keeps only the wanted indices, for everything else
  (decord's random access was measured off by 12-190 frames on WMV2/ASF and on MPEG-4
  part 2 AVI with B-frames) and as the fallback for files decord cannot open, such as AVIs
  cut off when the camera's battery died. Such a clip yields the frames that exist and is
  marked ``partial``.

Sampling (see :func:`sample_indices`): the clip is cut into N equal segments and the
middle frame of each is taken. Clips with fewer than N frames use every frame once and are
padded by repeating them cyclically; ``mask`` is False on the padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from extract.probe import DecodeError, VideoInfo

log = logging.getLogger(__name__)


def _quiet_decord() -> None:
    """decord's bundled ffmpeg prints every damaged packet to stderr; failures are reported
    through ``DecodeError`` and the ``partial`` flag instead."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


#: (codec) decoded by decord's random access in any container but ASF/AVI: those measured
#: exact by tests/test_decode.py. Not HEVC: decord returned the wrong frame for 28 of 32
#: indices of an x265 clip (default open GOP) in MP4, where PyAV's sequential pass is exact;
#: AV1 is untested, so it is decoded sequentially too.
SEEKABLE_CODECS: frozenset[str] = frozenset({"h264", "vp9"})
#: intra-only codecs: every frame is a keyframe, so seeking is exact in any container.
INTRA_CODECS: frozenset[str] = frozenset({"mjpeg", "png", "rawvideo"})
#: a decoded frame count more than this fraction (and more than 2 frames) below the
#: container's claim marks a clip partial (AVI headers often claim one frame too many).
PARTIAL_SLACK: float = 0.05
#: frames dropped from the end of a cut-off stream with B-frames (they decode out of order).
REORDER_TAIL: int = 4


@dataclass
class DecodedClip:
    """The frames sampled from one clip.

    Attributes:
        frames: ``(U, H, W, 3)`` uint8 RGB, the distinct source frames in increasing
            source order (a short clip's padding is not decoded twice); a numpy array, or
            a CUDA ``torch.Tensor`` from NVDEC (:mod:`extract.nvdec`).
        frame_index: ``(T,)`` source frame index of each of the N slots.
        mask: ``(T,)`` True where the slot holds a real frame, False on padding.
        decoder: ``"decord"``, ``"decord-gpu"``, ``"nvdec"`` or ``"pyav"``.
        partial: True when the file ended (or broke) before the frames its header claims.
        n_frames: frames found in the stream (the sampling range).
    """

    frames: np.ndarray
    frame_index: np.ndarray
    mask: np.ndarray
    decoder: str
    partial: bool
    n_frames: int

    @property
    def slot_rows(self) -> np.ndarray:
        """``(T,)`` row of :attr:`frames` that fills each slot."""
        return np.searchsorted(np.unique(self.frame_index), self.frame_index)


def sample_indices(n_available: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and real-frame mask for ``n_frames`` slots over ``n_available`` frames.

    With enough frames the middle frame of each of ``n_frames`` equal segments is taken
    (strictly increasing indices). With fewer, every frame is taken once and the slots are
    filled by cyclic repetition, masked out.
    """
    if n_available <= 0:
        raise ValueError("a clip without frames has nothing to sample")
    slots = np.arange(n_frames)
    if n_available >= n_frames:
        index = ((slots + 0.5) * n_available / n_frames).astype(np.int64)
        return index, np.ones(n_frames, dtype=bool)
    return slots % n_available, slots < n_available


def uses_random_access(info: VideoInfo) -> bool:
    """Whether decord's random access is exact for this stream (see module docstring)."""
    if info.codec in INTRA_CODECS:
        return info.container != "asf"
    container = info.container.split(",")
    return info.codec in SEEKABLE_CODECS and ("mp4" in container or "matroska" in container)


@lru_cache(maxsize=1)
def decord_has_cuda() -> bool:
    """True when the installed decord was built with CUDA and sees a GPU."""
    import decord

    try:
        decord.gpu(0).exist  # noqa: B018 - raises without CUDA support
        return bool(decord.gpu(0).exist)
    except Exception:  # decord raises its own error type without CUDA
        return False


def decode_clip(
    path: Path,
    info: VideoInfo,
    n_frames: int,
    size: tuple[int, int],
    device: str = "cpu",
) -> DecodedClip:
    """Sample ``n_frames`` frames of ``path`` resized to ``size`` = (width, height).

    Raises:
        DecodeError: no frame of the clip can be decoded; the message says why.
    """
    if uses_random_access(info):
        try:
            return _decode_decord(path, info, n_frames, size, device)
        except Exception as exc:  # decord raises DECORDError and assorted RuntimeErrors
            log.info("%s: decord failed (%s); decoding sequentially with PyAV", path, exc)
    return _decode_pyav(path, info, n_frames, size)


def _decode_decord(
    path: Path, info: VideoInfo, n_frames: int, size: tuple[int, int], device: str
) -> DecodedClip:
    import decord

    _quiet_decord()
    on_gpu = device.startswith("cuda") and decord_has_cuda()
    ctx = decord.gpu(int(device.partition(":")[2] or 0)) if on_gpu else decord.cpu(0)
    reader = decord.VideoReader(str(path), ctx=ctx, width=size[0], height=size[1], num_threads=1)
    n = len(reader)
    index, mask = sample_indices(n, n_frames)
    wanted = np.unique(index)
    frames = reader.get_batch(wanted.tolist()).asnumpy()
    del reader
    decoder = "decord-gpu" if on_gpu else "decord"
    return DecodedClip(frames, index, mask, decoder, _is_partial(info.frame_count, n, None), n)


def _decode_pyav(path: Path, info: VideoInfo, n_frames: int, size: tuple[int, int]) -> DecodedClip:
    claimed = info.frame_count
    frames, n_found, error = _pyav_pass(path, claimed, n_frames, size)
    if n_found == 0:
        reason = f": {error}" if error else ""
        raise DecodeError(f"no frame could be decoded{reason}")
    partial = _is_partial(claimed, n_found, error)
    n_use = n_found
    if partial and info.has_b_frames:
        # At a cut, frames waiting for a reference that never came out of order.
        n_use = max(1, n_found - REORDER_TAIL)
    if n_use != claimed:
        # The header was wrong (ASF has none, AVI often claims one too many, a cut-off file
        # claims its planned length): sample again over the frames that really exist.
        frames, n_again, _ = _pyav_pass(path, n_use, n_frames, size)
        if n_again != n_found:
            raise DecodeError(f"decoder is not deterministic ({n_found} then {n_again} frames)")
    index, mask = sample_indices(n_use, n_frames)
    return DecodedClip(frames, index, mask, "pyav", partial, n_use)


def _is_partial(claimed: int, found: int, error: str | None) -> bool:
    """A clip is partial when decoding broke off, or it holds clearly fewer frames than its
    container claims (see :data:`PARTIAL_SLACK`)."""
    return error is not None or claimed - found > max(2.0, PARTIAL_SLACK * claimed)


def _pyav_pass(
    path: Path, n_planned: int, n_frames: int, size: tuple[int, int]
) -> tuple[np.ndarray, int, str | None]:
    """Decode every frame of ``path``, keep those :func:`sample_indices` wants for
    ``n_planned`` frames. Returns the kept frames, the number of frames found, and the
    decoder error that stopped the pass early (None at a clean end of stream)."""
    wanted = set(np.unique(sample_indices(max(n_planned, 1), n_frames)[0]).tolist())
    kept: list[np.ndarray] = []
    n_found = 0
    errors: list[str] = []

    def keep(frames: list[av.VideoFrame]) -> None:
        nonlocal n_found
        for frame in frames:
            if n_found in wanted:
                kept.append(
                    frame.to_ndarray(
                        width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC"
                    )
                )
            n_found += 1

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            demux = container.demux(stream)
            while True:
                try:
                    packet = next(demux)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:  # the container itself is cut or damaged
                    errors.append(f"file ends in damaged data after {n_found} frames ({exc})")
                    break
                try:
                    keep(packet.decode())  # a None packet at the end flushes the decoder
                except av.error.FFmpegError as exc:  # one damaged packet: skip it, go on
                    errors.append(f"damaged frame data after {n_found} frames ({exc})")
    except av.error.FFmpegError as exc:
        errors.append(f"cannot open the file for decoding ({exc})")
    error = "; ".join(errors[:3]) if errors else None
    empty = np.zeros((0, size[1], size[0], 3), dtype=np.uint8)
    return (np.stack(kept) if kept else empty), n_found, error
