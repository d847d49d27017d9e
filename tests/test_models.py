"""Tests of the model zoo: sizes, costs, shortcuts, initialisation, batch norm, dtypes.

Large networks are only ever evaluated abstractly (`jax.eval_shape` or
`models.profile`); forward and backward passes run on small CIFAR networks and
on ResNet-18 at 64x64, so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models
from resnet_jax.models import blocks
from resnet_jax.models.blocks import PreActBasicBlock, PreActBottleneck

ROOT = Path(__file__).resolve().parents[1]

REQUIRED_MODELS = (
    "resnet18 resnet34 resnet50 resnet101 resnet152 resnet200 "
    "resnext50_32x4d resnext101_32x8d resnext101_64x4d wide_resnet50_2 wide_resnet101_2 "
    "preact_resnet18 preact_resnet34 preact_resnet50 preact_resnet101 preact_resnet152 plain18 plain34 "
    "cifar_resnet20 cifar_resnet32 cifar_resnet44 cifar_resnet56 cifar_resnet110 cifar_resnet1202 "
    "cifar_plain20 cifar_plain32 cifar_plain44 cifar_plain56 cifar_plain110 "
    "cifar_preact_resnet110 cifar_preact_resnet164 cifar_preact_resnet1001 cifar_wrn_16_4 cifar_wrn_28_10 "
    "cifar_resnet18 cifar_resnet34 cifar_resnet50 cifar_preact_resnet18"
).split()


# ----------------------------------------------------------------------------- helpers


def abstract_variables(model: nn.Module, resolution: int, **kwargs):
    """Variables (as ShapeDtypeStructs) of `model` without any computation."""
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, **kwargs), x)


def module_paths(params) -> set[str]:
    """'stage2/block0/shortcut_conv'-style paths of every module holding parameters."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path[:-1]) for path, _ in flat}


def projection_blocks(params) -> set[str]:
    return {p.rsplit("/", 1)[0] for p in module_paths(params) if p.endswith("shortcut_conv")}


def images(shape, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def small_preact(block=PreActBasicBlock, stage_sizes=(1, 1, 1), **kwargs) -> models.ResNet:
    return models.ResNet(
        stage_sizes=stage_sizes, block=block, stem="cifar", stage_widths=(16, 32, 64), num_classes=10, **kwargs
    )


def block_inputs_outputs(model, variables, x, train: bool):
    """[(name, input, output)] of every residual block, in order of execution."""
    records = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, blocks._Block):
            records.append(("/".join(context.module.path), args[0], out))
        return out

    with nn.intercept_methods(record):
        if train:
            model.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            model.apply(variables, x, train=False)
    return records


def load_model_table():
    spec = importlib.util.spec_from_file_location("model_table", ROOT / "bench" / "model_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- sizes and costs


@pytest.mark.parametrize(
    "name, params",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
        ("resnext50_32x4d", 25_028_904),
        ("wide_resnet50_2", 68_883_240),
    ],
)
def test_imagenet_param_counts_match_torchvision(name, params):
    assert models.count_params(abstract_variables(models.create(name), 224)) == params


@pytest.mark.parametrize(
    "name, kwargs, layers",
    [
        ("cifar_resnet20", {}, 20),
        ("cifar_plain56", {}, 56),
        ("cifar_resnet20", {"stage_sizes": (1, 1, 1)}, 8),  # the name does not say it: the network does
        ("resnet18", {}, 18),  # projection shortcuts are not counted, as in the paper
        ("resnet50", {}, 50),
    ],
)
def test_layers_are_counted_as_the_paper_counts_them(name, kwargs, layers):
    resolution = 32 if name.startswith("cifar") else 64
    assert models.count_layers(abstract_variables(models.create(name, **kwargs), resolution)) == layers


@pytest.mark.parametrize(
    "name, millions, digits",
    [
        ("cifar_resnet20", 0.27, 2),
        ("cifar_resnet32", 0.46, 2),
        ("cifar_resnet44", 0.66, 2),
        ("cifar_resnet56", 0.85, 2),
        ("cifar_resnet110", 1.7, 1),
    ],
)
def test_cifar_param_counts_match_paper(name, millions, digits):
    params = models.profile(name)["params"]
    assert round(params / 1e6, digits) == millions


