"""Camtrap DP 1.0.2 packages (stack/camtrap/), validated with the standard's own schemas."""

from __future__ import annotations

import json
import logging
import math
import shutil
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stack.camtrap import (
    DEPLOYMENT_FIELDS,
    MEDIA_FIELDS,
    OBSERVATION_FIELDS,
    PROFILE_URL,
    SCHEMA_URLS,
    CamtrapError,
    CamtrapInputs,
    _deployment_ids,
    check_clips,
    evidence_spans,
    media_id,
    read_camtrap_inputs,
    read_deployments,
    read_project,
    read_taxonomy,
    write_camtrap_dp,
)
from tests.camtrap_schema import STANDARD, load_standard, validate_package

CLASSES = ["chimpanzee", "duiker", "Human", "blank"]
THRESHOLD = 0.5

DEPLOYMENTS = """\
deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd,locationName,featureType
dep-a,siteA,5.75,-7.25,2024-03-01T08:00:00+01:00,2024-03-31T18:00:00+01:00,Site A,trailGame
dep-a2,./siteA/cam2/,5.5,-7.5,2024-03-01T08:00:00-05:30,2024-03-31T18:00:00-05:30,,
dep-b,siteB,6.25,-7.0,2024-03-02T00:00:00Z,2024-04-02T00:00:00Z,Site B,
"""

TAXONOMY = """\
class,scientificName,taxonRank,taxonID
chimpanzee,Pan troglodytes,species,https://www.checklistbank.org/dataset/COL2023/taxon/5VHNH
duiker,Philantomba monticola,species,
Human,Homo sapiens,species,
leopard,Panthera pardus,species,
"""

PROJECT = """\
name: tai-survey-2024
title: Taï camera traps, March 2024
contributors:
  - title: Jane Doe
    email: jane@example.org
    role: principalInvestigator
    organization: Example Institute
project:
  id: tai-2024
  title: Taï chimpanzee survey
  acronym: TCS
  samplingDesign: systematicRandom
  captureMethod: [activityDetection]
licenses:
  data: CC0-1.0
  media: CC-BY-4.0
coordinatePrecision: 0.01
"""

T0 = datetime(2024, 3, 5, 6, 30, 15, tzinfo=UTC)
# clip id -> (deployment, probabilities, status, error, time, duration)
CLIPS = {
    "siteA/c1.mp4": ("dep-a", [0.9, 0.6, 0.05, 0.02], "ok", "", T0, 10.0),
    "siteA/cam2/c2.avi": ("dep-a2", [0.1, 0.05, 0.8, 0.1], "ok", "", T0 + timedelta(hours=1), 8.0),
    "siteA/cam2/sub/c3.MOV": (
        "dep-a2",
        [0.01, 0.02, 0.03, 0.9],
        "ok",
        "",
        T0 + timedelta(hours=2, microseconds=700_000),
        5.0,
    ),
    "siteB/c4.mkv": ("dep-b", [0.3, 0.45, 0.01, 0.2], "ok", "", T0 + timedelta(days=1), 6.0),
    "siteB/deep/c5.mp4": (
        "dep-b",
        [math.nan] * 4,
        "failed",
        "decoding failed: moov atom not found",
        T0 + timedelta(days=2),
        math.nan,
    ),
    "siteB/c6.asf": ("dep-b", [0.2, 0.7, 0.0, 0.1], "partial", "", T0 + timedelta(days=3), 12.5),
}
SPANS = {
    "siteA/c1.mp4": {"chimpanzee": (1.0, 4.0), "duiker": (2.5, 3.2)},
    "siteA/cam2/c2.avi": {"Human": (0.0, 7.0)},
}


