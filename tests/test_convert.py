"""torchvision -> resnet_jax: the same outputs from the same weights."""

import copy

import numpy as np
import pytest

from resnet_jax import convert, models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def randomize_batch_norm(model):
    """Random affine parameters, and random running statistics near those of data
    (calibrated on a batch, then means shifted and variances scaled by up to 30%),
    so that activations keep a trained network's scale. Returns `model` in train mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.momentum = 1.0
        model.train()
        model(torch.randn(8, 3, 64, 64))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.3 * m.running_var.sqrt() * (2 * torch.rand_like(m.running_mean) - 1))
            m.running_var.mul_(0.7 + 0.6 * torch.rand_like(m.running_var))
    return model


def torchvision_model(name, seed=0):
    torch.manual_seed(seed)
    return randomize_batch_norm(getattr(torchvision.models, name)(weights=None))


def close_to_torchvision(got, tv, x, slack=1.5):
    """``got`` is within 1e-4 of torchvision's float32 output, or, where float32
    sums over 50 layers put torchvision itself further than that from its own
    float64 result, within twice that error; and never less exact than it (within
    `slack` times its error from the float64 result)."""
    with torch.no_grad():
        expected = tv(torch.from_numpy(x)).numpy()
        exact = copy.deepcopy(tv).double()(torch.from_numpy(x.astype(np.float64))).numpy()
    torch_error = np.abs(expected - exact).max()
    assert np.abs(got - exact).max() <= slack * torch_error + 1e-5
    np.testing.assert_allclose(got, expected, atol=max(1e-4, 2 * torch_error), rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_same_logits_and_batch_stats_as_torchvision(name):
    tv = torchvision_model(name)
    variables = convert.from_torchvision({k: v.numpy() for k, v in tv.state_dict().items()}, name)
    model = models.create(name)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    nhwc = x.transpose(0, 2, 3, 1)

    tv.eval()
    close_to_torchvision(np.asarray(model.apply(variables, nhwc, train=False)), tv, x)

    tv.train()
    got_train, updates = model.apply(variables, nhwc, train=True, mutable=["batch_stats"])
    close_to_torchvision(np.asarray(got_train), tv, x)  # updates tv's running statistics once
    updated = convert.from_torchvision({k: v.numpy() for k, v in tv.state_dict().items()}, name)["batch_stats"]
    np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["mean"], updated["stem_bn"]["mean"], atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["var"], updated["stem_bn"]["var"], rtol=1e-4)
    deep_ours, deep_tv = updates["batch_stats"]["stage4"]["block1"]["bn2"], updated["stage4"]["block1"]["bn2"]
    np.testing.assert_allclose(deep_ours["var"], deep_tv["var"], rtol=1e-4)  # unbiased, as torch


def module_outputs(model, taps, x):
    """The outputs (NHWC) of the modules `taps` (name -> module) of `model` in eval mode on `x`."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out)) for k, m in taps.items()]
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return {k: out.numpy().transpose(0, 2, 3, 1) for k, out in outputs.items()}


def assert_features_close(features, expected):
    assert set(expected) == set(features)
    for key, want in expected.items():  # float32 error grows with the activations' scale (up to ~1e2 here)
        np.testing.assert_allclose(np.asarray(features[key]), want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=0)


def test_features_are_torchvisions_layer_outputs():
    """``method="features"`` of converted weights gives torchvision's maxpool and layer1..4 outputs."""
    tv = torchvision_model("resnet50")
    variables = convert.from_torchvision({k: v.numpy() for k, v in tv.state_dict().items()}, "resnet50")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    feats = models.create("resnet50").apply(variables, x.transpose(0, 2, 3, 1), train=False, method="features")
    stages = {"stem": tv.maxpool, **{f"stage{i}": getattr(tv, f"layer{i}") for i in range(1, 5)}}
    expected = module_outputs(tv, stages, x)
    expected["pooled"] = expected["stage4"].mean(axis=(1, 2))
    assert_features_close(feats, expected)


