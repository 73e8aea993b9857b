"""The network family: a stem, ``depth`` hidden blocks, a linear head.

A block is ``Linear -> Norm -> activation -> dropout``; the skip decides how blocks are
chained. Each axis is a registry (name -> constructor), so a new activation, init, norm or skip
is one entry here and one enum member in ``study.config``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from study.config import EXPLICIT_INITS, Activation, Init, ModelConfig, Norm, Scaling, Skip

# --------------------------------------------------------------------------- activations


# The activation families the claims and statistics speak of: "saturating" (sigmoid, tanh),
# "relu" (the ReLU family: relu, leaky_relu, prelu, elu), "smooth" (gelu, selu).
FAMILIES = ("saturating", "relu", "smooth")


@dataclass(frozen=True)
class ActivationSpec:
    make: Callable[[], nn.Module]
    negative_slope: float  # used by kaiming init; 0 for everything but the leaky ones
    family: str  # one of FAMILIES
    # phi'(u) for the saturated-fraction statistic; saturating activations only.
    derivative: Callable[[torch.Tensor], torch.Tensor] | None = None
    max_derivative: float = 1.0


def _sigmoid_derivative(u: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(u)
    return s * (1 - s)


def _tanh_derivative(u: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(u) ** 2


ACTIVATIONS: dict[Activation, ActivationSpec] = {
    Activation.sigmoid: ActivationSpec(
        nn.Sigmoid, 0.0, "saturating", _sigmoid_derivative, max_derivative=0.25
    ),
    Activation.tanh: ActivationSpec(nn.Tanh, 0.0, "saturating", _tanh_derivative),
    Activation.relu: ActivationSpec(nn.ReLU, 0.0, "relu"),
    Activation.leaky_relu: ActivationSpec(lambda: nn.LeakyReLU(0.01), 0.01, "relu"),
    Activation.prelu: ActivationSpec(lambda: nn.PReLU(num_parameters=1, init=0.25), 0.25, "relu"),
    Activation.elu: ActivationSpec(nn.ELU, 0.0, "relu"),
    Activation.gelu: ActivationSpec(nn.GELU, 0.0, "smooth"),
    Activation.selu: ActivationSpec(nn.SELU, 0.0, "smooth"),
}


def family(name: str) -> tuple[str, ...]:
    """The activations of a family (see FAMILIES), in the order of ``Activation``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown activation family {name!r}, expected one of {FAMILIES}")
    return tuple(str(a) for a, spec in ACTIVATIONS.items() if spec.family == name)


# --------------------------------------------------------------------------------- inits


def _kaiming_uniform(w: torch.Tensor, slope: float, gen: torch.Generator) -> None:
    nn.init.kaiming_uniform_(w, a=slope, mode="fan_in", nonlinearity="leaky_relu", generator=gen)


def _kaiming_normal(w: torch.Tensor, slope: float, gen: torch.Generator) -> None:
    nn.init.kaiming_normal_(w, a=slope, mode="fan_in", nonlinearity="leaky_relu", generator=gen)


def _lecun_normal(w: torch.Tensor, slope: float, gen: torch.Generator) -> None:
    nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]), generator=gen)


def _default(w: torch.Tensor, slope: float, gen: torch.Generator) -> None:
    # PyTorch's own Linear.reset_parameters (its bias is drawn by ``_linear_state``).
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)


# Each takes a Linear weight (out, in), the activation's negative slope and the net's
# random stream, and draws the weight in place. The explicit-variance inits draw here at
# sigma_w^2 = 1; ``_linear_state`` scales them and draws their biases.
Scheme = Callable[[torch.Tensor, float, torch.Generator], None]
INITS: dict[Init, Scheme] = {
    Init.default: _default,  # kaiming_uniform with a=sqrt(5), and uniform biases
    Init.xavier_uniform: lambda w, slope, gen: nn.init.xavier_uniform_(w, gain=1.0, generator=gen),
    Init.xavier_normal: lambda w, slope, gen: nn.init.xavier_normal_(w, gain=1.0, generator=gen),
    Init.kaiming_uniform: _kaiming_uniform,
    Init.kaiming_normal: _kaiming_normal,
    Init.orthogonal: lambda w, slope, gen: nn.init.orthogonal_(w, gain=1.0, generator=gen),
    Init.lecun_normal: _lecun_normal,
    Init.gaussian: _lecun_normal,
    Init.scaled_orthogonal: lambda w, slope, gen: nn.init.orthogonal_(w, gain=1.0, generator=gen),
}


# The variances these give (the mean-field sigma_w^2 and sigma_b^2 of study.analysis.theory) are
# written here, beside the inits, and nowhere else.