@pytest.fixture(scope="session")
def standard():
    """The standard's schemas (always present in CI; a fresh clone elsewhere may lack them)."""
    if not STANDARD.is_dir():
        pytest.skip(f"the Camtrap DP 1.0.2 files {STANDARD} are absent (see README, 'Tests')")
    return load_standard(STANDARD)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> CamtrapInputs:
    return read_camtrap_inputs(
        _write(tmp_path / "deployments.csv", DEPLOYMENTS),
        _write(tmp_path / "taxonomy.csv", TAXONOMY),
        _write(tmp_path / "project.yaml", PROJECT),
        CLASSES,
    )


def _predictions() -> pd.DataFrame:
    rows = []
    for cid, (_, probs, status, error, _, _) in CLIPS.items():
        row = {"filepath": cid, **dict(zip(CLASSES, probs, strict=True))}
        ok = status != "failed"
        top = int(np.argmax(probs)) if ok else 0
        row |= {
            "top_label": CLASSES[top] if ok else "",
            "top_prob": probs[top] if ok else math.nan,
            "status": status,
            "error": error,
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _package(tmp_path: Path, inputs: CamtrapInputs, spans=SPANS, out: str = "pkg") -> Path:
    times = {cid: c[4] for cid, c in CLIPS.items()}
    durations = {cid: c[5] for cid, c in CLIPS.items()}
    return write_camtrap_dp(
        tmp_path / out, _predictions(), CLASSES, inputs, times, durations, spans, THRESHOLD
    )


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def test_constants_match_the_standard(standard) -> None:
    for name, fields in (
        ("deployments", DEPLOYMENT_FIELDS),
        ("media", MEDIA_FIELDS),
        ("observations", OBSERVATION_FIELDS),
    ):
        assert [f["name"] for f in standard.schemas[name]["fields"]] == list(fields)
    example = json.loads((STANDARD / "example-datapackage.json").read_text(encoding="utf-8"))
    assert example["profile"] == PROFILE_URL
    assert {r["name"]: r["schema"] for r in example["resources"] if "schema" in r} == SCHEMA_URLS


def test_package_is_valid_and_holds_every_clip(tmp_path, inputs, standard, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="stack.camtrap")
    path = _package(tmp_path, inputs)
    folder = path.parent
    assert path.name == "datapackage.json"
    assert validate_package(folder, standard) == []
    assert sorted(p.name for p in folder.iterdir()) == [
        "datapackage.json",
        "deployments.csv",
        "media.csv",
        "observations.csv",
    ]

    deployments = _read(folder, "deployments").set_index("deploymentID")
    assert list(deployments.index) == ["dep-a", "dep-a2", "dep-b"]
    assert deployments.loc["dep-a", "deploymentStart"] == "2024-03-01T08:00:00+01:00"
    assert deployments.loc["dep-a2", "deploymentEnd"] == "2024-03-31T18:00:00-05:30"
    assert deployments.loc["dep-b", "deploymentStart"] == "2024-03-02T00:00:00Z"
    assert deployments.loc["dep-a", "locationName"] == "Site A"
    assert deployments.loc["dep-a", "featureType"] == "trailGame"
    assert float(deployments.loc["dep-b", "latitude"]) == 6.25

    media = _read(folder, "media").set_index("filePath")
    assert sorted(media.index) == sorted(CLIPS)  # one row per clip, the failed one included
    assert media["mediaID"].is_unique
    offsets = {"dep-a": timedelta(hours=1), "dep-a2": -timedelta(hours=5, minutes=30)}
    for cid, (dep, _, status, error, when, _) in CLIPS.items():
        row = media.loc[cid]
        assert row["mediaID"] == media_id(cid)
        assert row["deploymentID"] == dep
        stamp = _time(row["timestamp"])
        assert stamp == when.replace(microsecond=0)  # the same instant, seconds truncated
        assert stamp.utcoffset() == offsets.get(dep, timedelta(0))
        assert row["fileName"] == cid.rpartition("/")[2]
        assert row["filePublic"] == "false"
        assert row["captureMethod"] == "activityDetection"
        if status == "failed":
            assert error in row["mediaComments"]
    assert media.loc["siteB/c4.mkv", "timestamp"].endswith("Z")
    assert media.loc["siteA/c1.mp4", "timestamp"] == "2024-03-05T07:30:15+01:00"
    assert media.loc["siteA/cam2/c2.avi", "timestamp"] == "2024-03-05T02:00:15-05:30"
    assert dict(media["fileMediatype"]) == {
        "siteA/c1.mp4": "video/mp4",
        "siteA/cam2/c2.avi": "video/x-msvideo",
        "siteA/cam2/sub/c3.MOV": "video/quicktime",
        "siteB/c4.mkv": "video/x-matroska",
        "siteB/deep/c5.mp4": "video/mp4",
        "siteB/c6.asf": "video/x-ms-asf",
    }

    obs = _read(folder, "observations")
    assert obs["observationID"].is_unique
    assert set(obs["observationLevel"]) == {"media"}
    by_clip = {cid: obs[obs["mediaID"] == media_id(cid)].reset_index(drop=True) for cid in CLIPS}
    assert sum(len(t) for t in by_clip.values()) == len(obs)
    jungle = f"jungle {version('jungle')}"

    c1 = by_clip["siteA/c1.mp4"]  # two species above the threshold, most likely first
    assert list(c1["observationID"]) == [f"{media_id('siteA/c1.mp4')}_{k}" for k in (1, 2)]
    assert list(c1["observationType"]) == ["animal", "animal"]
    assert list(c1["scientificName"]) == ["Pan troglodytes", "Philantomba monticola"]
    assert [float(p) for p in c1["classificationProbability"]] == [0.9, 0.6]
    assert set(c1["classificationMethod"]) == {"machine"}
    assert set(c1["classifiedBy"]) == {jungle}
    assert set(c1["deploymentID"]) == {"dep-a"}
    assert _time(c1.loc[0, "eventStart"]) == T0 + timedelta(seconds=1)
    assert _time(c1.loc[0, "eventEnd"]) == T0 + timedelta(seconds=4)
    # a fractional span: the start rounded down, the end up (the event covers the evidence)
    assert _time(c1.loc[1, "eventStart"]) == T0 + timedelta(seconds=2)
    assert _time(c1.loc[1, "eventEnd"]) == T0 + timedelta(seconds=4)
    assert c1.loc[0, "eventStart"].endswith("+01:00")

    c2 = by_clip["siteA/cam2/c2.avi"]
    assert list(c2["observationType"]) == ["human"]
    assert list(c2["scientificName"]) == ["Homo sapiens"]
    assert float(c2.loc[0, "classificationProbability"]) == 0.8
    assert _time(c2.loc[0, "eventEnd"]) == CLIPS["siteA/cam2/c2.avi"][4] + timedelta(seconds=7)

    c3 = by_clip["siteA/cam2/sub/c3.MOV"]  # blank
    assert list(c3["observationType"]) == ["blank"]
    assert c3.loc[0, "scientificName"] == ""
    assert float(c3.loc[0, "classificationProbability"]) == 0.9
    start = CLIPS["siteA/cam2/sub/c3.MOV"][4]
    assert _time(c3.loc[0, "eventStart"]) == start.replace(microsecond=0)
    assert _time(c3.loc[0, "eventEnd"]) == (start + timedelta(seconds=6)).replace(microsecond=0)

    c4 = by_clip["siteB/c4.mkv"]  # nothing reaches the threshold, p(blank) neither
    assert list(c4["observationType"]) == ["unknown"]
    assert c4.loc[0, "classificationProbability"] == ""
    assert "threshold" in c4.loc[0, "observationComments"]
    assert c4.loc[0, "classificationMethod"] == "machine"

    c5 = by_clip["siteB/deep/c5.mp4"]  # failed: never made-up numbers
    assert list(c5["observationType"]) == ["unclassified"]
    assert c5.loc[0, "classificationProbability"] == ""
    assert "moov atom not found" in c5.loc[0, "observationComments"]
    assert c5.loc[0, "classificationMethod"] == ""
    assert c5.loc[0, "eventStart"] == c5.loc[0, "eventEnd"]

    c6 = by_clip["siteB/c6.asf"]  # partial, no span given: the whole clip
    assert list(c6["scientificName"]) == ["Philantomba monticola"]
    assert float(c6.loc[0, "classificationProbability"]) == 0.7
    when = CLIPS["siteB/c6.asf"][4]
    assert _time(c6.loc[0, "eventStart"]) == when
    assert _time(c6.loc[0, "eventEnd"]) == when + timedelta(seconds=13)

    package = json.loads(path.read_text(encoding="utf-8"))
    assert package["profile"] == PROFILE_URL
    assert {r["name"]: r["schema"] for r in package["resources"]} == SCHEMA_URLS
    assert package["name"] == "tai-survey-2024"
    assert package["contributors"][0]["role"] == "principalInvestigator"
    assert package["project"]["samplingDesign"] == "systematicRandom"
    assert package["project"]["observationLevel"] == ["media"]
    assert package["licenses"] == [
        {"name": "CC0-1.0", "scope": "data"},
        {"name": "CC-BY-4.0", "scope": "media"},
    ]
    assert package["temporal"] == {"start": "2024-03-01", "end": "2024-04-02"}
    ring = package["spatial"]["coordinates"][0]
    assert package["spatial"]["type"] == "Polygon"
    assert (min(p[0] for p in ring), max(p[1] for p in ring)) == (-7.5, 6.25)
    taxa = {t["scientificName"]: t for t in package["taxonomic"]}
    assert set(taxa) == {"Pan troglodytes", "Philantomba monticola", "Homo sapiens"}
    assert taxa["Pan troglodytes"]["vernacularNames"] == {"eng": "chimpanzee"}
    assert taxa["Pan troglodytes"]["taxonID"].endswith("/5VHNH")
    assert "taxonID" not in taxa["Homo sapiens"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_rewrite_replaces_an_earlier_package(tmp_path, inputs, standard) -> None:
    first = _package(tmp_path, inputs)
    (first.parent / "stale.txt").write_text("from an earlier run")
    again = _package(tmp_path, inputs, spans=None)
    assert again == first
    assert not (first.parent / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deployments.csv",
        "pkg",
        "project.yaml",
        "taxonomy.csv",
    ]  # no temporary or old folder left behind
    assert validate_package(first.parent, standard) == []
    obs = _read(first.parent, "observations")
    chimp = obs[obs["scientificName"] == "Pan troglodytes"].iloc[0]
    assert _time(chimp["eventEnd"]) == T0 + timedelta(seconds=10)  # no spans: whole clip


def test_refuses_a_foreign_folder(tmp_path, inputs) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "thesis.docx").write_text("do not delete")
    with pytest.raises(CamtrapError, match="not empty and holds no datapackage.json"):
        _package(tmp_path, inputs)
    assert (tmp_path / "pkg" / "thesis.docx").exists()


def test_warns_on_a_time_outside_the_deployment(tmp_path, inputs, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="stack.camtrap")
    times = {cid: c[4] for cid, c in CLIPS.items()}
    times["siteB/c4.mkv"] = datetime(2024, 5, 1, tzinfo=UTC)
    write_camtrap_dp(tmp_path / "pkg", _predictions(), CLASSES, inputs, times, {}, None, THRESHOLD)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "dep-b" in warned[0] and "siteB/c4.mkv" in warned[0]


def test_defaults_validate(tmp_path, standard) -> None:
    """No project YAML: the defaults give a valid package; a single site is a Point."""
    deployments = _write(
        tmp_path / "d.csv",
        "deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd\n"
        "d1,,1.5,2.5,2024-01-01T00:00:00+02:00,2024-01-02T00:00:00+02:00\n",
    )
    taxonomy = _write(tmp_path / "t.csv", "class,scientificName\nchimpanzee,Pan troglodytes\n")
    inputs = read_camtrap_inputs(deployments, taxonomy, None, ["chimpanzee", "blank"])
    table = pd.DataFrame(
        {"filepath": ["x/a.mp4", ".hidden/b..c.mp4"], "chimpanzee": [0.7, 0.2]}
        | {"blank": [0.3, 0.4], "status": ["ok", "ok"], "error": ["", ""]}
    )
    times = {c: datetime(2024, 1, 1, 12, tzinfo=UTC) for c in table["filepath"]}
    path = write_camtrap_dp(
        tmp_path / "out", table, ["chimpanzee", "blank"], inputs, times, {}, None, 0.5
    )
    assert validate_package(path.parent, standard) == []
    package = json.loads(path.read_text(encoding="utf-8"))
    assert package["spatial"] == {"type": "Point", "coordinates": [2.5, 1.5]}
    assert package["contributors"] == [{"title": "jungle", "role": "contributor"}]
    assert package["project"]["samplingDesign"] == "opportunistic"
    media = _read(path.parent, "media")
    assert list(media["filePath"]) == ["x/a.mp4", "%2Ehidden/b%2E.c.mp4"]
    assert list(media["fileName"]) == ["a.mp4", "b..c.mp4"]


# ------------------------------------------------------------------------------- errors


def test_clip_under_no_folder(inputs) -> None:
    check_clips(inputs, list(CLIPS))
    with pytest.raises(CamtrapError, match=r"1 clip\(s\) are under no deployment.*'siteC/x.mp4'"):
        check_clips(inputs, [*CLIPS, "siteC/x.mp4"])
    with pytest.raises(CamtrapError, match="not inside the input folder"):
        check_clips(inputs, ["/abs/x.mp4"])


def test_longest_folder_wins_and_dot_is_everything(tmp_path) -> None:
    deployments = _write(
        tmp_path / "d.csv",
        "deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd\n"
        "all,.,0,0,2024-01-01T00:00:00Z,2024-02-01T00:00:00Z\n"
        "deep,a/b,0,0,2024-01-01T00:00:00Z,2024-02-01T00:00:00Z\n",
    )
    inputs = CamtrapInputs(read_deployments(deployments), pd.DataFrame(), read_project(None))
    check_clips(inputs, ["top.mp4", "a/b/c/d.mp4", "a/x.mp4"])  # all under "."
    assert _deployment_ids(inputs, ["top.mp4", "a/b/c/d.mp4", "a/b.mp4", "a/bc/x.mp4"]) == [
        "all",
        "deep",
        "all",
        "all",
    ]


def test_taxonomy_lists_every_missing_class(tmp_path) -> None:
    taxonomy = _write(tmp_path / "t.csv", "class,scientificName\nduiker,Philantomba monticola\n")
    with pytest.raises(CamtrapError, match=r"2 class\(es\).*: chimpanzee, Human \(add") as err:
        read_taxonomy(taxonomy, CLASSES)
    assert "blank" not in str(err.value) and str(taxonomy) in str(err.value)


def test_taxonomy_bad_rank(tmp_path) -> None:
    taxonomy = _write(
        tmp_path / "t.csv", "class,scientificName,taxonRank\nduiker,Philantomba,kind\n"
    )
    with pytest.raises(CamtrapError, match=r"row 2 \(class 'duiker'\): taxonRank 'kind'"):
        read_taxonomy(taxonomy, ["duiker", "blank"])


HEADER = "deploymentID,folder,latitude,longitude,deploymentStart,deploymentEnd\n"
GOOD = "d1,a,1,2,2024-01-01T00:00:00Z,2024-01-02T00:00:00Z\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "d1,a,1,2,2024-03-01T08:00:00,2024-03-02T08:00:00Z\n", "has no UTC offset"),
        (HEADER + "d1,a,1,2,2024-03-01,2024-03-02T08:00:00Z\n", "not an ISO 8601 date and time"),
        (HEADER + GOOD + GOOD.replace(",a,", ",b,"), r"row 3 .*also on row 2"),
        (HEADER + GOOD + GOOD.replace("d1", "d2"), "folder 'a' is also the folder of row 2"),
        (HEADER + GOOD.replace(",1,2,", ",95,2,"), r"row 2 .*latitude 95 is outside -90..90"),
        (HEADER + GOOD.replace(",1,2,", ",1,east,"), "longitude 'east' is not a number"),
        (
            HEADER + "d1,a,1,2,2024-01-02T00:00:00Z,2024-01-01T00:00:00Z\n",
            "deploymentStart .* is after deploymentEnd",
        ),
        ("deploymentID,folder,latitude\nd1,a,1\n", "missing column.*longitude"),
        (HEADER + GOOD.replace(",a,", ",../a,"), "must not contain '..'"),
        (HEADER, "no deployments"),
        (HEADER + GOOD.replace("d1", "NA"), "'NA' reads as a missing value"),
    ],
)
def test_deployment_errors(tmp_path, text, message) -> None:
    path = _write(tmp_path / "deployments.csv", text)
    with pytest.raises(CamtrapError, match=message) as err:
        read_deployments(path)
    assert str(path) in str(err.value)


