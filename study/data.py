"""The DVC ``prepare`` stage: build each dataset's splits once, byte-reproducibly.

``python -m study.data`` reads ``conf/data/<name>.yaml`` (the same files Hydra composes into
``data=<name>`` for training), makes train/val/test splits, standardizes them with the train
split's statistics and writes ``<dir>/<name>.npz`` plus ``<dir>/manifest.json`` with checksums.
Training reads the result back with :func:`load`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from study import records
from study.config import (
    CONF_DIR,
    Config,
    ConfigError,
    DataConfig,
    Dataset,
    interruptible,
    prepared_path,
    validate,
)

KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "difficulty_train")
MANIFEST = "manifest.json"
# Zip entries carry a timestamp; a fixed one keeps the file a function of the data alone.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, eq=False)  # eq on numpy arrays is ambiguous
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    difficulty_train: np.ndarray  # per training example, for curricula (see difficulty)
    num_features: int
    num_classes: int
    sha256: str

    @property
    def largest_split(self) -> int:
        """Examples in the largest split: what an evaluation holds at once."""
        return max(len(self.x_train), len(self.x_val), len(self.x_test))


def data_config(name: str | Dataset, conf_dir: Path = CONF_DIR / "data") -> DataConfig:
    """``conf/data/<name>.yaml`` merged onto the schema, so unknown keys are rejected."""
    node = OmegaConf.merge(
        OmegaConf.structured(DataConfig), OmegaConf.load(conf_dir / f"{name}.yaml")
    )
    cfg = OmegaConf.to_object(node)
    if cfg.name != name:
        raise ConfigError("data.name", f"{conf_dir / f'{name}.yaml'} says name: {cfg.name}")
    return cfg


def _mnist1d(cfg: DataConfig) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # slow import; only this stage

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = cfg.num_samples, cfg.seed, 1 - cfg.test_fraction
    raw = make_dataset(args)  # procedural: never the download path
    n_val = round(cfg.val_fraction * (len(raw["y"]) + len(raw["y_test"])))
    perm = np.random.default_rng(cfg.seed).permutation(len(raw["y"]))
    val, train = perm[:n_val], perm[n_val:]
    return {
        "x_train": raw["x"][train],
        "y_train": raw["y"][train],
        "x_val": raw["x"][val],
        "y_val": raw["y"][val],
        "x_test": raw["x_test"],
        "y_test": raw["y_test"],
    }


def _digits(cfg: DataConfig) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # all 1797 images; num_samples does not apply
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed
    )
    # val_fraction is of the whole set, so rescale it to the remainder.
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=cfg.val_fraction / (1 - cfg.test_fraction),
        stratify=y_rest,
        random_state=cfg.seed + 1,
    )
    return dict(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test
    )


BUILDERS: dict[Dataset, Callable[[DataConfig], dict[str, np.ndarray]]] = {
    Dataset.mnist1d: _mnist1d,
    Dataset.digits: _digits,
}


# Curricula (study.engine.curriculum) order the training split by a difficulty score fixed before
# any net trains: minus the margin of a multinomial logistic regression that did not see the
# example (cross-fitted over this many folds of the training split), where the margin is the
# probability of the true class minus the largest other class probability. -1: confidently
# right; +1: confidently wrong. Fitted on one BLAS thread, so that the file does not depend
# on the machine's core count (the solver's path does), and rounded.
DIFFICULTY_FOLDS = 5
DIFFICULTY_DECIMALS = 4


def difficulty(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """The difficulty score of each example of (x, y), as defined above."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    score = np.empty(len(y))
    folds = StratifiedKFold(DIFFICULTY_FOLDS, shuffle=True, random_state=seed)
    for fit, held in folds.split(x, y):
        with threadpool_limits(limits=1):
            model = LogisticRegression(max_iter=5000).fit(x[fit], y[fit])
        proba = model.predict_proba(x[held])  # columns: every class, sorted (stratified folds)
        truth = np.eye(proba.shape[1], dtype=bool)[y[held]]
        score[held] = np.where(truth, -np.inf, proba).max(axis=1) - proba[truth]
    return np.round(score, DIFFICULTY_DECIMALS).astype(np.float32)


def build(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The arrays: float32 features standardized by train statistics, int64 labels, and the
    training examples' difficulty scores."""
    validate(Config(data=cfg))  # the fraction rules live there, shared with training
    raw = BUILDERS[Dataset(cfg.name)](cfg)
    x_train = raw["x_train"].astype(np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    # A pixel constant in train would otherwise divide a nonzero val/test value by ~0.
    std = np.where(std < 1e-8, 1.0, std)
    out = {}
    for split in ("train", "val", "test"):
        out[f"x_{split}"] = ((raw[f"x_{split}"] - mean) / std).astype(np.float32)
        out[f"y_{split}"] = np.asarray(raw[f"y_{split}"], dtype=np.int64)
    out["difficulty_train"] = difficulty(out["x_train"], out["y_train"], cfg.seed)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``np.load``-able .npz without ``np.savez``'s wall-clock timestamps."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for key in KEYS:
                with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH), "w") as f:
                    np.lib.format.write_array(
                        f, np.ascontiguousarray(arrays[key]), allow_pickle=False
                    )

    records.atomic_write(path, write)


