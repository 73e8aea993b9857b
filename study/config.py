"""Structured configs: the typed schema behind ``conf/``.

Every knob of the study is a field here. Hydra composes ``conf/config.yaml`` onto
``Config``, so a misspelt key or an enum value outside its choices is rejected at
composition; :func:`validate` then checks the ranges a type cannot express.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The project's Hydra configs (conf/config.yaml composes onto ``Config``).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class Dataset(enum.StrEnum):
    mnist1d = "mnist1d"
    digits = "digits"


class Activation(enum.StrEnum):
    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    leaky_relu = "leaky_relu"
    prelu = "prelu"
    elu = "elu"
    gelu = "gelu"
    selu = "selu"


class Init(enum.StrEnum):
    default = "default"
    xavier_uniform = "xavier_uniform"
    xavier_normal = "xavier_normal"
    kaiming_uniform = "kaiming_uniform"
    kaiming_normal = "kaiming_normal"
    orthogonal = "orthogonal"
    lecun_normal = "lecun_normal"
    # Explicit variances (model.sigma_w2, model.sigma_b2): the phase diagram's grid.
    gaussian = "gaussian"  # weights N(0, sigma_w2 / fan_in), biases N(0, sigma_b2)
    scaled_orthogonal = "scaled_orthogonal"  # sqrt(sigma_w2) * orthogonal, biases N(0, sigma_b2)


class Scaling(enum.StrEnum):
    """How a residual block scales its branch: x + s f(x)."""

    constant = "constant"  # s = model.residual.scale
    sqrt_depth = "sqrt_depth"  # s = scale / sqrt(depth): the stream's variance stays bounded
    rezero = "rezero"  # s learned, one per block, from 0 (ReZero, SkipInit): identity at init


class Norm(enum.StrEnum):
    none = "none"
    batch = "batch"
    layer = "layer"


class Skip(enum.StrEnum):
    none = "none"
    residual = "residual"
    highway = "highway"
    dense = "dense"


class Optimizer(enum.StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(enum.StrEnum):
    """When to probe during training (study.engine.probes.SCHEDULES has the steps)."""

    log125 = "log125"  # after 0, 1, 2, 5, 10, 20, 50, ... updates
    log10 = "log10"  # after 0, 1, 10, 100, ... updates
    none = "none"  # never


class Curriculum(enum.StrEnum):
    """The order of training examples (study.engine.curriculum.SCHEDULES has each one's pacing)."""

    none = "none"  # every example from the first step, reshuffled each epoch
    linear = "linear"  # the easiest first; the pool grows linearly to every example
    anti = "anti"  # the hardest first, same pacing (a control: is it the order?)
    random = "random"  # a random subset first, same pacing (a control: is it the pacing?)


class Device(enum.StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# The per-layer statistics a probe records (study.engine.probes; the README defines each).
LAYER_STATS = (
    "weight_grad_norm",
    "signal_grad_norm",
    "weight_norm",
    "activation_rms",
    "activation_mean",
    "dead_fraction",
    "saturated_fraction",
    "update_ratio",
)

# What the Jacobian probe records per run, in run.json's summary (study.engine.jacobian
# defines each); the last is a flag: log10_cond is +inf, which JSON writes as null.
JACOBIAN_STATS = (
    "jacobian_eig_mean",
    "jacobian_eig_var",
    "jacobian_log10_cond",
    "jacobian_singular",
)


@dataclass
class DataConfig:
    name: Dataset = Dataset.mnist1d
    dir: str = "data/prepared"
    # Generation (read by the prepare stage only).
    seed: int = 0
    num_samples: int = 5000
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    # Validation accuracy that counts as "learned" for steps-to-target.
    target_accuracy: float = 0.5
    # Multiplies the standardized features when a run reads them (C14: small inputs).
    input_scale: float = 1.0
    # The task a run trains on, cut from the prepared one (study.data.task): the training
    # split's first `train_examples` (null: all), and `label_noise` of its labels replaced by
    # another class, the same ones for every run (drawn from data.seed). Validation and test
    # stay as prepared: a net that learns the noise generalizes worse.
    train_examples: int | None = None
    label_noise: float = 0.0


@dataclass
class ResidualConfig:
    scale: float = 1.0  # x + scale * block(x)
    scaling: Scaling = Scaling.constant  # ... or scale / sqrt(depth), or learned from 0


@dataclass
class HighwayConfig:
    gate_bias: float = -2.0  # negative: the gate starts mostly closed (carry), as Srivastava et al.


@dataclass
class DenseConfig:
    growth: int = 32  # width of each block's output appended to the running concatenation


@dataclass
class ModelConfig:
    depth: int = 8
    width: int = 128
    activation: Activation = Activation.relu
    init: Init = Init.kaiming_normal
    norm: Norm = Norm.none
    skip: Skip = Skip.none
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    highway: HighwayConfig = field(default_factory=HighwayConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    # Fraction of each block's output units zeroed in training (after the activation, before
    # the skip); evaluation and probes run without it.
    dropout: float = 0.0
    # The mean-field variances of init gaussian and scaled_orthogonal (EXPLICIT_INITS), which
    # need both; every other init sets its own, and refuses these.
    sigma_w2: float | None = None
    sigma_b2: float | None = None

    def branch_scale(self) -> float:
        """The factor on each residual branch at initialization."""
        scaling = self.residual.scaling
        if scaling == Scaling.rezero:
            return 0.0
        if scaling == Scaling.sqrt_depth:
            return self.residual.scale / math.sqrt(self.depth)
        return self.residual.scale

    def block_width(self) -> int:
        """The units a block outputs: the stream's width, or for dense nets the ``growth`` it
        appends to the concatenation."""
        return self.dense.growth if self.skip == Skip.dense else self.width


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.sgd
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    clip_norm: float | None = None  # max global gradient norm; null = no clipping


@dataclass
class TrainConfig:
    steps: int = 500  # 0 = probe at initialization only
    batch_size: int = 128
    eval_every: int = 50  # validation loss/accuracy every this many steps (and at the end)
    # Also the whole training split's loss and accuracy at each evaluation (learning curves
    # of the generalization gap); at the end of training it is always measured.
    eval_train: bool = False
    # The plateau: `patience` evaluations in a row without the validation loss improving on
    # its best by more than `min_delta` (relative). Recorded per run (plateau_at_step; none:
    # still improving at the end); with `early_stop` the run stops there. 0: no criterion.
    patience: int = 5
    min_delta: float = 0.01
    early_stop: bool = False
    curriculum: Curriculum = Curriculum.none
    device: Device = Device.auto
    threads: int = 1  # torch intra-op threads; sweeps run one worker per core


@dataclass
class ProbeConfig:
    enabled: bool = True
    batches: int = 1  # probe batches per measurement, averaged in the squared domain
    batch_size: int = 128
    schedule: Schedule = Schedule.log125  # and always after the last update
    # The input-output Jacobian of the hidden stream at initialization (study.engine.jacobian):
    # its spectrum on the first `jacobian_examples` examples of each net's probe batch, exact
    # up to width `jacobian_exact_width`, above it estimated from `jacobian_vectors` random
    # directions (mean and variance only).
    jacobian: bool = False
    jacobian_examples: int = 4
    jacobian_exact_width: int = 512
    jacobian_vectors: int = 32


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "study"
    profile_plot: bool = True  # a small per-layer profile picture (profile.svg) as an artifact
    # Per-layer statistics mirrored as MLflow metrics (step = layer); all of them are in
    # the layers.parquet artifact either way. Large sweeps log fewer: each costs a row
    # per layer in the tracking database.
    layer_metrics: list[str] = field(default_factory=lambda: list(LAYER_STATS))
    # SQL stores (sqlite://, postgresql://): true writes a group's runs in one transaction
    # of MLflow's own table models (study.tracking.bulk, tested against this MLflow version
    # only); false logs them through MLflow's public client, run by run, as to a tracking
    # server: the way out should a new MLflow change its tables. The same runs either way
    # (tests/test_bulk.py); how a cell is logged, not what it computes (records.cell_key).
    bulk: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    run_name: str = MISSING
    # Refuse a run whose estimated memory exceeds what the machine has available
    # (study.engine.memory); false: try anyway. Not part of the cell (records.cell_key).
    memory_check: bool = True


# The keys that may differ between the nets of one stack (study.engine.stack; the sweep
# launchers' default ``group_over``, plus the run name made from them): each net draws its
# own init and keeps its own learning rate, dropout rate and masks, and batches.
STACKABLE = ("seed", "run_name", "model.init", "optim.lr", "model.dropout", "train.curriculum")


# The inits that take their variances from model.sigma_w2 and model.sigma_b2.
EXPLICIT_INITS = (Init.gaussian, Init.scaled_orthogonal)


class ConfigError(ValueError):
    """A configuration value outside its valid range; ``key`` is its dotted path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# Sizes beyond these are typos, not experiments (a depth-100,000 net of width 1 is still
# refused here; the memory estimate guards what lies within).
MAX_DEPTH = 100_000
MAX_WIDTH = 1_000_000
MAX_SEED = 2**32 - 1  # each net's streams are seeded with seed + offsets < 2**63


def _floats(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every float of a config, with its dotted key."""
    if dataclasses.is_dataclass(node):
        return [
            pair
            for f in dataclasses.fields(node)
            for pair in _floats(getattr(node, f.name), f"{prefix}{f.name}.")
        ]
    if isinstance(node, list | tuple):
        return [pair for i, v in enumerate(node) for pair in _floats(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), node)] if isinstance(node, float) else []


def validate(cfg: Config) -> None:
    """Check what the schema's types cannot: ranges and cross-field rules."""
    m, o, t, p, d = cfg.model, cfg.optim, cfg.train, cfg.probe, cfg.data
    for key, value in _floats(cfg):
        _require(math.isfinite(value), key, f"must be a finite number, got {value}")
    _require(
        1 <= m.depth <= MAX_DEPTH, "model.depth", f"must be in [1, {MAX_DEPTH:,}], got {m.depth}"
    )
    _require(
        1 <= m.width <= MAX_WIDTH, "model.width", f"must be in [1, {MAX_WIDTH:,}], got {m.width}"
    )
    _require(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}], got {cfg.seed}")
    _require(m.dense.growth >= 1, "model.dense.growth", f"must be >= 1, got {m.dense.growth}")
    _require(m.residual.scale > 0, "model.residual.scale", f"must be > 0, got {m.residual.scale}")
    _require(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check_variances(m)
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        f"must be two numbers in [0, 1), got {list(o.betas)}",
    )
    _require(
        o.clip_norm is None or o.clip_norm > 0,
        "optim.clip_norm",
        f"must be > 0 or null, got {o.clip_norm}",
    )
    _require(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}")
    _require(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
    _require(t.eval_every >= 1, "train.eval_every", f"must be >= 1, got {t.eval_every}")
    _require(t.patience >= 0, "train.patience", f"must be >= 0 (0: no plateau), got {t.patience}")
    _require(0 <= t.min_delta < 1, "train.min_delta", f"must be in [0, 1), got {t.min_delta}")
    _require(
        not t.early_stop or t.patience > 0,
        "train.early_stop",
        "needs a plateau to stop at: set train.patience > 0",
    )
    _require(t.threads >= 0, "train.threads", f"must be >= 0 (0 = torch default), got {t.threads}")
    _require(p.batches >= 1, "probe.batches", f"must be >= 1, got {p.batches}")
    _require(
        1 <= p.jacobian_examples <= p.batch_size,
        "probe.jacobian_examples",
        f"must be in [1, probe.batch_size = {p.batch_size}], got {p.jacobian_examples}",
    )
    _require(
        p.jacobian_exact_width >= 0,
        "probe.jacobian_exact_width",
        f"must be >= 0 (0: always estimate), got {p.jacobian_exact_width}",
    )
    _require(
        p.jacobian_vectors >= 2,
        "probe.jacobian_vectors",
        f"must be >= 2, got {p.jacobian_vectors}",
    )
    # Batch norm needs two examples to have a batch variance.
    _require(p.batch_size >= 2, "probe.batch_size", f"must be >= 2, got {p.batch_size}")
    _require(
        0 < d.val_fraction < 1 and 0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
        "data.val_fraction",
        "val_fraction and test_fraction must be in (0, 1) and sum to less than 1",
    )
    unknown = [s for s in cfg.tracking.layer_metrics if s not in LAYER_STATS]
    _require(
        not unknown,
        "tracking.layer_metrics",
        f"unknown statistic {unknown[:1]}, expected some of: {', '.join(LAYER_STATS)}",
    )
    _require(d.input_scale > 0, "data.input_scale", f"must be > 0, got {d.input_scale}")
    _require(
        d.train_examples is None or d.train_examples >= 2,
        "data.train_examples",
        f"must be >= 2 or null (all), got {d.train_examples}",
    )
    _require(0 <= d.label_noise < 1, "data.label_noise", f"must be in [0, 1), got {d.label_noise}")
    _require(
        0 < d.target_accuracy <= 1,
        "data.target_accuracy",
        f"must be in (0, 1], got {d.target_accuracy}",
    )


def _check_variances(m: ModelConfig) -> None:
    """model.sigma_w2 and model.sigma_b2: both set with an explicit-variance init, neither
    with any other (whose variances are its own: a value there would be silently unread)."""
    explicit = ", ".join(EXPLICIT_INITS)
    if m.init not in EXPLICIT_INITS:
        for key, value in (("model.sigma_w2", m.sigma_w2), ("model.sigma_b2", m.sigma_b2)):
            _require(
                value is None,
                key,
                f"init {m.init} sets its own variances: model.sigma_w2 and model.sigma_b2 are "
                f"read only by init {explicit} (leave them null)",
            )
        return
    for key, value in (("model.sigma_w2", m.sigma_w2), ("model.sigma_b2", m.sigma_b2)):
        _require(
            value is not None,
            key,
            f"init {m.init} needs model.sigma_w2 (> 0) and model.sigma_b2 (>= 0), got null",
        )
    _require(m.sigma_w2 > 0, "model.sigma_w2", f"must be > 0, got {m.sigma_w2}")
    _require(m.sigma_b2 >= 0, "model.sigma_b2", f"must be >= 0, got {m.sigma_b2}")


def interruptible(prog: str, main: Callable[[], Any]) -> None:
    """Run an entry point's ``main``; Ctrl-C (or DVC passing one on) ends it with one line
    and status 130 instead of a traceback. Whatever the stage writes is atomic, so nothing
    is left half-written."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def as_dict(cfg: Any) -> Any:
    """A config dataclass as plain JSON/YAML-ready data (enums as their names)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: as_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [as_dict(v) for v in cfg]
    if isinstance(cfg, enum.Enum):
        return cfg.value
    return cfg


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """The dataclass ``cls`` from a resolved config of plain containers, as
    ``OmegaConf.to_object`` makes it from the same config (enums from their names); the
    values are the schema's types already (OmegaConf typed them when they were set)."""
    hints = _field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value, kind = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            value = kind(value)
        elif isinstance(value, list):
            value = list(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def prepared_path(data: DataConfig) -> Path:
    return Path(data.dir) / f"{data.name}.npz"


def register() -> None:
    """Make the schema known to Hydra; ``conf/config.yaml`` names it first in its defaults."""
    ConfigStore.instance().store(name="schema", node=Config)


register()