def test_project_yaml_errors(tmp_path) -> None:
    bad = _write(tmp_path / "p.yaml", "title: x\nproject:\n  samplingdesign: targeted\n")
    with pytest.raises(CamtrapError, match=r"unknown key project.samplingdesign \(known keys"):
        read_project(bad)
    bad = _write(tmp_path / "p.yaml", "colour: green\n")
    with pytest.raises(CamtrapError, match="unknown key colour"):
        read_project(bad)
    bad = _write(tmp_path / "p.yaml", "project:\n  samplingDesign: random\n")
    with pytest.raises(CamtrapError, match="project.samplingDesign"):
        read_project(bad)
    bad = _write(tmp_path / "p.yaml", "contributors:\n  - title: A\n    role: boss\n")
    with pytest.raises(CamtrapError, match=r"contributors\.0\.role"):
        read_project(bad)
    assert read_project(_write(tmp_path / "empty.yaml", "")) == read_project(None)


def test_example_config_is_valid() -> None:
    repo = Path(__file__).resolve().parents[1]
    project = read_project(repo / "configs" / "camtrap-project.yaml")
    assert project.project.samplingDesign == "systematicRandom"
    assert [c.role for c in project.contributors] == ["contact", "rightsHolder"]


# ------------------------------------------------------------------------ evidence spans


