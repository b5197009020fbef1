"""Decoding on the GPU's video engines (NVDEC) with NVIDIA's PyNvVideoCodec.

Optional (``pip install "jungle[gpu]"``): nothing here imports PyNvVideoCodec until a
decoder is made, so a CPU-only install never loads it.

* :func:`nvdec_unavailable` says why NVDEC cannot be used on a device (no CUDA device, the
  package not installed, the driver's ``libnvcuvid.so.1`` missing), or None.
* :func:`nvdec_accepts` is the gate: a stream is decoded with NVDEC only when its
  codec/container pair is one whose index access was proven frame-exact
  (:data:`NVDEC_EXACT`; PyNvVideoCodec returns wrong frames for H.264 in MKV and for MPEG-4
  part 2 AVI with B-frames), its pixels are 8-bit 4:2:0 and its colour matrix is one
  :func:`nv12_to_rgb` converts exactly as the CPU decoders do. Everything else is decoded
  on the CPU.
* :func:`nv12_to_rgb` turns NVDEC's native NV12 output into RGB on the GPU with the matrix
  and range ffmpeg (decord, PyAV) uses for the stream: BT.709 where the stream says so,
  BT.601 where it says BT.601 or nothing, limited range unless it says full. (PyNvVideoCodec's
  own RGB output assumes BT.709 where a stream says nothing, ffmpeg BT.601.) Both planes are
  resized (bicubic, antialiased) to the model's input size before the conversion, as
  ffmpeg's scaler does.
* :class:`NvdecDecoder` samples a clip's frames (:func:`extract.decode.sample_indices`)
  with one ``SimpleDecoder`` per thread, reused across clips (:class:`ThreadDecoders`),
  and returns them on the GPU.

CUDA must be initialised (by torch) before a decoder is created: creating one first
crashed the process (segfault) on the measured machine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from extract.decode import DecodedClip, decode_clip, sample_indices
from extract.probe import DecodeError, VideoInfo

log = logging.getLogger(__name__)

#: (codec, container format) pairs whose NVDEC index access is frame-exact: measured with
#: index-coded clips (H.264 GOP 12 and 250, HEVC; evenly spaced, random and backwards
#: indices) and checked by the GPU tests (tests/test_nvdec_gpu.py). The container is one of
#: ffmpeg's names in :attr:`VideoInfo.container` (``mov,mp4,m4a,3gp,3g2,mj2`` for MP4/MOV).
NVDEC_EXACT: frozenset[tuple[str, str]] = frozenset({("h264", "mp4"), ("hevc", "mp4")})
#: pixel formats NVDEC returns as NV12 (8-bit 4:2:0; ``yuvj420p`` is its full-range name).
NVDEC_PIXEL_FORMATS: frozenset[str] = frozenset({"yuv420p", "yuvj420p"})
#: ffmpeg's AVFieldOrder values of streams NVDEC decodes like ffmpeg (unknown, progressive):
#: NVDEC deinterlaces interlaced streams, ffmpeg returns their frames woven.
NVDEC_FIELD_ORDERS: frozenset[int] = frozenset({0, 1})
#: clips in a row that a reused decoder fails and a fresh one reads before reuse is
#: switched off (:class:`ThreadDecoders`).
REUSE_STRIKES = 3
#: frames converted from NV12 at once (bounds the float32 planes of a 4K clip's frames).
CONVERT_FRAMES = 8
#: ffmpeg's AVColorSpace values → the matrix ffmpeg converts them with (2: unspecified).
COLOR_MATRICES: dict[int, str] = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601", 9: "bt2020"}
#: Kr, Kb of each matrix (ITU-R BT.601, BT.709, BT.2020 non-constant luminance).
_KR_KB: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
}
#: the driver libraries PyNvVideoCodec needs: NVDEC's, and NVENC's (loaded at import).
DRIVER_LIBRARIES: tuple[str, ...] = ("libnvcuvid.so.1", "libnvidia-encode.so.1")
#: Test-only hook: when set (non-empty), NVDEC counts as available on any device and "NVDEC"
#: decodes with the CPU decoder (its frames labelled ``nvdec``; :func:`gpu_decoder`), so the
#: NVDEC routing, fallbacks and crash rules are tested on machines without a GPU. A value
#: other than ``1`` makes the stand-in kill its process (SIGSEGV) on clips whose path
#: contains it, as a crash inside the NVDEC library would. Never set it in production.
STAND_IN_ENV = "JUNGLE_TEST_NVDEC_ON_CPU"

#: a GPU decoder: ``(path, info, frames, (width, height))`` → the sampled clip.
GpuDecode = Callable[[Path, VideoInfo, int, tuple[int, int]], DecodedClip]


@lru_cache(maxsize=1)
def _missing_driver_library() -> str | None:
    for name in DRIVER_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            return name
    return None


def nvdec_unavailable(device: torch.device) -> str | None:
    """Why NVDEC cannot decode for ``device`` (a one-line reason), or None when it can."""
    if os.environ.get(STAND_IN_ENV):
        return None
    if device.type != "cuda":
        return f"NVDEC needs a CUDA device, not {device}"
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        return 'PyNvVideoCodec is not installed (pip install "jungle[gpu]")'
    missing = _missing_driver_library()
    if missing is not None:
        return f"the NVIDIA driver's {missing} cannot be loaded (no NVDEC on this machine)"
    return None


def resolve_decoder(choice: str, device: torch.device) -> str:
    """``cpu`` or ``nvdec`` for the ``decoder`` setting ``choice`` on ``device``: ``auto``
    is ``nvdec`` where NVDEC is available, else ``cpu``.

    Raises:
        ConfigError: ``nvdec`` where NVDEC is unavailable (the one-line reason).
    """
    if choice == "cpu":
        return "cpu"
    reason = nvdec_unavailable(device)
    if reason is None:
        return "nvdec"
    if choice == "nvdec":
        from extract.config import ConfigError

        raise ConfigError(f"--decoder nvdec: {reason}")
    if device.type == "cuda":
        log.info("not decoding with NVDEC: %s", reason)
    return "cpu"


def nvdec_accepts(info: VideoInfo) -> bool:
    """Whether NVDEC decodes this stream exactly as the CPU path does (module docstring)."""
    containers = set(info.container.split(","))
    exact = any(codec == info.codec and fmt in containers for codec, fmt in NVDEC_EXACT)
    return (
        exact
        and info.pix_fmt in NVDEC_PIXEL_FORMATS
        and info.colorspace in COLOR_MATRICES
        and info.field_order in NVDEC_FIELD_ORDERS
        and info.width % 2 == 0
        and info.height % 2 == 0
    )


def color_conversion(info: VideoInfo) -> tuple[str, bool]:
    """The matrix and whether the range is full, as ffmpeg decodes ``info``'s stream."""
    full = info.color_range == 2 or info.pix_fmt == "yuvj420p"
    return COLOR_MATRICES[info.colorspace], full


