"""Benchmark of photo input: grouping a large folder tree of photos into sequences, and
decoding real camera-trap photos.

1. Discovery: N small JPEGs with EXIF capture times (bursts of 1-5 photos, 1 s apart, bursts
   10 minutes apart, 100 camera folders) → :func:`extract.discover.discover`: seconds,
   photos/s, peak memory (tracemalloc) and whether every burst was recovered.
2. Decoding: the 10 real 2048x1440 Reconyx photos of ``../shared/data/photos-camtrap-dp``
   through :func:`extract.sequences.decode_sequence` at the default backbone's 224 px, one
   process: photos/s (JPEG draft mode decodes them at a reduced DCT scale).

    python scripts/bench_sequences.py [--photos 100000] [--dir /tmp/jungle-bench-photos]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from extract.discover import discover  # noqa: E402
from extract.sequences import decode_sequence  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "photos-camtrap-dp"


def _jpeg_bytes(when: datetime, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, exif=exif.tobytes())
    return buffer.getvalue()


def make_tree(root: Path, n_photos: int, seed: int = 0) -> int:
    """``n_photos`` JPEGs in 100 folders; returns the number of bursts written."""
    rng = np.random.default_rng(seed)
    bursts = written = 0
    t0 = datetime(2024, 1, 1)
    per_folder = -(-n_photos // 100)
    for folder in range(100):
        path = root / f"cam{folder:03d}"
        path.mkdir(parents=True)
        when = t0
        k = 0
        while k < per_folder and written < n_photos:
            size = int(rng.integers(1, 6))
            bursts += 1
            for j in range(min(size, per_folder - k, n_photos - written)):
                stamp = when + timedelta(seconds=j)
                (path / f"IMG_{k:06d}.JPG").write_bytes(_jpeg_bytes(stamp, written % 8))
                k += 1
                written += 1
            when += timedelta(minutes=10)
    return bursts


def bench_discovery(folder: Path, n_photos: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    bursts = make_tree(folder, n_photos)
    made = time.perf_counter() - started
    tracemalloc.start()
    started = time.perf_counter()
    _, clips = discover(folder)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    photos = sum(len(c.images) for c in clips)
    print(
        f"discovery: {n_photos} photos in 100 folders (written in {made:.0f} s) -> "
        f"{len(clips)} sequences ({'all' if len(clips) == bursts else 'NOT all'} {bursts} "
        f"bursts recovered, {photos} photos) in {seconds:.1f} s = {n_photos / seconds:,.0f} "
        f"photos/s; peak traced memory {peak / 1e6:.0f} MB"
    )
    shutil.rmtree(folder, ignore_errors=True)


def bench_decode(repeats: int) -> None:
    if not PHOTOS.is_dir():
        print(f"decode: skipped ({PHOTOS} is absent)")
        return
    images = tuple(sorted(PHOTOS.glob("*.JPG")))
    decode_sequence(images, 10, 224)  # warm the page cache
    started = time.perf_counter()
    for _ in range(repeats):
        decode_sequence(images, 10, 224)
    seconds = time.perf_counter() - started
    n = repeats * len(images)
    print(
        f"decode: {n} real 2048x1440 JPEG photos to 224x224 in {seconds:.1f} s = "
        f"{n / seconds:.1f} photos/s ({n / seconds / len(images):.1f} 10-photo sequences/s) "
        "in one process"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/jungle-bench-photos"))
    parser.add_argument("--repeats", type=int, default=10, help="decode passes over the burst")
    args = parser.parse_args()
    print(f"bench_sequences: {os.cpu_count()} CPUs, {datetime.now():%Y-%m-%d %H:%M}")
    bench_discovery(args.dir, args.photos)
    bench_decode(args.repeats)


if __name__ == "__main__":
    main()