def test_cifar_resnet1202_has_the_papers_19_4_million_parameters():
    """ResNet-1202 is 3 stages of 200 blocks; each block a stage adds the same
    count (ResNet-32 minus ResNet-20, over 2 blocks a stage), so its count
    follows from the two small ones without tracing 1,202 layers (13 s)."""
    model = models.create("cifar_resnet1202")
    assert model.stage_sizes == (200, 200, 200) and model.block is models.create("cifar_resnet20").block
    r20, r32, r56 = (models.profile(f"cifar_resnet{d}")["params"] for d in (20, 32, 56))
    per_block = (r32 - r20) // 2
    assert r56 == r20 + 6 * per_block  # the count is linear in the blocks a stage
    assert round((r20 + 197 * per_block) / 1e6, 1) == 19.4


@pytest.mark.parametrize(
    "name, params",
    # The CIFAR ResNet-18/34/50 of research code (e.g. kuangliu/pytorch-cifar); its
    # PreActResNet18 has no final BN, ours has one (+2 x 512).
    [("cifar_resnet18", 11_173_962), ("cifar_resnet34", 21_282_122), ("cifar_resnet50", 23_520_842),
     ("cifar_preact_resnet18", 11_171_146 + 1024)],
)  # fmt: skip
def test_cifar_stem_imagenet_networks(name, params):
    assert models.profile(name)["params"] == params
    model = models.create(name)
    variables = abstract_variables(model, 32)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)  # 3x3, stride 1, 64 filters
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, method="features"), variables,
                           jnp.zeros((2, 32, 32, 3)))  # fmt: skip
    w = 4 if name == "cifar_resnet50" else 1
    expected = {"stem": (2, 32, 32, 64), "stage1": (2, 32, 32, 64 * w), "stage2": (2, 16, 16, 128 * w),
                "stage3": (2, 8, 8, 256 * w), "stage4": (2, 4, 4, 512 * w), "pooled": (2, 512 * w)}  # fmt: skip
    assert {k: v.shape for k, v in feats.items()} == expected  # no max-pool: stage 1 at full resolution


