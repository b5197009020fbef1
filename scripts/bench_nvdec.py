"""GPU decoding benchmark (run by `make bench`; measures only on a machine with NVDEC).

On the real 720x404 clips of ../shared/data/chimpandsee looped to --clips symlinks, prints:

* NVDEC-only decode clips/s (:class:`extract.nvdec.NvdecDecoder` in 1, 4, 8 and 16
  threads, the frames left on the GPU; each thread reuses its decoder), and at 8 threads
  with a fresh decoder per clip (what decoder reuse saves);
* CPU-only decode clips/s (the crash-containing decoder processes, --workers of them);
* the hybrid scheduler (:func:`extract.hybrid.decode_hybrid`: 8 NVDEC threads and the
  decoder processes taking clips from one queue) on the same clips, with the NVDEC threads
  in this process and in a dedicated decoder process (``nvdec_host``);
* CNN-only clips/s (fp16 autocast, frames already on the GPU);
* end-to-end ``extract_features`` clips/s with ``decoder: cpu`` and ``decoder: nvdec``
  (``nvdec_host: thread`` and ``process``), and each divided by its decode bound (the
  decode-only rate above of the same decoders: CPU-only, or the hybrid with that host;
  issue 11's targets: >= 80 clips/s and >= 0.9 of the hybrid bound on one H100).

Without a CUDA device, PyNvVideoCodec or the driver's NVDEC library it prints why and
exits 0 (nothing to measure on this machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_features import DEFAULT_DATA, looped_folder  # noqa: E402

from extract.backbones import build_backbone  # noqa: E402
from extract.config import FeaturesConfig  # noqa: E402
from extract.discover import discover  # noqa: E402
from extract.features import TapExtractor  # noqa: E402
from extract.hybrid import decode_hybrid  # noqa: E402
from extract.nvdec import NvdecDecoder, nvdec_accepts, nvdec_unavailable  # noqa: E402
from extract.pipeline import extract_features  # noqa: E402
from extract.probe import probe  # noqa: E402
from extract.workers import decode_in_workers  # noqa: E402


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.2f} clips/s  ({seconds:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clips", type=int, default=480)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda")
    reason = nvdec_unavailable(device) if torch.cuda.is_available() else "no CUDA GPU"
    print(f"# jungle NVDEC benchmark, {date.today()}, {platform.node()}")
    if reason is not None:
        print(f"# not measured: {reason}")
        return
    print(
        f"# {torch.cuda.get_device_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.clips} clips of {args.data}, {args.frames} frames at 224 px, "
        f"{args.workers} CPU decoder processes"
    )
    size = (224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        _, clips = discover(looped_folder(args.data, args.clips, videos))
        infos = [probe(c.path) for c in clips]
        assert all(nvdec_accepts(i) for i in infos)
        nvdec = NvdecDecoder(device)
        for threads in (1, 4, 8, 16):
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                done = list(
                    pool.map(
                        lambda ci: len(nvdec.decode(ci[0].path, ci[1], args.frames, size).frames),
                        zip(clips, infos, strict=True),
                    )
                )
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            print(f"NVDEC-only, {threads:2d} threads  {_rate(len(done), seconds)}")

        def fresh(clip_info: tuple) -> int:
            nvdec.decoders.discard()  # this thread's next clip makes a new decoder
            return len(nvdec.decode(clip_info[0].path, clip_info[1], args.frames, size).frames)

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(fresh, zip(clips, infos, strict=True)))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"  8 threads, a fresh decoder per clip  {_rate(len(done), seconds)}")
        print(f"  decoders made in all: {nvdec.decoders.opened}")

        start = time.perf_counter()
        items = decode_in_workers(
            clips, frames=args.frames, size=224, device="cpu", workers=args.workers,
            timeout=300, journal_dir=None,
        )  # fmt: skip
        n = sum(1 for _ in items)
        seconds = time.perf_counter() - start
        decode_rate = {"cpu": n / seconds}
        print(f"CPU-only, {args.workers:2d} processes  {_rate(n, seconds)}")

        start = time.perf_counter()
        items = decode_hybrid(
            clips, gpu_decode=nvdec.decode, frames=args.frames, size=224, threads=8,
            workers=args.workers, timeout=300, journal_dir=None, accepts=nvdec_accepts,
        )  # fmt: skip
        n = sum(1 for _ in items)
        seconds = time.perf_counter() - start
        decode_rate["thread"] = n / seconds
        print(f"hybrid, one queue       {_rate(n, seconds)}")

        start = time.perf_counter()  # the NVDEC threads in one decoder process instead
        items = decode_hybrid(
            clips, gpu_decode=None, frames=args.frames, size=224, threads=8,
            workers=args.workers, timeout=300, journal_dir=None, accepts=nvdec_accepts,
            process_device=str(device),
        )  # fmt: skip
        n = sum(1 for _ in items)
        seconds = time.perf_counter() - start
        decode_rate["process"] = n / seconds
        print(f"hybrid, NVDEC process   {_rate(n, seconds)} (its start-up in)")

        backbone = build_backbone()
        extractor = TapExtractor(backbone, device)
        frames = nvdec.decode(clips[0].path, infos[0], args.frames, size).frames
        batch = frames.repeat(256 // len(frames) + 1, 1, 1, 1)[:256]
        extractor(batch)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            extractor(batch)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"CNN-only (fp16, 256)    {20 * 256 / args.frames / seconds:8.2f} clips/s")

        for decoder, host in (("cpu", "thread"), ("nvdec", "thread"), ("nvdec", "process")):
            config = FeaturesConfig(
                frames=args.frames, device="cuda", decoder=decoder, workers=args.workers,
                batch_frames=512, nvdec_host=host,
            )  # fmt: skip
            out = Path(tmp) / f"{decoder}-{host}.h5"
            summary = extract_features(videos, out, config, show_progress=False)
            assert summary.ok == len(clips)
            label = decoder if decoder == "cpu" else f"{decoder}, NVDEC in a {host}"
            bound = decode_rate["cpu" if decoder == "cpu" else host]
            rate = len(clips) / summary.processing_seconds
            print(
                f"end-to-end, decoder {label:28s} "
                f"{_rate(len(clips), summary.processing_seconds)} (clip loop); "
                f"/ its decode bound ({bound:.2f} clips/s): {rate / bound:.2f}"
            )


if __name__ == "__main__":
    main()