def prepare(cfg: DataConfig) -> dict:
    """Build ``cfg``'s dataset, write its .npz, update the manifest; returns its manifest entry."""
    arrays = build(cfg)
    path = prepared_path(cfg)
    write_npz(path, arrays)
    labels = np.concatenate([arrays["y_train"], arrays["y_val"], arrays["y_test"]])
    is_digits = Dataset(cfg.name) is Dataset.digits
    entry = {
        "file": path.name,
        "sha256": sha256_file(path),
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "num_features": int(arrays["x_train"].shape[1]),
        "num_classes": int(labels.max()) + 1,
        "sizes": {s: len(arrays[f"y_{s}"]) for s in ("train", "val", "test")},
        "settings": {
            "seed": cfg.seed,
            "num_samples": None if is_digits else cfg.num_samples,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
        },
    }
    # A subset build (--only) must keep the other datasets' entries.
    manifest_path = path.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[str(cfg.name)] = entry
    records.write_json(manifest_path, manifest)
    return entry


def require_prepared(cfg: DataConfig) -> Path:
    """The prepared file for ``cfg``, or the one-line error that says how to make it."""
    path = prepared_path(cfg)
    if not path.is_file():
        raise ConfigError(
            "data.name", f"prepared data {path} not found; run `python -m study.data` first"
        )
    return path


def load(cfg: DataConfig) -> Splits:
    """The prepared splits for ``cfg.name``, with the file's sha256 for provenance."""
    path = require_prepared(cfg)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in KEYS}
    labels = np.concatenate([arrays["y_train"], arrays["y_val"], arrays["y_test"]])
    return Splits(
        **arrays,
        num_features=int(arrays["x_train"].shape[1]),
        num_classes=int(labels.max()) + 1,
        sha256=sha256_file(path),
    )


NOISE_STREAM = 7_000_001  # offset of the label-noise stream's seed from data.seed


def task(splits: Splits, cfg: DataConfig) -> Splits:
    """The task a run trains on (``data.train_examples``, ``data.label_noise``): the first
    examples of the training split, and a fixed share of their labels moved to another
    class (uniformly), drawn from ``data.seed`` so that every run sees the same noise. A
    noisy label makes its example hard, so the difficulty score is fitted again on the
    labels as the nets see them. Validation and test are left as prepared."""
    if cfg.train_examples is None and cfg.label_noise == 0:
        return splits
    n = min(cfg.train_examples or len(splits.y_train), len(splits.y_train))
    x, y = splits.x_train[:n], splits.y_train[:n].copy()
    score = splits.difficulty_train[:n]
    if cfg.label_noise > 0:
        rng = np.random.default_rng(cfg.seed + NOISE_STREAM)
        flipped = rng.choice(n, size=round(cfg.label_noise * n), replace=False)
        y[flipped] = (y[flipped] + rng.integers(1, splits.num_classes, len(flipped))) % (
            splits.num_classes)  # fmt: skip
        score = difficulty(x, y, cfg.seed)
    return dataclasses.replace(splits, x_train=x, y_train=y, difficulty_train=score)


_CACHE: dict[tuple, Splits] = {}
CACHED_TASKS = 4  # a sweep's worker moves between a few tasks (noise levels, subsets)


def load_cached(cfg: DataConfig) -> Splits:
    """:func:`task` of :func:`load`, kept per process: a sweep worker reads each file and
    cuts each task once (a file rewritten since is read again)."""
    path = prepared_path(cfg)
    stat = path.stat() if path.exists() else None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
    key = (key, cfg.train_examples, cfg.label_noise)
    if key[0] is None or key not in _CACHE:
        splits = task(load(cfg), cfg)  # load raises the one-line ConfigError when missing
        if len(_CACHE) >= CACHED_TASKS:
            _CACHE.pop(next(iter(_CACHE)))  # the oldest
        _CACHE[key] = splits
    return _CACHE[key]


def main(argv: list[str] | None = None) -> None:
    choices = [d.value for d in Dataset]
    parser = argparse.ArgumentParser(
        prog="python -m study.data", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, help="output directory for all datasets (default: data.dir)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"build only this dataset (repeatable): {', '.join(choices)}",
    )
    args = parser.parse_args(argv)
    # argparse's own choices error is a multi-line usage dump; keep it to one line.
    for name in args.only or []:
        if name not in choices:
            print(
                f"study.data: --only: invalid value '{name}', expected one of: "
                f"{', '.join(choices)}",
                file=sys.stderr,
            )
            sys.exit(2)
    for name in dict.fromkeys(args.only or choices):  # dedupe, keep order
        cfg = data_config(name)
        if args.out is not None:
            cfg.dir = str(args.out)
        entry = prepare(cfg)
        shapes = " ".join(
            f"{s} {tuple(entry['arrays'][f'x_{s}']['shape'])}" for s in ("train", "val", "test")
        )
        print(f"{name}: {shapes} -> {prepared_path(cfg)} sha256 {entry['sha256'][:12]}")


if __name__ == "__main__":
    interruptible("study.data", main)
