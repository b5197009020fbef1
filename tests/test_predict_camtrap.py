"""``jungle predict --camtrap-dp``: a real run's predictions as a Camtrap DP 1.0.2 package,
validated against the standard's own profile and table schemas (tests.camtrap_schema)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract.timestamps import clip_timestamp
from pool.rundir import Run
from stack.camtrap import CamtrapError, media_id
from stack.predict import CamtrapRequest, features_dir, predict
from tests.camtrap_schema import STANDARD, load_standard, validate_package
from tests.media import indexed_clip

TAXONOMY = """class,scientificName
chimpanzee,Pan troglodytes
duiker,Cephalophus
elephant,Loxodonta africana
hog,Potamochoerus porcus
leopard,Panthera pardus
"""
DEPLOYMENTS = """deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd
north,cam 1,5.83,-7.35,2021-05-01T00:00:00+01:00,2021-06-30T23:59:59+01:00
south,cam 2,5.80,-7.36,2020-01-01T00:00:00-05:00,2021-12-31T00:00:00-05:00
"""
THRESHOLD = 0.2


@pytest.fixture(scope="module")
def survey(demo_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two deployment folders: demo clips, a clip with a creation_time tag, an empty file."""
    _, data = demo_run
    root = tmp_path_factory.mktemp("survey")
    (root / "cam 1").mkdir()
    (root / "cam 2").mkdir()
    clips = sorted((data / "siteA").glob("*.mp4"))
    for clip in clips[:2]:
        os.symlink(clip, root / "cam 1" / clip.name)
    os.symlink(clips[2], root / "cam 2" / clips[2].name)
    indexed_clip(
        root / "cam 1" / "tagged.mp4", 6, metadata={"creation_time": "2021-05-31T08:25:38Z"}
    )
    (root / "cam 2" / "empty.mp4").write_bytes(b"")
    return root


def _files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "deployments.csv").write_text(DEPLOYMENTS, encoding="utf-8")
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY, encoding="utf-8")
    return tmp_path / "deployments.csv", tmp_path / "taxonomy.csv"


def test_predict_writes_a_valid_camtrap_package(
    demo_run: tuple[Path, Path], survey: Path, tmp_path: Path
) -> None:
    if not STANDARD.is_dir():
        pytest.skip(f"the Camtrap DP 1.0.2 files {STANDARD} are absent (see README, 'Tests')")
    run, _ = demo_run
    classes = Run(run).classes()
    deployments, taxonomy = _files(tmp_path)
    package = tmp_path / "package"
    out = tmp_path / "pred.csv"
    request = CamtrapRequest(package, deployments, taxonomy)
    predict(
        survey,
        run,
        out,
        threshold=THRESHOLD,
        per_frame=tmp_path / "frames.csv",
        camtrap=request,
        show_progress=False,
    )
    assert validate_package(package, load_standard(STANDARD)) == []
    preds = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("filepath")
    frames = pd.read_csv(tmp_path / "frames.csv")  # the --per-frame CSV is still written
    media = pd.read_csv(package / "media.csv", dtype=str, keep_default_na=False)
    obs = pd.read_csv(package / "observations.csv", dtype=str, keep_default_na=False)
    # one media row per clip, failed one included, in its deployment
    assert sorted(media["filePath"]) == sorted(preds.index)
    media = media.set_index("filePath")
    assert media.loc["cam 2/empty.mp4", "deploymentID"] == "south"
    assert media.loc["cam 1/tagged.mp4", "deploymentID"] == "north"
    assert (media["fileMediatype"] == "video/mp4").all()
    # the creation_time tag (UTC), written in the deployment's offset
    assert media.loc["cam 1/tagged.mp4", "timestamp"] == "2021-05-31T09:25:38+01:00"
    # the failed clip: an unclassified observation with the reason, no made-up numbers
    failed = obs[obs["mediaID"] == media_id("cam 2/empty.mp4")]
    assert failed["observationType"].tolist() == ["unclassified"]
    assert failed["classificationProbability"].tolist() == [""]
    assert "empty file (0 bytes)" in failed["observationComments"].iloc[0]
    # every classified clip: its classes above the threshold with the predicted probability
    scientific = dict(line.split(",") for line in TAXONOMY.strip().splitlines()[1:])
    events = 0
    for cid, row in preds[preds["status"] != "failed"].iterrows():
        mine = obs[obs["mediaID"] == media_id(cid)]
        above = [c for c in classes if c != "blank" and row[c] >= THRESHOLD]
        animals = mine[mine["observationType"] == "animal"]
        assert sorted(animals["scientificName"]) == sorted(scientific[c] for c in above)
        for _, o in animals.iterrows():
            cls = next(c for c, name in scientific.items() if name == o["scientificName"])
            assert float(o["classificationProbability"]) == pytest.approx(row[cls], abs=1e-4)
            assert o["classificationMethod"] == "machine"
            assert o["classifiedBy"].startswith("jungle ")
            # the event: the clip's time plus the span of the frames that show the class
            clip_frames = frames[frames["filepath"] == cid]
            shows = clip_frames[clip_frames[cls] >= THRESHOLD]
            if shows.empty:  # no frame reaches it: the frames the attention weighs most
                shows = clip_frames[clip_frames["attention"] > 1 / len(clip_frames)]
            start = clip_timestamp(survey / cid)[0].timestamp()  # exact, not the truncated
            first, last = shows["time_s"].min(), shows["time_s"].max()
            assert datetime.fromisoformat(o["eventStart"]).timestamp() == math.floor(start + first)
            assert datetime.fromisoformat(o["eventEnd"]).timestamp() == math.ceil(start + last)
            events += 1
        if not above:
            kind = "blank" if row["blank"] >= THRESHOLD else "unknown"
            assert mine["observationType"].tolist() == [kind]
    assert events > 0
    assert np.isin(obs["deploymentID"], ["north", "south"]).all()


def test_camtrap_inputs_are_checked_before_any_video_work(
    demo_run: tuple[Path, Path], survey: Path, tmp_path: Path
) -> None:
    run, _ = demo_run
    deployments, taxonomy = _files(tmp_path)
    (tmp_path / "one.csv").write_text(
        DEPLOYMENTS.splitlines()[0] + "\n" + DEPLOYMENTS.splitlines()[1] + "\n", encoding="utf-8"
    )
    out = tmp_path / "pred.csv"
    with pytest.raises(CamtrapError, match="cam 2/"):
        request = CamtrapRequest(tmp_path / "pkg", tmp_path / "one.csv", taxonomy)
        predict(survey, run, out, camtrap=request, show_progress=False)
    (tmp_path / "few.csv").write_text("class,scientificName\nhog,Potamochoerus porcus\n")
    with pytest.raises(CamtrapError, match="chimpanzee.*duiker.*elephant.*leopard"):
        request = CamtrapRequest(tmp_path / "pkg", deployments, tmp_path / "few.csv")
        predict(survey, run, out, camtrap=request, show_progress=False)
    assert not features_dir(out).exists()  # refused before any clip was decoded
    cmd = [sys.executable, "-m", "jungle", "predict", str(survey), "--run", str(run)]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--deployments", str(deployments)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "go with --camtrap-dp DIR" in done.stderr
    assert "Traceback" not in done.stderr
