"""Benchmark of ``jungle report`` at survey scale: a synthetic predictions CSV of N clips
(24 classes, 1 % failed, a thumbnail for every predicted clip) → the page; then the page
in a real headless Chromium: time to the first page of cards, to a class filter, to a
re-sort, and the number of cards in the page (bounded by the page size).

    python scripts/bench_report.py [--clips 100000] [--dir /tmp/jungle-bench-report]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from extract.thumbnails import encode_thumbnail, thumbnail_path  # noqa: E402
from stack.predict import thumbnails_dir  # noqa: E402
from stack.report import report_files, write_report  # noqa: E402

CLASSES = [f"species_{k:02d}" for k in range(23)] + ["blank"]


def make_predictions(folder: Path, n: int, seed: int = 0) -> Path:
    """A predictions CSV of ``n`` clips and their thumbnails (copies of one JPEG)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(CLASSES), 0.3), size=n)
    ids = [f"site_{i % 50:02d}/cam_{i % 7}/clip_{i:07d}.mp4" for i in range(n)]
    table = pd.DataFrame(probs, columns=CLASSES)
    table.insert(0, "filepath", ids)
    table["top_label"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
    table["top_prob"] = probs.max(axis=1)
    table["status"], table["error"] = "ok", ""
    failed = rng.random(n) < 0.01
    table.loc[failed, CLASSES + ["top_prob"]] = np.nan
    table.loc[failed, "top_label"] = ""
    table.loc[failed, "status"] = "failed"
    table.loc[failed, "error"] = "not a readable video file"
    out = folder / "predictions.csv"
    table.to_csv(out, index=False, float_format="%.6f")
    thumbs = thumbnails_dir(out)
    data = encode_thumbnail(np.full((64, 64, 3), 90, np.uint8), 16 / 9)
    for cid in np.asarray(ids)[~failed]:
        path = thumbnail_path(thumbs, cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out


def browse(page: Path, profile: Path) -> dict[str, float]:
    """Seconds to the first cards, a class filter and a re-sort, in headless Chromium."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.browser import chromium

    timings: dict[str, float] = {}
    with chromium(profile) as driver:
        started = time.perf_counter()
        driver.get(page.as_uri())
        WebDriverWait(driver, 120).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#cards article")
        )
        timings["load_to_first_cards_s"] = time.perf_counter() - started
        for name, select, value in (("filter_s", "class-filter", "3"), ("sort_s", "sort", "asc")):
            started = time.perf_counter()
            Select(driver.find_element(By.ID, select)).select_by_value(value)
            driver.find_element(By.ID, "page-info").text  # noqa: B018 (waits for the script)
            timings[name] = time.perf_counter() - started
        timings["cards_in_page"] = len(driver.find_elements(By.CSS_SELECTOR, "#cards article"))
        timings["page_info"] = driver.find_element(By.ID, "page-info").text
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        timings["console_errors"] = len(severe)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/jungle-bench-report"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    started = time.perf_counter()
    pred = make_predictions(args.dir, args.clips)
    print(
        f"synthetic predictions + thumbnails: {args.clips} clips in "
        f"{time.perf_counter() - started:.1f} s"
    )
    started = time.perf_counter()
    summary = write_report(pred, args.dir / "report.html")
    seconds = time.perf_counter() - started
    size = summary.out.stat().st_size / 1e6
    print(
        f"jungle report: {summary.clips} cards ({summary.thumbnails} thumbnails), "
        f"{summary.failed} failed, in {seconds:.1f} s; page {size:.1f} MB, "
        f"{len(list((report_files(summary.out) / 'thumbs').iterdir()))} images linked"
    )
    for key, value in browse(summary.out, args.dir / "profile").items():
        print(
            f"chromium {key}: {value:.2f}"
            if isinstance(value, float)
            else f"chromium {key}: {value}"
        )


if __name__ == "__main__":
    main()
