"""Subcommands load lazily: building the ``jungle`` command line, ``jungle features`` and
``--help`` import none of LightGBM, XGBoost or the level-1/level-2 code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from extract.store import FeatureStore
from tests.media import indexed_clip

REPO = Path(__file__).resolve().parents[1]
#: modules only the training and prediction commands need.
HEAVY = (
    "lightgbm",
    "xgboost",
    "pool.run",
    "pool.estimators",
    "stack.stacker",
    "stack.train",
    "stack.boost",
)

#: a fresh interpreter: import the command line, run one command, report sys.modules.
_SCRIPT = """
import json, sys
from typer.testing import CliRunner
import jungle.cli
imported = sorted(sys.modules)
result = CliRunner().invoke(jungle.cli.app, sys.argv[1:])
print(json.dumps({"exit_code": result.exit_code, "output": result.output,
                  "imported": imported, "after": sorted(sys.modules)}))
"""


def _jungle(*args: str) -> dict:
    """``jungle ARGS`` through typer's CliRunner in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_features_loads_no_level1_or_level2_code(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    indexed_clip(videos / "a.mp4", 12)
    out = tmp_path / "f.h5"
    args = ["--workers", "0", "--frames", "4", "--image-size", "32", "--no-progress"]
    got = _jungle("features", str(videos), "--out", str(out), *args)
    assert got["exit_code"] == 0, got["output"]
    assert FeatureStore(out).ids == ["a.mp4"]
    assert "torch" not in got["imported"]  # building the command line needs no torch
    for name in HEAVY:
        assert name not in got["imported"], f"`import jungle.cli` loaded {name}"
        assert name not in got["after"], f"`jungle features` loaded {name}"


def test_help_of_a_lazy_command_lists_its_options() -> None:
    got = _jungle("predict", "--help")
    assert got["exit_code"] == 0, got["output"]
    assert "--engine" in got["output"] and "--sequence-gap" in got["output"]
    assert not set(HEAVY) & set(got["after"])
