"""Synthetic camera-trap clips with known labels, for tests and ``make demo``.

Every site has its own deterministic background (smooth-noise texture, tree trunks, bushes,
in a site-specific palette), so a model trained on some sites can be checked on held-out
ones. Species are moving bodies with class-specific shape, size, colour, pattern and speed
that enter from one side at a random time, cross the frame and leave (visible for roughly
20-50 % of the frames). Night clips are grey, darker and vignetted like IR footage; every
frame gets fresh sensor noise. Clips are H.264 MP4 written with PyAV, and ``labels.csv``
(``filepath,label,site``) lists them; ``label`` is ``blank``, a class name, or two sorted
class names joined by ``;``. The same seed gives the same labels and the same pixels.

With ``--images`` every planned clip becomes a camera-trap photo burst instead: 1 to
``--burst-max`` JPEGs taken from the same rendered clip, named like a camera card
(``<site>/<site>_00001.JPG``, ...), with EXIF capture times (1 s apart within a burst, at
least 10 min between bursts at a site) and matching file modification times; ``labels.csv``
names each burst by its first photo, and ``train_metadata.csv`` / ``train_labels.csv`` give
the same bursts in the Hakuna Ma-Data layout (see :func:`generate_demo`).

CLI::

    python scripts/make_demo_data.py OUT_DIR --clips 60 --seed 0 --sites siteA,siteB
    python scripts/make_demo_data.py OUT_DIR --clips 60 --images --burst-max 5
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: Species the generator can draw.
CLASSES: tuple[str, ...] = ("chimpanzee", "duiker", "elephant", "hog", "leopard")
BLANK = "blank"

Array = np.ndarray
Layer = tuple[Array, tuple[float, float, float]]  # (boolean mask, RGB colour)
#: per class: (half body length, leg length below the body centre, visible fraction range),
#: lengths in units of the body scale (about the frame height).
_GEOMETRY: dict[str, tuple[float, float, tuple[float, float]]] = {
    "elephant": (0.42, 0.32, (0.42, 0.50)),  # slowest: longest on screen
    "chimpanzee": (0.18, 0.19, (0.32, 0.42)),
    "hog": (0.20, 0.11, (0.30, 0.38)),
    "leopard": (0.30, 0.13, (0.24, 0.32)),
    "duiker": (0.14, 0.12, (0.20, 0.26)),  # fastest
}


def _ell(u: Array, v: Array, cu: float, cv: float, ru: float, rv: float, p: float = 2) -> Array:
    """Mask of the (super-)ellipse centred at (cu, cv) with radii (ru, rv) and exponent p."""
    return np.abs((u - cu) / ru) ** p + np.abs((v - cv) / rv) ** p <= 1.0


def _seg(u: Array, v: Array, a: tuple[float, float], b: tuple[float, float], w: float) -> Array:
    """Mask of the segment a-b thickened to width w (a limb, trunk or tail)."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return (u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2 <= (w / 2) ** 2


def _legs(
    u: Array, v: Array, xs: Sequence[float], top: float, bottom: float, w: float, sw: float
) -> Array:
    """Legs hanging from the body at u-positions xs; alternate legs swing in opposite phase."""
    masks = [_seg(u, v, (x, top), (x + sw * (-1) ** i, bottom), w) for i, x in enumerate(xs)]
    return np.logical_or.reduce(masks)


# Bodies in body units (about one frame height), +u forward, +v down, origin at the body
# centre; ``sw`` is the current leg swing. Each returns layers painted in order.
def _elephant(u: Array, v: Array, sw: float) -> list[Layer]:
    grey, dark = (125, 122, 118), (92, 90, 88)
    return [
        (_legs(u, v, [-0.18, -0.08, 0.08, 0.18], 0.08, 0.32, 0.07, sw), dark),
        (_ell(u, v, 0, 0, 0.27, 0.17) | _ell(u, v, 0.27, -0.06, 0.11, 0.11), grey),
        (_ell(u, v, 0.19, -0.04, 0.08, 0.13), dark),  # ear
        (_seg(u, v, (0.34, -0.02), (0.38 + sw / 2, 0.26), 0.05), grey),  # trunk
        (_seg(u, v, (0.33, 0.04), (0.41, 0.09), 0.02), (232, 226, 205)),  # tusk
    ]


