"""Probe correctness: recorded statistics equal direct autograd, and known profiles appear."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study.config import Activation, Init, ModelConfig, Norm, Skip
from study.engine import nets
from study.engine.probes import FLOAT32_TINY, Probe, probe_steps, profile_summary
from study.engine.stack import Stack

from .conftest import probe_net

pytestmark = pytest.mark.numeric  # run again under other CPU capabilities: make test


def probe_of(cfg: ModelConfig, x, y, seed=0) -> tuple[nets.MLP, dict[str, np.ndarray]]:
    model = nets.build(x.shape[1], int(y.max()) + 1, cfg, seed)
    return model, probe_net(model, cfg, [(x, y)])


def direct_gradients(model: nets.MLP, x, y) -> tuple[list[float], list[float]]:
    """||dL/dz_l|| and ||dL/dW_l|| by explicit autograd, re-deriving the forward pass."""
    zs = []
    h = model.stem(x)
    for layer in model.layers:
        block = layer.block
        z = block.linear(h)
        zs.append(z)
        a = block.act(block.norm(z))
        if isinstance(layer, nets.ResidualLayer):
            h = h + layer.scale * a
        elif isinstance(layer, nets.HighwayLayer):
            t = torch.sigmoid(layer.gate(h))
            h = t * a + (1 - t) * h
        elif isinstance(layer, nets.DenseLayer):
            h = torch.cat([h, a], dim=1)
        else:
            h = a
    loss = F.cross_entropy(model.head(h), y)
    weights = [b.linear.weight for b in model.blocks]
    grads = torch.autograd.grad(loss, zs + weights)
    depth = len(zs)
    return (
        [g.double().norm().item() for g in grads[:depth]],
        [g.double().norm().item() for g in grads[depth:]],
    )


@pytest.mark.parametrize("skip", list(Skip))
@pytest.mark.parametrize("norm", [Norm.none, Norm.batch])
def test_recorded_norms_equal_direct_autograd(skip, norm):
    torch.manual_seed(1)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = ModelConfig(depth=3, width=4, activation=Activation.tanh, init=Init.xavier_normal,
                      norm=norm, skip=skip)  # fmt: skip
    cfg.dense.growth = 3
    model, stats = probe_of(cfg, x, y)
    signal, weight = direct_gradients(model, x, y)
    # The stack writes batch norm out in elementwise ops: float32 rounding differs from
    # PyTorch's fused kernel (the reference here) at the 1e-6 level.
    rtol = 1e-5 if norm is Norm.batch else 1e-6
    np.testing.assert_allclose(stats["signal_grad_norm"], signal, rtol=rtol)
    np.testing.assert_allclose(stats["weight_grad_norm"], weight, rtol=rtol)
    # A dense layer's output is the whole concatenation (its statistics are summed block by
    # block in the probe: this checks the sums against the concatenation itself).
    outputs = layer_outputs(model, x)
    expected_rms = [h.pow(2).mean().sqrt().item() for h in outputs]
    np.testing.assert_allclose(stats["activation_rms"], expected_rms, rtol=1e-6)
    expected_mean = [h.mean().item() for h in outputs]
    # A mean near 0 is a difference of float32 numbers of order 1 (the stack's forward and
    # the module's round differently at ~1e-7): an absolute tolerance at that scale.
    np.testing.assert_allclose(stats["activation_mean"], expected_mean, rtol=1e-6, atol=1e-6)


def layer_outputs(model: nets.MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output (after the skip; for dense, the concatenation), in float64."""
    outputs = []
    with torch.no_grad():
        h = model.stem(x)
        for layer in model.layers:
            h = layer(h)
            outputs.append(h.double())
    return outputs


def test_dense_activation_statistics_over_several_batches():
    torch.manual_seed(2)
    cfg = ModelConfig(depth=4, width=6, activation=Activation.relu, skip=Skip.dense)
    cfg.dense.growth = 2
    model = nets.build(5, 3, cfg, 0)
    batches = [(torch.randn(7, 5), torch.randint(0, 3, (7,))) for _ in range(3)]
    stats = probe_net(model, cfg, batches)
    per_batch = [layer_outputs(model, x) for x, _ in batches]
    for i in range(cfg.depth):
        both = torch.cat([outputs[i] for outputs in per_batch])
        assert stats["activation_rms"][i] == pytest.approx(both.pow(2).mean().sqrt().item(), 1e-6)
        assert stats["activation_mean"][i] == pytest.approx(both.mean().item(), 1e-6, abs=1e-6)


def test_probe_leaves_the_stack_as_it_found_it():
    torch.manual_seed(0)
    cfg = ModelConfig(depth=3, width=8, norm=Norm.batch)
    stack = Stack.of([nets.build(5, 3, cfg, seed) for seed in range(2)], cfg)
    stack.train(False)
    params = {k: v.detach().clone() for k, v in stack.params.items()}
    buffers = {k: v.clone() for k, v in stack.buffers.items()}
    x, y = torch.randn(2, 16, 5), torch.randint(0, 3, (2, 16))
    Probe(stack, cfg.activation, [(x, y)]).measure()
    assert not stack.training
    assert all(p.grad is None for p in stack.params.values())
    for k, v in stack.params.items():
        assert torch.equal(v, params[k]), k
    for k, v in stack.buffers.items():
        assert torch.equal(v, buffers[k]), k


