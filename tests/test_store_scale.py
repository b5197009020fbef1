"""The feature store at survey scale: file identity, streaming assembly under a small open-file
limit, in-place extension and its recovery, --shard and merge, the lock."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.assemble import assemble, extend, merge_stores, recover
from extract.config import FeaturesConfig
from extract.identity import FileIdentity, file_identity
from extract.lock import LockError, StoreLock
from extract.pipeline import extract_features, parts_dir
from extract.store import (
    ClipFeatures,
    Failure,
    FeatureStore,
    ShardBuffer,
    ShardWriter,
    StoreError,
    extending_path,
    write_shard,
)
from tests.media import indexed_clip

REPO = Path(__file__).resolve().parents[1]
T, LAYERS = 4, {"a": 3, "b": 5}


def _jungle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jungle", *args], capture_output=True, text=True, timeout=300
    )


def _attrs(source: str = "/videos", frames: int = T) -> dict:
    extraction = {"backbone": "synthetic", "layers": list(LAYERS), "frames": frames}
    return {"extraction": extraction, "config": {}, "versions": {}, "source": source}


def _clip(cid: str, seed: int) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    meta = {
        "file_size": seed,
        "width": 8,
        "height": 6,
        "fps": 1.0,
        "frame_count": T,
        "duration": float(T),
        "bitrate": 1,
        "codec": "h264",
        "container": "mp4",
        "decoder": "pyav",
        "partial": False,
    }
    return ClipFeatures(
        clip_id=cid,
        path=f"/videos/{cid}",
        meta=meta,
        frame_index=np.arange(T, dtype=np.int32),
        mask=np.ones(T, dtype=bool),
        features={k: rng.normal(size=(T, c)).astype(np.float16) for k, c in LAYERS.items()},
        identity=FileIdentity(100 + seed, 7, f"fp{seed}"),
    )


def _shard(path: Path, ok: list[tuple[str, int]], failed: tuple[str, ...] = ()) -> Path:
    buffer = ShardBuffer(
        [_clip(c, s) for c, s in ok],
        [Failure(c, "broken", FileIdentity(1, 1, "x")) for c in failed],
    )
    write_shard(path, buffer, list(LAYERS), _attrs())
    return path


def _rows(path: Path) -> dict[str, tuple]:
    """Clip id → everything stored for it (order-free comparison of stores)."""
    store = FeatureStore(path)
    x, meta, ident = store.features(), store.meta(), store.identities()
    out = {}
    for i, cid in enumerate(store.ids):
        out[cid] = (
            x[i].tobytes(),
            tuple(meta.iloc[i]),
            tuple(ident.iloc[i]),
            store.mask()[i].tobytes(),
        )
    failed = store.failed()
    out |= {f"failed:{c}": r for c, r in zip(failed["id"], failed["reason"], strict=True)}
    return out


def test_two_thousand_shards_assemble_under_a_small_open_file_limit(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(2000):
        _shard(parts / f"shard-{i:05d}.h5", [(f"c{i:05d}.mp4", i)], ("bad.mp4",) if i == 5 else ())
    out = tmp_path / "f.h5"
    code = (
        "import resource, sys, json; from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from extract.assemble import assemble\n"
        f"shards = sorted(Path({str(parts)!r}).glob('shard-*.h5'))\n"
        f"print(assemble(Path({str(out)!r}), shards, json.loads({json.dumps(_attrs())!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2000, 1)"
    store = FeatureStore(out)
    assert store.ids == [f"c{i:05d}.mp4" for i in range(2000)]
    np.testing.assert_array_equal(
        store.features(["b"], rows=[1999, 3]),
        np.stack([_clip("c01999.mp4", 1999).features["b"], _clip("c00003.mp4", 3).features["b"]]),
    )
    assert list(store.failed()["id"]) == ["bad.mp4"]


def test_extended_three_times_equals_made_at_once_and_later_shards_win(tmp_path: Path) -> None:
    batches = [
        [("m.mp4", 1), ("z.mp4", 2)],
        [("a.mp4", 3), ("q.mp4", 4)],
        [("b.mp4", 5), ("m.mp4", 6)],  # m.mp4 changed: its row is replaced
    ]
    once = tmp_path / "once.h5"
    shards = [_shard(tmp_path / f"s{i}.h5", b) for i, b in enumerate(batches)]
    assemble(once, shards, _attrs())
    grown = tmp_path / "grown.h5"
    assemble(grown, shards[:1], _attrs())
    with h5py.File(grown, "r") as f:
        first_feature_bytes = f["features/b"][0].tobytes()
    extend(grown, shards[1:2])
    extend(grown, shards[2:3], {"z.mp4": 99})
    assert _rows(grown).keys() == _rows(once).keys()
    for cid, row in _rows(once).items():
        if cid != "z.mp4":
            assert _rows(grown)[cid] == row, cid
    store = FeatureStore(grown)
    assert store.ids == ["m.mp4", "z.mp4", "a.mp4", "q.mp4", "b.mp4"]  # appended in place
    ident = store.identities().set_index("id")
    assert ident.loc["z.mp4", "mtime_ns"] == 99 and ident.loc["m.mp4", "fingerprint"] == "fp6"
    assert first_feature_bytes != store.features(["b"], rows=[0])[0].tobytes()


def test_a_clip_that_now_fails_leaves_the_store(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    assemble(out, [_shard(tmp_path / "s0.h5", [("a.mp4", 1), ("b.mp4", 2)], ("c.mp4",))], _attrs())
    extend(out, [_shard(tmp_path / "s1.h5", [("c.mp4", 3)], ("a.mp4",))])
    store = FeatureStore(out)
    assert sorted(store.ids) == ["b.mp4", "c.mp4"]
    assert list(store.failed()["id"]) == ["a.mp4"]


def test_an_interrupted_extension_is_undone(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    assemble(out, [_shard(tmp_path / "s0.h5", [("a.mp4", 1)], ("bad.mp4",))], _attrs())
    before = _rows(out)
    # what a kill in the middle of extend() leaves: the journal, extra rows, a changed table
    with h5py.File(out, "r") as f:
        failed = {
            n: [v.decode() if isinstance(v, bytes) else v for v in f[n][()].tolist()]
            for n in (
                "failed/id",
                "failed/reason",
                "failed/size",
                "failed/mtime_ns",
                "failed/fingerprint",
            )
        }
    extending_path(out).write_text(json.dumps({"clips": 1, "failed": failed}))
    with pytest.raises(StoreError, match="run the same"):
        FeatureStore(out)
    with h5py.File(out, "r+") as f:
        for name in ("clips/id", "features/a", "meta/width"):
            f[name].resize((3, *f[name].shape[1:]))
        f["failed/id"].resize((0,))
    assert recover(out) and not extending_path(out).exists()
    assert _rows(out) == before


def test_merge_refuses_other_settings_and_conflicting_clips(tmp_path: Path) -> None:
    a = tmp_path / "a.h5"
    assemble(a, [_shard(tmp_path / "s0.h5", [("x.mp4", 1), ("y.mp4", 2)])], _attrs())
    b = tmp_path / "b.h5"
    assemble(b, [_shard(tmp_path / "s1.h5", [("y.mp4", 2), ("w.mp4", 3)], ("v.mp4",))], _attrs())
    assert merge_stores([a, b], tmp_path / "ab.h5") == (3, 1)
    assert FeatureStore(tmp_path / "ab.h5").ids == ["x.mp4", "y.mp4", "w.mp4"]
    c = tmp_path / "c.h5"
    assemble(c, [_shard(tmp_path / "s2.h5", [("x.mp4", 5)])], _attrs())
    with pytest.raises(StoreError, match="'x.mp4' is in .* different file contents"):
        merge_stores([a, c], tmp_path / "ac.h5")
    other = tmp_path / "other.h5"
    assemble(other, [_shard(tmp_path / "s3.h5", [("k.mp4", 1)])], _attrs(frames=8))
    with pytest.raises(StoreError, match="other extraction settings"):
        merge_stores([a, other], tmp_path / "ao.h5")
    elsewhere = tmp_path / "elsewhere.h5"
    assemble(elsewhere, [_shard(tmp_path / "s4.h5", [("k.mp4", 1)])], _attrs("/card2"))
    with pytest.raises(StoreError, match="different folders"):
        merge_stores([a, elsewhere], tmp_path / "ae.h5")
    cli = _jungle("merge", str(a), str(other), "--out", str(tmp_path / "cli.h5"))
    assert cli.returncode == 2 and "other extraction settings" in cli.stderr
    assert "Traceback" not in cli.stderr and not (tmp_path / "cli.h5").exists()


#: the settings of :func:`_small` as `jungle features` options.
SMALL_CLI = (
    "--no-progress",
    "--frames",
    "4",
    "--image-size",
    "32",
    "--workers",
    "0",
    "--batch-frames",
    "8",
)


def _small(**update: object) -> FeaturesConfig:
    return FeaturesConfig(
        frames=4, image_size=32, workers=0, batch_frames=8, shard_clips=2
    ).model_copy(update=update)


def test_same_names_in_two_cards_are_never_mixed(tmp_path: Path) -> None:
    card_a, card_b = tmp_path / "cardA", tmp_path / "cardB"
    for card, frames in ((card_a, 20), (card_b, 30)):
        card.mkdir()
        indexed_clip(card / "IMAG0001.mp4", frames)
    out = tmp_path / "f.h5"
    extract_features(card_a, out, _small(), show_progress=False)
    refused = _jungle(
        "features",
        str(card_b),
        "--out",
        str(out),
        *SMALL_CLI,
    )
    assert refused.returncode == 2, refused.stderr
    assert "was made from the clips in" in refused.stderr and "Traceback" not in refused.stderr
    assert str(tmp_path) in refused.stderr  # the common parent folder is suggested
    both = extract_features(tmp_path, tmp_path / "both.h5", _small(), show_progress=False)
    assert (both.ok, both.processed) == (2, 2)
    assert sorted(FeatureStore(tmp_path / "both.h5").ids) == [
        "cardA/IMAG0001.mp4",
        "cardB/IMAG0001.mp4",
    ]


def test_changed_files_are_extracted_again_and_copies_are_not(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, frames in (("a.mp4", 20), ("b.mp4", 24), ("c.mp4", 28)):
        indexed_clip(videos / name, frames)
    out = tmp_path / "f.h5"
    extract_features(videos, out, _small(), show_progress=False)
    store = FeatureStore(out)
    before = dict(zip(store.ids, store.features(), strict=True))
    # b.mp4 copied over itself: new time, same content; c.mp4 replaced by another clip
    shutil.copyfile(videos / "b.mp4", tmp_path / "b.tmp")
    os.replace(tmp_path / "b.tmp", videos / "b.mp4")
    os.utime(videos / "b.mp4", ns=(1_000_000_000, 1_000_000_000))
    indexed_clip(videos / "c.mp4", 60)
    summary = extract_features(videos, out, _small(), show_progress=False)
    assert (summary.processed, summary.already_done, summary.ok) == (1, 2, 3)
    store = FeatureStore(out)
    after = dict(zip(store.ids, store.features(), strict=True))
    np.testing.assert_array_equal(after["a.mp4"], before["a.mp4"])
    np.testing.assert_array_equal(after["b.mp4"], before["b.mp4"])
    assert not np.array_equal(after["c.mp4"], before["c.mp4"])
    ident = store.identities().set_index("id")
    assert ident.loc["b.mp4", "mtime_ns"] == 1_000_000_000  # recorded: no re-read next time
    assert ident.loc["c.mp4", "fingerprint"] == file_identity(videos / "c.mp4").fingerprint
    again = extract_features(videos, out, _small(), show_progress=False)
    assert again.processed == 0


def test_shards_merged_equal_the_whole_run(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(7):
        indexed_clip(videos / f"c{i}.mp4", 12 + i)
    (videos / "broken.mp4").write_bytes(b"not a video")
    whole = tmp_path / "whole.h5"
    extract_features(videos, whole, _small(), show_progress=False)
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        done = _jungle(
            "features",
            str(videos),
            "--out",
            str(part),
            "--shard",
            f"{i}/3",
            *SMALL_CLI,
        )
        assert done.returncode == 0, done.stderr
        parts.append(part)
    merged = _jungle("merge", *map(str, parts), "--out", str(tmp_path / "merged.h5"))
    assert merged.returncode == 0, merged.stderr
    a, b = FeatureStore(whole), FeatureStore(tmp_path / "merged.h5")
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.features(), b.features())
    assert a.meta().equals(b.meta()) and a.identities().equals(b.identities())
    assert a.failed().equals(b.failed())
    bad = _jungle("features", str(videos), "--out", str(tmp_path / "x.h5"), "--shard", "3/3")
    assert bad.returncode == 2 and "0 <= I < N" in bad.stderr


def test_a_second_run_is_refused_and_a_stale_lock_taken_over(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    indexed_clip(videos / "a.mp4", 12)
    out = tmp_path / "f.h5"
    with StoreLock(out):
        with pytest.raises(LockError, match=f"pid {os.getpid()} on host"):
            extract_features(videos, out, _small(), show_progress=False)
        refused = _jungle("features", str(videos), "--out", str(out), "--no-progress")
        assert refused.returncode == 2 and f"pid {os.getpid()}" in refused.stderr
    assert not out.exists() and not parts_dir(out).exists()
    # a lock left by a process that is gone (kill -9): taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    lock = out.with_name(out.name + ".lock")
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "start": "1"}))
    summary = extract_features(videos, out, _small(), show_progress=False)
    assert summary.ok == 1 and not lock.exists()


def test_real_store_extended_three_times_equals_one_made_at_once(tmp_path: Path) -> None:
    videos, whole = tmp_path / "videos", tmp_path / "whole"
    videos.mkdir()
    whole.mkdir()
    names = [f"{c}.mp4" for c in "fbdaec"]
    for k, name in enumerate(names):
        indexed_clip(whole / name, 10 + 3 * k)
    (whole / "zero.mp4").write_bytes(b"")
    once = extract_features(whole, tmp_path / "once.h5", _small(), show_progress=False)
    grown = tmp_path / "grown.h5"
    for batch in (names[:2], names[2:4], [*names[4:], "zero.mp4"]):
        for name in batch:
            shutil.copy2(whole / name, videos / name)
        extract_features(videos, grown, _small(), show_progress=False)
    a, b = FeatureStore(tmp_path / "once.h5"), FeatureStore(grown)
    assert once.ok == len(b) == 6 and list(b.failed()["id"]) == ["zero.mp4"]
    # rows in the order added: each run appends its new clips in sorted order
    assert b.ids == ["b.mp4", "f.mp4", "a.mp4", "d.mp4", "c.mp4", "e.mp4"]
    order = [a.ids.index(c) for c in b.ids]
    np.testing.assert_array_equal(a.features(rows=order), b.features())
    np.testing.assert_array_equal(a.mask()[order], b.mask())
    cols = ["size", "fingerprint"]  # copies keep size and content
    assert a.identities().iloc[order][cols].reset_index(drop=True).equals(b.identities()[cols])


def test_streaming_reads_select_any_rows_without_reading_through_long_gaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extract import store as store_module
    from extract.store import contiguous_runs

    rows = np.array([0, 1, 2, 10, 11, 50, 200])
    runs = [(lo, hi, p.tolist()) for lo, hi, p in contiguous_runs(rows, 100, max_gap=5)]
    assert runs == [(0, 3, [0, 1, 2]), (10, 12, [3, 4]), (50, 51, [5]), (200, 201, [6])]
    assert [(lo, hi) for lo, hi, _ in contiguous_runs(rows, 11)] == [
        (0, 11),
        (11, 12),
        (50, 51),
        (200, 201),
    ]
    out = tmp_path / "f.h5"
    assemble(out, [_shard(tmp_path / "s.h5", [(f"c{i:03d}.mp4", i) for i in range(300)])], _attrs())
    store = FeatureStore(out)
    everything = store.features()
    monkeypatch.setattr(store_module, "READ_BYTES", 7 * T * 8 * 2)  # 7 clips per read
    monkeypatch.setattr(store_module, "GAP_BYTES", 3 * T * 8 * 2)
    pick = np.random.default_rng(0).integers(0, 300, size=80)  # any order, duplicates
    np.testing.assert_array_equal(store.features(rows=pick), everything[pick])
    blocks = list(store.iter_features(rows=pick))
    assert max(len(r) for r, _ in blocks) <= 7
    got = np.concatenate([r for r, _ in blocks])
    np.testing.assert_array_equal(got, np.unique(pick))
    np.testing.assert_array_equal(np.concatenate([x for _, x in blocks]), everything[got])


def test_too_little_disk_space_is_a_clear_error_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extract import assemble as assemble_module

    out = tmp_path / "f.h5"
    assemble(out, [_shard(tmp_path / "s0.h5", [("a.mp4", 1)])], _attrs())
    before = _rows(out)
    new = _shard(tmp_path / "s1.h5", [("b.mp4", 2)])
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(assemble_module.shutil, "disk_usage", lambda _: real._replace(free=1 << 20))
    with pytest.raises(StoreError, match="not enough free disk space .* GB free"):
        extend(out, [new])
    with pytest.raises(StoreError, match="not enough free disk space"):
        merge_stores([out, new], tmp_path / "merged.h5")
    assert _rows(out) == before and new.exists() and not extending_path(out).exists()
    assert not (tmp_path / "merged.h5").exists()


def test_shard_writer_writes_in_the_background_in_order_and_raises_a_failed_write(
    tmp_path: Path,
) -> None:
    writer = ShardWriter(list(LAYERS), _attrs())
    for i in range(3):
        writer.submit(tmp_path / f"shard-{i}.h5", ShardBuffer([_clip(f"c{i}.mp4", i)]))
    writer.close()
    _shard(tmp_path / "direct.h5", [("c1.mp4", 1)])
    assert _rows(tmp_path / "shard-1.h5") == _rows(tmp_path / "direct.h5")
    assert sorted(p.name for p in tmp_path.glob("shard-*.h5")) == [
        "shard-0.h5", "shard-1.h5", "shard-2.h5"
    ]  # fmt: skip

    # a write that fails (its folder is gone) stops the writer: the error reaches the
    # caller, and no shard after it is written
    writer = ShardWriter(list(LAYERS), _attrs())
    with pytest.raises(OSError):  # raised by the second submit or by close
        writer.submit(tmp_path / "gone" / "shard-a.h5", ShardBuffer([_clip("a.mp4", 1)]))
        writer.submit(tmp_path / "shard-b.h5", ShardBuffer([_clip("b.mp4", 2)]))
        writer.close()
    assert not (tmp_path / "shard-b.h5").exists()
