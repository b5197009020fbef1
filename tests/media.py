"""Generated test media: clips whose frames carry their own index, bad files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

#: bits of the frame index drawn into every frame (clips up to 1024 frames).
BITS = 10
_GRID = (2, 5)  # rows x columns of code cells

#: codec settings of the frame-exactness test clips: name -> (container, codec, options)
CODECS: dict[str, tuple[str, str, dict]] = {
    "h264_mp4": ("mp4", "libx264", {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2}),
    "h264_mkv": ("matroska", "libx264", {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2}),
    # index at the front, like cameras that pre-write it: a cut-off copy still opens
    "h264_mp4_faststart": (
        "mp4",
        "libx264",
        {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2, "movflags": "faststart"},
    ),
    "mpeg4_bframes_avi": ("avi", "mpeg4", {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2}),
    "wmv2_asf": ("asf", "wmv2", {"pix_fmt": "yuv420p", "gop": 12}),
    "mjpeg_avi": ("avi", "mjpeg", {"pix_fmt": "yuvj420p"}),
    # streams of the NVDEC gate (extract/nvdec.py): long GOPs, HEVC, MOV, colour flags
    "h264_mp4_gop250": ("mp4", "libx264", {"pix_fmt": "yuv420p", "gop": 250, "bframes": 2}),
    "hevc_mp4": ("mp4", "libx265", {"pix_fmt": "yuv420p", "gop": 12}),
    "vp9_mkv": ("matroska", "libvpx-vp9", {"pix_fmt": "yuv420p", "gop": 12}),
    "h264_mov": ("mov", "libx264", {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2}),
    "h264_mp4_bt709": (
        "mp4",
        "libx264",
        {"pix_fmt": "yuv420p", "gop": 12, "bframes": 2, "colorspace": 1},
    ),
    "h264_mp4_full_range": ("mp4", "libx264", {"pix_fmt": "yuvj420p", "gop": 12}),
}


def extension(kind: str) -> str:
    """The file extension of a clip of ``CODECS[kind]``."""
    container = CODECS[kind][0]
    return {"matroska": "mkv"}.get(container, container)


def index_frame(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    """An RGB frame whose 2x5 big black/white cells spell ``i`` in binary."""
    rows, cols = _GRID
    bits = (i >> np.arange(BITS)) & 1
    cells = (bits.reshape(rows, cols) * 255).astype(np.uint8)
    img = np.kron(cells, np.ones((height // rows, width // cols), dtype=np.uint8))
    img = np.pad(img, ((0, height - img.shape[0]), (0, width - img.shape[1])), mode="edge")
    return np.repeat(img[:, :, None], 3, axis=2)


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` on a decoded (possibly resized, compressed) frame."""
    rows, cols = _GRID
    h, w = frame.shape[:2]
    ys = ((np.arange(rows) + 0.5) * h / rows).astype(int)
    xs = ((np.arange(cols) + 0.5) * w / cols).astype(int)
    gray = frame.mean(axis=2)
    bits = (gray[np.ix_(ys, xs)] > 127).astype(int).ravel()
    return int((bits << np.arange(BITS)).sum())


def write_clip(
    path: Path,
    frames: np.ndarray | list[np.ndarray],
    kind: str = "h264_mp4",
    fps: int = 25,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Encode RGB ``frames`` with the settings ``CODECS[kind]`` (container tags ``metadata``)."""
    container_fmt, codec, opts = CODECS[kind]
    height, width = frames[0].shape[:2]
    muxer_options = {"movflags": opts["movflags"]} if "movflags" in opts else {}
    with av.open(str(path), "w", format=container_fmt, options=muxer_options) as out:
        out.metadata.update(metadata or {})
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = opts["pix_fmt"]
        if "gop" in opts:
            stream.codec_context.gop_size = opts["gop"]
        if "bframes" in opts:
            stream.codec_context.max_b_frames = opts["bframes"]
        if "colorspace" in opts:  # flag the stream (and convert the frames) with a matrix
            ctx = stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = opts["colorspace"]
        if codec in ("libx264", "libx265"):
            stream.options = {"preset": "veryfast", "crf": "18"}
            if codec == "libx265":
                stream.options |= {"x265-params": "log-level=error"}
        else:
            stream.codec_context.bit_rate = 2_000_000
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if "colorspace" in opts:
                frame.colorspace = opts["colorspace"]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def indexed_clip(
    path: Path,
    n_frames: int,
    kind: str = "h264_mp4",
    fps: int = 25,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A clip of ``n_frames`` frames, frame i showing the number i."""
    return write_clip(path, [index_frame(i) for i in range(n_frames)], kind, fps, metadata)


def truncate(src: Path, dst: Path, keep: float) -> Path:
    """Copy the first ``keep`` fraction of ``src``'s bytes (a clip cut off mid-recording)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def audio_only(path: Path, seconds: float = 1.0) -> Path:
    """A valid media file with an audio stream and no video."""
    rate = 16000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[:, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