def test_several_probe_batches_average_in_the_squared_domain():
    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, width=8, activation=Activation.relu)
    model = nets.build(5, 3, cfg, 0)
    batches = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(2)]
    one = [probe_net(model, cfg, [b])["signal_grad_norm"] for b in batches]
    both = probe_net(model, cfg, batches)["signal_grad_norm"]
    np.testing.assert_allclose(both, np.sqrt((one[0] ** 2 + one[1] ** 2) / 2), rtol=1e-9)


def wide_profile(activation, init, depth=24, width=256, seeds=3):
    """Mean per-layer signal-gradient summary over a few seeds, on standard-normal inputs."""
    rates, first_last = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        x, y = torch.randn(256, 40, generator=g), torch.randint(0, 10, (256,), generator=g)
        cfg = ModelConfig(depth=depth, width=width, activation=activation, init=init)
        _, stats = probe_of(cfg, x, y, seed=seed)
        summary = profile_summary(stats["signal_grad_norm"])
        rates.append(summary["log10_rate"])
        first_last.append(summary["log10_first_last"])
    return float(np.mean(rates)), float(np.mean(first_last))


def test_relu_with_kaiming_keeps_signal_gradients_level():
    rate, first_last = wide_profile(Activation.relu, Init.kaiming_normal)
    # Theory: chi = 1, so log10 per-layer ratio 0; finite width drifts by a few 0.001.
    assert abs(rate) < 0.01
    assert abs(first_last) < 0.25  # within a factor of ~1.8 over 24 layers


def test_sigmoid_with_xavier_shrinks_signal_gradients_toward_the_input():
    rate, first_last = wide_profile(Activation.sigmoid, Init.xavier_normal)
    # Theory: chi = E[sigmoid'(u)^2] <= 1/16, so about -0.6 decades per layer.
    assert rate < -0.4
    assert first_last < -0.4 * 20


def test_relu_with_xavier_halves_the_squared_signal_gradient_per_layer():
    rate, _ = wide_profile(Activation.relu, Init.xavier_normal)
    assert rate == pytest.approx(0.5 * math.log10(0.5), abs=0.02)


def test_dead_and_saturated_fractions():
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    cfg = ModelConfig(depth=2, width=8, activation=Activation.relu)
    torch.manual_seed(0)
    model = nets.build(5, 3, cfg, 0)
    with torch.no_grad():
        model.blocks[1].linear.bias[:4] = -1e3  # half the units of layer 2 never fire,
        model.blocks[1].linear.bias[4:] = 1e3  # the other half always do
    stats = probe_net(model, cfg, [(x, y)])
    assert stats["dead_fraction"][1] == 0.5
    assert np.isnan(stats["saturated_fraction"]).all()

    cfg = ModelConfig(depth=2, width=8, activation=Activation.sigmoid)
    model = nets.build(5, 3, cfg, 0)
    with torch.no_grad():
        model.blocks[0].linear.bias[:] = 50.0  # sigmoid'(50) ~ 2e-22: all saturated
    stats = probe_net(model, cfg, [(x, y)])
    assert stats["saturated_fraction"][0] == 1.0
    assert np.isnan(stats["dead_fraction"]).all()


def test_update_ratio_is_the_relative_weight_change_of_each_net():
    cfg = ModelConfig(depth=2, width=8)
    stack = Stack.of([nets.build(5, 3, cfg, seed) for seed in range(2)], cfg)
    probe = Probe(stack, cfg.activation, [])
    w = stack.weights()[0]
    before = w.detach().clone()
    probe.before_update()
    with torch.no_grad():
        w[1].add_(0.1)  # the second net's first block only
    ratio = probe.update_ratio()
    assert ratio.shape == (2, 2)
    assert ratio[1, 0] == pytest.approx((0.1 * torch.ones_like(w[1])).norm() / before[1].norm())
    assert ratio[0, 0] == 0.0 and ratio[1, 1] == 0.0


def test_underflowed_gradients_are_kept_as_zeros_and_censored_in_summaries():
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 10, (64,))
    cfg = ModelConfig(depth=80, width=32, activation=Activation.sigmoid, init=Init.xavier_normal)
    _, stats = probe_of(cfg, x, y)
    norms = stats["signal_grad_norm"]
    assert norms[0] == 0.0 and norms[-1] > 0  # float32 underflow near the input
    summary = profile_summary(norms)
    assert summary["n_zero"] > 0
    assert summary["first_last_censored"]
    assert summary["log10_first_last"] == pytest.approx(math.log10(FLOAT32_TINY / norms[-1]))
    assert summary["log10_rate"] < -0.4  # fitted on the non-zero layers only


def test_profile_summary_on_an_exact_geometric_profile():
    norms = 10.0 ** (-0.3 * np.arange(10)[::-1])  # layer 1 smallest: vanishing toward input
    summary = profile_summary(norms)
    assert summary["log10_rate"] == pytest.approx(-0.3)
    assert summary["log10_first_last"] == pytest.approx(-2.7)
    assert not summary["first_last_censored"] and summary["n_zero"] == 0


def test_probe_schedule_is_log_spaced_and_ends_at_the_last_step():
    assert probe_steps("log125", 0) == [0]
    assert probe_steps("log125", 7) == [0, 1, 2, 5, 7]
    assert probe_steps("log125", 1000) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert probe_steps("log10", 150) == [0, 1, 10, 100, 150]
    assert probe_steps("none", 100) == []
