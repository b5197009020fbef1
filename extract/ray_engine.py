"""``--engine ray``: stage 1's decode and CNN as a Ray Data pipeline, on one machine or a
cluster (``pip install "jungle[ray]"``; ray is imported only here, only when asked for).

The pipeline, one Ray dataset per window of :data:`WINDOW_CLIPS` clips (the driver's
memory stays flat in the number of clips)::

    one row per clip (its position and the pickled Clip), :data:`CLIPS_PER_BLOCK` per block
      -> decode tasks (CPU, num_cpus=1): stage 1's frame-exact decoder unchanged
         (:func:`extract.workers.decode_item`): frames subsampled and squashed to the CNN's
         input inside the task, never one row per full-resolution frame
      -> CNN actors (:class:`FeatureActor`): the local run's TapExtractor and FrameBatcher
         (fixed-size, padded batches: a clip's features do not depend on its batch mates);
         one actor per GPU (num_gpus=1) when the cluster has GPUs and the device is not cpu,
         else one CPU actor per node using that node's cores (reserving no CPU slot); with
         ``decoder: nvdec`` the decode tasks only probe the videos NVDEC accepts, and the
         actors decode those (:mod:`extract.ray_nvdec`)
      -> this process, in clip order: identities, crash-safe shards, the store
         (:func:`extract.pipeline.extract_features` writes them as for a local run)

Same semantics as a local run: failed rows with the decoder's reason; the crash rule — a
block whose decode worker dies is dropped (``max_retries=0``, ``max_errored_blocks=-1``);
after the window, its clips run again one per block (the clip that crashed is retried on
its own, the innocent clips of its block just succeed) with one retry (``max_retries=1``);
a clip that kills its worker in both tries is a failed row :data:`CRASH_REASON`, and
comes after the window's other rows. A CNN actor that dies is restarted by Ray Data and
its batch run again (up to :data:`ACTOR_RETRIES` times, then its clips go to that second
pass), so no clip is lost. Clips NVDEC failed on, or was decoding in an actor
that died, go through that second pass too (decoded on the CPU). A clip whose decode takes
longer than ``clip_timeout`` seconds fails with a timeout (checked between Python calls: a
decoder stuck inside C code is caught by the crash rule only if it dies). Interruption and
resume are the store's: finished clips are in shards on this machine, a rerun skips them.

Where things run: the store and its shards are written by this process (the driver) only;
every node must see the clips at the same absolute path and have jungle installed in the
same environment.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import signal
import socket
import threading
import uuid
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from extract.backbones import build_backbone
from extract.config import FeaturesConfig, with_hardware_defaults
from extract.discover import Clip
from extract.features import TapExtractor
from extract.identity import identity_or_unknown
from extract.nvdec import STAND_IN_ENV, gpu_decoder, nvdec_unavailable
from extract.pipeline import FrameBatcher, resolve_device
from extract.ray_nvdec import ActorNvdec, defer_to_nvdec
from extract.store import ClipFeatures, Failure
from extract.thumbnails import ClipFrames, Thumbnailer
from extract.workers import CRASH_ENV, HANG_ENV, decode_item

log = logging.getLogger(__name__)

#: the values of ``--engine`` (:attr:`extract.config.FeaturesConfig.engine`).
ENGINES = ("local", "ray")
#: clips per Ray dataset (bounds the driver's bookkeeping; each window starts its CNN actors
#: anew, a few seconds).
WINDOW_CLIPS = 16384
#: clips per block of the decode stage: Ray Data costs about 9 ms of scheduling per block
#: on the 2-core machine (110 single-clip blocks/s at most), too close to a GPU's rate.
CLIPS_PER_BLOCK = 8
#: Ray Data's target size of an output block (smaller than one decoded clip).
OUTPUT_BLOCK_BYTES = 1 << 20
#: niceness of decode tasks: they fill the gaps of the CNN's threads instead of preempting
#: them (extract.workers measured 0.73 of the bound on 2 cores with equal priority).
DECODE_NICENESS = 10
#: seconds to wait for a Ray head to accept a connection.
CONNECT_TIMEOUT_S = 10.0
#: times the batch of a CNN actor that died is run again (in a restarted actor) before its
#: clips go to the second pass.
ACTOR_RETRIES = 3
#: the reason of a clip whose decode task's worker died twice.
CRASH_REASON = "decoder crashed twice (the Ray worker process died)"


class RayEngineError(RuntimeError):
    """Ray is missing, cannot be reached, or the pipeline itself failed (not a clip)."""


def ray_results(
    todo: Sequence[Clip],
    config: FeaturesConfig,
    image_size: int,
    thumbnails: Thumbnailer | None = None,
) -> Iterator[ClipFeatures | Failure]:
    """Features or failures of ``todo``, in its order (but clips of the second pass, after
    the other rows of their window), made on Ray (see the module doc),
    with the identities of the clips' files as this process sees them. Sets the options of
    Ray Data's (process-wide) current ``DataContext`` that the crash rule and the clip order
    need, for the duration of the run.

    Raises:
        RayEngineError: ray is not installed, the cluster cannot be reached, or the CNN
            actors cannot start (e.g. weights missing on a node).
    """
    ray = connect(config.ray_address)
    from ray.data import DataContext

    context = DataContext.get_current()  # process-wide: our settings are undone at the end
    settings = {
        "max_errored_blocks": -1,  # a clip that crashed twice is dropped, not the run
        "enable_progress_bars": False,  # the run has its own bar
        # a decoded clip (MBs) closes its output block: the CNN gets each clip as soon as it
        # is decoded instead of when its whole input block is
        "target_max_block_size": OUTPUT_BLOCK_BYTES,
    }
    previous = {name: getattr(context, name) for name in settings}
    previous_order = context.execution_options.preserve_order
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    actors, gpu = _cnn_actors(ray, config)
    config = with_hardware_defaults(config, gpu)
    nvdec_run = uuid.uuid4().hex if config.decoder == "nvdec" else None
    if nvdec_run and not gpu and nvdec_unavailable(torch.device("cpu")) is not None:
        raise RayEngineError(
            "--decoder nvdec: the CNN actors decode with NVDEC on GPU nodes, and this run's "
            "actors run on CPUs (no GPU in the Ray cluster, or --device cpu)"
        )
    log.info(
        "Ray engine: %d CNN actor(s) on %s, decode tasks on the cluster's CPUs (%s CPUs)",
        actors,
        "GPUs" if gpu else "CPUs",
        int(ray.cluster_resources().get("CPU", 0)),
    )
    for name, value in settings.items():
        setattr(context, name, value)
    context.execution_options.preserve_order = True  # rows come back in clip order
    try:
        for start in range(0, len(todo), WINDOW_CLIPS):
            window = list(todo[start : start + WINDOW_CLIPS])
            dataset = _dataset(ray, window, config, image_size, actors, gpu, thumbnails, nvdec_run)
            lost, redo = yield from _collect(window, dataset, thumbnails, all_lost_is_error=True)
            if lost:
                log.warning("%d clips were in blocks whose worker died: retrying alone", len(lost))
            if redo:
                log.warning("%d clips NVDEC could not decode: decoding them on the CPU", len(redo))
            if lost or redo:  # one clip per block, decoded on the CPU
                again = lost + redo
                alone = _dataset(
                    ray, again, config, image_size, actors, gpu, thumbnails, nvdec_run, True
                )
                missing, redo = yield from _collect(again, alone, thumbnails)
                if redo:  # the second pass decodes on the CPU: NVDEC sends nothing back
                    raise RayEngineError(f"{len(redo)} clip(s) came back undecoded (a bug)")
                for clip in missing:
                    yield Failure(clip.clip_id, CRASH_REASON, identity_or_unknown(clip.files))
    finally:
        for name, value in previous.items():
            setattr(context, name, value)
        context.execution_options.preserve_order = previous_order


def connect(address: str | None) -> Any:
    """The ``ray`` module, connected: to the instance this process already joined, else to
    ``address`` when given (``auto``: the cluster ``ray start`` made on this machine, or
    ``RAY_ADDRESS``), else to a new private instance on this machine.

    Raises:
        RayEngineError: ray is not installed, or the address cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise RayEngineError(
            "--engine ray needs Ray: pip install 'jungle[ray]' (or 'ray[data]')"
        ) from None
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _reachable(address)
    env = {k: os.environ[k] for k in (CRASH_ENV, HANG_ENV, STAND_IN_ENV) if os.environ.get(k)}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(
            # "local": a private instance even where `ray start` ran or RAY_ADDRESS is set
            # (ray.init() would join those); --ray-address auto asks for that
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            runtime_env={"env_vars": env} if env else None,  # test hooks only
        )
    except ray.exceptions.AuthenticationError:
        raise RayEngineError(
            f"Ray at {address} refused the connection: the cluster uses token authentication; "
            "set RAY_AUTH_MODE=token and give this machine the head's ~/.ray/auth_token (or "
            "RAY_AUTH_TOKEN), see the README's 'Running on a cluster'"
        ) from None
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        hint = (
            " (a head with token authentication needs RAY_AUTH_MODE=token and its token "
            "here: see the README's 'Running on a cluster')"
            if address
            else ""
        )
        where = address or "a local instance"
        raise RayEngineError(
            f"cannot start or join Ray ({where}): {_first_line(exc)}{hint}"
        ) from None
    finally:
        if main:  # ray.init replaces it with sys.exit; keep the run's (Ctrl-C semantics)
            signal.signal(signal.SIGTERM, sigterm)
    return ray


