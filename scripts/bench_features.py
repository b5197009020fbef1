"""Benchmark of `jungle features` on real 720x404 clips (run by `make bench`).

Prints, in one run on the same clips (the six clips of ../shared/data/chimpandsee looped
to --clips symlinks):

* decode-only clips/s: the decoder pool of the extraction (``extract.workers``: worker
  processes, frame-exact sampling, resize), start-up included;
* the same decoding (``decode_item``) in torch DataLoader workers, as extraction did before
  the pool, and pool / DataLoader (target >= 1: containing crashes must not cost speed);
* the main process's CPU milliseconds per clip in the pool (receiving each clip's frames:
  what limits a GPU machine that decodes 80 clips/s);
* CNN-only clips/s: the default backbone on already-decoded frames, batched as in a run;
* end-to-end clips/s: ``extract_features`` writing a fresh store, over its clip loop
  (decode workers + CNN + shard writes); start-up (backbone build) and the final assembly
  are printed apart;
* the bound 1/(1/decode + 1/CNN) and end-to-end as a fraction of it (target >= 0.95);
* the stricter bound of issue 11: bare decord as the decode reference
  (``VideoReader(path, width=size, height=size).get_batch(32 evenly spaced indices)`` in this
  process, decord's default threads, no probe, no workers) and the CNN on batches of one
  clip's frames; end-to-end as a fraction of it (target >= 0.95);
* a Zamba-style loader (an ffmpeg subprocess decoding each whole clip to rgb24 at full
  resolution, fps=4) through the same DataLoader, and decode-only / Zamba (target >= 1.2).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.backbones import build_backbone  # noqa: E402
from extract.config import CPU_BATCH_FRAMES, CPU_WORKERS, FeaturesConfig  # noqa: E402
from extract.discover import discover  # noqa: E402
from extract.features import TapExtractor  # noqa: E402
from extract.identity import file_identity  # noqa: E402
from extract.pipeline import FrameBatcher, extract_features  # noqa: E402
from extract.workers import decode_in_workers, decode_item  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "chimpandsee"


def looped_folder(src: Path, n: int, dst: Path) -> Path:
    """``n`` symlinks cycling over the clips of ``src`` (no media is copied)."""
    clips = sorted(p for p in src.iterdir() if p.suffix.lower() == ".mp4")
    if not clips:
        raise SystemExit(f"no .mp4 clips in {src}")
    for i in range(n):
        os.symlink(clips[i % len(clips)], dst / f"loop{i:03d}_{clips[i % len(clips)].name}")
    return dst


def _worker_init(_: int) -> None:
    """DataLoader workers as extraction had them: one torch thread, lower priority."""
    torch.set_num_threads(1)
    os.nice(10)


class DecodeItems(Dataset):
    """``decode_item`` of clip ``i``: the extraction's decoding, in a DataLoader worker."""

    def __init__(self, clips: list, frames: int, size: int) -> None:
        self.clips, self.frames, self.size = clips, frames, size

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        return decode_item(self.clips[i], self.frames, self.size, "cpu")


def _pool(clips: list, config: FeaturesConfig, size: int) -> Iterator[dict]:
    """The items of the extraction's decoder pool over ``clips``."""
    pooled = decode_in_workers(
        clips,
        frames=config.frames,
        size=size,
        device="cpu",
        workers=config.workers,
        timeout=config.clip_timeout,
        journal_dir=None,
    )
    return (item for _, item in pooled)


def _timed_pool(clips: list, config: FeaturesConfig, size: int) -> tuple[float, list]:
    start = time.perf_counter()
    items = list(_pool(clips, config, size))
    return time.perf_counter() - start, items


def _pool_main_cpu_ms(clips: list, config: FeaturesConfig, size: int) -> float:
    """Main-thread CPU milliseconds per clip of the decoder pool (receiving the decoded
    clips), with each clip's frames dropped once received, as the extraction does after
    copying them into its batch."""
    start = time.thread_time()
    for item in _pool(clips, config, size):
        assert item["ok"], item.get("reason")
    return 1000 * (time.thread_time() - start) / len(clips)


def _timed_bare_decord(clips: list, frames: int, size: int) -> float:
    """Seconds to decode the clips with bare decord in this process (issue 11's reference:
    no probe, no frame-exactness checks, no worker processes)."""
    import decord

    start = time.perf_counter()
    for clip in clips:
        reader = decord.VideoReader(str(clip.path), width=size, height=size)
        index = np.linspace(0, len(reader) - 1, frames).round().astype(int)
        reader.get_batch(index.tolist()).asnumpy()
        del reader
    return time.perf_counter() - start


def _timed_loader(dataset: Dataset, workers: int) -> tuple[float, list]:
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
    )
    start = time.perf_counter()
    items = list(loader)
    return time.perf_counter() - start, items


