"""The network family: every value of every axis builds, probes and trains."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from study.config import (
    EXPLICIT_INITS,
    Activation,
    Config,
    ConfigError,
    Init,
    ModelConfig,
    Norm,
    Skip,
    validate,
)
from study.engine import loop, nets
from study.engine.probes import STATS
from study.engine.stack import Stack

from .conftest import compose_config


def test_the_builder_knows_every_choice_the_config_offers():
    assert set(nets.ACTIVATIONS) == set(Activation)
    assert set(nets.INITS) == set(Init)
    assert set(nets.NORMS) == set(Norm)
    assert set(nets.SKIPS) == set(Skip)


@pytest.fixture(scope="module")
def base_config() -> Config:
    return compose_config(
        "model.depth=3", "model.width=16", "model.dense.growth=8",
        "train.steps=3", "train.batch_size=32", "train.eval_every=2",
        "probe.batch_size=32",
    )  # fmt: skip


def shape_problems(base_config: Config, data, activation, norm, skip) -> list[str]:
    """What goes wrong when every init of one shape trains in one stack (none: [])."""
    cfgs = []
    for init in Init:
        cfg = copy.deepcopy(base_config)
        cfg.model.activation, cfg.model.init, cfg.model.norm, cfg.model.skip = (
            activation, init, norm, skip,
        )  # fmt: skip
        if init in EXPLICIT_INITS:
            cfg.model.sigma_w2, cfg.model.sigma_b2 = 1.5, 0.01
        cfgs.append(cfg)
    models = [nets.build(data.num_features, data.num_classes, c.model, 0) for c in cfgs]
    stack = Stack.of(models, cfgs[0].model)
    problems = []
    for init, outcome in zip(Init, loop.run(stack, data, cfgs, torch.device("cpu")), strict=True):
        layers = outcome.layers
        checks = {
            "three blocks": all(len(m.blocks) == 3 for m in models),
            "finished": outcome.status == "finished" and outcome.steps_done == 3,
            "probed at 0-3": sorted(set(layers["step"].tolist())) == [0, 1, 2, 3],
            "every statistic": set(STATS) <= set(layers),
            "gradients finite, > 0": bool(np.all(np.isfinite(layers["signal_grad_norm"]))
                                          and np.all(layers["signal_grad_norm"] > 0)),
            "updates finite": bool(np.all(np.isfinite(
                layers["update_ratio"][layers["step"] > 0]))),
            "accuracy finite": math.isfinite(outcome.metrics["test_accuracy"]),
        }  # fmt: skip
        problems += [f"{activation}/{init}/{norm}/{skip}: {name}"
                     for name, ok in checks.items() if not ok]  # fmt: skip
    return problems


def test_every_combination_builds_probes_and_trains(base_config, mnist1d):
    # The 864 combinations as 96 stacks of 9 inits; one test that names every one that fails.
    problems = [p for shape in itertools.product(Activation, Norm, Skip)
                for p in shape_problems(base_config, mnist1d, *shape)]  # fmt: skip
    assert not problems, problems


def linear_weights(model: nets.MLP) -> list[torch.Tensor]:
    return [model.stem.weight] + [b.linear.weight for b in model.blocks] + [model.head.weight]


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
@pytest.mark.parametrize(
    ("init", "expected"),
    [
        (Init.kaiming_normal, 2.0),  # He: 2 / fan_in, relu has slope 0
        (Init.kaiming_uniform, 2.0),
        (Init.xavier_normal, 1.0),  # square layers: 2 / (fan_in + fan_out) = 1 / fan_in
        (Init.xavier_uniform, 1.0),
        (Init.lecun_normal, 1.0),
        (Init.orthogonal, 1.0),
        (Init.default, 1.0 / 3.0),
    ],
)
def test_init_gives_the_stated_weight_variance(init, expected):
    cfg = ModelConfig(depth=4, width=256, activation=Activation.relu, init=init)
    model = nets.build(40, 10, cfg, 0)
    for block in model.blocks:
        w = block.linear.weight
        measured = w.shape[1] * w.var().item()
        assert measured == pytest.approx(expected, rel=0.05)
        assert measured == pytest.approx(nets.sigma_w2(init, cfg.activation, 256, 256), rel=0.05)
        if init is not Init.default:
            assert torch.count_nonzero(block.linear.bias) == 0


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
def test_kaiming_uses_the_activation_negative_slope():
    cfg = ModelConfig(depth=2, width=512, activation=Activation.prelu, init=Init.kaiming_normal)
    w = nets.build(40, 10, cfg, 0).blocks[0].linear.weight
    assert w.shape[1] * w.var().item() == pytest.approx(2 / (1 + 0.25**2), rel=0.05)


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
def test_highway_gate_starts_closed_and_dense_grows():
    cfg = ModelConfig(depth=3, width=16, skip=Skip.highway)
    model = nets.build(40, 10, cfg, 0)
    assert torch.all(model.layers[0].gate.bias == -2.0)
    cfg = ModelConfig(depth=3, width=16, skip=Skip.dense)
    model = nets.build(40, 10, cfg, 0)
    fan_ins = [b.linear.in_features for b in model.blocks]
    assert fan_ins == [16, 16 + 32, 16 + 64]
    assert model.head.in_features == 16 + 3 * 32
    out = model(torch.randn(5, 40))
    assert out.shape == (5, 10)


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
def test_residual_layer_adds_the_scaled_branch():
    cfg = ModelConfig(depth=1, width=8, skip=Skip.residual)
    cfg.residual.scale = 0.5
    layer = nets.build(4, 2, cfg, 0).layers[0]
    x = torch.randn(3, 8)
    assert torch.allclose(layer(x), x + 0.5 * layer.block(x))


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
@pytest.mark.parametrize("init", EXPLICIT_INITS)
def test_explicit_variance_inits_give_the_configured_variances(init):
    cfg = ModelConfig(depth=4, width=256, activation=Activation.tanh, init=init)
    cfg.sigma_w2, cfg.sigma_b2 = 1.7, 0.3
    model = nets.build(40, 10, cfg, 0)
    weights = torch.stack([b.linear.weight for b in model.blocks])
    biases = torch.cat([b.linear.bias for b in model.blocks])
    assert 256 * weights.var().item() == pytest.approx(1.7, rel=0.05)
    assert biases.var().item() == pytest.approx(0.3, rel=0.15)  # 1024 draws: 4% error
    assert nets.sigma_w2(init, cfg.activation, 256, 256, explicit=1.7) == 1.7
    assert nets.sigma_b2(init, 256, explicit=0.3) == 0.3
    if init is Init.scaled_orthogonal:  # sqrt(sigma_w^2) times an orthogonal matrix
        gram = weights @ weights.transpose(1, 2)
        eye = torch.eye(256).expand(4, 256, 256)
        torch.testing.assert_close(gram, 1.7 * eye, atol=1e-5, rtol=0)
        stem = model.stem.weight  # tall (256 x 40): orthonormal columns, scaled
        torch.testing.assert_close(stem.T @ stem, 1.7 * torch.eye(40), atol=1e-5, rtol=0)
        assert nets.sigma_w2(init, cfg.activation, 40, 256, explicit=1.7) == 1.7 * 40 / 256


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
@pytest.mark.parametrize("init", EXPLICIT_INITS)
def test_nets_of_a_variance_grid_share_their_noise(init):
    def draw(sigma_w2: float, sigma_b2: float) -> dict[str, torch.Tensor]:
        cfg = ModelConfig(depth=3, width=32, init=init)
        cfg.sigma_w2, cfg.sigma_b2 = sigma_w2, sigma_b2
        return nets.initial_state(40, 10, cfg, seed=5)[0]

    a, b, flat = draw(1.0, 0.01), draw(2.5, 0.04), draw(1.0, 0.0)
    for name in a:
        if name.endswith("weight"):
            torch.testing.assert_close(b[name], math.sqrt(2.5) * a[name])
            assert torch.equal(flat[name], a[name])  # sigma_b^2 = 0 draws its biases too
        else:
            torch.testing.assert_close(b[name], 2.0 * a[name])
            assert torch.count_nonzero(flat[name]) == 0 and torch.count_nonzero(a[name]) > 0


@pytest.mark.numeric  # initial draws: PyTorch samples by instruction set (make test)
def test_explicit_variances_are_set_with_the_inits_that_read_them_and_only_there():
    def refusal(**model) -> ConfigError:
        cfg = Config(run_name="x")
        for key, value in model.items():
            setattr(cfg.model, key, value)
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        return err.value

    for init in EXPLICIT_INITS:
        err = refusal(init=init, sigma_w2=2.0)
        assert err.key == "model.sigma_b2" and "model.sigma_w2" in str(err)
        assert refusal(init=init, sigma_w2=0.0, sigma_b2=0.0).key == "model.sigma_w2"
        assert refusal(init=init, sigma_w2=1.0, sigma_b2=-0.1).key == "model.sigma_b2"
        with pytest.raises(ValueError, match="model.sigma_w2"):
            nets.sigma_w2(init, Activation.tanh, 8, 8)
    err = refusal(init=Init.kaiming_normal, sigma_b2=0.1)
    assert err.key == "model.sigma_b2" and "model.sigma_w2" in str(err) and "\n" not in str(err)
    cfg = Config(run_name="x")
    cfg.model.init, cfg.model.sigma_w2, cfg.model.sigma_b2 = Init.gaussian, 1.0306, 4.0e-6
    validate(cfg)