def sigma_w2(
    init: Init, activation: Activation, fan_in: int, fan_out: int, explicit: float | None = None
) -> float:
    """fan_in * Var(W) that an init gives a Linear(fan_in, fan_out): the mean-field sigma_w^2.

    Orthogonal (gain 1): a tall matrix (fan_out >= fan_in) has orthonormal columns, so each
    entry has variance 1/fan_out; a wide one has orthonormal rows, variance 1/fan_in.
    The explicit-variance inits scale that by ``explicit``, the config's model.sigma_w2.
    """
    init = Init(init)
    if init in EXPLICIT_INITS:
        if explicit is None:
            raise ValueError(f"init {init} has no variance of its own: pass model.sigma_w2")
        unit = Init.lecun_normal if init is Init.gaussian else Init.orthogonal
        return explicit * sigma_w2(unit, activation, fan_in, fan_out)
    slope = ACTIVATIONS[Activation(activation)].negative_slope
    return {
        Init.default: 1.0 / 3.0,  # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
        Init.xavier_uniform: 2.0 * fan_in / (fan_in + fan_out),
        Init.xavier_normal: 2.0 * fan_in / (fan_in + fan_out),
        Init.kaiming_uniform: 2.0 / (1.0 + slope**2),
        Init.kaiming_normal: 2.0 / (1.0 + slope**2),
        Init.orthogonal: fan_in / fan_out if fan_out >= fan_in else 1.0,
        Init.lecun_normal: 1.0,
    }[Init(init)]


def sigma_b2(init: Init, fan_in: int, explicit: float | None = None) -> float:
    """Var(b) of a Linear's bias: zero, except PyTorch's default uniform(+-1/sqrt(fan_in))
    and the explicit-variance inits' ``explicit``, the config's model.sigma_b2."""
    init = Init(init)
    if init in EXPLICIT_INITS:
        if explicit is None:
            raise ValueError(f"init {init} has no bias variance of its own: pass model.sigma_b2")
        return explicit
    return 1.0 / (3.0 * fan_in) if init is Init.default else 0.0


# --------------------------------------------------------------------------------- norms

NORMS: dict[Norm, Callable[[int], nn.Module]] = {
    Norm.none: lambda width: nn.Identity(),
    Norm.batch: nn.BatchNorm1d,
    Norm.layer: nn.LayerNorm,
}

# ---------------------------------------------------------------------------- the blocks


class Block(nn.Module):
    """Linear -> Norm -> activation -> dropout (in training; the skip comes after it).
    ``linear`` output is z_l, ``act`` output is phi(u_l)."""

    def __init__(self, fan_in: int, fan_out: int, cfg: ModelConfig):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.norm = NORMS[cfg.norm](fan_out)
        self.act = ACTIVATIONS[cfg.activation].make()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.linear(x))))


class PlainLayer(nn.Module):
    def __init__(self, fan_in: int, cfg: ModelConfig):
        super().__init__()
        self.block = Block(fan_in, cfg.width, cfg)
        self.out_features = cfg.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualLayer(nn.Module):
    """x + s * block(x): s = scale, scale / sqrt(depth), or learned from 0 (``alpha``)."""

    def __init__(self, fan_in: int, cfg: ModelConfig):
        super().__init__()
        self.block = Block(fan_in, cfg.width, cfg)
        self.scale = cfg.branch_scale()
        if cfg.residual.scaling == Scaling.rezero:
            self.alpha = nn.Parameter(torch.zeros(1))
        self.out_features = cfg.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.alpha if hasattr(self, "alpha") else self.scale
        return x + scale * self.block(x)


class HighwayLayer(nn.Module):
    """T * block(x) + (1 - T) * x with the transform gate T = sigmoid(W_T x + b_T)."""

    def __init__(self, fan_in: int, cfg: ModelConfig):
        super().__init__()
        self.block = Block(fan_in, cfg.width, cfg)
        self.gate = nn.Linear(fan_in, cfg.width)
        self.out_features = cfg.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        return t * self.block(x) + (1 - t) * x


class DenseLayer(nn.Module):
    """DenseNet-style: the block reads the concatenation of the stem output and all earlier
    block outputs, and appends its own ``growth``-wide output to it."""

    def __init__(self, fan_in: int, cfg: ModelConfig):
        super().__init__()
        self.block = Block(fan_in, cfg.dense.growth, cfg)
        self.out_features = fan_in + cfg.dense.growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.block(x)], dim=1)


# Each takes the width it reads and sets ``out_features``, the width it passes on.
SKIPS: dict[Skip, Callable[[int, ModelConfig], nn.Module]] = {
    Skip.none: PlainLayer,
    Skip.residual: ResidualLayer,
    Skip.highway: HighwayLayer,
    Skip.dense: DenseLayer,
}

# ------------------------------------------------------------------------------ the net