@pytest.mark.parametrize(
    "name, gmacs",
    [("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 4.1), ("resnet101", 7.8), ("resnet152", 11.5)],
)
def test_imagenet_macs(name, gmacs):
    macs = models.profile(name, resolution=224)["macs"]
    assert macs == pytest.approx(gmacs * 1e9, rel=0.02)


def test_profile_counts_head_macs_and_scales_with_resolution():
    base = models.profile("resnet18", resolution=224)
    assert models.profile("resnet18", num_classes=10)["params"] == base["params"] - 990 * 513
    # Every convolution's MACs scale with the number of output pixels: 4x at 448; the head does not.
    head = 512 * 1000
    assert models.profile("resnet18", resolution=448)["macs"] - head == 4 * (base["macs"] - head)


def test_stride_on_3x3_false_is_v1():
    v15 = models.create("resnet50")
    v1 = models.create("resnet50", stride_on_3x3=False)
    shapes = {}
    for tag, model in (("v1.5", v15), ("v1", v1)):
        inter = abstract_variables(model, 224, capture_intermediates=True)["intermediates"]["stage2"]["block0"]
        shapes[tag] = (inter["conv1"]["__call__"][0].shape, inter["conv2"]["__call__"][0].shape)
    assert shapes["v1.5"] == ((1, 56, 56, 128), (1, 28, 28, 128))
    assert shapes["v1"] == ((1, 28, 28, 128), (1, 28, 28, 128))
    macs_v1 = models.profile("resnet50", stride_on_3x3=False)["macs"]
    macs_v15 = models.profile("resnet50")["macs"]
    assert macs_v1 == pytest.approx(3.86e9, rel=0.005)
    assert macs_v15 == pytest.approx(4.09e9, rel=0.005)
    assert models.profile("resnet50", stride_on_3x3=False)["params"] == 25_557_032


# ----------------------------------------------------------------------------- shortcuts and names


def test_variable_names_read_like_the_architecture():
    params = abstract_variables(models.create("resnet50"), 224)["params"]
    assert params["stage2"]["block0"]["conv1"]["kernel"].shape == (1, 1, 256, 128)
    assert params["stage2"]["block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert params["stage2"]["block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert params["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
    assert params["head"]["kernel"].shape == (2048, 1000)
    assert set(params) == {"stem_conv", "stem_bn", "stage1", "stage2", "stage3", "stage4", "head"}
    assert set(params["stage3"]) == {f"block{j}" for j in range(6)}
    pre = abstract_variables(models.create("preact_resnet18"), 224)["params"]
    assert "final_bn" in pre and "stem_bn" not in pre


def test_option_a_shortcut_holds_no_parameters():
    variables = abstract_variables(models.create("cifar_resnet20"), 32)
    assert not any("shortcut" in p for p in module_paths(variables["params"]))
    assert not any("shortcut" in p for p in module_paths(variables["batch_stats"]))
    plain = abstract_variables(models.create("cifar_plain20"), 32)
    assert models.count_params(variables) == models.count_params(plain)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(plain)


@pytest.mark.parametrize("name", ["plain18", "plain34", "cifar_plain20", "cifar_plain56"])
def test_plain_networks_hold_no_shortcut(name):
    resolution = 32 if name.startswith("cifar") else 224
    assert projection_blocks(abstract_variables(models.create(name), resolution)["params"]) == set()


def test_plain18_is_resnet18_without_projections():
    # The three 1x1 projections (+ BN) of ResNet-18: 64->128, 128->256, 256->512.
    projections = sum(c * 2 * c + 2 * (2 * c) for c in (64, 128, 256))
    assert models.profile("plain18")["params"] == models.profile("resnet18")["params"] - projections


def test_shortcut_b_projects_only_where_the_shape_changes():
    params = abstract_variables(models.create("resnet18"), 224)["params"]
    assert projection_blocks(params) == {"stage2/block0", "stage3/block0", "stage4/block0"}
    cifar = abstract_variables(models.create("cifar_resnet20", shortcut="B"), 32)["params"]
    assert projection_blocks(cifar) == {"stage2/block0", "stage3/block0"}
    assert cifar["stage2"]["block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert "shortcut_bn" in cifar["stage2"]["block0"]
    # A bottleneck's first block widens 64 -> 256 channels, so stage 1 projects too.
    params = abstract_variables(models.create("resnet50"), 224)["params"]
    assert projection_blocks(params) == {f"stage{i}/block0" for i in (1, 2, 3, 4)}


def test_shortcut_c_projects_in_every_block():
    params = abstract_variables(models.create("resnet18", shortcut="C"), 224)["params"]
    assert projection_blocks(params) == {f"stage{i}/block{j}" for i in (1, 2, 3, 4) for j in (0, 1)}
    assert params["stage1"]["block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 64)
    cifar = abstract_variables(models.create("cifar_resnet20", shortcut="C"), 32)["params"]
    assert len(projection_blocks(cifar)) == 9


def test_bad_shortcut_and_stem_are_rejected():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="shortcut"):
        models.create("cifar_resnet20", shortcut="D").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="stem"):
        models.create("cifar_resnet20", stem="mnist").init(jax.random.key(0), x)


# ----------------------------------------------------------------------------- registry


def test_list_models_has_every_required_name():
    names = models.list_models()
    assert set(REQUIRED_MODELS) <= set(names)
    assert names == sorted(names)
    assert set(models.list_models("cifar")) | set(models.list_models("imagenet")) == set(names)
    assert all(n.startswith("cifar_") for n in models.list_models("cifar"))
    assert models.family("resnet50") == "imagenet" and models.family("cifar_resnet20") == "cifar"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as info:
        models.create("nope")
    assert "resnet50" in str(info.value) and "cifar_resnet20" in str(info.value)
    with pytest.raises(ValueError, match="resnet50"):
        models.profile("nope")


def test_unknown_override_raises_type_error():
    with pytest.raises(TypeError, match="resnet50") as info:
        models.create("resnet50", not_a_field=3)
    assert "not_a_field" in str(info.value)


def test_num_classes_override():
    params = abstract_variables(models.create("resnet50", num_classes=10), 224)["params"]
    assert params["head"]["kernel"].shape == (2048, 10) and params["head"]["bias"].shape == (10,)
    assert models.create("cifar_resnet20").num_classes == 10
    assert models.create("resnet18").num_classes == 1000


# ----------------------------------------------------------------------------- zero_init_residual


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_init_residual_blocks_start_as_identity(shortcut, train):
    model = models.create("cifar_resnet20", shortcut=shortcut, zero_init_residual=True)
    x = images((4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    records = block_inputs_outputs(model, variables, x, train)
    assert len(records) == 9
    identity = [r for r in records if r[1].shape == r[2].shape]
    assert len(identity) == 7
    for name, inp, out in identity:
        assert float(jnp.min(inp)) >= 0.0, name  # post-ReLU input
        np.testing.assert_allclose(out, inp, rtol=0, atol=1e-6, err_msg=name)
    if shortcut == "A":
        # A downsampling option-A block is then its parameter-free shortcut: subsample, zero-pad.
        for name, inp, out in records:
            if inp.shape != out.shape:
                expected = jnp.pad(inp[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (0, inp.shape[-1])))
                np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6, err_msg=name)
    # The last BN of each residual branch has a zero scale; the others keep ones.
    assert not np.any(variables["params"]["stage1"]["block1"]["bn2"]["scale"])
    np.testing.assert_array_equal(variables["params"]["stage1"]["block1"]["bn1"]["scale"], 1.0)


def test_without_zero_init_residual_blocks_are_not_identity():
    model = models.create("cifar_resnet20")
    x = images((2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    for name, inp, out in block_inputs_outputs(model, variables, x, train=True):
        if inp.shape == out.shape:
            assert float(jnp.max(jnp.abs(out - inp))) > 1e-2, name


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("block", [PreActBasicBlock, PreActBottleneck])
def test_zero_init_residual_preact_blocks_start_as_identity(block, train):
    model = small_preact(block, stage_sizes=(2, 2, 1), zero_init_residual=True)
    x = images((2, 16, 16, 3))
    variables = model.init(jax.random.key(2), x, train=False)
    records = block_inputs_outputs(model, variables, x, train)
    identity = [r for r in records if r[1].shape == r[2].shape]
    # Basic: 16 -> 16 in all of stage 1; bottleneck: stage 1 widens 16 -> 64 in block 0.
    assert [r[0] for r in identity] == (
        ["stage1/block0", "stage1/block1", "stage2/block1"]
        if block is PreActBasicBlock
        else ["stage1/block1", "stage2/block1"]
    )
    for name, inp, out in identity:
        np.testing.assert_allclose(out, inp, rtol=0, atol=1e-6, err_msg=name)
    assert float(jnp.min(records[0][1])) < 0.0  # pre-act blocks see un-activated inputs
    last = "conv2" if block is PreActBasicBlock else "conv3"
    assert not np.any(variables["params"]["stage1"]["block1"][last]["kernel"])


# ----------------------------------------------------------------------------- batch norm


def test_batch_norm_matches_numpy_reference():
    x = np.asarray(images((4, 5, 5, 6), seed=3)) * 3.0 + 1.5
    scale = np.linspace(0.5, 2.0, 6, dtype=np.float32)
    bias = np.linspace(-1.0, 1.0, 6, dtype=np.float32)
    mean = np.linspace(-0.3, 0.3, 6, dtype=np.float32)
    var = np.linspace(0.5, 3.0, 6, dtype=np.float32)
    params = {"scale": scale, "bias": bias}

    bn_eval = models.BatchNorm(use_running_average=True)
    y = bn_eval.apply({"params": params, "batch_stats": {"mean": mean, "var": var}}, x)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-5, atol=1e-5)

    bn_train = models.BatchNorm(use_running_average=False)
    y, updates = bn_train.apply(
        {"params": params, "batch_stats": {"mean": mean, "var": var}}, x, mutable=["batch_stats"]
    )
    bmean = x.mean(axis=(0, 1, 2))
    bvar = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - bmean) / np.sqrt(bvar + 1e-5) * scale + bias, rtol=1e-4, atol=1e-4)
    n = 4 * 5 * 5
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * mean + 0.1 * bmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        updates["batch_stats"]["var"], 0.9 * var + 0.1 * bvar * n / (n - 1), rtol=1e-5, atol=1e-6
    )


def test_one_pass_batch_norm_matches_two_pass_and_is_wired_through_resnet():
    x = np.asarray(images((8, 6, 6, 4), seed=5)) * 2.0 + 0.5
    params = {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}
    stats = {"mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}
    outs = {}
    for one_pass in (False, True):
        bn = models.BatchNorm(use_running_average=False, one_pass=one_pass)
        outs[one_pass] = bn.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    np.testing.assert_allclose(outs[True][0], outs[False][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[True][1]["batch_stats"]["var"], outs[False][1]["batch_stats"]["var"], rtol=1e-4)
    # Where |mean| >> std the one-pass variance loses float32 precision (why it is not the default).
    far = np.asarray(images((8, 6, 6, 4), seed=6)) * 0.01 + 300.0
    true_var = far.astype(np.float64).var(axis=(0, 1, 2))
    got = {}
    for one_pass in (False, True):
        bn = models.BatchNorm(use_running_average=False, one_pass=one_pass, momentum=0.0)
        _, upd = bn.apply({"params": params, "batch_stats": stats}, far, mutable=["batch_stats"])
        got[one_pass] = np.asarray(upd["batch_stats"]["var"], np.float64) * (far.size / 4 - 1) / (far.size / 4)
    assert np.max(np.abs(got[False] / true_var - 1)) < 1e-2
    assert np.max(np.abs(got[True] / true_var - 1)) > 0.1

    model = models.create("cifar_resnet20", bn_one_pass=True)
    assert model.bn_one_pass
    x = images((4, 32, 32, 3), seed=7)
    variables = models.create("cifar_resnet20").init(jax.random.key(0), x, train=False)
    fast, fast_stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
    exact, exact_stats = models.create("cifar_resnet20").apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(fast, exact, rtol=1e-3, atol=1e-3)
    # ... and the model really takes the one-pass path: its float32 variances round differently.
    fast_var = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(fast_stats)])
    exact_var = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(exact_stats)])
    np.testing.assert_allclose(fast_var, exact_var, rtol=1e-3, atol=1e-5)
    assert not np.array_equal(fast_var, exact_var)


def test_train_updates_batch_stats_with_unbiased_variance():
    model = models.create("cifar_resnet20")
    x = images((4, 32, 32, 3), seed=4)
    variables = model.init(jax.random.key(0), x, train=False)
    stats = variables["batch_stats"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(stats)[0]:
        np.testing.assert_array_equal(leaf, 0.0 if path[-1].key == "mean" else 1.0)

    out, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    stem = np.asarray(updates["intermediates"]["stem_conv"]["__call__"][0], np.float64)
    new = updates["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * stem.var(axis=(0, 1, 2), ddof=1), rtol=1e-4, atol=1e-6)
    # Every running average moved.
    for old, upd in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(updates["batch_stats"])):
        assert not np.allclose(old, upd)

    # Eval mode changes nothing, is deterministic, and uses the running averages.
    eval_vars = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    ev1, ev_updates = model.apply(eval_vars, x, train=False, mutable=["batch_stats"])
    ev2 = model.apply(eval_vars, x, train=False)
    np.testing.assert_array_equal(ev1, ev2)
    for a, b in zip(jax.tree_util.tree_leaves(ev_updates), jax.tree_util.tree_leaves(updates["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(ev1, out, atol=1e-3)
    ev_init = model.apply(variables, x, train=False)
    assert not np.allclose(ev1, ev_init, atol=1e-3)
    # Train mode normalises with the batch statistics, whatever the running averages are.
    out2, _ = model.apply(eval_vars, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-5)


def test_init_in_train_mode_leaves_running_averages_at_defaults():
    model = models.create("cifar_resnet20")
    variables = model.init(jax.random.key(0), images((2, 32, 32, 3)), train=True)
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]:
        np.testing.assert_array_equal(leaf, 0.0 if path[-1].key == "mean" else 1.0)


# ----------------------------------------------------------------------------- dtypes


def test_bfloat16_compute_keeps_float32_state_and_logits():
    x = images((4, 32, 32, 3), seed=5)
    model16 = models.create("cifar_resnet20", dtype=jnp.bfloat16)
    model32 = models.create("cifar_resnet20")
    variables = model16.init(jax.random.key(0), x, train=False)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32
    # Same parameters either way.
    ref = model32.init(jax.random.key(0), x, train=False)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), variables, ref))

    logits16, upd16 = model16.apply(variables, x, train=True, mutable=["batch_stats"])
    logits32, upd32 = model32.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits16.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves(upd16):
        assert leaf.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(logits32)))
    assert scale > 0
    np.testing.assert_allclose(logits16, logits32, atol=0.1 * scale)
    for a, b in zip(jax.tree_util.tree_leaves(upd16), jax.tree_util.tree_leaves(upd32)):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02)
    # Intermediate activations really are bfloat16.
    _, inter = model16.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    assert inter["intermediates"]["stage2"]["block0"]["__call__"][0].dtype == jnp.bfloat16
    eval16 = model16.apply(variables, x, train=False)
    assert eval16.dtype == jnp.float32


