"""Camtrap DP packages of photo sequences: one ``image/*`` media row per photo, event-level
observations per sequence, camera-local EXIF times read in the deployment's UTC offset;
checked against the standard's own example (the real burst of ``../shared/data``) and
validated with its profile and table schemas (tests.camtrap_schema)."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from extract.discover import Clip, discover
from extract.sequences import capture_time
from extract.timestamps import clip_timestamp
from pool.rundir import Run
from stack.camtrap import (
    CamtrapError,
    CamtrapInputs,
    _deployment_ids,
    check_clips,
    event_id,
    media_id,
    read_camtrap_inputs,
    read_deployments,
    read_project,
    write_camtrap_dp,
)
from stack.predict import CamtrapRequest, _recording_times, predict
from tests.camtrap_schema import STANDARD, load_standard, validate_package
from tests.images import gradient_rgb, write_jpeg

HEADER = "deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd\n"
#: the example deployment of the real burst (``example-deployments.csv``)
EXAMPLE_DEPLOYMENT = "62c200a9"
VIDEO = "ChimpAndSee_ACP000e3xs_exampleL.mp4"


@pytest.fixture(scope="module")
def standard():
    """The standard's schemas (always present in CI; a fresh clone elsewhere may lack them)."""
    if not STANDARD.is_dir():
        pytest.skip(f"the Camtrap DP 1.0.2 files {STANDARD} are absent (see README, 'Tests')")
    return load_standard(STANDARD)


def _example(name: str) -> pd.DataFrame:
    return pd.read_csv(STANDARD / f"example-{name}.csv", dtype=str, keep_default_na=False)


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)


def _instant(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def _local(naive: datetime, offset: str) -> str:
    """A camera-local time as Camtrap DP writes it in a deployment's offset."""
    return naive.strftime("%Y-%m-%dT%H:%M:%S") + offset


def _linked(media: pd.DataFrame, event: pd.Series) -> list[str]:
    """The media of an event-level observation as readers link them (camtrapdp): same
    deployment, ``eventStart <= timestamp <= eventEnd``."""
    start, end = _instant(event["eventStart"]), _instant(event["eventEnd"])
    same = media[media["deploymentID"] == event["deploymentID"]]
    inside = [start <= _instant(t) <= end for t in same["timestamp"]]
    return same.loc[inside, "filePath"].tolist()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The Camtrap DP writer's warnings (a time outside its deployment, ...)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("stack.camtrap") and r.levelno >= logging.WARNING
    ]


def _example_deployment_csv(path: Path, folder: str) -> Path:
    """The standard's example deployment of the real burst, over ``folder``."""
    row = _example("deployments").set_index("deploymentID").loc[EXAMPLE_DEPLOYMENT]
    path.write_text(
        HEADER + f"{EXAMPLE_DEPLOYMENT},{folder},{row['latitude']},{row['longitude']},"
        f"{row['deploymentStart']},{row['deploymentEnd']}\n",
        encoding="utf-8",
    )
    return path


def _burst(shared_data: Path) -> tuple[Path, list[Clip]]:
    root, clips = discover(shared_data / "photos-camtrap-dp")
    assert len(clips) == 1 and len(clips[0].images) == 10  # one trigger, one sequence
    return root, clips


def _heron_inputs(tmp_path: Path) -> CamtrapInputs:
    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text("class,scientificName,taxonRank\nheron,Ardea,genus\n", encoding="utf-8")
    deployments = _example_deployment_csv(tmp_path / "deployments.csv", ".")
    return read_camtrap_inputs(deployments, taxonomy, None, ["heron", "blank"])


def _table(clip_id: str, heron: float, blank: float, status: str, error: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"filepath": [clip_id], "heron": [heron], "blank": [blank]}
        | {"status": [status], "error": [error]}
    )


# ----------------------------------------------------------------- (a) the real burst


