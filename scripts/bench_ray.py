"""Benchmark of `jungle features --engine ray` against the local engine (run by `make bench`).

Both engines extract the same clips (the six real 720x404 clips of
../shared/data/chimpandsee looped to --clips symlinks) into fresh stores, one after the
other in this process, with the default settings (32 frames, the default backbone, 2
decoder processes for the local engine). The Ray engine starts its own local Ray instance
(``ray.init()``, as `jungle features --engine ray` does without --ray-address); its start-up
is part of its time. Printed per engine: the whole call and the clip loop (decode + CNN +
shard writes; for Ray it includes starting Ray and the actors), clips/s of each, and
Ray / local (the issue's target: >= 0.8 end to end). The two stores are compared (features
within float16 tolerance), so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.config import FeaturesConfig  # noqa: E402
from extract.pipeline import ExtractSummary, extract_features  # noqa: E402
from extract.store import FeatureStore  # noqa: E402
from scripts.bench_features import DEFAULT_DATA, looped_folder  # noqa: E402


def _row(name: str, s: ExtractSummary, n: int) -> str:
    return (
        f"| {name} | {n} | {s.seconds:.1f} | {n / s.seconds:.2f} | {s.processing_seconds:.1f} "
        f"| {n / s.processing_seconds:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument(
        "--decoder",
        default="cpu",
        choices=["cpu", "nvdec"],
        help="nvdec (a GPU machine with jungle[gpu]): NVDEC in the local run's threads and "
        "in the Ray engine's GPU actors",
    )
    args = parser.parse_args()
    print(f"# jungle features: Ray engine vs local, {date.today()}, {platform.node()}")
    print(
        f"# {os.cpu_count()} CPUs, {args.clips} clips looped from {args.data}, "
        f"decoder {args.decoder}"
    )
    config = FeaturesConfig(decoder=args.decoder)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "videos").mkdir()
        videos = looped_folder(args.data, args.clips, Path(tmp) / "videos")
        local = extract_features(videos, Path(tmp) / "local.h5", config, show_progress=False)
        ray = extract_features(
            videos,
            Path(tmp) / "ray.h5",
            config.model_copy(update={"engine": "ray"}),
            show_progress=False,
        )
        a, b = FeatureStore(local.out), FeatureStore(ray.out)
        same_ids = sorted(a.ids) == sorted(b.ids)  # (NVDEC runs store clips as they finish)
        diff = float("nan")
        if same_ids:
            rows = [a.ids.index(i) for i in b.ids]
            local_features = a.features(rows=rows).astype(np.float32)
            diff = float(np.abs(local_features - b.features().astype(np.float32)).max())
    print("| engine | clips | whole call s | clips/s | clip loop s | clips/s (loop) |")
    print("|---|---|---|---|---|---|")
    print(_row("local", local, args.clips))
    print(_row("ray", ray, args.clips))
    print(
        f"ray / local end to end: {local.seconds / ray.seconds:.2f} (whole call), "
        f"{local.processing_seconds / ray.processing_seconds:.2f} (clip loop); "
        f"same ids: {same_ids}, max |feature difference|: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