def _chimpanzee(u: Array, v: Array, sw: float) -> list[Layer]:
    fur = (40, 33, 30)
    return [
        (_legs(u, v, [0.07, -0.07], 0.0, 0.19, 0.04, sw), fur),
        (_ell(u, v, 0, 0, 0.11, 0.085) | _ell(u, v, 0.12, -0.07, 0.055, 0.055), fur),
        (_ell(u, v, 0.15, -0.065, 0.03, 0.035), (175, 145, 115)),  # face
    ]


def _duiker(u: Array, v: Array, sw: float) -> list[Layer]:
    body = _ell(u, v, 0, 0, 0.085, 0.045)
    neck_head = _seg(u, v, (0.06, -0.01), (0.095, -0.045), 0.03) | _ell(
        u, v, 0.105, -0.05, 0.032, 0.022
    )
    return [
        (_legs(u, v, [-0.06, -0.045, 0.045, 0.06], 0.02, 0.12, 0.015, sw), (95, 60, 35)),
        (body | neck_head, (150, 112, 66)),
        (body & (v < -0.025), (70, 42, 22)),  # dark dorsal stripe
        (_ell(u, v, -0.09, -0.01, 0.015, 0.01), (240, 235, 225)),  # white tail
    ]


def _hog(u: Array, v: Array, sw: float) -> list[Layer]:
    body = _ell(u, v, 0, 0, 0.14, 0.065, p=4)
    return [
        (_legs(u, v, [-0.09, 0.09], 0.04, 0.11, 0.035, sw), (60, 35, 28)),
        (body, (190, 58, 34)),
        (body & (np.abs(v + 0.05) < 0.012), (235, 228, 215)),  # pale crest
        (_ell(u, v, 0.16, 0.015, 0.045, 0.035, p=4), (60, 38, 32)),  # snout
        (_ell(u, v, 0.125, -0.005, 0.012, 0.045), (238, 232, 222)),  # face stripe
    ]


def _leopard(u: Array, v: Array, sw: float) -> list[Layer]:
    body = _ell(u, v, 0, 0, 0.15, 0.06)
    coat = (
        body
        | _ell(u, v, 0.17, -0.04, 0.05, 0.045)
        | _seg(u, v, (-0.14, -0.01), (-0.29, -0.07 + sw / 2), 0.022)
    )
    spots = np.sin(u * 105 + 0.7) * np.sin(v * 136) > 0.45
    return [
        (_legs(u, v, [-0.1, -0.085, 0.085, 0.1], 0.02, 0.13, 0.03, sw), (210, 165, 68)),
        (coat, (218, 172, 70)),
        (body & (v > 0.035), (238, 222, 182)),  # pale belly
        (coat & spots, (45, 32, 20)),
    ]


_DRAW: dict[str, Callable[[Array, Array, float], list[Layer]]] = {
    "chimpanzee": _chimpanzee,
    "duiker": _duiker,
    "elephant": _elephant,
    "hog": _hog,
    "leopard": _leopard,
}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: smooth noise in [-1, 1] of shape (h, w)."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    y, x = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _site_background(site: str, index: int, n_sites: int, seed: int, h: int, w: int) -> np.ndarray:
    """A site's float RGB background in [0, 255], ``(h, w, 3)``; hues are spread over sites."""
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    hue = (0.07 + 0.42 * index / n_sites + rng.uniform(0, 0.42 / n_sites / 3)) % 1.0
    sat, val = rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.7)
    canopy = np.array(colorsys.hsv_to_rgb(hue, sat, val))
    ground = np.array(colorsys.hsv_to_rgb(hue * 0.5 + 0.04, sat * 0.7, min(1.0, val * 1.15)))
    rows = np.linspace(0, 1, h)[:, None] + 0.08 * _smooth_noise(rng, h, w, 3)
    mix = np.clip((rows - rng.uniform(0.4, 0.6)) / 0.12 + 0.5, 0, 1)[..., None]
    shade = 1 + rng.uniform(0.15, 0.3) * _smooth_noise(rng, h, w, int(rng.integers(4, 9)))
    img = (canopy * (1 - mix) + ground * mix) * shade[..., None]
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 7))):  # tree trunks: vertical stripes
        x0, half = rng.uniform(0, w), rng.uniform(0.01, 0.04) * w
        trunk = colorsys.hsv_to_rgb(*rng.uniform((0.05, 0.1, 0.2), (0.12, 0.4, 0.7)))
        img[(np.abs(xx - x0) < half) & (yy < rng.uniform(0.5, 0.9) * h)] = trunk
    for _ in range(int(rng.integers(3, 12))):  # bushes: darker/lighter blobs
        bush_val = val * rng.uniform(0.5, 1.2)
        bush = colorsys.hsv_to_rgb(hue + rng.uniform(-0.04, 0.04), min(1.0, sat + 0.15), bush_val)
        cy, cx = rng.uniform(0.3, 1.0) * h, rng.uniform(0, w)
        img[_ell(xx, yy, cx, cy, rng.uniform(0.04, 0.15) * w, rng.uniform(0.05, 0.15) * h)] = bush
    img = img * (1 + 0.06 * rng.standard_normal((h, w, 1)))  # static fine grain
    return np.clip(img * 255.0, 0, 255)