def test_real_burst_matches_the_standards_example(shared_data, standard, tmp_path) -> None:
    """The 10 Reconyx photos of the standard's example: our media rows and event carry the
    example's timestamps (EXIF camera-local time in the example deployment's +01:00)."""
    root, clips = _burst(shared_data)
    clip = clips[0]
    inputs = _heron_inputs(tmp_path)
    times, photos = _recording_times(clips, {}, root)
    assert [p.path for p in photos[clip.clip_id]] == [p.name for p in clip.images]
    assert all(p.time.tzinfo is None for p in photos[clip.clip_id])  # EXIF: camera-local
    table = _table(clip.clip_id, 0.89, 0.11, "ok", "")
    path = write_camtrap_dp(
        tmp_path / "pkg", table, ["heron", "blank"], inputs, times, {}, None, 0.5, photos
    )
    folder = path.parent
    assert validate_package(folder, standard) == []

    # one media row per photo, in capture order; the same rows as the standard's example
    media = _read(folder, "media")
    names = [p.name for p in clip.images]
    assert media["filePath"].tolist() == names
    assert media["fileName"].tolist() == names
    assert media["mediaID"].tolist() == [media_id(n) for n in names]
    assert media["mediaID"].is_unique
    example = _example("media").set_index("fileName").loc[names]
    for column in ("deploymentID", "captureMethod", "timestamp", "fileMediatype"):
        assert media[column].tolist() == example[column].tolist(), column
    assert media["timestamp"].iloc[0] == "2021-04-11T20:43:09+01:00"
    ordered = media.assign(t=media["timestamp"].map(_instant)).sort_values(["t", "fileName"])
    assert ordered["filePath"].tolist() == names  # sortable on timestamp, then fileName

    # one event-level observation of the sequence, as the example's event of these photos
    obs = _read(folder, "observations")
    assert len(obs) == 1
    event = obs.iloc[0]
    eid = event_id(clip.clip_id)
    assert (event["observationLevel"], event["mediaID"], event["eventID"]) == ("event", "", eid)
    assert event["observationID"] == f"{eid}_1"
    assert (event["observationType"], event["scientificName"]) == ("animal", "Ardea")
    assert float(event["classificationProbability"]) == 0.89
    examples = _example("observations")
    their_media = examples[examples["mediaID"].isin(example["mediaID"])]
    (their_event_id,) = set(their_media["eventID"])  # the example's event of this burst
    theirs = examples[
        (examples["eventID"] == their_event_id) & (examples["observationLevel"] == "event")
    ].iloc[0]
    assert (theirs["scientificName"], theirs["deploymentID"]) == ("Ardea", event["deploymentID"])
    assert _instant(event["eventStart"]) == _instant(theirs["eventStart"])  # 19:43:09Z
    assert _instant(event["eventEnd"]) == _instant(theirs["eventEnd"])  # 19:43:15Z
    assert (event["eventStart"], event["eventEnd"]) == (
        "2021-04-11T20:43:09+01:00",
        "2021-04-11T20:43:15+01:00",
    )
    assert _linked(media, event) == names  # a reader links every photo, and only them

    package = json.loads(path.read_text(encoding="utf-8"))
    assert package["project"]["observationLevel"] == ["event"]
    assert "photo sequences" in package["description"]
    assert package["taxonomic"] == [
        {"scientificName": "Ardea", "taxonRank": "genus", "vernacularNames": {"eng": "heron"}}
    ]