class MLP(nn.Module):
    """stem Linear(in, W) -> ``depth`` layers -> head Linear(., classes); :func:`build`
    gives it its initial state (constructed alone it has PyTorch's default init).

    The stem is linear only (no norm, no activation) so that every skip sees a
    width-W input; blocks are numbered 1 (nearest the input) to ``depth``.
    """

    def __init__(self, in_features: int, num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.stem = nn.Linear(in_features, cfg.width)
        layers, width = [], cfg.width
        for _ in range(cfg.depth):
            layers.append(SKIPS[cfg.skip](width, cfg))
            width = layers[-1].out_features
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, num_classes)

    @property
    def blocks(self) -> list[Block]:
        return [layer.block for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


# ------------------------------------------------------------------- the initial state

Tensors = dict[str, torch.Tensor]


def _linear_state(
    state: Tensors, prefix: str, fan_in: int, fan_out: int, cfg: ModelConfig, gen: torch.Generator
) -> None:
    weight, bias = torch.empty(fan_out, fan_in), torch.zeros(fan_out)
    INITS[cfg.init](weight, ACTIVATIONS[cfg.activation].negative_slope, gen)
    # Kept in (in, out) memory order, as the stack stores Linear weights: stacking the
    # group's nets is then one copy (this small one stays in the cache; the stack's would not).
    weight = weight.T.contiguous().T
    if cfg.init == Init.default:  # PyTorch's uniform bias, +-1/sqrt(fan_in)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound, generator=gen)
    if cfg.init in EXPLICIT_INITS:
        # The sigma_w^2 = 1 draw scaled, and the bias drawn even at sigma_b^2 = 0: nets of a
        # (sigma_w^2, sigma_b^2) grid with one seed share their noise, so the grid is smooth.
        weight.mul_(math.sqrt(cfg.sigma_w2))
        bias.normal_(0.0, math.sqrt(cfg.sigma_b2), generator=gen)
    state[prefix + "weight"], state[prefix + "bias"] = weight, bias


def _block_state(
    params: Tensors, buffers: Tensors, prefix: str, fan_in: int, fan_out: int,
    cfg: ModelConfig, gen: torch.Generator,
) -> None:  # fmt: skip
    _linear_state(params, prefix + "linear.", fan_in, fan_out, cfg, gen)
    if cfg.norm != Norm.none:  # affine weight 1, bias 0 (BatchNorm1d's and LayerNorm's)
        params[prefix + "norm.weight"] = torch.ones(fan_out)
        params[prefix + "norm.bias"] = torch.zeros(fan_out)
    if cfg.norm == Norm.batch:
        buffers[prefix + "norm.running_mean"] = torch.zeros(fan_out)
        buffers[prefix + "norm.running_var"] = torch.ones(fan_out)
        buffers[prefix + "norm.num_batches_tracked"] = torch.tensor(0)
    if cfg.activation == Activation.prelu:  # one learned slope, PReLU's init 0.25
        params[prefix + "act.weight"] = torch.full((1,), ACTIVATIONS[cfg.activation].negative_slope)


def initial_state(
    in_features: int, num_classes: int, cfg: ModelConfig, seed: int
) -> tuple[Tensors, Tensors]:
    """The net's parameters and buffers at initialization, named as :class:`MLP` names them.

    Every weight is drawn once, by its init, from the net's own random stream (seeded with
    ``seed``), in the order MLP builds its layers: stem, each layer's block then gate, head.
    The engine stacks these tensors directly (``study.engine.stack``), without building modules,
    which at depth 64 would cost as much again as the draws.
    """
    gen = torch.Generator().manual_seed(seed)
    params: Tensors = {}
    buffers: Tensors = {}
    _linear_state(params, "stem.", in_features, cfg.width, cfg, gen)
    width = cfg.width
    for i in range(cfg.depth):
        prefix = f"layers.{i}."
        out = cfg.block_width()
        _block_state(params, buffers, prefix + "block.", width, out, cfg, gen)
        if cfg.skip == Skip.highway:
            _linear_state(params, prefix + "gate.", width, cfg.width, cfg, gen)
            params[prefix + "gate.bias"].fill_(cfg.highway.gate_bias)
        if cfg.skip == Skip.residual and cfg.residual.scaling == Scaling.rezero:
            params[prefix + "alpha"] = torch.zeros(1)  # no draw: the stream is as without it
        width = width + out if cfg.skip == Skip.dense else cfg.width
    _linear_state(params, "head.", width, num_classes, cfg, gen)
    return params, buffers


def build(in_features: int, num_classes: int, cfg: ModelConfig, seed: int) -> MLP:
    """The net as a module (for reading and for tests), in its :func:`initial_state`."""
    with torch.device("meta"):  # no memory and no default init: the state comes next
        net = MLP(in_features, num_classes, cfg)
    net = net.to_empty(device="cpu")
    params, buffers = initial_state(in_features, num_classes, cfg, seed)
    net.load_state_dict({**params, **buffers}, strict=True)
    return net