def _plan_labels(
    rng: np.random.Generator, n: int, classes: Sequence[str], blank_frac: float, two_frac: float
) -> list[list[str]]:
    """Clip labels: the blank and two-species counts are rounded fractions of n; species are
    balanced greedily (least-used class first), so every class appears at least twice when
    there are enough animal clips. Returned in random order, as lists of class names."""
    n_blank = round(n * blank_frac)
    n_two = min(round(n * two_frac), n - n_blank) if len(classes) > 1 else 0
    counts = np.zeros(len(classes), int)
    labels: list[list[str]] = [[] for _ in range(n_blank)]
    for _ in range(n_two):
        pair = rng.choice(len(classes), 2, replace=False)
        counts[pair] += 1
        labels.append(sorted(classes[i] for i in pair))
    for _ in range(n - n_blank - n_two):
        lowest = np.flatnonzero(counts == counts.min())
        c = int(rng.choice(lowest))
        counts[c] += 1
        labels.append([classes[c]])
    return [labels[i] for i in rng.permutation(n)]


class _Clip:
    """One planned clip over a site background ``bg``: the camera offset, the lighting and
    every animal's path are drawn from ``rng`` on creation; :meth:`frame` renders a moment
    of the clip, drawing fresh sensor noise from the same ``rng``.

    Each animal crosses the whole frame, side to side, within a class-specific share of the
    clip starting at a random frame; clip lighting is fixed and only the sensor noise is new
    in every frame, so frames without animals differ by noise alone.
    """

    def __init__(
        self, rng: np.random.Generator, bg: Array, species: list[str], n_frames: int, night: bool
    ) -> None:
        h, w = bg.shape[0] - 8, bg.shape[1] - 8
        oy, ox = rng.integers(0, 9, 2)  # the camera is re-mounted a few pixels off every time
        base = bg[oy : oy + h, ox : ox + w] * rng.uniform(0.8, 1.15)
        if not night:
            base = base * rng.uniform(0.94, 1.06, 3)  # white balance
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        animals = []
        for name in species:
            half_length, leg, (lo, hi) = _GEOMETRY[name]
            s = h * rng.uniform(0.88, 1.12)  # body unit in pixels
            n_vis = max(2, round(n_frames * rng.uniform(lo, hi)))
            start = int(rng.integers(0, n_frames - n_vis + 1))
            direction = float(rng.choice([-1.0, 1.0]))
            cy = h * rng.uniform(0.8, 0.95) - leg * s
            tint = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
            phase = rng.uniform(0, 2 * np.pi)
            animals.append((name, s, half_length * s, n_vis, start, direction, cy, tint, phase))
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
        self.vignette = 1.0 - 0.5 * r2  # the IR flash lights the centre most
        self.rng, self.night, self.n_frames = rng, night, n_frames
        self.base, self.yy, self.xx, self.animals = base, yy, xx, animals

    def in_view(self) -> list[tuple[float, float]]:
        """The stretches ``[start, end)`` of the clip, in frames, in which some animal's body
        centre is inside the frame (so at least half of it shows): the animals' stretches,
        overlapping ones merged, in time order."""
        w = self.base.shape[1]
        windows = []
        for _, _, half, n_vis, start, *_ in self.animals:
            margin = n_vis * half / (w + 2 * half)  # from entering to the centre in the frame
            windows.append((start - 0.5 + margin, start - 0.5 + n_vis - margin))
        spans: list[tuple[float, float]] = []
        for start, end in sorted(windows):
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        return spans

    def frame(self, k: float) -> Array:
        """The ``(H, W, 3)`` uint8 RGB frame at time ``k`` (in frames; need not be whole)."""
        xx, yy, w = self.xx, self.yy, self.base.shape[1]
        frame, lit = self.base.copy(), np.zeros(xx.shape, bool)
        for name, s, half, n_vis, start, direction, cy, tint, phase in self.animals:
            if not start - 0.5 <= k < start + n_vis - 0.5:  # whole frames start...start+n_vis-1
                continue
            x = -half + (k - start + 0.5) / n_vis * (w + 2 * half)  # enters off-screen, leaves
            cx = x if direction > 0 else w - x
            gait = phase + 1.7 * k
            u, v = (xx - cx) * direction / s, (yy - cy) / s - 0.012 * abs(np.sin(gait))
            for mask, colour in _DRAW[name](u, v, 0.05 * np.sin(gait)):
                frame[mask] = np.clip(np.array(colour) * tint, 0, 255)
                lit |= mask
        if self.night:  # IR: grey; animals, near the flash, shine against the darker background
            grey = frame @ np.array([0.299, 0.587, 0.114])
            grey = np.where(lit, 0.5 * grey + 70.0, 0.4 * grey + 10.0) * self.vignette
            frame = np.repeat(grey[..., None], 3, axis=2)
        shape = frame.shape[:2] + (1 if self.night else 3,)
        noise = self.rng.standard_normal(shape, dtype=np.float32)
        return np.clip(frame + (5.0 if self.night else 2.5) * noise, 0, 255).astype(np.uint8)


