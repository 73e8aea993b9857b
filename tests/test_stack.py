"""The batched engine: a stack computes what its nets compute alone, and a net's results do
not depend on the group it trains in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study.config import (
    Activation,
    ModelConfig,
    Norm,
    OptimConfig,
    Optimizer,
    ResidualConfig,
    Scaling,
    Skip,
)
from study.engine import loop, nets
from study.engine.optimizers import StackOptimizer
from study.engine.probes import Probe
from study.engine.stack import Dropout, Stack, per_net_loss
from study.records import Status

from .conftest import compose_config

pytestmark = pytest.mark.numeric  # run again under other CPU capabilities: make test


def built(cfg: ModelConfig, seeds=(0, 1, 2), features=10, classes=5) -> list[nets.MLP]:
    out = []
    for seed in seeds:
        out.append(nets.build(features, classes, cfg, seed))
    return out


@pytest.mark.parametrize("skip", list(Skip))
@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("activation", [Activation.relu, Activation.prelu, Activation.tanh])
def test_stack_forward_equals_each_net_alone(activation, norm, skip):
    cfg = ModelConfig(depth=3, width=16, activation=activation, norm=norm, skip=skip)
    models = built(cfg)
    stack = Stack.of(models, cfg)
    x = torch.randn(3, 32, 10)
    for mode in (True, False):  # training (batch statistics), then eval (running ones)
        stack.train(mode)
        out = stack(x)
        for g, model in enumerate(models):
            model.train(mode)
            torch.testing.assert_close(out[g], model(x[g]), rtol=1e-5, atol=1e-5)
    for name, buffer in stack.buffers.items():  # running statistics moved as PyTorch's
        for g, model in enumerate(models):
            torch.testing.assert_close(buffer[g], model.get_buffer(name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name", list(Optimizer))
def test_stack_optimizer_equals_torch_optim_with_one_rate_per_net(name, clip):
    # No batch norm here: the Linear bias before a batch norm has a gradient that is zero
    # up to rounding, and AdamW turns rounding noise into full steps of either sign.
    cfg = ModelConfig(depth=3, width=16, activation=Activation.prelu, skip=Skip.highway)
    ocfg = OptimConfig(name=name, weight_decay=0.01, clip_norm=clip)
    rates = [0.01, 0.05, 0.1]
    torch.manual_seed(0)  # the batches below: the same every run
    models = built(cfg)
    stack = Stack.of(models, cfg)
    optimizer = StackOptimizer(stack, ocfg, rates)
    refs = [
        torch.optim.SGD(m.parameters(), lr=lr, momentum=ocfg.momentum, weight_decay=0.01)
        if name == Optimizer.sgd
        else torch.optim.AdamW(m.parameters(), lr=lr, betas=tuple(ocfg.betas), weight_decay=0.01)
        for m, lr in zip(models, rates, strict=True)
    ]
    for _ in range(5):
        x, y = torch.randn(3, 32, 10), torch.randint(0, 5, (3, 32))
        stack.zero_grad()
        per_net_loss(stack(x), y).sum().backward()
        if clip:
            optimizer.clip(clip)
        optimizer.step()
        for g, (model, ref) in enumerate(zip(models, refs, strict=True)):
            ref.zero_grad()
            F.cross_entropy(model(x[g]), y[g]).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            ref.step()
    # Batched and per-net matmuls sum in different orders; AdamW's normalised step m/sqrt(v)
    # turns that rounding, in a gradient entry near zero, into up to ~1e-4 of a step of
    # size lr <= 0.1 (seen: 1.8e-6 on unseeded batches), hence atol 1e-5, not 1e-6.
    for g, model in enumerate(models):
        for pname, p in model.named_parameters():
            torch.testing.assert_close(stack.parameter(pname)[g], p.detach(), rtol=1e-5, atol=1e-5)


def group_configs(*extra: str, rates=(0.01, 0.1)):
    return [
        compose_config(
            "data=digits",
            "model.depth=6",
            "model.width=16",
            f"model.init={init}",
            f"seed={seed}",
            f"optim.lr={lr}",
            "train.steps=40",
            "train.eval_every=10",
            *extra,
        )  # fmt: skip
        for init in ("xavier_normal", "kaiming_normal")
        for seed in (0, 1)
        for lr in rates
    ]


def run_group(cfgs, splits) -> list[loop.Outcome]:
    models = []
    for cfg in cfgs:
        models.append(nets.build(splits.num_features, splits.num_classes, cfg.model, cfg.seed))
    stack = Stack.of(models, cfgs[0].model)
    return loop.run(stack, splits, cfgs, torch.device("cpu"))


def assert_same(a: loop.Outcome, b: loop.Outcome) -> None:
    assert (a.status, a.steps_done, a.diverged_at_step, a.steps_to_target) == (
        b.status, b.steps_done, b.diverged_at_step, b.steps_to_target
    )  # fmt: skip
    assert a.curve == b.curve
    np.testing.assert_array_equal(list(a.metrics.values()), list(b.metrics.values()))
    assert a.jacobian.keys() == b.jacobian.keys()
    jacobians = [np.array(list(o.jacobian.values()), dtype=float) for o in (a, b)]  # None: NaN
    np.testing.assert_array_equal(*jacobians)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        np.testing.assert_array_equal(a.layers[name], b.layers[name], err_msg=name)


@pytest.mark.parametrize(
    "extra",
    [(), ("model.norm=batch", "model.skip=residual"), ("model.activation=tanh", "model.skip=dense"),
     ("optim=adamw", "model.norm=layer", "model.skip=highway"),
     ("model.dropout=0.3", "model.norm=batch", "model.skip=residual", "train.curriculum=linear"),
     ("model.dropout=0.2", "model.skip=dense", "train.eval_train=true"),
     # the Jacobian probe, exact (W = 16) then estimated from each net's own directions
     ("probe.jacobian=true", "model.activation=tanh", "model.norm=layer", "model.skip=highway"),
     ("probe.jacobian=true", "probe.jacobian_exact_width=8", "probe.jacobian_vectors=4",
      "model.activation=prelu", "model.skip=residual")],
)  # fmt: skip
def test_a_net_alone_and_in_its_group_give_bitwise_the_same_record(prepared, extra):
    from study.data import load

    cfgs = [_with_dir(c, prepared) for c in group_configs(*extra)]
    splits = load(cfgs[0].data)
    group = run_group(cfgs, splits)
    if cfgs[0].probe.jacobian:  # measured, and each net's own (no two nets alike)
        means = [out.jacobian["jacobian_eig_mean"] for out in group]
        assert np.all(np.isfinite(means)) and len(set(means)) == len(means) // 2  # lr pairs
    for cfg, in_group in zip(cfgs, group, strict=True):
        assert_same(run_group([cfg], splits)[0], in_group)
    again = run_group(cfgs, splits)  # same group, same seeds: identical numbers
    for a, b in zip(group, again, strict=True):
        assert_same(a, b)


def test_a_diverging_net_leaves_its_group_and_the_others_go_on(prepared):
    from study.data import load

    cfgs = [_with_dir(c, prepared) for c in group_configs(rates=(0.01, 1e4))]
    splits = load(cfgs[0].data)
    group = run_group(cfgs, splits)
    statuses = [o.status for o in group]
    assert statuses.count(Status.diverged) == 4 and statuses.count(Status.finished) == 4
    for cfg, out in zip(cfgs, group, strict=True):
        if cfg.optim.lr == 1e4:
            assert out.status is Status.diverged
            assert 1 <= out.diverged_at_step <= out.steps_done < 40
            assert np.isnan(out.metrics["test_accuracy"])
            assert out.layers["step"].max() < out.diverged_at_step  # kept up to divergence
        else:
            assert out.steps_done == 40 and np.isfinite(out.metrics["test_accuracy"])
        assert_same(run_group([cfg], splits)[0], out)


def _with_dir(cfg, prepared):
    cfg.data.dir = str(prepared)
    return cfg


@pytest.mark.parametrize("skip", [Skip.none, Skip.residual])
@pytest.mark.parametrize("norm", list(Norm))
def test_stack_gradients_equal_each_net_alone(norm, skip):
    """Every parameter's gradient through the stack (its batch norm has a hand-written
    backward) equals autograd through PyTorch's own modules."""
    cfg = ModelConfig(depth=3, width=16, activation=Activation.prelu, norm=norm, skip=skip)
    models = built(cfg)
    stack = Stack.of(models, cfg)
    x, y = torch.randn(3, 32, 10), torch.randint(0, 5, (3, 32))
    per_net_loss(stack(x), y).sum().backward()
    for g, model in enumerate(models):
        torch.nn.functional.cross_entropy(model(x[g]), y[g]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(_grad(stack, name)[g], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scaling", [Scaling.sqrt_depth, Scaling.rezero])
@pytest.mark.parametrize("norm", [Norm.none, Norm.batch])
def test_scaled_residual_branches_in_the_stack_equal_each_net_alone(norm, scaling):
    """x + s f(x) with s = scale / sqrt(depth), or learned from 0 (ReZero): forward and every
    gradient (the learned scale's too) as PyTorch's modules compute them."""
    cfg = ModelConfig(depth=4, width=16, norm=norm, skip=Skip.residual,
                      residual=ResidualConfig(scale=0.5, scaling=scaling))  # fmt: skip
    models = built(cfg)
    stack = Stack.of(models, cfg)
    x, y = torch.randn(3, 32, 10), torch.randint(0, 5, (3, 32))
    out = stack(x)
    per_net_loss(out, y).sum().backward()
    for g, model in enumerate(models):
        torch.testing.assert_close(out[g], model(x[g]), rtol=1e-5, atol=1e-5)
        torch.nn.functional.cross_entropy(model(x[g]), y[g]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(_grad(stack, name)[g], p.grad, rtol=1e-4, atol=1e-6)
    if scaling == Scaling.rezero:  # at init every block is skipped: the stem, then the head
        direct = [m.head(m.stem(x[g])) for g, m in enumerate(models)]
        torch.testing.assert_close(out, torch.stack(direct), rtol=1e-5, atol=1e-6)
        assert all(_grad(stack, "layers.0.alpha")[g].abs() > 0 for g in range(3))


def _grad(stack: Stack, name: str) -> torch.Tensor:
    grad = stack.params[name].grad
    return grad.transpose(1, 2) if grad.dim() == 3 else grad


def test_nets_of_different_dropout_rates_and_curricula_share_a_group_bitwise(prepared):
    """A group may mix dropout rates (0 included) and curricula: each net still gets exactly
    what it gets alone (its own masks and batches)."""
    from study.data import load

    cfgs = [
        _with_dir(compose_config("data=digits", "model.depth=4", "model.width=16",
                                 "model.norm=batch", f"model.dropout={rate}",
                                 f"train.curriculum={order}", f"seed={seed}", "train.steps=30",
                                 "train.eval_every=10"), prepared)
        for rate in (0.0, 0.5) for order in ("none", "linear", "anti") for seed in (0, 1)
    ]  # fmt: skip
    splits = load(cfgs[0].data)
    group = run_group(cfgs, splits)
    for cfg, in_group in zip(cfgs, group, strict=True):
        assert_same(run_group([cfg], splits)[0], in_group)
    # ... and what they measure differs: the knobs reach the training.
    losses = {(c.model.dropout, str(c.train.curriculum), c.seed): o.metrics["train_loss"]
              for c, o in zip(cfgs, group, strict=True)}  # fmt: skip
    assert losses[(0.5, "none", 0)] != losses[(0.0, "none", 0)]
    assert losses[(0.0, "linear", 0)] != losses[(0.0, "none", 0)]


def test_dropout_changes_the_training_forward_pass_and_not_the_evaluation_one():
    cfg = ModelConfig(depth=4, width=32, activation=Activation.relu, norm=Norm.batch,
                      skip=Skip.residual, dropout=0.5)  # fmt: skip
    plain = ModelConfig(**{**cfg.__dict__, "dropout": 0.0})
    stack = Stack([nets.initial_state(10, 5, cfg, seed) for seed in (0, 1)], cfg,
                  torch.device("cpu"))  # fmt: skip
    reference = Stack([nets.initial_state(10, 5, plain, seed) for seed in (0, 1)], plain,
                      torch.device("cpu"))  # fmt: skip
    x = torch.randn(2, 64, 10)
    with torch.no_grad():
        stack.train(False), reference.train(False)  # evaluation: alike with and without
        assert torch.equal(stack(x), reference(x))
        masks = Dropout([0.5, 0.5], [0, 1], torch.device("cpu")).masks(64, stack.block_widths)
        stack.train(True), reference.train(True)  # training: the masks change the output
        assert torch.equal(stack(x), reference(x))
        assert not torch.equal(stack(x, masks=masks), reference(x))
    # The module form agrees: nn.Dropout is active in train() only.
    [model] = built(cfg, seeds=(0,))
    [model0] = built(plain, seeds=(0,))
    model.eval(), model0.eval()
    assert torch.equal(model(x[0]), model0(x[0]))
    model.train(), model0.train()
    assert not torch.equal(model(x[0]), model0(x[0]))


def test_dropout_masks_zero_the_rate_and_keep_the_mean():
    rates = [0.0, 0.1, 0.5]
    masks = Dropout(rates, [0, 1, 2], torch.device("cpu")).masks(256, [64, 64, 64])
    m = torch.stack(masks, dim=1)  # (G, blocks, B, W)
    for g, rate in enumerate(rates):
        zero = (m[g] == 0).double().mean().item()
        assert zero == pytest.approx(rate, abs=0.01)
        assert m[g].double().mean().item() == pytest.approx(1.0, abs=0.02)
        kept = torch.tensor(1.0) / (1.0 - torch.tensor(rate))  # float32, as the masks
        assert set(m[g].unique().tolist()) <= {0.0, kept.item()}
    assert Dropout([0.0, 0.0], [0, 1], torch.device("cpu")).masks(8, [4]) is None


def test_a_probe_measures_without_dropout():
    """Probes run without dropout: a net with dropout measures what the same weights
    measure with none (the statistics are of the network, not of one mask)."""
    cfg = ModelConfig(depth=5, width=32, activation=Activation.tanh, dropout=0.5)
    plain = ModelConfig(**{**cfg.__dict__, "dropout": 0.0})
    batch = [(torch.randn(1, 64, 10), torch.randint(0, 5, (1, 64)))]
    stats = [
        Probe(Stack([nets.initial_state(10, 5, c, 0)], c, torch.device("cpu")), c.activation,
              batch).measure()
        for c in (cfg, plain)
    ]  # fmt: skip
    for name in stats[0]:
        np.testing.assert_array_equal(stats[0][name], stats[1][name], err_msg=name)
