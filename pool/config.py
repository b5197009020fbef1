"""Settings of ``jungle train-level1``, validated before any work starts.

A YAML file (see ``configs/level1.yaml``) gives any subset of the settings; command-line
options override it. Unknown keys anywhere are an error. Relative paths are resolved
against the current directory when the config is loaded, so the copy saved in the run
directory is unambiguous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extract.config import check_device, read_settings

ModelName = Literal["attention", "gru", "pool", "histogram", "sequence"]
#: every level-1 model, in the order they are trained and reported (a model's index seeds
#: it: new models go at the end).
MODELS: tuple[str, ...] = ("attention", "gru", "pool", "histogram", "sequence")
#: numeric metadata fields a model may use (columns of ``FeatureStore.meta()``).
META_CHOICES: tuple[str, ...] = (
    "file_size",
    "width",
    "height",
    "fps",
    "frame_count",
    "duration",
    "bitrate",
)


#: placeholder in a feature-store path that makes it one store per fold.
FOLD_FIELD = "{fold}"


class Level1Error(ValueError):
    """Invalid input or settings for level-1 training; the message says what and how to fix it."""


class FeatureSource(BaseModel):
    """One feature store and the layers taken from it (``None``: all of its layers)."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    layers: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: object) -> object:
        """A bare path (string) stands for ``{path: ..., layers: null}``."""
        return {"path": value} if isinstance(value, str | Path) else value

    @property
    def per_fold(self) -> bool:
        """True when the path holds ``{fold}``: one store per fold (fold K uses store K)."""
        return FOLD_FIELD in str(self.path)

    def for_fold(self, fold: int) -> FeatureSource:
        """This source for fold ``fold`` (``{fold}`` replaced; unchanged when not per fold)."""
        if not self.per_fold:
            return self
        return self.model_copy(update={"path": Path(str(self.path).replace(FOLD_FIELD, str(fold)))})