def _render_clip(
    rng: np.random.Generator, bg: Array, species: list[str], n_frames: int, night: bool
) -> Iterator[Array]:
    """Yield the clip's ``(H, W, 3)`` uint8 RGB frames over a site background ``bg``
    (see :class:`_Clip`)."""
    clip = _Clip(rng, bg, species, n_frames, night)
    for k in range(n_frames):
        yield clip.frame(k)


def _write_mp4(
    path: Path, frames: Iterable[Array], width: int, height: int, fps: int, crf: int, preset: str
) -> None:
    """Encode RGB frames to H.264 (yuv420p) MP4 with PyAV."""
    # mbtree off: with it, this libx264 gave run-to-run different output for the same frames
    options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


#: first moment any site's camera can shoot; each site starts up to a day later (seeded)
_FIRST_CAPTURE = datetime(2024, 3, 1, 0, 0, 0)
#: least time, in seconds, between the last photo of a burst and the next burst at a site
BURST_GAP_S = 600
#: mean extra time between two bursts at a site, in seconds (exponentially distributed)
_MEAN_EXTRA_GAP_S = 3 * 3600
_DAY_HOURS = (6, 18)  # day photos are taken from 06:00 to 18:00, night photos otherwise
CAMERA_MAKE, CAMERA_MODEL = "JUNGLE-SIM", "BURST-1"
_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x8769, 0x9003, 0x9004
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
EXIF_TIME_FORMAT = "%Y:%m:%d %H:%M:%S"
HAKUNA_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _photo_times(clip: _Clip, n: int) -> list[float]:
    """When (in frames of ``clip``) the ``n`` photos of a burst are taken: evenly spaced over
    the time an animal is in the frame, as a motion trigger would (the in-view stretches of
    a two-species clip laid end to end), or over the whole clip when none ever is."""
    spans = clip.in_view() or [(0.0, float(clip.n_frames))]
    total = sum(end - start for start, end in spans)
    times = []
    for j in range(n):
        u = (j + 0.5) / n * total
        for start, end in spans:
            if u < end - start:
                times.append(start + u)
                break
            u -= end - start
        else:  # rounding at the very end
            times.append((spans[-1][0] + spans[-1][1]) / 2)
    return times


