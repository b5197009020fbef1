"""Settings of ``jungle finetune``: :class:`FinetuneConfig`, read from YAML and options by
:func:`load_config`, and the checkpoint path they name."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extract.backbones import DEFAULT_BACKBONE
from extract.config import check_device, read_settings


class FinetuneError(ValueError):
    """Invalid input or settings for fine-tuning; the message says what and how to fix it."""


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run. Defaults are the documented defaults."""

    model_config = ConfigDict(extra="forbid")

    videos: Path = Field(description="folder of videos or CSV manifest, as for `jungle features`")
    labels: Path = Field(description="labels CSV (pool.labels layouts)")
    run: Path = Field(description="run directory: folds.csv and finetune/ are written there")
    backbone: str = Field(DEFAULT_BACKBONE, description="registry name of the CNN")
    weights: str | None = Field(None, description="local weights file (not for the default)")
    fold: int | None = Field(
        None, ge=0, description="train on fold K's training part; None: on every labelled clip"
    )
    folds_csv: Path | None = Field(None, description="folds.csv to use; default RUN/folds.csv")
    folds: int | None = Field(
        None,
        ge=2,
        le=100,
        description="k when folds.csv is made here; default 5, or one per group when fewer",
    )
    group_column: str | None = Field(None, description="labels column of groups, for new folds")
    group_by_folder: bool = Field(False, description="group clips by parent folder (new folds)")
    skip_missing: bool = Field(False, description="skip label rows that match no video")
    frames_per_clip: int = Field(8, ge=1, le=512, description="frames decoded per clip, per epoch")
    image_size: int | None = Field(None, ge=32, le=1024, description="default: backbone's")
    epochs_head: int = Field(2, ge=0, le=1000, description="epochs training the head only")
    epochs_full: int = Field(6, ge=0, le=1000, description="epochs training the network")
    lr_head: float = Field(1e-3, gt=0.0, le=1.0)
    lr_full: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="linear warm-up share of each phase's steps"
    )
    unfreeze_from: str | None = Field(
        None, description="train parameters from this module on (e.g. blocks.4); None: all"
    )
    train_bn: bool = Field(False, description="update batch-norm statistics while training")
    batch_size: int = Field(32, ge=1, le=4096, description="frames per training step")
    shuffle_frames: int = Field(
        512,
        ge=0,
        le=1_000_000,
        description="frames held to mix batches across clips (at least batch_size)",
    )
    balanced: bool = Field(False, description="class-balanced sampling of clips")
    augment: bool = Field(True, description="hflip, small crops, brightness/contrast jitter")
    crop_min_area: float = Field(0.75, gt=0.0, le=1.0, description="smallest crop (area)")
    color_jitter: float = Field(0.2, ge=0.0, lt=1.0, description="brightness/contrast +-")
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads of torch")
    workers: int = Field(2, ge=0, le=64, description="decoder processes (0: in-process)")

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.epochs_head + self.epochs_full < 1:
            raise ValueError("epochs_head + epochs_full must be at least 1")
        if self.group_column is not None and self.group_by_folder:
            raise ValueError("give either group_column or group_by_folder, not both")
        return self

    def resolved(self) -> FinetuneConfig:
        """A copy with every path made absolute (against the current directory)."""
        paths = {"videos": self.videos, "labels": self.labels, "run": self.run}
        if self.folds_csv is not None:
            paths["folds_csv"] = self.folds_csv
        return self.model_copy(update={k: v.expanduser().absolute() for k, v in paths.items()})


def load_config(path: Path | None, overrides: dict[str, object]) -> FinetuneConfig:
    """Read a YAML config (optional), apply the non-None ``overrides``, validate, resolve paths.

    Raises:
        FinetuneError: unreadable YAML, unknown keys, missing or invalid values, with every
            problem listed.
    """
    return read_settings(FinetuneConfig, path, overrides, FinetuneError, "finetune").resolved()


def checkpoint_path(config: FinetuneConfig) -> Path:
    """``RUN/finetune/<backbone>_fold<K>.pt`` (``_all.pt`` without a fold)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.backbone)
    part = "all" if config.fold is None else f"fold{config.fold}"
    return config.run / "finetune" / f"{name}_{part}.pt"