# ----------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize("size, kernel_size", [(8, 3), (9, 3), (8, 7)])
def test_stride2_conv_pads_symmetrically_like_torchvision(size, kernel_size):
    layer = blocks.conv(5, kernel_size, strides=2)
    x = images((2, size, size, 4), seed=6)
    variables = layer.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert set(variables["params"]) == {"kernel"}  # bias-free
    y = layer.apply(variables, x)

    def ref(padding):
        return jax.lax.conv_general_dilated(
            x, kernel, (2, 2), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )

    pad = kernel_size // 2
    np.testing.assert_allclose(y, ref(((pad, pad), (pad, pad))), rtol=1e-4, atol=1e-4)
    assert y.shape == (2, (size + 1) // 2, (size + 1) // 2, 5)
    if size % 2 == 0:  # "SAME" pads only the bottom/right on even sizes
        assert not np.allclose(y, ref("SAME"), atol=1e-2)


def test_imagenet_stem_max_pool_pads_symmetrically():
    model = models.create("resnet18")
    x = images((1, 32, 32, 3), seed=8)
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    stem = jax.nn.relu(state["intermediates"]["stem_bn"]["__call__"][0])
    assert stem.shape == (1, 16, 16, 64)
    pooled = jax.lax.reduce_window(
        stem, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    first_block_input = block_inputs_outputs(model, variables, x, train=False)[0][1]
    np.testing.assert_allclose(first_block_input, pooled, rtol=1e-6, atol=1e-6)


def test_grouped_conv_and_1x1_padding():
    layer = blocks.conv(8, 3, groups=4)
    variables = layer.init(jax.random.key(0), jnp.zeros((1, 6, 6, 8)))
    assert variables["params"]["kernel"].shape == (3, 3, 2, 8)
    one = blocks.conv(8, 1, strides=2)
    assert one.padding == ((0, 0), (0, 0))


def test_conv_init_is_he_normal_fan_out():
    layer = blocks.conv(256, 3)
    kernel = np.asarray(layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 128)))["params"]["kernel"])
    std = math.sqrt(2.0 / (3 * 3 * 256))
    assert kernel.shape == (3, 3, 128, 256)
    assert abs(kernel.mean()) < 0.01 * std
    assert kernel.std() == pytest.approx(std, rel=0.01)
    # Not truncated: about 4.55% of a normal lies beyond 2 standard deviations.
    assert np.mean(np.abs(kernel) > 2 * std) == pytest.approx(0.0455, abs=0.003)


