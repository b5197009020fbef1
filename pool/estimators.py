"""Level-1 models as scikit-learn-style estimators.

:class:`Level1Classifier` wraps every level-1 model (``attention``, ``gru``, ``pool``: torch
nets, :mod:`pool.nets`; ``histogram``: :mod:`pool.histogram`; ``sequence``:
:mod:`pool.sequence`) behind one contract:

* ``fit(X, y, groups=None)``: ``X`` a :class:`~pool.data.FeatureBlock` (features read on
  demand), ``y`` the ``(n, K)`` 0/1 targets, ``groups`` the clips' groups (the inner
  early-stopping split keeps them apart);
* ``predict_proba(X)``: ``(n, K)`` float32 probabilities (multi-label: a column per class);
* ``classes_`` (after fit), ``get_params``/``set_params`` (so ``sklearn.base.clone`` works),
  ``save(path)`` / :func:`load_estimator`.

Every setting is a constructor parameter (the model's pydantic config among them), so a
fold's model is ``clone(estimator).set_params(random_state=..., split_seed=...)`` and
:func:`pool.oof.cross_fit` trains any of them the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.base import BaseEstimator

from pool.config import MODELS, HistogramConfig, NetConfig, PoolConfig, SequenceConfig
from pool.data import BlockShuffle, FeatureBlock
from pool.folds import inner_split
from pool.histogram import HistogramModel, fit_histogram, saved_config
from pool.labels import BLANK
from pool.sequence import SequenceModel, fit_sequence
from pool.train_torch import NetModel, fit_net, resolve_device


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch CPU threads (if given), restoring the number after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: a level-1 model's settings.
ModelConfig = NetConfig | HistogramConfig | SequenceConfig
#: a fitted level-1 model.
FittedModel = NetModel | HistogramModel | SequenceModel


def default_config(model: str) -> ModelConfig:
    """The default settings of level-1 model ``model``."""
    if model == "histogram":
        return HistogramConfig()
    if model == "sequence":
        return SequenceConfig()
    if model == "pool":
        return PoolConfig()
    if model in MODELS:
        return NetConfig()
    raise ValueError(f"unknown level-1 model {model!r}; choose from {MODELS}")


class Level1Classifier(BaseEstimator):
    """One level-1 model (see the module docstring).

    Args:
        model: ``attention``, ``gru``, ``pool``, ``histogram`` or ``sequence``.
        config: the model's settings (default: :func:`default_config`).
        classes: class names in column order (``classes_``; default ``0..K-1``); the
            histogram and sequence models treat a class named ``blank`` as "no frame shows
            anything".
        inner_val_fraction: share of the training clips held back for early stopping.
        split_seed: seed of that inner split.
        random_state: seed of the model's initialisation and batch order.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch and booster CPU threads (None: leave as is).
        shuffle_block_clips, shuffle_window_mb: the streamed batch order
            (:class:`~pool.data.BlockShuffle`).
    """

    def __init__(
        self,
        model: str = "attention",
        config: ModelConfig | None = None,
        classes: list[str] | None = None,
        inner_val_fraction: float = 0.15,
        split_seed: int = 0,
        random_state: int = 0,
        device: str = "cpu",
        threads: int | None = None,
        shuffle_block_clips: int = 128,
        shuffle_window_mb: float = 256.0,
    ) -> None:
        self.model = model
        self.config = config
        self.classes = classes
        self.inner_val_fraction = inner_val_fraction
        self.split_seed = split_seed
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.shuffle_block_clips = shuffle_block_clips
        self.shuffle_window_mb = shuffle_window_mb

    def fit(
        self, X: FeatureBlock, y: np.ndarray, groups: np.ndarray | None = None
    ) -> Level1Classifier:
        """Train on the clips of ``X`` with targets ``y`` ``(n, K)``; early stopping on an
        inner split of ``X`` (grouped by ``groups`` when given)."""
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or len(y) != len(X):
            raise ValueError(f"y must be (n_clips, n_classes) with {len(X)} rows, got {y.shape}")
        if self.classes is not None and len(self.classes) != y.shape[1]:
            raise ValueError(f"{len(self.classes)} classes given, y has {y.shape[1]} columns")
        config = self.config if self.config is not None else default_config(self.model)
        is_val = inner_split(y, self.inner_val_fraction, self.split_seed, groups)
        fit_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        device = resolve_device(self.device)
        shuffle = BlockShuffle(self.shuffle_block_clips, self.shuffle_window_mb * 1e6)
        names = list(self.classes) if self.classes is not None else []
        blank = names.index(BLANK) if BLANK in names else None
        with torch_threads(self.threads):
            if self.model == "histogram":
                assert isinstance(config, HistogramConfig)
                groups = None if groups is None else np.asarray(groups)
                args = (config, X, y, groups, blank, fit_rows, val_rows, self.random_state)
                self.model_: FittedModel = fit_histogram(*args, device, self.threads, shuffle)
            elif self.model == "sequence":
                assert isinstance(config, SequenceConfig)
                args = (config, X, y, blank, fit_rows, val_rows, self.random_state)
                self.model_ = fit_sequence(*args, device, shuffle)
            else:
                assert isinstance(config, NetConfig)
                self.model_ = fit_net(
                    self.model, config, X, y, fit_rows, val_rows, self.random_state, device, shuffle
                )
        self.classes_ = np.asarray(names if names else np.arange(y.shape[1]))
        return self

    @property
    def info(self) -> dict[str, float]:
        """Training facts of the fitted model (rounds, best epoch, seconds...)."""
        return dict(self.model_.info)

    def predict_proba(self, X: FeatureBlock) -> np.ndarray:
        """``(n, K)`` float32 probabilities of the clips of ``X``."""
        with torch_threads(self.threads):
            return self.model_.predict(X)

    def frame_attention(self, X: FeatureBlock) -> np.ndarray:
        """``(n, T)`` attention weights per frame (``attention`` model only).

        Raises:
            ValueError: the model has no attention.
        """
        if not isinstance(self.model_, NetModel):
            raise ValueError(f"the {self.model} model has no per-frame attention")
        with torch_threads(self.threads):
            return self.model_.frame_attention(X)

    def frame_proba(self, X: FeatureBlock) -> np.ndarray:
        """``(n, T, K)`` per-frame class probabilities (``histogram`` and ``sequence`` models:
        their frame classifiers).

        Raises:
            ValueError: the model scores no frames.
        """
        if not isinstance(self.model_, HistogramModel | SequenceModel):
            raise ValueError(f"the {self.model} model gives no per-frame scores")
        with torch_threads(self.threads):
            return self.model_.frame_proba(X)

    def save(self, path: Path | str) -> None:
        """Write the fitted model (``torch.load(path, weights_only=True)`` reads it)."""
        params = {
            k: (v.model_dump() if isinstance(v, BaseModel) else v)
            for k, v in self.get_params().items()
        }
        torch.save({**self.model_.checkpoint(), "params": params}, path)


def load_estimator(path: Path | str, device: str = "cpu") -> Level1Classifier:
    """A fitted :class:`Level1Classifier` saved by :meth:`Level1Classifier.save`, on
    ``device``."""
    torch_device = resolve_device(device)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    params: dict[str, Any] = dict(ckpt.get("params") or {"model": ckpt["model"]})
    model = params["model"]
    if params.get("config") is not None and ckpt["kind"] == "histogram":
        params["config"] = saved_config(params["config"])
    elif params.get("config") is not None:
        params["config"] = type(default_config(model))(**params["config"])
    params["device"] = device
    estimator = Level1Classifier(**params)
    if ckpt["kind"] == "histogram":
        estimator.model_ = HistogramModel.from_checkpoint(ckpt, torch_device)
    elif ckpt["kind"] == "sequence":
        estimator.model_ = SequenceModel.from_checkpoint(ckpt, torch_device)
    else:
        estimator.model_ = NetModel.from_checkpoint(ckpt, torch_device)
    names = params.get("classes")
    k = ckpt["sizes"]["n_classes"]
    estimator.classes_ = np.asarray(names if names else np.arange(k))
    return estimator