@pytest.mark.parametrize("status", ["failed", "partial"])
def test_failed_and_partial_sequences_list_every_photo(
    shared_data, standard, tmp_path, status
) -> None:
    root, clips = _burst(shared_data)
    clip = clips[0]
    inputs = _heron_inputs(tmp_path)
    reason = "no readable image in the sequence (x.JPG: damaged image data)"
    failed = {clip.clip_id: reason} if status == "failed" else {}
    times, photos = _recording_times(clips, failed, root)
    if status == "failed":
        table = _table(clip.clip_id, np.nan, np.nan, "failed", reason)
    else:
        table = _table(clip.clip_id, 0.2, 0.7, "partial", "")
    path = write_camtrap_dp(
        tmp_path / "pkg", table, ["heron", "blank"], inputs, times, {}, None, 0.5, photos
    )
    assert validate_package(path.parent, standard) == []
    media = _read(path.parent, "media")
    assert media["fileName"].tolist() == [p.name for p in clip.images]  # every photo
    # still each photo's own EXIF time (a failed sequence's photos are not re-decoded)
    expected = _example("media").set_index("fileName").loc[media["fileName"], "timestamp"]
    assert media["timestamp"].tolist() == expected.tolist()
    obs = _read(path.parent, "observations")
    assert obs["observationLevel"].tolist() == ["event"]
    assert (obs.loc[0, "eventStart"], obs.loc[0, "eventEnd"]) == (
        "2021-04-11T20:43:09+01:00",
        "2021-04-11T20:43:15+01:00",
    )
    if status == "failed":
        assert set(media["mediaComments"]) == {
            f"the sequence could not be decoded or analysed: {reason}"
        }
        assert obs.loc[0, "observationType"] == "unclassified"
        assert obs.loc[0, "classificationProbability"] == ""
        assert reason in obs.loc[0, "observationComments"]
        assert "the sequence could not" in obs.loc[0, "observationComments"]
    else:
        assert set(media["mediaComments"]) == {"only part of the sequence could be decoded"}
        assert obs.loc[0, "observationType"] == "blank"


# ---------------------------------------------------------- times, types, deployments


def test_naive_exif_times_in_the_deployment_offset_file_times_as_they_are(
    standard, tmp_path, caplog
) -> None:
    """EXIF times (camera-local) keep their wall-clock time in the deployment's offset;
    photos without EXIF take their file time (an instant); png/tif are image/png|tiff."""
    card = tmp_path / "card"
    shot = datetime(2024, 3, 5, 6, 30, 0)
    for k in range(3):  # a burst, then a lone photo half an hour later
        write_jpeg(
            card / "cam1" / f"IMG_{k + 1:04d}.JPG", gradient_rgb(seed=k), shot.replace(second=k)
        )
    write_jpeg(card / "cam1" / "IMG_0010.JPG", gradient_rgb(seed=9), shot + timedelta(minutes=30))
    (card / "cam2").mkdir()
    moment = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)  # no EXIF: file times
    Image.fromarray(gradient_rgb(seed=3)).save(card / "cam2" / "a.png")
    Image.fromarray(gradient_rgb(seed=4)).save(card / "cam2" / "b.tif")
    for k, name in enumerate(["a.png", "b.tif"]):
        stamp = (moment + timedelta(seconds=2 * k)).timestamp()
        os.utime(card / "cam2" / name, (stamp, stamp))
    deployments = tmp_path / "d.csv"
    deployments.write_text(
        HEADER + "d1,cam1,5.5,-7.5,2024-03-01T00:00:00-05:30,2024-03-31T00:00:00-05:30\n"
        "d2,cam2,5.6,-7.4,2024-03-01T00:00:00+02:00,2024-03-31T00:00:00+02:00\n",
        encoding="utf-8",
    )
    taxonomy = tmp_path / "t.csv"
    taxonomy.write_text("class,scientificName\nduiker,Cephalophinae\n", encoding="utf-8")
    inputs = read_camtrap_inputs(deployments, taxonomy, None, ["duiker", "blank"])
    root, clips = discover(card)
    assert [len(c.images) for c in clips] == [3, 1, 2]
    times, photos = _recording_times(clips, {}, root)
    table = pd.DataFrame(
        {"filepath": [c.clip_id for c in clips], "duiker": [0.9, 0.1, 0.6]}
        | {"blank": [0.1, 0.8, 0.3], "status": "ok", "error": ""}
    )
    caplog.set_level(logging.WARNING, logger="stack.camtrap")
    path = write_camtrap_dp(
        tmp_path / "pkg", table, ["duiker", "blank"], inputs, times, {}, None, 0.5, photos
    )
    assert validate_package(path.parent, standard) == []
    assert not _warnings(caplog)
    media = _read(path.parent, "media").set_index("filePath")
    assert list(media.index) == [
        "cam1/IMG_0001.JPG",
        "cam1/IMG_0002.JPG",
        "cam1/IMG_0003.JPG",
        "cam1/IMG_0010.JPG",
        "cam2/a.png",
        "cam2/b.tif",
    ]
    assert media.loc["cam1/IMG_0001.JPG", "timestamp"] == "2024-03-05T06:30:00-05:30"
    assert media.loc["cam1/IMG_0003.JPG", "timestamp"] == "2024-03-05T06:30:02-05:30"
    assert media.loc["cam2/a.png", "timestamp"] == "2024-03-05T14:00:00+02:00"  # 12:00Z
    assert media.loc["cam2/b.tif", "timestamp"] == "2024-03-05T14:00:02+02:00"
    assert media["fileMediatype"].tolist() == ["image/jpeg"] * 4 + ["image/png", "image/tiff"]
    assert media["deploymentID"].tolist() == ["d1"] * 4 + ["d2"] * 2

    obs = _read(path.parent, "observations")
    assert set(obs["observationLevel"]) == {"event"} and set(obs["mediaID"]) == {""}
    by_clip = {c.clip_id: obs[obs["eventID"] == event_id(c.clip_id)] for c in clips}
    assert sum(len(t) for t in by_clip.values()) == len(obs) == 3
    burst = by_clip["cam1/IMG_0001.JPG"].iloc[0]
    assert (burst["observationType"], burst["scientificName"]) == ("animal", "Cephalophinae")
    assert (burst["eventStart"], burst["eventEnd"]) == (
        "2024-03-05T06:30:00-05:30",
        "2024-03-05T06:30:02-05:30",
    )
    lone = by_clip["cam1/IMG_0010.JPG"].iloc[0]
    assert lone["observationType"] == "blank"
    assert lone["eventStart"] == lone["eventEnd"] == "2024-03-05T07:00:00-05:30"
    files = by_clip["cam2/a.png"].iloc[0]
    assert (files["eventStart"], files["eventEnd"]) == (
        "2024-03-05T14:00:00+02:00",
        "2024-03-05T14:00:02+02:00",
    )
    media = media.reset_index()
    for c in clips:  # each event links exactly its own photos
        expected = [p.relative_to(root).as_posix() for p in c.images]
        assert _linked(media, by_clip[c.clip_id].iloc[0]) == expected