def _next_burst(rng: np.random.Generator, last: datetime, night: bool) -> datetime:
    """Time of a site's next burst: at least :data:`BURST_GAP_S` after ``last`` (its previous
    photo) plus a random wait, moved on to the next night (day) when a night (day) photo
    would fall in daylight (at night)."""
    when = last + timedelta(seconds=BURST_GAP_S + int(rng.exponential(_MEAN_EXTRA_GAP_S)))
    dawn, dusk = _DAY_HOURS
    if (dawn <= when.hour < dusk) == night:  # wrong light: wait for the next right one
        midnight = when.replace(hour=0, minute=0, second=0)
        if night:
            window = midnight + timedelta(hours=dusk)
        elif when.hour >= dusk:
            window = midnight + timedelta(days=1, hours=dawn)
        else:
            window = midnight + timedelta(hours=dawn)
        when = window + timedelta(seconds=int(rng.integers(0, 4 * 3600)))
    return when


def _write_jpeg(path: Path, rgb: Array, when: datetime, quality: int) -> None:
    """Save ``rgb`` as a camera-card JPEG: EXIF Make, Model, DateTime and (in the Exif IFD)
    DateTimeOriginal and DateTimeDigitized ``when``; the file's modification time is
    ``when`` too, read as local time (as a camera's clock is)."""
    stamp = when.strftime(EXIF_TIME_FORMAT)
    exif = Image.Exif()
    exif[_MAKE], exif[_MODEL], exif[_DATETIME] = CAMERA_MAKE, CAMERA_MODEL, stamp
    exif_ifd = exif.get_ifd(_EXIF_IFD)
    exif_ifd[_DATETIME_ORIGINAL] = exif_ifd[_DATETIME_DIGITIZED] = stamp
    Image.fromarray(rgb).save(path, "JPEG", quality=quality, exif=exif.tobytes())
    os.utime(path, (when.timestamp(), when.timestamp()))


def _write_bursts(
    out_dir: Path,
    labels: list[list[str]],
    clip_sites: list[str],
    backgrounds: dict[str, Array],
    classes: Sequence[str],
    n_frames: int,
    night_fraction: float,
    seed: int,
    burst_max: int,
    quality: int,
) -> list[tuple[str, str, str]]:
    """Write one burst of JPEGs per planned clip (see :func:`generate_demo`), plus the Hakuna
    Ma-Data CSVs; returns the ``labels.csv`` rows (the first photo of each burst)."""
    next_number, n_bursts = dict.fromkeys(backgrounds, 1), dict.fromkeys(backgrounds, 0)
    last: dict[str, datetime] = {}
    for site in backgrounds:  # every site's camera starts at its own (seeded) moment
        site_rng = np.random.default_rng([seed, 3, zlib.crc32(site.encode())])
        last[site] = _FIRST_CAPTURE + timedelta(seconds=int(site_rng.integers(0, 86400)))
    time_rngs = {s: np.random.default_rng([seed, 4, zlib.crc32(s.encode())]) for s in last}
    rows, photos, hakuna = [], [], []
    for i, (species, site) in enumerate(zip(labels, clip_sites, strict=True)):
        clip_rng = np.random.default_rng([seed, 1, i])  # as the clip: same night draw
        night = bool(clip_rng.random() < night_fraction)
        clip = _Clip(clip_rng, backgrounds[site], species, n_frames, night)
        n_photos = int(np.random.default_rng([seed, 2, i]).integers(1, burst_max + 1))
        first = _next_burst(time_rngs[site], last[site], night)
        n_bursts[site] += 1
        seq_id = f"SEQ_{site}_{n_bursts[site]}"
        (out_dir / site).mkdir(parents=True, exist_ok=True)
        for j, t in enumerate(_photo_times(clip, n_photos)):
            rel = f"{site}/{site}_{next_number[site]:05d}.JPG"
            next_number[site] += 1
            when = first + timedelta(seconds=j)
            _write_jpeg(out_dir / rel, clip.frame(t), when, quality)
            photos.append((rel, seq_id, when.strftime(HAKUNA_TIME_FORMAT)))
            if j == 0:
                label = ";".join(species) if species else BLANK
                rows.append((rel, label, site))
            last[site] = when
        hakuna.append((seq_id, *(int(c in species) for c in classes), int(not species)))
        light = "night" if night else "day"
        log.debug("%s: %s, %d photos (%s)", seq_id, rows[-1][1], n_photos, light)
    with (out_dir / "train_metadata.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "seq_id", "datetime"])
        writer.writerows(photos)
    with (out_dir / "train_labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seq_id", *classes, "empty"])
        writer.writerows(hakuna)
    return rows


