"""Settings of ``jungle features``, validated before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from extract.backbones import DEFAULT_BACKBONE
from extract.sequences import DEFAULT_SEQUENCE_GAP, PHOTO_FRAMES

#: frames per clip when neither ``frames`` nor the store says (a source with videos).
DEFAULT_FRAMES: int = 32
#: decoder processes and frames per CNN batch when the CNN runs on the CPU (the 2-core
#: machine of BENCHMARKS.md: the CNN is the bottleneck, and needs the cores).
CPU_WORKERS: int = 2
CPU_BATCH_FRAMES: int = 64
#: on a GPU: the batch of the issue's H100 measurements (the CNN alone ran 18,500 frames/s
#: at 256; end to end was measured at 512), decoders on every core but two (one for the main
#: process, one for NVDEC's threads), at most this many (decode-only: 24.8 clips/s with 16
#: processes, 26.1 with 32, on 16 cores).
GPU_BATCH_FRAMES: int = 512
GPU_MAX_WORKERS: int = 32

SettingsT = TypeVar("SettingsT", bound=BaseModel)


def check_device(value: str) -> str:
    """Validate a device setting: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the pydantic
    ``device`` validator of every config).

    Raises:
        ValueError: anything else.
    """
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


class ConfigError(ValueError):
    """A configuration file or option is invalid; the message says which and why."""


class FeaturesConfig(BaseModel):
    """Everything that controls feature extraction. Defaults are the documented defaults."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(DEFAULT_BACKBONE, description="registry name of the CNN")
    weights: str | None = Field(None, description="local weights file (not for the default)")
    checkpoint: str | None = Field(
        None, description="fine-tuned backbone from `jungle finetune` (overrides backbone)"
    )
    layers: list[str] | None = Field(None, description="module names to tap; default per backbone")
    frames: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=f"frames sampled per clip (32-45 intended); null: {DEFAULT_FRAMES}, or "
        f"{PHOTO_FRAMES} when every clip is a photo sequence, or the existing store's",
    )
    sequence_gap: float = Field(
        DEFAULT_SEQUENCE_GAP,
        ge=0,
        description="seconds between photos of a folder that start a new sequence (0: each "
        "photo alone)",
    )
    image_size: int | None = Field(
        None, ge=16, le=2048, description="frame side; default: backbone's"
    )
    pooling: Literal["avg", "max", "avgmax"] = "avg"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="decoder processes (0: decode in-process; with NVDEC, one process decodes "
        f"only the clips NVDEC cannot); null: {CPU_WORKERS} when the CNN runs on the CPU (it "
        f"needs the cores), every core but two (at least 2, at most {GPU_MAX_WORKERS}) on a GPU",
    )
    decoder: Literal["auto", "cpu", "nvdec"] = Field(
        "cpu",  # auto once the GPU tests (tests/test_nvdec_gpu.py) have passed on a GPU
        description="auto: NVDEC (the GPU's video engines, needs jungle[gpu]) on a CUDA device "
        "where it is available, for the streams proven frame-exact with it, the CPU otherwise; "
        "cpu: decoder processes only; nvdec: as auto, but an error where NVDEC is unavailable "
        "(engine ray: nvdec decodes in the GPU nodes' CNN actors, auto on the CPU)",
    )
    nvdec_threads: int = Field(
        8, ge=1, le=64, description="NVDEC decoder threads (engine ray: per GPU actor)"
    )
    nvdec_host: Literal["thread", "process"] = Field(
        "thread",
        description="where the NVDEC threads run (engine local): thread: in the jungle process "
        "(a crash in NVDEC ends the run, the rerun decodes that clip on the CPU); process: in "
        "one dedicated decoder process that hands frames over through CUDA IPC (a crash ends "
        "that process only)",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="CPU arithmetic of the CNN (CUDA always uses float16 autocast)"
    )
    tta: Literal["none", "hflip"] = Field(
        "none", description="test-time augmentation: hflip averages frames and mirror images"
    )
    batch_frames: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="frames per CNN batch (from several clips); null: "
        f"{CPU_BATCH_FRAMES} on the CPU, {GPU_BATCH_FRAMES} on a GPU",
    )
    shard_clips: int = Field(32, ge=1, le=10_000, description="clips per crash-safe shard")
    clip_timeout: float = Field(
        300.0, gt=0, description="seconds before a clip's decode is abandoned"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: decoder processes + CNN on this machine; ray: a Ray Data pipeline "
        "(extract.ray_engine; needs jungle[ray])",
    )
    ray_address: str | None = Field(
        None,
        description="engine ray: address of a running Ray cluster (e.g. 10.0.0.1:6379, or "
        "'auto'); null: start a local Ray instance on this machine",
    )

    _device = field_validator("device")(check_device)


def with_hardware_defaults(config: FeaturesConfig, on_gpu: bool) -> FeaturesConfig:
    """``config`` with ``workers`` and ``batch_frames`` set where they are null: the CPU's
    or the GPU's defaults (:data:`CPU_WORKERS`, :data:`GPU_BATCH_FRAMES`, ...)."""
    cores = len(os.sched_getaffinity(0))
    defaults = {
        "workers": min(GPU_MAX_WORKERS, max(2, cores - 2)) if on_gpu else CPU_WORKERS,
        "batch_frames": GPU_BATCH_FRAMES if on_gpu else CPU_BATCH_FRAMES,
    }
    return config.model_copy(
        update={name: value for name, value in defaults.items() if getattr(config, name) is None}
    )


def read_settings(
    model: type[SettingsT],
    path: Path | None,
    overrides: dict[str, object],
    error: type[ValueError],
    what: str,
) -> SettingsT:
    """Read a YAML file of settings (optional), apply the non-None ``overrides``, validate
    with the pydantic ``model``. Shared by every ``jungle`` subcommand's config.

    Raises:
        ``error``: unreadable YAML, not a mapping, unknown keys or invalid values, with every
        problem listed (``what`` names the config in the message).
    """
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise error(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise error(f"{path}: expected a mapping of settings at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise error(f"invalid {what} config{f' {path}' if path else ''}: {problems}") from exc


def load_config(path: Path | None, overrides: dict[str, object]) -> FeaturesConfig:
    """Read a YAML config (optional), apply non-None ``overrides``, validate.

    Raises:
        ConfigError: unreadable YAML, unknown keys or invalid values, with every problem.
    """
    return read_settings(FeaturesConfig, path, overrides, ConfigError, "features")