def _reachable(address: str) -> None:
    """Fail fast on a head that does not answer (``ray.init`` would retry for minutes).

    Raises:
        RayEngineError: the address is malformed or nothing listens there.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--ray-address must look like HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayEngineError(
            f"cannot start or join Ray ({address}): {exc.strerror or exc} (is the head "
            "running? `ray start --head` on it prints its address)"
        ) from None


def _cnn_actors(ray: Any, config: FeaturesConfig) -> tuple[int, bool]:
    """How many CNN actors, and whether each takes a GPU."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.device.startswith("cuda") and not gpus:
        raise RayEngineError(
            f"--device {config.device}: the Ray cluster has no GPU (`ray status` lists its "
            "resources)"
        )
    if gpus and config.device != "cpu":
        return gpus, True
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    return max(1, len(nodes)), False


def _dataset(
    ray: Any,
    window: list[Clip],
    config: FeaturesConfig,
    image_size: int,
    actors: int,
    gpu: bool,
    thumbnails: Thumbnailer | None,
    nvdec_run: str | None = None,
    isolate: bool = False,
) -> Any:
    """The window's Ray dataset: decode tasks, then CNN actors (see the module doc). With
    ``nvdec_run`` (a run id: the actors' journal folder, :mod:`extract.ray_nvdec`), the
    decode tasks leave the clips NVDEC accepts to the actors. With
    ``isolate``, one clip per block, decoded on the CPU, and one retry (the crash rule's
    second pass), else :data:`CLIPS_PER_BLOCK` clips per block and no retry."""
    rows = [{"i": i, "clip": pickle.dumps(clip)} for i, clip in enumerate(window)]
    blocks = len(rows) if isolate else math.ceil(len(rows) / CLIPS_PER_BLOCK)
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    # Ray 2.5x deprecates passing Ray Core options (max_retries, scheduling_strategy) to
    # map_batches, with no replacement for max_retries before 2.64 (hence ray<2.64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args`", DeprecationWarning)
        dataset = dataset.map_batches(
            decode_rows,
            batch_size=1,
            num_cpus=1,
            # Ray Data's default is -1: a crashing clip would be retried forever
            max_retries=1 if isolate else 0,
            fn_kwargs={
                "frames": config.frames,
                "size": image_size,
                "timeout": config.clip_timeout,
                "defer": nvdec_run is not None and not isolate,
            },
        )
        per_call = max(1, math.ceil(config.batch_frames / max(1, config.frames or 1)))
        settings = {
            "config": config.model_dump(),
            "size": image_size,
            "run_id": nvdec_run or "",
            "thumbnails": thumbnails is not None,
            "evidence": thumbnails.evidence if thumbnails is not None else None,
            "width": thumbnails.width if thumbnails is not None else 0,
        }
        return dataset.map_batches(
            _bound(settings),
            batch_size=per_call,
            compute=ray.data.ActorPoolStrategy(size=actors),
            # no CPU reserved: an actor per node holding one would leave a 1-CPU node no slot
            # for the decode tasks that feed it (a deadlock); it uses the node's cores through
            # torch threads, as the local engine's main process does
            num_cpus=0,
            num_gpus=1 if gpu else 0,
            scheduling_strategy="SPREAD",
            # Ray Data's default (-1) retries the batch of an actor that died forever; after
            # these, its block is dropped and its clips go to the second pass
            max_task_retries=ACTOR_RETRIES,
        )


