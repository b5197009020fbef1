"""Stage 2 of jungle: level-1 meta-models trained on the stage-1 feature store.

Modules: :mod:`pool.config` (settings), :mod:`pool.labels` (labels CSV → targets),
:mod:`pool.folds` (iterative stratification, groups), :mod:`pool.data` (stores → aligned
features), :mod:`pool.nets` and :mod:`pool.train_torch` (attention, gru, pool),
:mod:`pool.histogram`, :mod:`pool.sequence` (per-frame classifier, Hakuna-style mean /
geometric mean), :mod:`pool.metrics`, :mod:`pool.run` (``train_level1``,
``predict_level1``), :mod:`pool.cli` (``jungle train-level1``), :mod:`pool.synthetic`
(generated stores for tests and the benchmark).
"""