class NetConfig(BaseModel):
    """Architecture and optimisation of one torch meta-model (attention, gru or pool)."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=4, le=4096, description="width of frame embeddings and head")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    use_meta: bool = Field(True, description="feed the metadata branch")
    epochs: int = Field(
        60, ge=1, le=10_000, description="maximum epochs (early stopping ends sooner)"
    )
    patience: int = Field(8, ge=1, description="epochs without inner-validation improvement")
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)


class PoolConfig(NetConfig):
    """The ``pool`` baseline's settings: no metadata branch, and a lower learning rate (its
    input, mean and max of every channel, is wide enough to overfit in one epoch)."""

    use_meta: bool = Field(False, description="feed the metadata branch")
    lr: float = Field(3e-4, gt=0.0, le=1.0)


class HistogramConfig(BaseModel):
    """Frame classifier plus order-free statistics plus gradient boosting."""

    model_config = ConfigDict(extra="forbid")

    frame_input: Literal["auto", "centered", "raw"] = Field(
        "auto",
        description="auto: centered when the training clips have a median of at least 8 real "
        "frames (videos), raw otherwise (photo sequences); raw: each frame alone; centered: "
        "each frame minus its clip's mean real frame (as the sequence model)",
    )
    frame_training: Literal["both", "mil", "propagate"] = Field(
        "both",
        description="mil: a soft maximum (soft minimum for blank) of the frames' logits learns "
        "the clip labels; propagate: every real frame learns them; both: one model of each, "
        "their clip logits averaged (twice the training)",
    )
    frame_hidden: int = Field(
        256, ge=0, le=4096, description="0: logistic regression, else MLP width"
    )
    frame_steps: int = Field(1000, ge=1, description="minibatch steps of the frame classifier")
    frame_batch_clips: int = Field(32, ge=1, description="clips per frame-classifier step")
    frame_lr: float = Field(3e-3, gt=0.0, le=1.0)
    frame_weight_decay: float = Field(1e-4, ge=0.0, description="AdamW decoupled weight decay")
    frame_folds: int = Field(
        5, ge=2, le=20, description="cross-fitting folds of the frame classifier"
    )
    bins: int = Field(10, ge=2, le=100, description="histogram bins of per-frame probabilities")
    booster: Literal["lightgbm", "xgboost"] = "lightgbm"
    n_estimators: int = Field(400, ge=1, description="maximum boosting rounds")
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_leaves: int = Field(
        15, ge=2, le=4096, description="leaves (lightgbm); depth is derived for xgboost"
    )
    min_child_samples: int = Field(10, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)


class SequenceConfig(BaseModel):
    """Per-frame (per-image) classifier; a clip's probability is the mean of its real frames'
    probabilities for a species and their geometric mean for ``blank`` (Hakuna Ma-Data),
    then a per-class Platt scaling. See :mod:`pool.sequence`."""

    model_config = ConfigDict(extra="forbid")

    frame_input: Literal["centered", "raw"] = Field(
        "centered",
        description="centered: each frame minus its clip's mean real frame (removes the "
        "background the clip's frames share; one-image clips then all get the same "
        "prediction); raw: each frame alone",
    )
    training: Literal["propagate", "mil"] = Field(
        "propagate",
        description="propagate: every real frame learns its clip's labels; mil: the clip's "
        "mean / geometric mean of its frames learns them",
    )
    frame_hidden: int = Field(
        256, ge=0, le=4096, description="0: logistic regression, else MLP width"
    )
    frame_steps: int = Field(2000, ge=1, description="maximum minibatch steps")
    frame_batch_clips: int = Field(32, ge=1, description="clips per step")
    frame_lr: float = Field(3e-4, gt=0.0, le=1.0)
    frame_weight_decay: float = Field(1e-4, ge=0.0, description="AdamW decoupled weight decay")
    eval_every: int = Field(20, ge=1, description="steps between inner-validation checks")
    patience: int = Field(6, ge=1, description="checks without improvement before stopping")
    calibrate: bool = Field(
        True, description="per-class Platt scaling of the clip logits (fold's training clips)"
    )


class Level1Config(BaseModel):
    """Everything that determines a level-1 run. Defaults are the documented defaults."""

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureSource] = Field(
        min_length=1,
        description="stores, concatenated per clip; a path with {fold} names one store per fold",
    )
    labels: Path
    run: Path = Field(description="run directory to write")
    models: list[ModelName] = Field(default_factory=lambda: list(MODELS), min_length=1)
    folds: int | None = Field(
        None, ge=2, le=100, description="k; default 5 when made here, else the reused file's"
    )
    folds_csv: Path | None = Field(
        None, description="folds to reuse; default RUN/folds.csv when it exists, else made"
    )
    group_column: str | None = Field(None, description="labels column whose values are groups")
    group_by_folder: bool = Field(False, description="group clips by their parent folder")
    skip_missing: bool = Field(False, description="skip (and report) unmatched label rows")
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (torch, boosters)")
    inner_val_fraction: float = Field(0.15, ge=0.05, le=0.5, description="early-stopping split")
    meta_fields: list[str] = Field(
        default_factory=lambda: ["file_size", "width", "height", "fps", "duration", "bitrate"]
    )
    features_in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="hold the labelled clips' features in RAM (true), stream them from the "
        "stores block by block (false), or hold them when they fit in features_budget_gb",
    )
    features_budget_gb: float = Field(
        4.0, gt=0.0, description="auto: largest float16 feature array held in RAM, in GB"
    )
    shuffle_block_clips: int = Field(
        128, ge=1, le=1_000_000, description="consecutive clips read (and shuffled) as one block"
    )
    shuffle_window_mb: float = Field(
        256.0,
        gt=0.0,
        description="features of the blocks shuffled together, in MB; also the most read at "
        "once by passes over the clips (statistics, prediction)",
    )
    attention: NetConfig = Field(default_factory=NetConfig)
    gru: NetConfig = Field(default_factory=NetConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    histogram: HistogramConfig = Field(default_factory=HistogramConfig)
    sequence: SequenceConfig = Field(default_factory=SequenceConfig)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a model is listed twice")
        return [m for m in MODELS if m in value]

    @field_validator("meta_fields")
    @classmethod
    def _meta(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in META_CHOICES]
        if unknown:
            raise ValueError(f"unknown metadata fields {unknown}; choose from {list(META_CHOICES)}")
        if len(set(value)) != len(value):
            raise ValueError("a metadata field is listed twice")
        return value

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _grouping(self) -> Level1Config:
        if self.group_column is not None and self.group_by_folder:
            raise ValueError("give either group_column or group_by_folder, not both")
        return self

    @property
    def per_fold(self) -> bool:
        """True when some feature store is one store per fold."""
        return any(source.per_fold for source in self.features)

    def for_fold(self, fold: int) -> Level1Config:
        """The config whose feature stores are fold ``fold``'s."""
        return self.model_copy(update={"features": [s.for_fold(fold) for s in self.features]})

    def settings(self, name: str) -> NetConfig | HistogramConfig | SequenceConfig:
        """The settings section of level-1 model ``name`` (one of :data:`MODELS`)."""
        if name not in MODELS:
            raise KeyError(f"unknown level-1 model {name!r}; choose from {MODELS}")
        section: NetConfig | HistogramConfig | SequenceConfig = getattr(self, name)
        return section

    def resolved(self) -> Level1Config:
        """A copy with every path made absolute (against the current directory)."""
        return self.model_copy(
            update={
                "features": [
                    s.model_copy(update={"path": s.path.expanduser().absolute()})
                    for s in self.features
                ],
                "labels": self.labels.expanduser().absolute(),
                "run": self.run.expanduser().absolute(),
                "folds_csv": self.folds_csv.expanduser().absolute() if self.folds_csv else None,
            }
        )


def load_config(path: Path | None, overrides: dict[str, object]) -> Level1Config:
    """Read a YAML config (optional), apply the non-None ``overrides``, validate, resolve paths.

    ``overrides`` use the config's top-level keys (``features`` may be a list of paths).

    Raises:
        Level1Error: unreadable YAML, unknown keys, missing or invalid values, with every
        problem listed.
    """
    return read_settings(Level1Config, path, overrides, Level1Error, "level-1").resolved()


def config_yaml(config: Level1Config) -> str:
    """The config as YAML text (paths as strings), loadable by :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
