"""Stochastic depth (drop path) with timm's semantics: per-example Bernoulli masks
scaled by 1/keep on the residual branch, rates linear in depth, identity in eval."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.errors import ConfigError
from resnet_jax.models import blocks
from resnet_jax.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, drop_path
from resnet_jax.models.resnet import drop_path_rates

IMAGES = jax.random.normal(jax.random.key(1), (8, 16, 16, 3), jnp.float32)


def timm_rates(rate: float, num_blocks: int) -> list[float]:
    """timm/models/resnet.py, make_blocks: ``drop_path_rate * net_block_idx / (net_num_blocks - 1)``."""
    return [rate * k / (num_blocks - 1) for k in range(num_blocks)]


def block_attributes(model: nn.Module, x: jax.Array) -> list[tuple[str, float, bool | None]]:
    """(path, drop_path_rate, deterministic) of every block, in order of execution (traced only)."""
    found = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, blocks._Block):
            m = context.module
            found.append(("/".join(m.path), m.drop_path_rate, m.deterministic))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0), x)
    return found


# ----------------------------------------------------------------------------- rates


def test_resnet50_block_rates_are_timms_linear_rule():
    found = block_attributes(models.create("resnet50", drop_path_rate=0.05), jnp.zeros((1, 32, 32, 3)))
    assert [p for p, _, _ in found][:4] == ["stage1/block0", "stage1/block1", "stage1/block2", "stage2/block0"]
    rates = [r for _, r, _ in found]
    assert len(rates) == 16
    assert rates == timm_rates(0.05, 16)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.05, abs=1e-15)
    np.testing.assert_allclose(np.diff(rates), 0.05 / 15, rtol=1e-12)
    assert all(d is False for _, _, d in found)  # train=True reaches every block
    assert [len(s) for s in drop_path_rates((3, 4, 6, 3), 0.05)] == [3, 4, 6, 3]


def test_block_rates_equal_timm_resnet50():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet50", pretrained=False, drop_path_rate=0.05)
    blocks_ = [b for s in range(1, 5) for b in getattr(net, f"layer{s}")]
    theirs = [b.drop_path.drop_prob if b.drop_path is not None else 0.0 for b in blocks_]
    ours = [r for stage in drop_path_rates((3, 4, 6, 3), 0.05) for r in stage]
    assert ours == theirs


def test_rates_of_a_single_block_and_zero_rate():
    assert drop_path_rates((1,), 0.3) == ((0.0,),)
    assert drop_path_rates((2, 1), 0.0) == ((0.0, 0.0), (0.0,))


# ----------------------------------------------------------------------------- the function


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_path_drops_whole_samples_at_rate_p(p):
    n = 20_000
    x = jnp.ones((n, 3, 2, 2), jnp.float32)
    y = np.asarray(drop_path(x, p, jax.random.key(7)))
    per_sample = y.reshape(n, -1)
    assert (per_sample == per_sample[:, :1]).all()  # all elements of an example together
    dropped = per_sample[:, 0] == 0
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)  # 5 sigma
    assert (per_sample[~dropped] == np.float32(1 / (1 - p))).all()  # kept: exactly 1/keep
    assert np.array_equal(y, np.asarray(drop_path(x, p, jax.random.key(7))))  # same key, same mask


def test_drop_path_identity_at_rate_zero_and_zero_at_rate_one():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
    assert drop_path(x, 0.0, None) is x
    assert not np.asarray(drop_path(x, 1.0, jax.random.key(0))).any()  # timm: keep 0 -> no scaling, all zero


# ----------------------------------------------------------------------------- models


def small(block, **kwargs) -> nn.Module:
    """Three stages of 1-2 blocks, 8-16-32 filters: the CIFAR layout, small enough to compile in seconds."""
    sizes = (2, 1, 1) if block in (BasicBlock, PreActBasicBlock) else (1, 1, 1)
    return models.ResNet(
        stage_sizes=sizes, block=block, stem="cifar", stage_widths=(8, 16, 32), num_classes=10, **kwargs
    )


FAMILIES = {
    "BasicBlock": lambda **kw: small(BasicBlock, shortcut="A", **kw),  # cifar_resnet20's blocks
    "Bottleneck": lambda **kw: small(Bottleneck, **kw),
    "PreActBasicBlock": lambda **kw: small(PreActBasicBlock, **kw),
    "PreActBottleneck": lambda **kw: small(PreActBottleneck, avg_down=True, **kw),
}


def trainer(model: nn.Module, with_rng: bool = True):
    """Jitted training-mode forward: ``(variables, key) -> (logits, batch_stats updates)``."""

    def run(variables, key):
        rngs = {"dropout": key} if with_rng else {}
        return model.apply(variables, IMAGES, train=True, mutable=["batch_stats"], rngs=rngs)

    return jax.jit(run)


def equal_trees(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_model_with_drop_path(family):
    make = FAMILIES[family]
    dropping, without = make(drop_path_rate=0.5), make()
    variables = dropping.init(jax.random.key(0), IMAGES, train=False)
    # no new variables: the same tree, shapes and dtypes as without drop path
    shapes = jax.eval_shape(functools.partial(without.init, train=False), jax.random.key(0), IMAGES)
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    spec = lambda tree: [(v.shape, v.dtype) for v in jax.tree.leaves(tree)]  # noqa: E731
    assert spec(variables) == spec(shapes)

    # training: a function of the "dropout" key
    train = trainer(dropping)
    k1, k2 = jax.random.key(11), jax.random.key(12)
    (y1, s1), (y1b, s1b), (y2, _) = train(variables, k1), train(variables, k1), train(variables, k2)
    assert equal_trees((y1, s1), (y1b, s1b))
    assert not np.allclose(y1, y2)

    # rate 0: no rng needed, and drop path changes the training output
    y0, _ = trainer(make(drop_path_rate=0.0), with_rng=False)(variables, None)
    assert not np.allclose(y1, y0)

    # eval: identity, no rng needed
    assert np.array_equal(dropping.apply(variables, IMAGES, train=False), without.apply(variables, IMAGES, train=False))

    # training without a "dropout" rng is an error, not a silent no-op
    with pytest.raises(Exception, match="dropout"):
        trainer(dropping, with_rng=False)(variables, None)


def test_rate_zero_is_the_model_without_drop_path():
    """``drop_path_rate=0`` is the default: the same module, the same training output, no rng."""
    assert models.create("cifar_resnet20", drop_path_rate=0.0) == models.create("cifar_resnet20")
    model = FAMILIES["Bottleneck"]()
    variables = model.init(jax.random.key(0), IMAGES, train=False)
    y, stats = model.apply(variables, IMAGES, train=True, mutable=["batch_stats"])
    y_key, stats_key = model.apply(
        variables, IMAGES, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    )
    assert equal_trees((y, stats), (y_key, stats_key))


def test_branch_is_masked_per_example_with_the_block_rate():
    """Every `drop_branch` call: each example of the branch is dropped (0) or scaled by exactly 1/(1 - rate)."""
    model = FAMILIES["Bottleneck"](drop_path_rate=0.6)
    variables = model.init(jax.random.key(0), IMAGES, train=False)
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "drop_branch":
            calls.append((context.module.drop_path_rate, np.asarray(args[0]), np.asarray(out)))
        return out

    with nn.intercept_methods(record):
        model.apply(variables, IMAGES, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
    assert [r for r, _, _ in calls] == [0.0, 0.3, 0.6]
    dropped_any = False
    for rate, branch, out in calls:
        for b, o in zip(branch, out):
            if rate == 0.0 or o.any():
                np.testing.assert_array_equal(o, b * np.float32(1 / (1 - rate)))
            else:
                dropped_any = True
    assert dropped_any


# ----------------------------------------------------------------------------- refusals


def test_plain_network_refuses_drop_path():
    with pytest.raises(ConfigError, match="plain network"):
        models.create("cifar_plain20", drop_path_rate=0.1).init(jax.random.key(0), IMAGES, train=False)
    init = functools.partial(models.create("cifar_plain20", drop_path_rate=0.0).init, train=True)
    jax.eval_shape(init, jax.random.key(0), IMAGES)  # rate 0 is fine
    block = BasicBlock(8, blocks.conv, functools.partial(blocks.BatchNorm, use_running_average=True), shortcut=None,
                       drop_path_rate=0.1, deterministic=False)
    with pytest.raises(ConfigError, match="shortcut"):  # a block used alone refuses too
        jax.eval_shape(block.init, jax.random.key(0), IMAGES)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_outside_unit_interval_is_refused(rate):
    with pytest.raises(ConfigError, match="drop_path_rate"):
        models.create("cifar_resnet20", drop_path_rate=rate).init(jax.random.key(0), IMAGES, train=False)