def _bound(settings: dict) -> type:
    """:class:`FeatureActor` with its settings bound in the class (shipped with the class
    definition, so a restarted actor never depends on an object that may have been lost)."""

    class BoundFeatureActor(FeatureActor):
        def __init__(self) -> None:
            super().__init__(**settings)

    return BoundFeatureActor


def _collect(
    window: list[Clip],
    dataset: Any,
    thumbnails: Thumbnailer | None,
    all_lost_is_error: bool = False,
) -> Generator[ClipFeatures | Failure, None, tuple[list[Clip], list[Clip]]]:
    """Yield the window's rows (in clip order); return the clips missing from the output
    (their block was dropped because its worker died) and those NVDEC could not decode.

    Raises:
        RayEngineError: the pipeline failed, or (``all_lost_is_error``) no clip of a window
            of several came back (a broken pipeline, not a bad clip).
    """
    from ray.exceptions import RayError

    seen = np.zeros(len(window), dtype=bool)
    redo: list[Clip] = []
    rows = iter(dataset.iter_rows())
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except RayError as exc:
            raise RayEngineError(f"the Ray pipeline failed: {_first_line(exc)}") from None
        i = int(row["i"])
        seen[i] = True
        result, jpeg = pickle.loads(row["result"])
        if result is None:  # NVDEC could not decode it
            redo.append(window[i])
            continue
        if jpeg is not None and thumbnails is not None:
            thumbnails.save(result.clip_id, jpeg)
        yield result
    if all_lost_is_error and not seen.any() and len(window) > CLIPS_PER_BLOCK:
        raise RayEngineError(
            f"no clip of {len(window)} came back from the Ray pipeline (see the Ray logs, "
            "e.g. /tmp/ray/session_latest/logs)"
        )
    return [clip for clip, ok in zip(window, seen, strict=True) if not ok], redo