def nv12_to_rgb(
    nv12: torch.Tensor, size: tuple[int, int], matrix: str = "bt601", full_range: bool = False
) -> torch.Tensor:
    """NV12 frames to RGB, resized.

    Args:
        nv12: ``(B, H * 3 // 2, W)`` uint8: the luma plane, then the interleaved chroma
            plane (U, V) at half resolution; any device.
        size: output ``(width, height)``.
        matrix: ``bt601``, ``bt709`` or ``bt2020``.
        full_range: False for limited range (luma 16-235, chroma 16-240).

    Returns:
        ``(B, height, width, 3)`` uint8 RGB on the input's device.
    """
    b, rows, w = nv12.shape
    h = rows * 2 // 3
    y = nv12[:, :h].unsqueeze(1).float()
    uv = nv12[:, h:].reshape(b, h // 2, w // 2, 2).permute(0, 3, 1, 2).float()
    out_w, out_h = size
    if (out_w, out_h) == (w, h):  # ffmpeg's unscaled converter repeats each chroma sample
        uv = uv.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    else:
        resize = {"mode": "bicubic", "antialias": True, "align_corners": False}
        y = F.interpolate(y, size=(out_h, out_w), **resize)
        uv = F.interpolate(uv, size=(out_h, out_w), **resize)
    if full_range:
        luma, chroma = y, uv - 128.0
    else:
        luma, chroma = (y - 16.0) * (255.0 / 219.0), (uv - 128.0) * (255.0 / 224.0)
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    u, v = chroma[:, 0:1], chroma[:, 1:2]
    r = luma + 2.0 * (1.0 - kr) * v
    bl = luma + 2.0 * (1.0 - kb) * u
    g = luma - (2.0 * kb * (1.0 - kb) / kg) * u - (2.0 * kr * (1.0 - kr) / kg) * v
    rgb = torch.cat([r, g, bl], dim=1).clamp_(0.0, 255.0).round_()
    return rgb.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclasses.dataclass
class SampledFrames:
    """What :meth:`ThreadDecoders.sample` read: the decoder's frames of the distinct
    source indices (valid until this thread's next clip), and the sampling."""

    frames: list
    index: np.ndarray
    mask: np.ndarray
    n_frames: int


class ThreadDecoders:
    """One decoder per thread, reused across clips.

    ``open(path)`` makes a decoder (a PyNvVideoCodec ``SimpleDecoder``). A thread's next
    clip reuses its decoder through ``reconfigure_decoder(path)``: making one (parser,
    hardware decoder, surface pool) is the dominant per-clip cost (vLLM reuses its decoders
    for that reason). Reuse is never trusted blindly: only a clip whose stream has the same
    ``key`` as the decoder's last one (:func:`stream_key`: codec, size, pixel format; the
    clips of one camera model) reuses it; a decoder whose reconfiguring raises is replaced;
    a clip that fails on a reused decoder (PyNvVideoCodec 2.2.0 was reported to return fewer
    frames than asked after reconfiguring) is read again with a fresh one; a decoder that
    failed a clip is never used again. After :data:`REUSE_STRIKES` clips in a row that a
    reused decoder failed and a fresh one read, reuse is switched off for good (with a
    warning): on a library with that bug, reuse would cost every clip two decodes.
    """

    def __init__(self, open: Callable[[Path], Any]) -> None:
        self._open = open
        self._local = threading.local()
        self._lock = threading.Lock()
        #: decoders made so far (by every thread)
        self.opened = 0
        #: clips in a row that a reused decoder failed and a fresh one read
        self.strikes = 0

    @property
    def reuse(self) -> bool:
        """False once reuse has failed :data:`REUSE_STRIKES` times in a row (for good: with
        no reuse there is no strike and no success of reuse to reset the count)."""
        return self.strikes < REUSE_STRIKES

    def decoder(self, path: Path, key: object) -> tuple[Any, bool]:
        """This thread's decoder pointed at ``path`` (a stream of ``key``), and whether
        it was reused."""
        decoder = getattr(self._local, "decoder", None)
        if decoder is not None and self._local.key == key and self.reuse:
            try:
                decoder.reconfigure_decoder(str(path))
                return decoder, True
            except Exception as exc:  # PyNvVideoCodec's errors
                log.debug("NVDEC: reconfiguring a decoder for %s failed (%s)", path, exc)
        self.discard()
        decoder = self._open(path)
        with self._lock:
            self.opened += 1
        self._local.decoder, self._local.key = decoder, key
        return decoder, False

    def discard(self) -> None:
        """Forget this thread's decoder (the next clip makes a fresh one)."""
        self._local.decoder, self._local.key = None, None

    def sample(self, path: Path, key: object, n_frames: int) -> SampledFrames:
        """The frames of ``n_frames`` slots of ``path``, a stream of ``key``
        (:func:`extract.decode.sample_indices` over the frames the decoder counts).

        Raises:
            DecodeError: the clip has no frames or the decoder returned too few; other
                exceptions of the decoder pass through. Either way after one retry with a
                fresh decoder where a reused one failed.
        """
        decoder, reused = self.decoder(path, key)
        try:
            sampled = _sample(decoder, n_frames)
        except Exception as exc:
            self.discard()
            if not reused:
                raise
            log.debug("NVDEC: a reused decoder failed on %s (%s); a fresh one", path, exc)
        else:
            if reused:
                self._strike(False)
            return sampled
        decoder, _ = self.decoder(path, key)
        try:
            sampled = _sample(decoder, n_frames)
        except Exception:
            self.discard()
            raise
        self._strike(True)  # the clip was fine: reusing the decoder was what failed
        return sampled

    def _strike(self, failed: bool) -> None:
        with self._lock:
            if not self.reuse:  # for good, even if a clip already in flight on reuse succeeds
                return
            self.strikes = self.strikes + 1 if failed else 0
            if self.strikes == REUSE_STRIKES:
                log.warning(
                    "NVDEC: %d clips in a row failed on a reused decoder and decoded with a "
                    "fresh one; making a fresh decoder for every clip from now on",
                    self.strikes,
                )


def stream_key(info: VideoInfo) -> tuple[str, int, int, str]:
    """What two streams must share for one decoder to be reused between them."""
    return (info.codec, info.width, info.height, info.pix_fmt)


def _sample(decoder: Any, n_frames: int) -> SampledFrames:
    """Read the distinct frames of ``n_frames`` evenly spaced slots with ``decoder``."""
    n = len(decoder)
    if n <= 0:
        raise DecodeError("NVDEC found no frames")
    index, mask = sample_indices(n, n_frames)
    wanted = sorted(set(index.tolist()))
    frames = decoder.get_batch_frames_by_index(wanted)
    if len(frames) != len(wanted):
        raise DecodeError(f"NVDEC returned {len(frames)} of {len(wanted)} frames")
    return SampledFrames(list(frames), index, mask, n)


class NvdecDecoder:
    """Samples clips with NVDEC in the calling thread (call from several threads at once):
    one PyNvVideoCodec ``SimpleDecoder`` per thread, reused across clips
    (:class:`ThreadDecoders`); decoders are never shared between threads. torch's CUDA
    context is created here, before any decoder.
    """

    def __init__(self, device: torch.device) -> None:
        reason = nvdec_unavailable(device)
        if reason is not None:
            raise RuntimeError(reason)
        torch.cuda.init()
        torch.empty(1, device=device)  # the primary context exists before any decoder
        self.device = device
        self.gpu_id = device.index if device.index is not None else torch.cuda.current_device()
        #: this decoder's per-thread PyNvVideoCodec decoders
        self.decoders = ThreadDecoders(self._open)

    def _open(self, path: Path) -> object:
        import PyNvVideoCodec as nvc

        return nvc.SimpleDecoder(
            str(path),
            gpu_id=self.gpu_id,
            use_device_memory=True,
            output_color_type=nvc.OutputColorType.NATIVE,
        )

    def decode(
        self, path: Path, info: VideoInfo, n_frames: int, size: tuple[int, int]
    ) -> DecodedClip:
        """Sample ``n_frames`` frames of ``path`` (a stream :func:`nvdec_accepts`), resized
        to ``size`` = (width, height), as :func:`extract.decode.decode_clip` does; the
        frames stay on the GPU.

        Raises:
            DecodeError: the file cannot be decoded by NVDEC (the reason).
        """
        try:
            sampled = self.decoders.sample(path, stream_key(info), n_frames)
            with torch.cuda.device(self.device):
                # (U, H*3/2, W) uint8; stacking copies: the decoder reuses its frame buffers
                # for this thread's next clip, so wait for the copy (it is queued on torch's
                # stream, which need not be the one the decoder writes with)
                nv12 = torch.stack([torch.from_dlpack(f) for f in sampled.frames])
                torch.cuda.current_stream(self.device).synchronize()
                sampled.frames.clear()
                matrix, full = color_conversion(info)
                rgb = torch.cat(
                    [
                        nv12_to_rgb(nv12[i : i + CONVERT_FRAMES], size, matrix, full)
                        for i in range(0, len(nv12), CONVERT_FRAMES)
                    ]
                )
        except DecodeError:
            raise
        except Exception as exc:  # PyNvVideoCodec's errors, CUDA out of memory, ...
            raise DecodeError(f"NVDEC cannot decode the file ({exc})") from exc
        return DecodedClip(
            rgb,  # type: ignore[arg-type]
            sampled.index,
            sampled.mask,
            "nvdec",
            False,
            sampled.n_frames,
        )


def gpu_decoder(device: torch.device) -> GpuDecode:
    """The NVDEC decode function for ``device`` (:meth:`NvdecDecoder.decode`; the CPU
    stand-in of :data:`STAND_IN_ENV` when that is set).

    Raises:
        RuntimeError: NVDEC is unavailable (the one-line reason).
    """
    stand_in = os.environ.get(STAND_IN_ENV)
    if stand_in:
        return _StandIn(stand_in if stand_in != "1" else "").decode
    return NvdecDecoder(device).decode


@dataclasses.dataclass(frozen=True)
class _StandIn:
    """The test-only CPU stand-in for NVDEC (:data:`STAND_IN_ENV`)."""

    crash_on: str

    def decode(
        self, path: Path, info: VideoInfo, n_frames: int, size: tuple[int, int]
    ) -> DecodedClip:
        if self.crash_on and self.crash_on in str(path):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered asynchronously
        return dataclasses.replace(decode_clip(path, info, n_frames, size), decoder="nvdec")
