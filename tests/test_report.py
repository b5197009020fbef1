"""``jungle report``: the page rendered by a real headless Chromium (tests.browser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from pool.rundir import Run
from stack.predict import predict
from stack.report import report_files, write_report
from stack.train import Level2Error
from tests.browser import chromium


def _console_errors(driver) -> list[dict]:  # noqa: ANN001
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _cards(driver) -> list:  # noqa: ANN001
    return driver.find_elements(By.CSS_SELECTOR, "#cards article[data-clip-id]")


def _choose(driver, select_id: str, value: str) -> None:  # noqa: ANN001
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


@pytest.fixture(scope="module")
def predicted(
    demo_run: tuple[Path, Path], mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Predictions of the mixed folder (5 ok clips, 2 failed) and labels for 4 of them."""
    run, data = demo_run
    base = tmp_path_factory.mktemp("report")
    out = base / "pred.csv"
    predict(mixed_folder, run, out, show_progress=False)
    labels = pd.read_csv(data / "labels.csv")
    labels["filepath"] = labels["filepath"].map(lambda p: Path(p).name)
    ours = labels[labels["filepath"].isin([p.name for p in mixed_folder.iterdir()])]
    ours[["filepath", "label"]].to_csv(base / "labels.csv", index=False)
    return out, base / "labels.csv"