def test_sequence_deployment_is_its_photos_folder(tmp_path) -> None:
    deployments = tmp_path / "d.csv"
    deployments.write_text(
        HEADER + "d1,cam1,0,0,2024-01-01T00:00:00Z,2024-02-01T00:00:00Z\n"
        "d2,cam2,0,0,2024-01-01T00:00:00Z,2024-02-01T00:00:00Z\n",
        encoding="utf-8",
    )
    inputs = CamtrapInputs(read_deployments(deployments), pd.DataFrame(), read_project(None))
    # a Hakuna seq_id is no path: the sequence goes where its photos are
    photos = {"SEQ_1": ["cam2/x/IMG1.JPG", "cam2/x/IMG2.JPG"]}
    assert _deployment_ids(inputs, ["cam1/v.mp4", "SEQ_1"], photos) == ["d1", "d2"]
    check_clips(inputs, ["cam1/v.mp4", "SEQ_1"], photos)
    with pytest.raises(CamtrapError, match=r"'SEQ_2'.*two deployments \(d1, d2\)"):
        check_clips(inputs, ["SEQ_2"], {"SEQ_2": ["cam1/a.jpg", "cam2/b.jpg"]})
    with pytest.raises(CamtrapError, match=r"1 clip\(s\) are not inside the input folder"):
        check_clips(inputs, ["SEQ_3"], {"SEQ_3": ["cam1/a.jpg", "/elsewhere/b.jpg"]})
    with pytest.raises(CamtrapError, match=r"1 clip\(s\) are under no deployment.*'cam3/b.jpg'"):
        check_clips(inputs, ["SEQ_4"], {"SEQ_4": ["cam3/b.jpg"]})