def test_evidence_spans_stream_over_chunks() -> None:
    classes = ["chimpanzee", "duiker", "blank"]

    def frames(clip: str, times: list[float], attention: list[float], scores: list[list]):
        table = pd.DataFrame(
            {
                "filepath": clip,
                "frame_index": range(len(times)),
                "time_s": times,
                "attention": attention,
            }
        )
        for k, name in enumerate(classes):
            table[name] = [s[k] for s in scores]
        return table

    a = frames("a.mp4", [0.0, 0.5, 1.0], [0.1, 0.5, 0.4], [[0.1, 0, 0.9], [0.8, 0, 0], [0.6, 0, 0]])
    # b is split over the two chunks: its spans must combine both parts
    b1 = frames("b.mp4", [0.0, 1.0], [0.1, 0.1], [[0.7, 0.1, 0], [0.2, 0.1, 0]])
    b2 = frames(
        "b.mp4", [2.0, 3.0, 4.0], [0.5, 0.25, 0.05], [[0.1, 0.1, 0], [0.9, 0.2, 0]] + [[0] * 3]
    )
    c = frames("c.mp4", [0.0, 2.0], [0.5, 0.5], [[0, 0, 0], [0, 0, 0]])  # uniform attention
    spans = evidence_spans([pd.concat([a, b1]), pd.concat([b2, c])], classes, 0.5)
    assert sorted(spans) == ["a.mp4", "b.mp4", "c.mp4"]
    assert spans["a.mp4"]["chimpanzee"] == (0.5, 1.0)
    assert spans["a.mp4"]["blank"] == (0.0, 0.0)
    assert spans["a.mp4"]["duiker"] == (0.5, 1.0)  # attention above 1/3: frames 0.5 and 1.0
    assert spans["b.mp4"]["chimpanzee"] == (0.0, 3.0)
    assert spans["b.mp4"]["duiker"] == (2.0, 3.0)  # attention above 1/5: frames 2.0 and 3.0
    assert spans["c.mp4"]["chimpanzee"] == (0.0, 2.0)  # none above uniform: every frame
    assert dict(spans["c.mp4"]) == {name: (0.0, 2.0) for name in classes}
    assert spans.get("z.mp4") is None
    assert len(evidence_spans(iter(()), classes, 0.5)) == 0


