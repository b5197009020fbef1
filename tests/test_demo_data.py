"""Tests for the synthetic camera-trap clip and photo-burst generator
(scripts/make_demo_data.py)."""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from scripts.make_demo_data import BLANK, CLASSES, generate_demo, main

SITES = ("siteA", "siteB", "siteC", "siteD")
N_CLIPS = 30
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def read_labels(labels_csv: Path) -> list[dict[str, str]]:
    with labels_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def decode(path: Path) -> np.ndarray:
    """All frames of a clip as ``(T, H, W, 3)`` uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def motion(frames: np.ndarray) -> int:
    """Largest number of pixels whose luma changes by more than 25 between two frames."""
    luma = frames.astype(np.float32) @ LUMA
    return int((np.abs(np.diff(luma, axis=0)) > 25).sum(axis=(1, 2)).max())


def foreground(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W)`` mask of pixels far from the clip's temporal median (its background)."""
    frames = frames.astype(np.float32)
    return np.abs(frames - np.median(frames, axis=0)).max(axis=-1) > 25


def is_grey(frames: np.ndarray) -> bool:
    f = frames.astype(np.int16)
    return bool(
        np.abs(f[..., 0] - f[..., 1]).max() <= 3 and np.abs(f[..., 1] - f[..., 2]).max() <= 3
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("demo")
    labels_csv = generate_demo(out, n_clips=N_CLIPS, sites=SITES, seed=3)
    assert labels_csv == out / "labels.csv"
    return out, read_labels(labels_csv)


@pytest.fixture(scope="module")
def decoded(demo: tuple[Path, list[dict[str, str]]]) -> list[np.ndarray]:
    out, rows = demo
    return [decode(out / r["filepath"]) for r in rows]


def test_labels_csv_format_and_vocabulary(demo):
    out, rows = demo
    with (out / "labels.csv").open() as f:
        assert f.readline().strip() == "filepath,label,site"
    assert len(rows) == N_CLIPS
    assert len({r["filepath"] for r in rows}) == N_CLIPS
    vocabulary = {BLANK, *CLASSES} | {f"{a};{b}" for a, b in itertools.combinations(CLASSES, 2)}
    for r in rows:
        assert r["label"] in vocabulary
        assert r["site"] in SITES
        assert r["filepath"].startswith(r["site"] + "/") and r["filepath"].endswith(".mp4")
        assert not Path(r["filepath"]).is_absolute()


def test_label_counts_and_coverage(demo):
    _, rows = demo
    labels = [r["label"] for r in rows]
    assert labels.count(BLANK) == round(N_CLIPS * 0.5)
    assert sum(";" in label for label in labels) == round(N_CLIPS * 0.1)
    occurrences = Counter(c for label in labels if label != BLANK for c in label.split(";"))
    assert set(occurrences) == set(CLASSES) and min(occurrences.values()) >= 2
    assert set(Counter(r["site"] for r in rows)) == set(SITES)


def test_two_species_labels_are_sorted_distinct_classes(demo):
    _, rows = demo
    pairs = [r["label"].split(";") for r in rows if ";" in r["label"]]
    assert pairs
    for pair in pairs:
        assert len(pair) == 2 and pair == sorted(pair) and pair[0] != pair[1]
        assert set(pair) <= set(CLASSES)


@pytest.mark.parametrize("seed", range(4))
def test_every_class_at_least_twice_from_20_clips(tmp_path, seed):
    rows = read_labels(
        generate_demo(tmp_path, n_clips=20, width=32, height=32, fps=2, seconds=1, seed=seed)
    )
    occurrences = Counter(c for r in rows if r["label"] != BLANK for c in r["label"].split(";"))
    assert all(occurrences[c] >= 2 for c in CLASSES), occurrences


def test_clips_decode_to_requested_size_and_length(demo, decoded):
    out, rows = demo
    for r, frames in zip(rows, decoded, strict=True):
        assert frames.shape == (32, 120, 160, 3), r["filepath"]
        with av.open(str(out / r["filepath"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == 8


def test_custom_size_rate_and_duration(tmp_path):
    rows = read_labels(generate_demo(tmp_path, n_clips=2, width=96, height=64, fps=5, seconds=2.0))
    for r in rows:
        assert decode(tmp_path / r["filepath"]).shape == (10, 64, 96, 3)


def test_blank_clips_have_no_moving_body(demo, decoded):
    _, rows = demo
    blank = [motion(f) for r, f in zip(rows, decoded, strict=True) if r["label"] == BLANK]
    animal = [motion(f) for r, f in zip(rows, decoded, strict=True) if r["label"] != BLANK]
    assert blank and animal
    assert max(blank) <= 20, blank  # sensor noise and coding artefacts only
    assert min(animal) >= 150, animal
    assert max(blank) * 10 < min(animal)


def test_animals_visible_in_part_of_the_clip(demo, decoded):
    _, rows = demo
    for r, frames in zip(rows, decoded, strict=True):
        if r["label"] == BLANK or ";" in r["label"]:
            continue
        visible = np.flatnonzero(foreground(frames).sum(axis=(1, 2)) > 20)
        assert 0.15 <= len(visible) / len(frames) <= 0.55, (r["label"], visible)
        # one unbroken stretch: the body enters, crosses and leaves
        assert visible[-1] - visible[0] + 1 == len(visible), (r["label"], visible)


def test_species_differ_in_size_and_colour(tmp_path):
    classes = ("chimpanzee", "duiker", "elephant", "hog", "leopard")
    labels_csv = generate_demo(
        tmp_path, n_clips=10, classes=classes, blank_fraction=0.0, two_species_fraction=0.0,
        night_fraction=0.0, seed=5,
    )  # fmt: skip
    area: dict[str, list[int]] = {c: [] for c in classes}
    colour: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    for r in read_labels(labels_csv):
        frames = decode(tmp_path / r["filepath"])
        fg = foreground(frames)
        k = int(fg.sum(axis=(1, 2)).argmax())  # the frame where most of the body shows
        area[r["label"]].append(int(fg[k].sum()))
        colour[r["label"]].append(frames[k][fg[k]].astype(float).mean(axis=0))
    assert all(len(v) == 2 for v in area.values())
    assert min(area["elephant"]) > 2 * max(max(area[c]) for c in classes if c != "elephant")
    assert max(area["duiker"]) < min(min(area[c]) for c in classes if c != "duiker")
    rgb = {c: np.mean(v, axis=0) for c, v in colour.items()}
    assert min(rgb, key=lambda c: rgb[c].sum()) == "chimpanzee"  # darkest
    assert max(rgb, key=lambda c: rgb[c][0] - rgb[c][1]) == "hog"  # reddest
    assert rgb["leopard"][1] > rgb["hog"][1] + 20  # yellow vs red


def test_same_seed_same_clips_different_seed_different(tmp_path):
    kwargs = {"n_clips": 6, "sites": ("s1", "s2"), "width": 64, "height": 48, "fps": 4}
    rows_a = read_labels(generate_demo(tmp_path / "a", seed=11, **kwargs))
    rows_b = read_labels(generate_demo(tmp_path / "b", seed=11, **kwargs))
    rows_c = read_labels(generate_demo(tmp_path / "c", seed=12, **kwargs))
    assert rows_a == rows_b
    for r in rows_a:
        np.testing.assert_array_equal(
            decode(tmp_path / "a" / r["filepath"]), decode(tmp_path / "b" / r["filepath"])
        )
    frames_a = [decode(tmp_path / "a" / r["filepath"]) for r in rows_a]
    frames_c = [decode(tmp_path / "c" / r["filepath"]) for r in rows_c]
    assert all(not np.array_equal(x, y) for x, y in zip(frames_a, frames_c, strict=True))


def test_sites_have_different_backgrounds(demo, decoded):
    _, rows = demo
    means: dict[str, list[np.ndarray]] = {}
    for r, frames in zip(rows, decoded, strict=True):
        if not is_grey(frames):  # day clips: the site's colours
            means.setdefault(r["site"], []).append(np.median(frames, axis=0).mean(axis=(0, 1)))
    assert set(means) == set(SITES)
    site_rgb = {s: np.mean(v, axis=0) for s, v in means.items()}
    for a, b in itertools.combinations(SITES, 2):
        assert np.linalg.norm(site_rgb[a] - site_rgb[b]) > 15, (a, b, site_rgb)


def test_night_clips_are_grey_and_darker_than_day(tmp_path):
    kwargs = {
        "n_clips": 4,
        "sites": ("s1", "s2"),
        "blank_fraction": 1.0,
        "two_species_fraction": 0.0,
    }
    night = read_labels(generate_demo(tmp_path / "n", night_fraction=1.0, **kwargs))
    day = read_labels(generate_demo(tmp_path / "d", night_fraction=0.0, **kwargs))
    for rn, rd in zip(night, day, strict=True):
        fn, fd = decode(tmp_path / "n" / rn["filepath"]), decode(tmp_path / "d" / rd["filepath"])
        assert is_grey(fn) and not is_grey(fd)
        assert fn.mean() < 0.8 * fd.mean()


def test_class_subset_and_invalid_arguments(tmp_path):
    rows = read_labels(
        generate_demo(tmp_path, n_clips=8, classes=("duiker", "leopard"), width=64, height=48)
    )
    labels = {r["label"] for r in rows}
    assert {"duiker", "leopard"} <= labels <= {BLANK, "duiker", "leopard", "duiker;leopard"}
    with pytest.raises(ValueError):
        generate_demo(tmp_path, n_clips=2, classes=("unicorn",))
    with pytest.raises(ValueError):
        generate_demo(tmp_path, n_clips=2, width=161)
    with pytest.raises(ValueError):
        generate_demo(tmp_path, n_clips=2, blank_fraction=0.8, two_species_fraction=0.3)
    with pytest.raises(ValueError):
        generate_demo(tmp_path, n_clips=2, sites=("a", "a"))


def test_cli_writes_clips_and_labels(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [str(out), "--clips", "3", "--seed", "1", "--sites", "x,y", "--width", "64"]
    assert main([*argv, "--height", "48", "--fps", "4", "--seconds", "1"]) == 0
    assert str(out / "labels.csv") in capsys.readouterr().out
    rows = read_labels(out / "labels.csv")
    assert len(rows) == 3 and {r["site"] for r in rows} == {"x", "y"}
    assert decode(out / rows[0]["filepath"]).shape == (4, 48, 64, 3)


# --------------------------------------------------------------------------- photo bursts

BURST_SITES = ("siteA", "siteB", "siteC")
N_BURSTS = 18
BURST_KWARGS = {"n_clips": N_BURSTS, "sites": BURST_SITES, "width": 96, "height": 64, "seed": 4}
EXIF_IFD, DATETIME_ORIGINAL, MAKE, MODEL = 0x8769, 0x9003, 0x010F, 0x0110


def exif_of(path: Path) -> tuple[datetime, str, str, tuple[int, int]]:
    """(DateTimeOriginal, Make, Model, size) of a photo."""
    with Image.open(path) as img:
        exif = img.getexif()
        when = datetime.strptime(exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL], "%Y:%m:%d %H:%M:%S")
        return when, exif[MAKE], exif[MODEL], img.size


def read_photo(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def sequences(out: Path) -> dict[str, list[dict[str, str]]]:
    """train_metadata.csv rows grouped by seq_id, in file order."""
    seqs: dict[str, list[dict[str, str]]] = {}
    for row in read_labels(out / "train_metadata.csv"):
        seqs.setdefault(row["seq_id"], []).append(row)
    return seqs


@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("bursts")
    labels_csv = generate_demo(out, images=True, burst_max=4, **BURST_KWARGS)
    assert labels_csv == out / "labels.csv"
    return out, read_labels(labels_csv)


def test_bursts_are_camera_card_jpegs_with_exif_times(bursts):
    out, _ = bursts
    assert not list(out.rglob("*.mp4"))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(BURST_SITES)
    for site in BURST_SITES:
        photos = sorted((out / site).iterdir())
        names = [f"{site}_{n:05d}.JPG" for n in range(1, len(photos) + 1)]
        assert [p.name for p in photos] == names  # numbered on per site, no gaps
        times = []
        for p in photos:
            when, make, model, size = exif_of(p)
            assert (make, model, size) == ("JUNGLE-SIM", "BURST-1", (96, 64))
            assert datetime.fromtimestamp(p.stat().st_mtime) == when  # mtime: local time
            times.append(when)
        assert times == sorted(times) and len(set(times)) == len(times)  # capture order


def test_bursts_are_1s_apart_inside_and_10min_apart_between(bursts):
    out, rows = bursts
    seqs = sequences(out)
    assert len(seqs) == N_BURSTS
    lengths = Counter(len(photos) for photos in seqs.values())
    assert set(lengths) <= {1, 2, 3, 4} and len(lengths) >= 3, lengths
    for site in BURST_SITES:
        site_seqs = [s for s in seqs.values() if s[0]["file_name"].startswith(f"{site}/")]
        spans = []
        for photos in site_seqs:
            times = [exif_of(out / p["file_name"])[0] for p in photos]
            assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [1.0] * (
                len(times) - 1
            )
            spans.append((times[0], times[-1]))
        for (_, last), (first, _) in itertools.pairwise(spans):
            assert (first - last).total_seconds() >= 600
        # grouping the folder by a 10 s capture-time gap gives back the bursts exactly
        photos = sorted((out / site).iterdir(), key=lambda p: exif_of(p)[0])
        groups = [[photos[0]]]
        for a, b in itertools.pairwise(photos):
            if (exif_of(b)[0] - exif_of(a)[0]).total_seconds() <= 10:
                groups[-1].append(b)
            else:
                groups.append([b])
        got = [[f"{site}/{p.name}" for p in g] for g in groups]
        assert got == [[p["file_name"] for p in s] for s in site_seqs]


def test_labels_csv_names_each_burst_by_its_first_photo(bursts, tmp_path):
    out, rows = bursts
    with (out / "labels.csv").open() as f:
        assert f.readline().strip() == "filepath,label,site"
    seqs = sequences(out)
    assert [r["filepath"] for r in rows] == [s[0]["file_name"] for s in seqs.values()]
    vocabulary = {BLANK, *CLASSES} | {f"{a};{b}" for a, b in itertools.combinations(CLASSES, 2)}
    for r in rows:
        assert r["label"] in vocabulary
        assert (
            r["filepath"].startswith(f"{r['site']}/{r['site']}_")
            and (out / r["filepath"]).is_file()
        )
    labels = [r["label"] for r in rows]
    assert labels.count(BLANK) == N_BURSTS // 2 and sum(";" in x for x in labels) == 2
    # the same plan as the video demo of the same arguments: same labels at the same sites
    videos = read_labels(generate_demo(tmp_path, fps=2, seconds=1, **BURST_KWARGS))
    assert [(r["label"], r["site"]) for r in videos] == [(r["label"], r["site"]) for r in rows]


def test_hakuna_csvs_agree_with_labels_csv(bursts):
    out, rows = bursts
    seqs = sequences(out)
    for seq_id, photos in seqs.items():
        site = photos[0]["file_name"].split("/")[0]
        assert seq_id.startswith(f"SEQ_{site}_")
        for p in photos:
            when = datetime.strptime(p["datetime"], "%Y-%m-%d %H:%M:%S")
            assert when == exif_of(out / p["file_name"])[0]
    n_per_site = Counter(s.split("_")[1] for s in seqs)
    assert set(seqs) == {f"SEQ_{s}_{n}" for s in BURST_SITES for n in range(1, n_per_site[s] + 1)}
    with (out / "train_labels.csv").open() as f:
        assert f.readline().strip() == ",".join(["seq_id", *CLASSES, "empty"])
    hakuna = read_labels(out / "train_labels.csv")
    assert [h["seq_id"] for h in hakuna] == list(seqs)
    for h, r in zip(hakuna, rows, strict=True):
        species = {c for c in CLASSES if h[c] == "1"}
        assert all(h[c] in ("0", "1") for c in (*CLASSES, "empty"))
        assert species == (set() if r["label"] == BLANK else set(r["label"].split(";")))
        assert h["empty"] == ("1" if r["label"] == BLANK else "0")


def test_animal_photos_show_the_animal_blank_photos_only_background(bursts, tmp_path):
    out, rows = bursts
    # the clips the bursts are taken from: their temporal median is the burst's background
    videos = read_labels(generate_demo(tmp_path, **BURST_KWARGS))
    seqs = sequences(out)
    blank, animal, moved = [], [], 0
    for r, v, photos in zip(rows, videos, seqs.values(), strict=True):
        background = np.median(decode(tmp_path / v["filepath"]).astype(np.float32), axis=0)
        # luma: JPEG's coarse chroma is off by 25 and more on saturated leaves
        masks = [
            np.abs((read_photo(out / p["file_name"]) - background) @ LUMA) > 25 for p in photos
        ]
        counts = [int(m.sum()) for m in masks]
        if r["label"] == BLANK:
            blank += counts
        elif ";" not in r["label"]:
            animal += counts  # a one-species burst shows its animal in every photo...
            xs = [np.flatnonzero(m.any(axis=0)).mean() for m in masks]
            steps = np.diff(xs)  # ...walking one way across the frame
            assert np.all(steps > 1) or np.all(steps < -1), (r["label"], xs)
            moved += len(steps) > 0
        else:
            assert max(counts) > 100, r["label"]
    assert blank and animal and moved
    assert max(blank) <= 3, blank  # sensor noise and JPEG artefacts only
    assert min(animal) >= 10, animal
    assert np.mean(animal) > 30 * max(1, max(blank))


def test_night_bursts_at_night_day_bursts_by_day(bursts):
    out, _ = bursts
    nights = days = 0
    for photos in sequences(out).values():
        path = out / photos[0]["file_name"]
        hour = exif_of(path)[0].hour
        if is_grey(read_photo(path)[None]):
            nights += 1
            assert not 6 <= hour < 18, hour
        else:
            days += 1
            assert 6 <= hour < 18, hour
    assert nights and days


def test_same_seed_same_bursts_different_seed_different(tmp_path):
    kwargs = {"n_clips": 6, "sites": ("s1", "s2"), "width": 64, "height": 48, "images": True}
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        generate_demo(tmp_path / name, seed=seed, **kwargs)
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
        runs[name] = {  # photos: bytes and modification time; CSVs: bytes
            p.relative_to(tmp_path / name): (
                p.read_bytes(),
                p.suffix == ".JPG" and p.stat().st_mtime,
            )
            for p in files
        }
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() & runs["c"].keys()
    for rel in runs["a"].keys() & runs["c"].keys():
        assert runs["a"][rel] != runs["c"][rel], rel


def test_burst_length_and_invalid_burst_arguments(tmp_path):
    generate_demo(tmp_path / "one", n_clips=4, width=64, height=48, images=True, burst_max=1)
    assert all(len(s) == 1 for s in sequences(tmp_path / "one").values())
    for bad in ({"burst_max": 0}, {"burst_max": 100}, {"jpeg_quality": 0}):
        with pytest.raises(ValueError):
            generate_demo(tmp_path / "bad", n_clips=2, images=True, **bad)


def test_cli_writes_bursts_and_both_label_layouts(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [str(out), "--clips", "4", "--sites", "x,y", "--width", "64", "--height", "48"]
    assert main([*argv, "--images", "--burst-max", "3", "--jpeg-quality", "80"]) == 0
    assert str(out / "labels.csv") in capsys.readouterr().out
    rows = read_labels(out / "labels.csv")
    assert len(rows) == 4 and {r["site"] for r in rows} == {"x", "y"}
    assert all(r["filepath"].endswith(".JPG") for r in rows)
    assert exif_of(out / rows[0]["filepath"])[3] == (64, 48)
    assert len(read_labels(out / "train_labels.csv")) == 4
    assert 4 <= len(read_labels(out / "train_metadata.csv")) <= 12