# ------------------------------------------------------------- (b) predict end to end

SCIENTIFIC = {
    "chimpanzee": "Pan troglodytes",
    "duiker": "Cephalophinae",
    "elephant": "Loxodonta africana",
    "hog": "Potamochoerus porcus",
    "leopard": "Panthera pardus",
}
SITES = {"siteA": "+01:00", "siteB": "-05:00", "siteC": "Z"}
#: low: the small photo run's probabilities are flat (p(blank) about 0.3-0.55), and some
#: bursts must give animal observations
THRESHOLD = 0.15


def _taxonomy(path: Path, classes: list[str]) -> Path:
    rows = [f"{c},{SCIENTIFIC.get(c, c.capitalize())}" for c in classes if c != "blank"]
    path.write_text("class,scientificName\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_predict_photo_folder_writes_event_level_package(
    photo_run: tuple[Path, Path], standard, tmp_path: Path, caplog
) -> None:
    run, data = photo_run
    classes = Run(run).classes()
    deployments = tmp_path / "deployments.csv"
    deployments.write_text(
        HEADER
        + "".join(
            f"dep-{site},{site},5.8,-7.3,2024-01-01T00:00:00{off},2024-12-31T00:00:00{off}\n"
            for site, off in SITES.items()
        ),
        encoding="utf-8",
    )
    package = tmp_path / "package"
    out = tmp_path / "pred.csv"
    request = CamtrapRequest(package, deployments, _taxonomy(tmp_path / "t.csv", classes))
    caplog.set_level(logging.WARNING, logger="stack.camtrap")
    predict(data, run, out, threshold=THRESHOLD, camtrap=request, show_progress=False)
    assert validate_package(package, standard) == []
    assert not _warnings(caplog)

    root, clips = discover(data)
    preds = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("filepath")
    media = _read(package, "media")
    obs = _read(package, "observations")
    # one media row per photo of the folder, every sequence's
    photos = sorted(p.relative_to(data).as_posix() for p in data.glob("site*/*.JPG"))
    assert sorted(media["filePath"]) == photos
    assert media["mediaID"].is_unique
    assert set(media["fileMediatype"]) == {"image/jpeg"}
    media = media.set_index("filePath", drop=False)
    # event-level observations only, one set per sequence
    assert set(obs["observationLevel"]) == {"event"} and set(obs["mediaID"]) == {""}
    assert obs["observationID"].is_unique
    assert (obs["observationType"] == "animal").any()  # the animal path is exercised
    events = obs.groupby("eventID")
    assert set(events.groups) == {event_id(c.clip_id) for c in clips}
    scientific = {SCIENTIFIC.get(c, c.capitalize()): c for c in classes if c != "blank"}
    for clip in clips:
        site = clip.clip_id.split("/")[0]
        offset = SITES[site]
        ids = [p.relative_to(root).as_posix() for p in clip.images]
        taken = [capture_time(p) for p in clip.images]
        assert {t.source for t in taken} == {"exif"}
        # each photo: its EXIF time, camera-local, in the deployment's offset
        rows = media.loc[ids]
        assert rows["timestamp"].tolist() == [_local(t.time, offset) for t in taken]
        assert set(rows["deploymentID"]) == {f"dep-{site}"}
        mine = events.get_group(event_id(clip.clip_id))
        assert set(mine["deploymentID"]) == {f"dep-{site}"}
        assert set(mine["eventStart"]) == {_local(taken[0].time, offset)}
        assert set(mine["eventEnd"]) == {_local(taken[-1].time, offset)}
        assert _linked(media, mine.iloc[0]) == ids  # a reader links exactly its photos
        row = preds.loc[clip.clip_id]
        above = sorted(c for c in classes if c != "blank" and row[c] >= THRESHOLD)
        animals = mine[mine["observationType"] == "animal"]
        assert sorted(scientific[s] for s in animals["scientificName"]) == above
        for _, o in animals.iterrows():
            p = row[scientific[o["scientificName"]]]
            assert float(o["classificationProbability"]) == pytest.approx(p, abs=1e-4)
        if not above:
            kind = "blank" if row["blank"] >= THRESHOLD else "unknown"
            assert mine["observationType"].tolist() == [kind]
    described = json.loads((package / "datapackage.json").read_text(encoding="utf-8"))
    assert described["project"]["observationLevel"] == ["event"]


