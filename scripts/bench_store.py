"""Benchmark of the feature store at survey scale: assembling, merging and extending stores of
10k, 100k and 1M synthetic clip rows (T=32 frames, one layer of C=64 channels, float16).

Each measurement runs in a fresh Python process, after a ``sync``, and reports wall time
(including the final fsync of the output) and peak resident memory (VmHWM). Growth no worse
than N log N shows as a time per row that does not grow faster than log N; flat memory shows
as a peak RSS that grows only with the clip ids.

    python scripts/bench_store.py [--sizes 10000 100000 1000000] [--dir /tmp/jungle-bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from extract.assemble import FAILED_NAMES  # noqa: E402
from extract.store import IDENTITY_FIELDS, META_FIELDS, STR, write_attrs  # noqa: E402

T, C, SHARD_ROWS = 32, 64, 1000
LAYERS = ["features"]


def attrs(source: str = "/survey") -> dict:
    """File attributes of the synthetic stores."""
    return {
        "extraction": {"backbone": "synthetic", "layers": LAYERS, "frames": T},
        "config": {},
        "versions": {},
        "source": source,
    }


def write_rows(path: Path, start: int, n: int) -> None:
    """A store/shard of ``n`` synthetic clips ``c{start}..``, written in bulk."""
    ids = [f"cam{(start + i) % 97:02d}/clip{start + i:07d}.mp4" for i in range(n)]
    rng = np.random.default_rng(start)
    block = rng.normal(size=(min(n, 256), T, C)).astype(np.float16)
    with h5py.File(path, "w") as f:
        write_attrs(f, attrs())
        f.create_dataset("clips/id", data=ids, dtype=STR)
        f.create_dataset("clips/path", data=["/survey/" + c for c in ids], dtype=STR)
        f.create_dataset("clips/size", data=np.arange(start, start + n, dtype=np.int64) + 10**6)
        f.create_dataset("clips/mtime_ns", data=np.full(n, 1, dtype=np.int64))
        f.create_dataset(
            "clips/fingerprint", data=[f"{start + i:032x}" for i in range(n)], dtype=STR
        )
        f.create_dataset("clips/frame_index", data=np.tile(np.arange(T, dtype=np.int32), (n, 1)))
        f.create_dataset("clips/mask", data=np.ones((n, T), dtype=bool))
        for name, dtype in META_FIELDS.items():
            value = "h264" if dtype is STR else 1
            f.create_dataset(
                f"meta/{name}",
                data=np.full(n, value, dtype=object if dtype is STR else dtype),
                dtype=dtype,
            )
        x = f.create_dataset("features/features", shape=(n, T, C), dtype=np.float16)
        for lo in range(0, n, len(block)):
            x[lo : lo + len(block)] = block[: n - lo]
        for name in FAILED_NAMES:
            dtype = IDENTITY_FIELDS.get(name.split("/")[1], STR)
            f.create_dataset(name, shape=(0,), dtype=dtype)


CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from extract.assemble import assemble, extend, merge_stores
args = json.loads({args!r})
started = time.perf_counter()
if args["op"] == "assemble":
    result = assemble(Path(args["out"]), [Path(p) for p in args["sources"]], args["attrs"])
elif args["op"] == "merge":
    result = merge_stores([Path(p) for p in args["sources"]], Path(args["out"]))
else:
    result = extend(Path(args["out"]), [Path(p) for p in args["sources"]])
seconds = time.perf_counter() - started
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"seconds": seconds, "peak_mb": int(hwm) / 1024, "result": list(result)}}))
"""


def run_child(op: str, out: Path, sources: list[Path]) -> dict:
    """Run one operation in a fresh process; its time and peak memory."""
    args = json.dumps(
        {"op": op, "out": str(out), "sources": [str(s) for s in sources], "attrs": attrs()}
    )
    code = CHILD.format(repo=str(REPO), args=args)
    os.sync()  # inputs just written are on disk: their write-back is not timed as the operation
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(n: int, folder: Path) -> dict:
    """Assemble n rows from shards of 1000, merge two halves, extend by one shard."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, n, SHARD_ROWS)):
        shards.append(folder / f"shard-{k:06d}.h5")
        write_rows(shards[-1], start, min(SHARD_ROWS, n - start))
    store = folder / "store.h5"
    assembled = run_child("assemble", store, shards)
    half = len(shards) // 2
    a, b = folder / "a.h5", folder / "b.h5"
    run_child("assemble", a, shards[:half])
    run_child("assemble", b, shards[half:])
    for p in shards:
        p.unlink()
    merged = run_child("merge", folder / "merged.h5", [a, b])
    extra = folder / "extra.h5"
    write_rows(extra, n, SHARD_ROWS)
    extended = run_child("extend", store, [extra])
    gb = store.stat().st_size / 1e9
    return {
        "n": n,
        "shards": len(shards),
        "store_gb": gb,
        "assemble": assembled,
        "merge": merged,
        "extend": extended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="scratch folder (needs ~4.5x the largest store: 1M rows = 4.2 GB)",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="jungle-bench-store-", dir=args.dir))
    print(f"store benchmark: T={T}, C={C} float16, shards of {SHARD_ROWS} clips, in {base}")
    print(
        f"{'clips':>9} {'GB':>6} | {'assemble s':>10} {'us/row':>7} {'peak MB':>8} | "
        f"{'merge s':>8} {'us/row':>7} {'peak MB':>8} | {'extend+1000 s':>13} {'peak MB':>8}"
    )
    rows = []
    try:
        for n in args.sizes:
            started = time.perf_counter()
            r = bench(n, base / str(n))
            rows.append(r)
            print(
                f"{n:>9} {r['store_gb']:>6.2f} | {r['assemble']['seconds']:>10.2f} "
                f"{1e6 * r['assemble']['seconds'] / n:>7.2f} {r['assemble']['peak_mb']:>8.0f} | "
                f"{r['merge']['seconds']:>8.2f} {1e6 * r['merge']['seconds'] / n:>7.2f} "
                f"{r['merge']['peak_mb']:>8.0f} | {r['extend']['seconds']:>13.2f} "
                f"{r['extend']['peak_mb']:>8.0f}   ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            shutil.rmtree(base / str(n))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        for op in ("assemble", "merge"):
            growth = b[op]["seconds"] / a[op]["seconds"]
            bound = (b["n"] * math.log(b["n"])) / (a["n"] * math.log(a["n"]))
            print(
                f"{op}: time x{growth:.1f} for clips x{b['n'] / a['n']:.0f} "
                f"(N log N would be x{bound:.1f})"
            )


if __name__ == "__main__":
    main()