def test_report_in_a_real_browser(
    predicted: tuple[Path, Path], demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    pred, labels = predicted
    run, _ = demo_run
    table = pd.read_csv(pred, keep_default_na=False, na_values=[""])
    ok = table[table["status"] != "failed"]
    page = tmp_path / "report.html"
    summary = write_report(pred, page, run=run, labels=labels)
    assert summary.clips == len(ok) == 5 and summary.failed == 2 and summary.thumbnails == 5
    with chromium(tmp_path / "profile") as driver:
        driver.get(page.as_uri())
        cards = _cards(driver)
        assert sorted(c.get_attribute("data-clip-id") for c in cards) == sorted(ok["filepath"])
        # one thumbnail per ok clip, and each one loads (from REPORT_files/, no network)
        images = driver.find_elements(By.CSS_SELECTOR, "#cards article img")
        assert len(images) == 5
        for image in images:
            driver.execute_script("arguments[0].scrollIntoView()", image)
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#cards img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        # top-3 per card, highest first, equal to the CSV
        classes = Run(run).classes()
        for card in cards:
            row = ok.set_index("filepath").loc[card.get_attribute("data-clip-id"), classes]
            top3 = row.astype(float).sort_values(ascending=False, kind="stable")[:3]
            labels = card.find_elements(By.CSS_SELECTOR, "ol li .label")
            values = card.find_elements(By.CSS_SELECTOR, "ol li .prob")
            assert [e.text for e in labels] == list(top3.index)
            np.testing.assert_allclose([float(e.text) for e in values], top3, atol=6e-4)
        # sorted by probability, high to low by default; low to high on demand
        probs = [float(c.get_attribute("data-prob")) for c in cards]
        assert probs == sorted(probs, reverse=True)
        _choose(driver, "sort", "asc")
        probs = [float(c.get_attribute("data-prob")) for c in _cards(driver)]
        assert probs == sorted(probs)
        # the class filter: exactly the clips whose top class it is
        label = ok["top_label"].value_counts().index[0]
        _choose(driver, "class-filter", str(classes.index(label)))
        shown = {c.get_attribute("data-clip-id") for c in _cards(driver)}
        assert shown == set(ok.loc[ok["top_label"] == label, "filepath"])
        # failed clips with their reasons; the counts table
        failed = driver.find_elements(By.CSS_SELECTOR, "#failed tbody tr")
        reasons = {r.find_elements(By.TAG_NAME, "td")[0].text: r.text for r in failed}
        assert set(reasons) == {"empty.mp4", "notes.mp4"}
        assert "empty file (0 bytes)" in reasons["empty.mp4"]
        counts = driver.find_element(By.ID, "counts").text
        assert "failed 2" in counts
        # with labels: scores, confusion matrix and the three plots
        assert driver.find_element(By.ID, "confusion").text.startswith("true \\ predicted")
        plots = driver.find_elements(By.CSS_SELECTOR, "img[data-plot]")
        assert {p.get_attribute("data-plot") for p in plots} == {
            "confusion",
            "per_class",
            "blank_removal",
        }
        assert all(driver.execute_script("return arguments[0].naturalWidth", p) for p in plots)
        assert driver.find_element(By.ID, "run-scores").text.count("attention") == 1
        assert _console_errors(driver) == []


def test_report_pages_a_large_survey(tmp_path: Path) -> None:
    """130 clips without thumbnails: pages of the chosen size, placeholders, name order."""
    rng = np.random.default_rng(0)
    classes = ["chimp", "duiker", "blank"]
    probs = rng.dirichlet(np.ones(3), size=130)
    ids = [f"cam/{i:04d}.mp4" for i in range(130)]
    ids[7] = "cam/0007<!--<script>&amp;.mp4"  # would swallow the page if not escaped
    table = pd.DataFrame({"filepath": ids})
    for k, c in enumerate(classes):
        table[c] = probs[:, k]
    table["top_label"] = np.asarray(classes)[probs.argmax(axis=1)]
    table["top_prob"] = probs.max(axis=1)
    table["status"], table["error"] = "ok", ""
    table.loc[5, classes + ["top_label", "top_prob"]] = np.nan
    table.loc[5, ["status", "error"]] = ["failed", "a reason with <b>markup</b>"]
    pred = tmp_path / "survey.csv"
    table.to_csv(pred, index=False)
    page = tmp_path / "survey.html"
    summary = write_report(pred, page, page_size=24)
    assert summary.clips == 129 and summary.thumbnails == 0
    with chromium(tmp_path / "profile") as driver:
        driver.get(page.as_uri())
        assert len(_cards(driver)) == 24
        assert len(driver.find_elements(By.CSS_SELECTOR, "#cards .nothumb")) == 24
        info = driver.find_element(By.ID, "page-info")
        assert info.text == "page 1 of 6 (129 clips)"
        _choose(driver, "sort", "name")
        driver.find_element(By.ID, "next").click()
        ids = [c.get_attribute("data-clip-id") for c in _cards(driver)]
        expected = [f for f in table["filepath"] if f != "cam/0005.mp4"][24:48]
        assert ids == expected and info.text == "page 2 of 6 (129 clips)"
        _choose(driver, "page-size", "120")
        assert len(_cards(driver)) == 120 and info.text == "page 1 of 2 (129 clips)"
        failed = driver.find_element(By.CSS_SELECTOR, "#failed tbody").text
        assert "a reason with <b>markup</b>" in failed  # shown as text, never as HTML
        _choose(driver, "page-size", "24")
        first = [c.get_attribute("data-clip-id") for c in _cards(driver)]
        assert first[6] == "cam/0007<!--<script>&amp;.mp4"
        assert _console_errors(driver) == []
    # a folder beside the page that the report did not make is refused, never deleted
    (tmp_path / "other.html").write_text("x")
    (tmp_path / "other_files").mkdir()
    (tmp_path / "other_files" / "keep.txt").write_text("someone's file")
    with pytest.raises(Level2Error, match="was not made by `jungle report`"):
        write_report(pred, tmp_path / "other.html")
    assert (tmp_path / "other_files" / "keep.txt").is_file()
    write_report(pred, page, page_size=24)  # its own folder is replaced


def test_report_errors_are_one_line(predicted: tuple[Path, Path], tmp_path: Path) -> None:
    pred, _ = predicted
    with pytest.raises(Level2Error, match="page-size must be one of 24, 60, 120, 240"):
        write_report(pred, tmp_path / "r.html", page_size=1000)
    timelapse = tmp_path / "timelapse.csv"
    pd.DataFrame({"File": ["a.mp4"], "RelativePath": [""], "blank": [0.5]}).to_csv(timelapse)
    done = subprocess.run(
        [sys.executable, "-m", "jungle", "report", "--predictions", str(timelapse)]
        + ["--out", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "not a predictions CSV of `jungle predict`" in done.stderr
    assert not report_files(tmp_path / "r.html").exists()
