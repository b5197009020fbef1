"""``jungle train-level1`` as a command: options, YAML settings, clear errors (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from typer.testing import CliRunner, Result

from pool.cli import train_level1_command
from tests.pool.support import Synthetic


def app() -> typer.Typer:
    """The command registered as jungle.cli does."""
    cli = typer.Typer()
    cli.callback()(lambda: None)
    cli.command("train-level1")(train_level1_command)
    return cli


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app(), ["train-level1", *args])


def test_command_trains_and_prints_the_table(synthetic: Synthetic, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pool: {epochs: 3, use_meta: false}\nthreads: 1\ndevice: cpu\n")
    run = tmp_path / "runs" / "cli"
    result = invoke(
        "--features",
        str(synthetic.store),
        "--features",  # a second store (here the same one): features are concatenated
        str(synthetic.store),
        "--labels",
        str(synthetic.labels_csv),
        "--run",
        str(run),
        "--models",
        "pool",
        "--folds",
        "3",
        "--group-column",
        "site",
        "--config",
        str(cfg),
        "--features-in-memory",
        "false",
    )
    assert result.exit_code == 0, result.output
    assert "features_in_memory: false" in (run / "config.yaml").read_text()
    assert "log loss" in result.stdout and "prior" in result.stdout and "pool" in result.stdout
    assert "done" in result.stderr
    folds = pd.read_csv(run / "folds.csv")
    assert folds["fold"].nunique() == 3 and folds.groupby("group")["fold"].nunique().max() == 1
    assert (run / "oof" / "pool.csv").is_file() and not (run / "oof" / "gru.csv").exists()
    inputs = json.loads((run / "inputs.json").read_text())
    assert [s["dims"] for s in inputs["stores"]] == [[16, 48], [16, 48]]


def test_user_errors_exit_2_with_one_clear_line(synthetic: Synthetic, tmp_path: Path) -> None:
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("path,label\na.mp4,hog\n")
    result = invoke(
        "--features",
        str(synthetic.store),
        "--labels",
        str(bad_labels),
        "--run",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 2
    assert "error:" in result.stderr and "no 'filepath' column" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing written before validation passed

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\n")
    result = invoke("--config", str(cfg), "--labels", str(synthetic.labels_csv))
    assert result.exit_code == 2
    assert "epochs: Extra inputs are not permitted" in result.stderr
    assert "features: Field required" in result.stderr

    result = invoke(
        "--features",
        str(tmp_path / "none.h5"),
        "--labels",
        str(synthetic.labels_csv),
        "--run",
        str(tmp_path / "r"),
        "--models",
        "attention,transformer",
    )
    assert result.exit_code == 2 and "models" in result.stderr