def generate_demo(
    out_dir: Path,
    n_clips: int = 60,
    sites: Sequence[str] = ("siteA", "siteB", "siteC", "siteD"),
    classes: Sequence[str] | None = None,
    width: int = 160,
    height: int = 120,
    fps: int = 8,
    seconds: float = 4.0,
    blank_fraction: float = 0.5,
    two_species_fraction: float = 0.1,
    night_fraction: float = 0.3,
    seed: int = 0,
    crf: int = 23,
    preset: str = "veryfast",
    images: bool = False,
    burst_max: int = 5,
    jpeg_quality: int = 90,
) -> Path:
    """Write ``n_clips`` synthetic camera-trap clips and ``labels.csv`` under ``out_dir``.

    Clips go to ``out_dir/<site>/clip_NNNN.mp4``, dealt round-robin over ``sites`` after a
    seeded shuffle, so every site gets clips when ``n_clips >= len(sites)``.

    With ``images``, every planned clip becomes a burst (a *sequence*) of 1 to ``burst_max``
    JPEG photos instead (the count drawn per burst): moments of the same rendered clip,
    evenly spaced over the time its animals are in the frame (a blank burst: over the whole
    clip, so background and noise only). Photos go to ``out_dir/<site>/<site>_NNNNN.JPG``,
    numbered on from 00001 per site in capture order. Each carries EXIF DateTimeOriginal
    (and DateTime, DateTimeDigitized), Make :data:`CAMERA_MAKE` and Model
    :data:`CAMERA_MODEL`; its modification time is the capture time read as local time.
    The photos of a burst are 1 s apart, consecutive bursts at a site at least
    :data:`BURST_GAP_S` (10 min) apart (night bursts at night, day bursts by day), so
    grouping a site's folder by a 10 s capture-time gap gives back the bursts. ``labels.csv``
    names each burst by its first photo (jungle's sequence id); ``train_metadata.csv``
    (``file_name,seq_id,datetime``: one row per photo, ``seq_id`` ``SEQ_<site>_<n>``) and
    ``train_labels.csv`` (``seq_id,<classes...>,empty``, 0/1) give the same labels in the
    Hakuna Ma-Data layout. ``fps * seconds`` then only sets the clip the photos are taken
    from; ``crf`` and ``preset`` are unused.

    Args:
        out_dir: output directory (created; existing clips of the same name are overwritten).
        n_clips: number of clips.
        sites: site names (directory names); each has its own background: hues are spread
            over the sites by their position in ``sites``, textures seeded by name and seed.
        classes: species to draw, a subset of :data:`CLASSES` (default: all).
        width, height: frame size in pixels (even, at least 32).
        fps, seconds: frame rate and duration; each clip has ``round(fps * seconds)`` frames.
        blank_fraction: fraction of clips with no animal (rounded to a count).
        two_species_fraction: fraction of clips with two different species.
        night_fraction: probability that a clip is a grey, dark, IR-like night clip.
        seed: random seed; the same arguments give the same labels and pixels.
        crf, preset: libx264 quality and speed settings.
        images: write photo bursts instead of MP4 clips (see above).
        burst_max: most photos in a burst (1 to 99).
        jpeg_quality: JPEG quality of the photos (1 to 95).

    Returns:
        Path of ``labels.csv`` (columns ``filepath,label,site``, filepath relative to out_dir).
    """
    classes = (
        CLASSES if classes is None else tuple([classes] if isinstance(classes, str) else classes)
    )
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {CLASSES}, got {classes}")
    if (
        not sites
        or len(set(sites)) != len(sites)
        or any(s in ("", ".", "..") or "/" in s or "\\" in s for s in sites)
    ):
        raise ValueError(f"sites must be distinct, non-empty directory names, got {sites}")
    if width % 2 or height % 2 or width < 32 or height < 32:
        raise ValueError(f"width and height must be even and >= 32, got {width}x{height}")
    fractions = (blank_fraction, two_species_fraction, night_fraction)
    if not all(0.0 <= f <= 1.0 for f in fractions) or blank_fraction + two_species_fraction > 1.0:
        raise ValueError("fractions must be in [0, 1] and blank + two-species must not exceed 1")
    n_frames = round(fps * seconds)
    if n_clips < 1 or fps < 1 or n_frames < 2:
        raise ValueError(f"need n_clips >= 1 and at least 2 frames, got {n_clips}, {n_frames}")
    if images and not (1 <= burst_max <= 99 and 1 <= jpeg_quality <= 95):
        raise ValueError(
            f"need 1 <= burst_max <= 99 and 1 <= jpeg_quality <= 95, got {burst_max}, "
            f"{jpeg_quality}"
        )

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    labels = _plan_labels(rng, n_clips, classes, blank_fraction, two_species_fraction)
    site_order = rng.permutation(len(sites))
    backgrounds = {
        site: _site_background(site, i, len(sites), seed, height + 8, width + 8)
        for i, site in enumerate(sites)
    }
    clip_sites = [sites[site_order[i % len(sites)]] for i in range(n_clips)]
    if images:
        rows = _write_bursts(
            out_dir, labels, clip_sites, backgrounds, classes, n_frames, night_fraction, seed,
            burst_max, jpeg_quality,
        )  # fmt: skip
    else:
        rows = []
        for i, (species, site) in enumerate(zip(labels, clip_sites, strict=True)):
            clip_rng = np.random.default_rng([seed, 1, i])
            night = bool(clip_rng.random() < night_fraction)
            rel = f"{site}/clip_{i:04d}.mp4"
            (out_dir / site).mkdir(parents=True, exist_ok=True)
            frames = _render_clip(clip_rng, backgrounds[site], species, n_frames, night)
            _write_mp4(out_dir / rel, frames, width, height, fps, crf, preset)
            label = ";".join(species) if species else BLANK
            log.debug("%s: %s (%s)", rel, label, "night" if night else "day")
            rows.append((rel, label, site))
    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label", "site"])
        writer.writerows(rows)
    what = f"bursts (up to {burst_max} photos)" if images else f"clips ({n_frames} frames)"
    log.info(
        "wrote %d %s, %dx%d, over %d sites to %s in %.1f s",
        n_clips, what, width, height, len(sites), out_dir, time.perf_counter() - t0,
    )  # fmt: skip
    return labels_csv


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="output directory")
    p.add_argument(
        "--clips", type=int, default=60, help="number of clips (with --images: bursts; default 60)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sites", default="siteA,siteB,siteC,siteD", help="comma-separated site names")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated species")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--blank-fraction", type=float, default=0.5)
    p.add_argument("--two-species-fraction", type=float, default=0.1)
    p.add_argument("--night-fraction", type=float, default=0.3)
    p.add_argument(
        "--images",
        action="store_true",
        help="write photo bursts (EXIF-stamped JPEGs, Hakuna Ma-Data CSVs too) instead of MP4s",
    )
    p.add_argument(
        "--burst-max", type=int, default=5, help="with --images: most photos per burst (default 5)"
    )
    p.add_argument("--jpeg-quality", type=int, default=90, help="with --images (default 90)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        labels_csv = generate_demo(
            args.out_dir,
            n_clips=args.clips,
            sites=[s.strip() for s in args.sites.split(",") if s.strip()],
            classes=[c.strip() for c in args.classes.split(",") if c.strip()],
            width=args.width,
            height=args.height,
            fps=args.fps,
            seconds=args.seconds,
            blank_fraction=args.blank_fraction,
            two_species_fraction=args.two_species_fraction,
            night_fraction=args.night_fraction,
            seed=args.seed,
            images=args.images,
            burst_max=args.burst_max,
            jpeg_quality=args.jpeg_quality,
        )
    except ValueError as e:
        p.error(str(e))
    what = "photo bursts" if args.images else "clips"
    print(f"wrote {args.clips} {what} under {args.out_dir}/ and labels to {labels_csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