class ZambaStyle(Dataset):
    """What Zamba's loader does: ffmpeg decodes the whole clip at full resolution to rgb24,
    keeping 4 frames per second, through a pipe."""

    def __init__(self, paths: list[Path], ffmpeg: str) -> None:
        self.paths, self.ffmpeg = paths, ffmpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        probe = subprocess.run(
            [
                self.ffmpeg,
                "-v",
                "error",
                "-i",
                str(path),
                "-vf",
                "fps=4",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ],
            capture_output=True,
            check=True,
        )
        return np.frombuffer(probe.stdout, dtype=np.uint8).reshape(-1, 404, 720, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=CPU_WORKERS)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import imageio_ffmpeg

    config = FeaturesConfig(
        frames=args.frames,
        workers=args.workers,
        precision=args.precision,
        batch_frames=CPU_BATCH_FRAMES,
    )
    backbone = build_backbone(config.backbone)
    size = backbone.input_size
    print(f"# jungle features benchmark, {date.today()}, {platform.node()}")
    print(
        f"# {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{args.clips} clips of {args.data}, {args.frames} frames at {size}px, "
        f"workers={config.workers}, precision={config.precision}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        folder = looped_folder(args.data, args.clips, videos)
        _, clips = discover(folder)

        loader_s, _ = _timed_loader(DecodeItems(clips, config.frames, size), config.workers)
        loader_rate = len(clips) / loader_s
        decode_s, items = _timed_pool(clips, config, size)
        assert all(item["ok"] for item in items), [i.get("reason") for i in items if not i["ok"]]
        decode_rate = len(clips) / decode_s
        main_ms = _pool_main_cpu_ms(clips, config, size)

        bare_s = _timed_bare_decord(clips, config.frames, size)
        bare_rate = len(clips) / bare_s
        for clip, item in zip(clips, items, strict=True):  # FrameBatcher stores it
            item["identity"] = file_identity(clip.path)
        extractor = TapExtractor(backbone, torch.device("cpu"), config.pooling, config.precision)
        batcher = FrameBatcher(extractor, backbone.taps, config.batch_frames)
        batcher.add(clips[0], items[0])  # warm-up (oneDNN primitive creation)
        batcher.finish()
        extractor(torch.as_tensor(items[0]["frames"]))  # the same for clip-sized batches
        start = time.perf_counter()
        for item in items:  # one clip's frames per forward pass, as issue 11's reference
            extractor(torch.as_tensor(item["frames"]))
        clip_batch_rate = len(clips) / (time.perf_counter() - start)
        start = time.perf_counter()
        n_done = 0
        for clip, item in zip(clips, items, strict=True):
            n_done += len(batcher.add(clip, item))
        n_done += len(batcher.finish())
        cnn_s = time.perf_counter() - start
        assert n_done == len(clips)
        cnn_rate = len(clips) / cnn_s
        del items

        out = Path(tmp) / "features.h5"
        start = time.perf_counter()
        summary = extract_features(folder, out, config, show_progress=False)
        e2e_total_s = time.perf_counter() - start
        assert summary.ok == len(clips)
        startup_s = e2e_total_s - summary.processing_seconds
        e2e_rate = len(clips) / summary.processing_seconds

        zamba_s, zitems = _timed_loader(
            ZambaStyle([c.path for c in clips], imageio_ffmpeg.get_ffmpeg_exe()), config.workers
        )
        zamba_rate = len(clips) / zamba_s
        zframes = np.mean([len(z) for z in zitems])

    bound = 1 / (1 / decode_rate + 1 / cnn_rate)
    print(f"decode-only        {decode_rate:7.2f} clips/s  ({decode_s:.1f} s)")
    print(f"  DataLoader       {loader_rate:7.2f} clips/s  ({loader_s:.1f} s)")
    print(f"  pool / DataLoader{decode_rate / loader_rate:7.2f}   (target >= 1)")
    print(f"  main-process CPU {main_ms:7.2f} ms/clip (receiving decoded clips)")
    print(f"CNN-only           {cnn_rate:7.2f} clips/s  ({cnn_s:.1f} s)")
    print(f"bound 1/(1/d+1/c)  {bound:7.2f} clips/s")
    print(
        f"end-to-end         {e2e_rate:7.2f} clips/s  ({e2e_total_s:.1f} s wall incl. "
        f"{startup_s:.1f} s start-up and assembly; {len(clips) / e2e_total_s:.2f} clips/s with it)"
    )
    print(f"end-to-end / bound {e2e_rate / bound:7.2f}   (target >= 0.95)")
    strict = 1 / (1 / bare_rate + 1 / clip_batch_rate)
    print(f"bare decord        {bare_rate:7.2f} clips/s  ({bare_s:.1f} s, one process)")
    print(f"CNN, clip batches  {clip_batch_rate:7.2f} clips/s")
    print(f"strict bound       {strict:7.2f} clips/s")
    print(f"end-to-end / strict{e2e_rate / strict:7.2f}   (target >= 0.95)")
    print(
        f"zamba-style        {zamba_rate:7.2f} clips/s  "
        f"({zamba_s:.1f} s, {zframes:.0f} full-res frames/clip)"
    )
    print(f"decode / zamba     {decode_rate / zamba_rate:7.2f}   (target >= 1.2)")


if __name__ == "__main__":
    main()
