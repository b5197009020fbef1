"""``Run``: the one owner of a run directory's layout, contents and lineage.

Layout (written by ``jungle train-level1``, then ``jungle train-level2``)::

    RUN/
      config.yaml          the resolved level-1 config (absolute paths, every default spelled out)
      classes.json         output classes, in column order (sorted species, then "blank")
      inputs.json          per store: path, layers, channels per layer, frames, extraction
                           (a per-fold store: its {fold} pattern, and per fold the path and
                           extraction, e.g. each fold's fine-tuned checkpoint)
      folds.csv            id, fold[, group]: made once (or reused), used by every model and
                           by level 2
      targets.csv          id + one 0/1 column per class (the labels as matched)
      meta.csv             id + the clip metadata level 2 may use (from the first store)
      skipped.csv          filepath, reason: label rows without features (--skip-missing)
      oof/MODEL.csv        id + one probability column per class, every labelled clip once
      models/MODEL/fold_K.pt   fold K's fitted estimator (pool.estimators.load_estimator)
      metrics.json         OOF scores per model (and level 2's), per-fold details
      lineage.json         what level 1 was made from and of: the feature stores' file
                           identities, and a SHA-256 of every level-1 file above
      level2/              the stacker (stack.train): model.json names the level 1 it was
                           trained on (lineage id), fold_K/ holds fold K's stacker

Lineage: :meth:`Run.level1_id` recomputes the hashes of the level-1 files and compares them
with ``lineage.json``; any difference (a file replaced, an OOF table copied from another
run, a level 1 retrained under a level 2) is an error naming the file. Level 2 records the
id it was trained on and refuses to predict with another (:meth:`Run.check_level2`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from extract.identity import file_identity
from pool.config import Level1Config, Level1Error, load_config

#: files and folders a run writes (``--overwrite`` removes only these).
RUN_ITEMS = (
    "config.yaml",
    "classes.json",
    "inputs.json",
    "folds.csv",
    "targets.csv",
    "meta.csv",
    "skipped.csv",
    "oof",
    "models",
    "metrics.json",
    "lineage.json",
    "level2",  # trained on this level 1's OOF: retraining level 1 invalidates it
)
#: level-1 files whose hashes make the lineage id (plus oof/*.csv and models/*/*.pt).
LINEAGE_FILES = (
    "config.yaml",
    "classes.json",
    "inputs.json",
    "folds.csv",
    "targets.csv",
    "meta.csv",
)
LEVEL2 = "level2"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Run:
    """A run directory (see the module docstring); every reader and writer of its files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- layout -------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of a top-level item (``config.yaml``, ``folds.csv``, ...)."""
        return self.path / name

    def oof_path(self, model: str) -> Path:
        return self.path / "oof" / f"{model}.csv"

    def checkpoint(self, model: str, fold: int) -> Path:
        return self.path / "models" / model / f"fold_{fold}.pt"

    @property
    def level2_dir(self) -> Path:
        return self.path / LEVEL2

    # ---- writing ------------------------------------------------------------------------
    def check_writable(self, overwrite: bool) -> None:
        """Refuse to write into an earlier run unless ``overwrite`` (a ``folds.csv`` alone,
        as ``jungle finetune`` leaves it, is not a run)."""
        if self.path.exists() and not self.path.is_dir():
            raise Level1Error(f"run directory {self.path} is a file")
        present = [n for n in RUN_ITEMS if (self.path / n).exists() and n != "folds.csv"]
        if present and not overwrite:
            raise Level1Error(
                f"{self.path} already holds a level-1 run ({', '.join(present)}); choose another "
                "--run or pass --overwrite"
            )

    def clear(self) -> None:
        """Remove an earlier run's files (only those a run writes; level 2 with them) and
        create the folders."""
        for name in RUN_ITEMS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        (self.path / "oof").mkdir(parents=True, exist_ok=True)
        (self.path / "models").mkdir(exist_ok=True)

    def write_json(self, name: str, value: Any) -> None:
        (self.path / name).write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")

    def write_table(self, path: Path, ids: list[str], values: Any, columns: list[str]) -> None:
        """An ``id`` + ``columns`` CSV (probabilities, targets)."""
        table = pd.DataFrame(values, columns=columns)
        table.insert(0, "id", list(ids))
        table.to_csv(path, index=False, float_format="%.7g")

    # ---- reading ------------------------------------------------------------------------
    def require_level1(self) -> None:
        """Raise unless level 1 finished here (``metrics.json`` is written last)."""
        if not (self.path / "metrics.json").is_file():
            raise Level1Error(
                f"{self.path} is not a finished level-1 run (run `jungle train-level1` first)"
            )

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def config(self) -> Level1Config:
        return load_config(self.path / "config.yaml", {})

    def classes(self) -> list[str]:
        return list(self.read_json("classes.json"))

    def inputs(self) -> dict:
        return dict(self.read_json("inputs.json"))

    def metrics(self) -> dict:
        return dict(self.read_json("metrics.json"))

    def folds(self) -> pd.DataFrame:
        """``folds.csv``: indexed by id, columns ``fold`` (and ``group`` when grouped)."""
        return pd.read_csv(self.file("folds.csv"), dtype={"id": str, "group": str}).set_index("id")

    def targets(self) -> pd.DataFrame:
        """The 0/1 targets of the labelled clips: indexed by id, one column per class."""
        return pd.read_csv(self.file("targets.csv"), dtype={"id": str}).set_index("id")

    def meta(self) -> pd.DataFrame:
        """Metadata of the labelled clips (``meta.csv``), indexed by id."""
        return pd.read_csv(self.file("meta.csv"), dtype={"id": str}).set_index("id")

    def level1_models(self) -> list[str]:
        """Level-1 models with OOF predictions, in the config's order."""
        have = {p.stem for p in (self.path / "oof").glob("*.csv")}
        return [m for m in self.config().models if m in have]

    def oof(self, model: str) -> pd.DataFrame:
        """OOF probabilities of ``model``: indexed by clip id, one column per class."""
        return pd.read_csv(self.oof_path(model), dtype={"id": str}).set_index("id")

    # ---- lineage ------------------------------------------------------------------------
    def _level1_files(self) -> list[Path]:
        files = [self.path / n for n in LINEAGE_FILES if (self.path / n).exists()]
        files += sorted((self.path / "oof").glob("*.csv"))
        files += sorted((self.path / "models").glob("*/fold_*.pt"))
        return files

    def write_lineage(self, stores: list[Path]) -> None:
        """Record the level-1 lineage (call when every level-1 file is written)."""
        identities = []
        for path in stores:
            ident = file_identity(path)
            identities.append(
                {
                    "path": str(path),
                    "size": ident.size,
                    "mtime_ns": ident.mtime_ns,
                    "fingerprint": ident.fingerprint,
                }
            )
        hashes = {str(p.relative_to(self.path)): sha256_file(p) for p in self._level1_files()}
        self.write_json("lineage.json", {"stores": identities, "files": hashes})

    def level1_id(self) -> str:
        """The level-1 lineage id (a hash of ``lineage.json``'s file hashes), after checking
        that every level-1 file is still the one recorded.

        Raises:
            Level1Error: no lineage (a run from before lineage was kept, or unfinished), or
                a level-1 file added, removed or changed since ``train-level1``.
        """
        self.require_level1()
        path = self.path / "lineage.json"
        if not path.is_file():
            raise Level1Error(
                f"{self.path} has no lineage.json (made by an older jungle?): run "
                "`jungle train-level1 --overwrite` again"
            )
        recorded = dict(self.read_json("lineage.json")["files"])
        now = {str(p.relative_to(self.path)): p for p in self._level1_files()}
        for name in sorted(set(recorded) | set(now)):
            if name not in now:
                raise Level1Error(f"{self.path / name} is missing (it was part of level 1)")
            if name not in recorded:
                raise Level1Error(
                    f"{self.path / name} was not written by this run's train-level1; remove it "
                    "or retrain level 1"
                )
            if sha256_file(now[name]) != recorded[name]:
                raise Level1Error(
                    f"{self.path / name} changed since train-level1 made this run; retrain "
                    "level 1 (`jungle train-level1 --overwrite`), then level 2"
                )
        text = json.dumps(sorted(recorded.items())).encode("utf-8")
        return hashlib.sha256(text).hexdigest()[:16]

    def check_level2(self, trained_on: str | None) -> None:
        """Raise unless level 2, trained on level-1 lineage id ``trained_on``, belongs to
        this run's current level 1."""
        current = self.level1_id()
        if trained_on != current:
            raise Level1Error(
                f"the level-2 model in {self.level2_dir} was trained on another level 1 "
                f"(lineage {trained_on}, this run's level 1 is {current}); run "
                f"`jungle train-level2 --run {self.path}` again"
            )
