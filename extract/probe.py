"""Read per-clip metadata (container, codec, size, rate, length) without decoding pixels."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

# av logs every damaged packet at WARNING through its own logger; the pipeline reports
# damaged clips itself, so keep ffmpeg quiet.
av.logging.set_level(av.logging.PANIC)


class DecodeError(RuntimeError):
    """A clip cannot be used. The message is the human-readable reason written to the
    ``failed`` table, e.g. ``"empty file (0 bytes)"``."""


#: :class:`VideoInfo` fields that choose a decoder and are not stored per clip.
DECODING_FIELDS: tuple[str, ...] = (
    "has_b_frames",
    "pix_fmt",
    "colorspace",
    "color_range",
    "field_order",
)


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of one clip, as stored in the ``meta`` group of the feature store.

    ``frame_count`` is the container's claim (or duration x fps where the container has
    none, e.g. ASF); the decoders correct it when they find fewer frames.
    """

    file_size: int
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    bitrate: int
    codec: str
    container: str
    has_b_frames: bool
    pix_fmt: str = ""  #: ffmpeg's pixel format of the stream, e.g. ``yuv420p``
    colorspace: int = 2  #: ffmpeg's AVColorSpace (1: BT.709, 2: unspecified, 5/6: BT.601)
    color_range: int = 0  #: ffmpeg's AVColorRange (0: unspecified, 1: limited, 2: full)
    field_order: int = 0  #: ffmpeg's AVFieldOrder (0: unknown, 1: progressive, 2-5: interlaced)

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict."""
        return asdict(self)


def nonempty_size(path: Path) -> int:
    """The size of a media file in bytes.

    Raises:
        DecodeError: the file cannot be read, or is empty.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    return size


def probe(path: Path) -> VideoInfo:
    """Read the metadata of ``path``.

    Raises:
        DecodeError: with a human-readable reason when the file is empty, is not a media
            file, or has no video stream.
    """
    size = nonempty_size(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video file ({_ffmpeg_reason(exc)})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise DecodeError(f"no video stream in file (found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise DecodeError("video stream has no frame size (damaged header)")
        fps = _rate(stream)
        duration = _duration(container, stream)
        frames = int(stream.frames or 0)
        if frames <= 0 and duration > 0 and fps > 0:
            frames = int(round(duration * fps))
        if duration <= 0 and frames > 0 and fps > 0:
            duration = frames / fps
        bitrate = int(container.bit_rate or 0)
        if bitrate <= 0 and duration > 0:
            bitrate = int(size * 8 / duration)
        return VideoInfo(
            file_size=size,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=fps,
            frame_count=frames,
            duration=duration,
            bitrate=bitrate,
            codec=ctx.name,
            container=container.format.name,
            has_b_frames=bool(ctx.has_b_frames),
            pix_fmt=str(ctx.pix_fmt or ""),
            colorspace=int(ctx.colorspace),
            color_range=int(ctx.color_range),
            field_order=int(ctx.field_order),
        )


def _rate(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration:
        return container.duration / 1_000_000
    return 0.0


def _ffmpeg_reason(exc: av.error.FFmpegError) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.rstrip(".")