def test_errors_list_keys_by_name():
    state = {k: v.numpy() for k, v in torchvision_model("resnet18").state_dict().items()}
    del state["layer2.0.downsample.0.weight"]
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :, :1, :1]
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(convert.ConversionError) as e:
        convert.from_torchvision(state, "resnet18")
    message = str(e.value)  # one line: the first tensor that does not fit, how many others
    assert message == (
        "state dict does not fit resnet18 (1000 classes): 'layer1.0.conv1.weight': shape (64, 64, 1, 1) does not "
        "fit stage1/block0/conv1/kernel (3, 3, 64, 64); 2 more do not fit (1 missing, 1 unexpected)"
    )
    missing = "missing stage2/block0/shortcut_conv/kernel (params)"
    assert e.value.problems[1:] == ["unexpected key 'extra.weight'", missing]
    with pytest.raises(ValueError, match="no torchvision counterpart for 'cifar_resnet20'"):
        convert.from_torchvision(state, "cifar_resnet20")


@pytest.mark.parametrize("name, given, fits", [
    ("resnet18", "resnet50", "torchvision's resnet18 or timm's resnet18: python -m resnet_jax.convert torchvision"),
    ("wide_resnet50_2", "resnet50", "torchvision's wide_resnet50_2 or timm's wide_resnet50_2"),
    ("resnet18d", "resnet34", "timm's resnet18d: python -m resnet_jax.convert timm resnet18d"),
])  # fmt: skip
def test_weights_of_another_model_name_the_model_they_fit(name, given, fits):
    """Another depth, another width, ResNet-D's stem: the one line names the model
    whose shapes the weights have, from the state dict's blocks per stage and widths."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # shapes only: no weights drawn
        net = timm.create_model(name) if name.endswith("d") else getattr(torchvision.models, name)()
    state = {k: np.empty(v.shape, np.float32) for k, v in net.state_dict().items()}
    with pytest.raises(convert.ConversionError) as e:
        convert.from_torchvision(state, given)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"state dict does not fit {given} (1000 classes): ")
    assert f"; {len(e.value.problems) - 1} more do not fit (" in message
    assert f"are those of {fits}" in message, message


def test_cli_writes_a_checkpoint_that_restores(tmp_path, capsys):
    import resnet_jax

    tv = torchvision_model("resnet18")
    tv.fc = torch.nn.Linear(512, 4)
    pth = tmp_path / "weights.pth"
    torch.save(tv.state_dict(), pth)
    from safetensors.torch import save_file

    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, st)
    for weights, out in ((pth, tmp_path / "from_pth"), (st, tmp_path / "from_st")):
        assert convert.main(["torchvision", "resnet18", str(weights), str(out)]) == 0
        model, variables, info = resnet_jax.restore(str(out))
        assert info["num_classes"] == 4 and info["model"] == "resnet18"
        x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
        tv.eval()
        with torch.no_grad():
            expected = tv(torch.from_numpy(x)).numpy()
        got = model.apply(variables, x.transpose(0, 2, 3, 1), train=False)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)
    with pytest.raises(SystemExit) as stop:
        convert.main(["torchvision", "resnet50", str(pth), str(tmp_path / "bad")])
    assert stop.value.code == 2 and "does not fit resnet50" in capsys.readouterr().err


def test_a_conversion_killed_midway_leaves_the_earlier_one_and_runs_again(tmp_path):
    """A real SIGKILL while `python -m resnet_jax.convert --overwrite` writes: the earlier
    conversion is untouched, and the same command then removes what the kill left and
    replaces it (the states a kill leaves at each step: tests/test_command_faults.py)."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import env_with_devices
    from safetensors.torch import save_file

    import resnet_jax

    weights, out = str(tmp_path / "r18.safetensors"), str(tmp_path / "converted")
    save_file(torchvision_model("resnet18").state_dict(), weights)
    variables = convert.from_torchvision(convert.load_state_dict(weights), "resnet18")
    convert.write_checkpoint(variables, "resnet18", out, source="earlier")
    before = sorted(glob.glob(f"{out}/**", recursive=True))
    command = ["torchvision", "resnet18", weights, out, "--overwrite"]
    proc = subprocess.Popen([sys.executable, "-m", "resnet_jax.convert", *command], env=env_with_devices(1))
    while not glob.glob(f"{tmp_path}/.converted.tmp-{proc.pid}/checkpoints") and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert glob.glob(f"{tmp_path}/.converted.tmp-{proc.pid}")  # what the kill left, beside
    assert sorted(glob.glob(f"{out}/**", recursive=True)) == before
    assert resnet_jax.restore(out)[2]["source"] == "earlier"
    assert convert.main(command) == 0
    assert sorted(os.listdir(tmp_path)) == ["converted", "r18.safetensors"]  # the kill's leftovers removed
    assert resnet_jax.restore(out)[2]["source"] == "torchvision resnet18.IMAGENET1K_V1"