# ---------------------------------------------------- (c) videos and photos together


def test_mixed_folder_gives_media_and_event_levels(
    photo_run: tuple[Path, Path], shared_data: Path, standard, tmp_path: Path
) -> None:
    """A real chimpandsee video and the real burst in one deployment folder: a media-level
    video row and its observations, ten image rows and the burst's event, one package."""
    run, _ = photo_run
    classes = Run(run).classes()
    cam = tmp_path / "survey" / "cam1"
    cam.mkdir(parents=True)
    os.symlink(shared_data / "chimpandsee" / VIDEO, cam / VIDEO)
    burst = sorted((shared_data / "photos-camtrap-dp").glob("*.JPG"))
    for photo in burst:
        os.symlink(photo, cam / photo.name)
    row = _example("deployments").set_index("deploymentID").loc[EXAMPLE_DEPLOYMENT]
    deployments = tmp_path / "deployments.csv"
    deployments.write_text(  # wide enough for the video's file time
        HEADER + f"{EXAMPLE_DEPLOYMENT},cam1,{row['latitude']},{row['longitude']},"
        "2021-01-01T00:00:00+01:00,2099-12-31T00:00:00+01:00\n",
        encoding="utf-8",
    )
    package = tmp_path / "package"
    out = tmp_path / "pred.csv"
    request = CamtrapRequest(package, deployments, _taxonomy(tmp_path / "t.csv", classes))
    predict(
        tmp_path / "survey", run, out, threshold=THRESHOLD, camtrap=request, show_progress=False
    )
    assert validate_package(package, standard) == []
    preds = pd.read_csv(out, keep_default_na=False)
    video_id, burst_id = f"cam1/{VIDEO}", f"cam1/{burst[0].name}"
    assert sorted(preds["filepath"]) == sorted([video_id, burst_id])
    assert set(preds["status"]) == {"ok"}

    media = _read(package, "media").set_index("filePath")
    assert len(media) == 11
    assert media.loc[video_id, "fileMediatype"] == "video/mp4"
    assert media.loc[video_id, "mediaID"] == media_id(video_id)
    when = clip_timestamp(cam / VIDEO)[0]  # aware: the file time of a tagless video
    assert _instant(media.loc[video_id, "timestamp"]) == when.replace(microsecond=0)
    assert media.loc[video_id, "timestamp"].endswith("+01:00")
    photos = [f"cam1/{p.name}" for p in burst]
    assert set(media.loc[photos, "fileMediatype"]) == {"image/jpeg"}
    example = _example("media").set_index("fileName").loc[[p.name for p in burst]]
    assert media.loc[photos, "timestamp"].tolist() == example["timestamp"].tolist()

    obs = _read(package, "observations")
    video_obs = obs[obs["mediaID"] == media_id(video_id)]
    burst_obs = obs[obs["eventID"] == event_id(burst_id)]
    assert len(video_obs) + len(burst_obs) == len(obs) and len(video_obs) and len(burst_obs)
    assert set(video_obs["observationLevel"]) == {"media"} and set(video_obs["eventID"]) == {""}
    assert set(burst_obs["observationLevel"]) == {"event"} and set(burst_obs["mediaID"]) == {""}
    assert set(burst_obs["eventStart"]) == {"2021-04-11T20:43:09+01:00"}
    assert set(burst_obs["eventEnd"]) == {"2021-04-11T20:43:15+01:00"}
    assert _linked(media.reset_index(), burst_obs.iloc[0]) == photos
    described = json.loads((package / "datapackage.json").read_text(encoding="utf-8"))
    assert described["project"]["observationLevel"] == ["media", "event"]