def decode_rows(
    batch: dict[str, np.ndarray], frames: int, size: int, timeout: float, defer: bool = False
) -> dict[str, np.ndarray]:
    """Ray decode task: each row's clip through :func:`extract.workers.decode_item`, at a
    lower priority than the CNN (as the local engine's decoders, for the same reason).
    With ``defer``, a video whose stream NVDEC accepts is only probed: its item is
    ``{"nvdec": VideoInfo}`` and the CNN actor decodes it."""
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(current, DECODE_NICENESS))
    items = []
    for blob in batch["clip"]:
        clip = pickle.loads(blob)
        with _time_limit(timeout):
            try:
                item = (defer_to_nvdec(clip) if defer else None) or decode_item(
                    clip, frames, size, "cpu"
                )
            except _ClipTimeout:
                item = {"ok": False, "reason": f"decoding took longer than {timeout:g} s"}
        items.append(pickle.dumps((clip, item), protocol=5))
    return {"i": batch["i"], "item": np.array(items, dtype=object)}


class FeatureActor:
    """Ray CNN actor: the local engine's extractor and batcher on the decoded clips of each
    call; returns per clip the pickled ``(ClipFeatures or Failure, thumbnail JPEG or None)``,
    or ``(None, None)`` for a clip NVDEC could not decode (the driver decodes it on the CPU).

    With ``decoder: nvdec``, the clips the decode tasks left to it (``{"nvdec": info}``) are
    decoded here with NVDEC, ``nvdec_threads`` at a time, their frames staying on the GPU.
    A clip NVDEC holds longer than ``clip_timeout`` is a failed row (its thread is
    abandoned). A crash kills the actor; Ray Data restarts it and runs its batches again,
    and the clips that were being decoded with NVDEC then go to the CPU-only second pass
    (:class:`extract.ray_nvdec.ActorNvdec`).
    """

    def __init__(
        self,
        config: dict,
        size: int,
        run_id: str,
        thumbnails: bool = False,
        evidence: Any = None,
        width: int = 0,
    ) -> None:
        settings = FeaturesConfig(**config)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # Ray sets 1 per CPU
        device = resolve_device(settings.device)
        backbone = build_backbone(
            settings.backbone, settings.weights, settings.layers, settings.checkpoint
        )
        self.extractor = TapExtractor(
            backbone, device, settings.pooling, settings.precision, settings.tta
        )
        self.thumbnailer = _Renderer(evidence, width) if thumbnails else None
        # one for the actor's life: its batch buffers (pinned on CUDA) are allocated once;
        # every call ends with finish(), which leaves it empty
        self.batcher = FrameBatcher(
            self.extractor, list(backbone.taps), settings.batch_frames, self.thumbnailer
        )
        self.nvdec: ActorNvdec | None = None
        if settings.decoder == "nvdec":
            self.nvdec = ActorNvdec(
                gpu_decoder(device),
                settings.frames or 0,
                size,
                settings.nvdec_threads,
                settings.clip_timeout,
                run_id,
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batcher = self.batcher
        entries = [pickle.loads(blob) for blob in batch["item"]]
        on_gpu = [(clip, item["nvdec"]) for clip, item in entries if "nvdec" in item]
        decoded = self.nvdec.decode(on_gpu) if self.nvdec is not None and on_gpu else {}
        ids: list[str] = []
        results: dict[str, ClipFeatures | Failure] = {}
        for clip, item in entries:
            ids.append(clip.clip_id)
            if "nvdec" in item:
                item = decoded.get(clip.clip_id)
                if item is None:  # NVDEC could not decode it: the driver's CPU pass will
                    continue
            if item["ok"]:  # its identity was read where it was decoded
                done = batcher.add(clip, item)
            else:
                done = [Failure(clip.clip_id, item["reason"], item["identity"])]
            results.update((r.clip_id, r) for r in done)
        results.update((r.clip_id, r) for r in batcher.finish())
        jpegs = self.thumbnailer.take() if self.thumbnailer is not None else {}
        out = [pickle.dumps((results.get(c), jpegs.get(c)), protocol=5) for c in ids]
        return {"i": batch["i"], "result": np.array(out, dtype=object)}


class _Renderer(Thumbnailer):
    """A thumbnailer that keeps the JPEGs for the driver instead of writing files."""

    def __init__(self, evidence: Any, width: int) -> None:
        super().__init__(".", evidence, width)
        self._jpegs: dict[str, bytes] = {}

    def write(self, clips: Sequence[ClipFrames]) -> None:
        self._jpegs.update(self.render(clips))

    def take(self) -> dict[str, bytes]:
        jpegs, self._jpegs = self._jpegs, {}
        return jpegs


class _ClipTimeout(BaseException):
    """A decode ran out of time (a BaseException: the decoder's ``except Exception``, which
    turns library errors into failed rows, must not swallow it)."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_ClipTimeout` in this (main) thread after ``seconds`` (SIGALRM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _ClipTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