def test_head_init_is_torch_linear_uniform():
    model = models.create("cifar_resnet20")
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    kernel = np.asarray(params["head"]["kernel"])
    bound = 1 / math.sqrt(64)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
    np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
    np.testing.assert_array_equal(params["stem_bn"]["bias"], 0.0)


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "plain18", "cifar_resnet20", "cifar_preact_resnet110"])
def test_features_are_the_stages_the_head_reads(name):
    model = models.create(name, num_classes=7)
    x = images((2, 64, 64, 3), seed=3)
    variables = model.init(jax.random.key(0), x, train=False)
    feats = model.apply(variables, x, train=False, method="features")
    stages = len(model.stage_sizes)
    assert list(feats) == ["stem"] + [f"stage{i}" for i in range(1, stages + 1)] + ["pooled"]
    # The head applied to "pooled" gives the logits.
    head = variables["params"]["head"]
    logits = feats["pooled"] @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(logits, model.apply(variables, x, train=False), atol=1e-5)
    if "preact" not in name:  # post-activation: "pooled" is the mean of the last stage's output
        np.testing.assert_allclose(feats["pooled"], feats[f"stage{stages}"].mean(axis=(1, 2)), atol=1e-6)
    # Training mode updates the same batch statistics as the full forward pass.
    _, upd_feats = model.apply(variables, x, train=True, method="features", mutable=["batch_stats"])
    _, upd_full = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert jax.tree_util.tree_structure(upd_feats) == jax.tree_util.tree_structure(upd_full)
    for a, b in zip(jax.tree_util.tree_leaves(upd_feats), jax.tree_util.tree_leaves(upd_full)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_backbone_inside_another_flax_module():
    class Segmenter(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            f = models.create("resnet18", name="backbone").features(x, train=train)
            return nn.Conv(5, (1, 1))(f["stage4"])

    x = images((1, 64, 64, 3))
    variables = Segmenter().init(jax.random.key(0), x, train=False)
    assert sorted(variables["params"]) == ["Conv_0", "backbone"] and "head" not in variables["params"]["backbone"]
    out, updates = Segmenter().apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (1, 2, 2, 5) and "backbone" in updates["batch_stats"]


# ----------------------------------------------------------------------------- training step


@pytest.mark.parametrize("name, shape, widths", [("cifar_resnet20", (8, 32, 32, 3), (8, 16, 32)),
                                                  ("resnet18", (2, 64, 64, 3), (16, 32, 64, 128))])  # fmt: skip
def test_jit_sgd_steps_lower_the_loss(name, shape, widths):
    """The layers and strides of each family at half (CIFAR) or 1/4 (ImageNet) of their filters."""
    model = models.create(name, num_classes=10, stage_widths=widths)
    x = images(shape, seed=7)
    labels = jnp.arange(shape[0]) % 10
    variables = model.init(jax.random.key(0), x, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.02, momentum=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss, grads

    losses = []
    for i in range(4):
        params, batch_stats, opt_state, loss, grads = step(params, batch_stats, opt_state)
        losses.append(float(loss))
        if i == 0:
            leaves = jax.tree_util.tree_leaves(grads)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
            assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
            assert float(jnp.abs(grads["stem_conv"]["kernel"]).sum()) > 0
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


# ----------------------------------------------------------------------------- bench/model_table.py


def test_model_table_lists_resnet50():
    table = load_model_table()
    text = table.markdown_table(["resnet50", "cifar_resnet20"])
    lines = text.strip().splitlines()
    assert lines[0].startswith("|") and "Parameters" in lines[0] and "GMACs" in lines[0]
    assert len(lines) == 4
    row = next(line for line in lines if "`resnet50`" in line)
    assert "25,557,032" in row and "4.09" in row and "224" in row and "imagenet" in row
    assert "269,722" in text


def test_model_table_replaces_only_the_marked_block():
    table = load_model_table()
    readme = "# Title\n\nbefore\n<!-- model-table:start -->\nold table\n<!-- model-table:end -->\nafter\n"
    new = table.replace_block(readme, "| a |\n")
    assert new == "# Title\n\nbefore\n<!-- model-table:start -->\n| a |\n<!-- model-table:end -->\nafter\n"
    assert table.replace_block(new, "| a |\n") == new
    with pytest.raises(ValueError, match="model-table:start"):
        table.replace_block("# no markers\n", "| a |\n")
