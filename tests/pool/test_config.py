"""Config: the shipped YAML is the defaults; unknown keys and bad values are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pool.config import Level1Config, Level1Error, load_config

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"features": ["f.h5"], "labels": "l.csv", "run": "runs/x"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_yaml_equals_the_defaults() -> None:
    shipped = load_config(REPO / "configs" / "level1.yaml", REQUIRED)
    assert shipped == Level1Config(**REQUIRED).resolved()


def test_options_override_yaml_and_paths_become_absolute(tmp_path: Path) -> None:
    cfg_file = write(
        tmp_path / "c.yaml",
        "folds: 7\nseed: 3\nfeatures:\n  - a.h5\n  - {path: b.h5, layers: [features]}\n"
        "attention: {hidden: 32}\nlabels: l.csv\nrun: r\n",
    )
    cfg = load_config(cfg_file, {"folds": 4, "models": ["pool", "attention"]})
    assert cfg.folds == 4 and cfg.seed == 3
    assert cfg.models == ["attention", "pool"]  # canonical order
    assert [s.layers for s in cfg.features] == [None, ["features"]]
    assert all(s.path.is_absolute() for s in cfg.features) and cfg.run.is_absolute()
    assert cfg.attention.hidden == 32 and cfg.gru.hidden == 128
    assert cfg.pool.use_meta is False


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("foldz: 3\n", REQUIRED, "foldz: Extra inputs are not permitted"),
        ("attention: {hiden: 3}\n", REQUIRED, r"attention\.hiden"),
        ("histogram: {booster: catboost}\n", REQUIRED, "histogram.booster"),
        ("", {**REQUIRED, "models": ["attention", "svm"]}, "models"),
        ("", {**REQUIRED, "models": ["pool", "pool"]}, "listed twice"),
        ("", {**REQUIRED, "folds": 1}, "folds"),
        ("", {**REQUIRED, "device": "tpu"}, "device"),
        ("", {**REQUIRED, "meta_fields": ["codec"]}, "unknown metadata fields"),
        ("group_column: site\ngroup_by_folder: true\n", REQUIRED, "not both"),
        ("", {"features": ["f.h5"]}, "labels: Field required"),
        ("- a\n- b\n", REQUIRED, "expected a mapping"),
        ("folds: [\n", REQUIRED, "cannot read config"),
        ("features_in_memory: maybe\n", REQUIRED, "features_in_memory"),
        ("shuffle_window_mb: 0\n", REQUIRED, "shuffle_window_mb"),
    ],
)
def test_invalid_settings_are_reported(
    tmp_path: Path, text: str, overrides: dict, message: str
) -> None:
    with pytest.raises(Level1Error, match=message):
        load_config(write(tmp_path / "c.yaml", text), overrides)