# ----------------------------------------------------------------- the validator itself


def test_the_standard_example_passes(tmp_path, standard) -> None:
    for name in ("deployments", "media", "observations"):
        shutil.copy(STANDARD / f"example-{name}.csv", tmp_path / f"{name}.csv")
    shutil.copy(STANDARD / "example-datapackage.json", tmp_path / "datapackage.json")
    assert validate_package(tmp_path, standard) == []


def _edit_csv(path: Path, row: int, column: str, value: str) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("table", "column", "value", "expected"),
    [
        ("media", "timestamp", "", "media.csv row 2 timestamp: a value is required"),
        ("observations", "eventStart", "2024-03-05 06:30:15", "eventStart: '2024-03-05 06:30"),
        ("observations", "mediaID", "dangling", "foreign key ['mediaID'] = ('dangling',)"),
        ("media", "deploymentID", "dep-x", "foreign key ['deploymentID'] = ('dep-x',)"),
        ("observations", "observationType", "animals", "'animals' is not one of"),
        ("observations", "classificationProbability", "1.5", "above the maximum 1"),
        ("media", "filePath", "../up.mp4", "does not match the pattern"),
        ("media", "filePublic", "no", "not a valid boolean"),
        ("deployments", "deploymentID", "dep-b", "not unique"),
    ],
)
def test_the_validator_catches_broken_tables(
    tmp_path, inputs, standard, table, column, value, expected
) -> None:
    folder = _package(tmp_path, inputs).parent
    _edit_csv(folder / f"{table}.csv", 0, column, value)
    problems = validate_package(folder, standard)
    assert any(expected in p for p in problems), problems


def test_the_validator_catches_a_broken_descriptor(tmp_path, inputs, standard) -> None:
    path = _package(tmp_path, inputs)
    package = json.loads(path.read_text(encoding="utf-8"))
    package["project"]["samplingDesign"] = "random"
    del package["temporal"]
    package["contributors"][0]["role"] = "boss"
    path.write_text(json.dumps(package), encoding="utf-8")
    problems = " | ".join(validate_package(path.parent, standard))
    assert "'random' is not one of" in problems
    assert "'temporal' is a required property" in problems
    assert "'boss' is not one of" in problems


def test_the_validator_catches_a_missing_column(tmp_path, inputs, standard) -> None:
    folder = _package(tmp_path, inputs).parent
    table = pd.read_csv(folder / "media.csv", dtype=str, keep_default_na=False)
    table.drop(columns="favorite").to_csv(folder / "media.csv", index=False)
    problems = validate_package(folder, standard)
    assert any("missing ['favorite']" in p for p in problems), problems
