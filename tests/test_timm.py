"""timm -> resnet_jax: ResNet-C/D ("Bag of Tricks") and the pre-activation ResNetV2
give timm's outputs from timm's weights, convert from files, and carry the
preprocessing their weights expect into predict, evaluation and fine-tuning."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CLASSES, tiny_config
from PIL import Image

from resnet_jax import convert, models, predict, restore, weights
from resnet_jax.data import load_split_arrays
from resnet_jax.evaluate import evaluate_checkpoint
from resnet_jax.models.blocks import avg_pool_ceil
from resnet_jax.training.finetune import use_pretrained_normalization

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from test_convert import assert_features_close, close_to_torchvision, module_outputs, randomize_batch_norm  # noqa: E402


def timm_model(name, num_classes=1000, seed=0):
    """timm's `name` with random weights and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_batch_norm(timm.create_model(name, pretrained=False, num_classes=num_classes)).eval()


def state_of(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def nchw(size, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def timm_features(model, x):
    """timm's stem (after its max-pool) and stage outputs, NHWC."""
    if hasattr(model, "layer1"):
        taps = {"stem": model.maxpool, **{f"stage{i}": getattr(model, f"layer{i}") for i in range(1, 5)}}
    else:  # ResNetV2: the stem Sequential ends with its pool
        taps = {"stem": model.stem, **{f"stage{i + 1}": model.stages[i] for i in range(4)}}
    return module_outputs(model, taps, x)


@pytest.mark.parametrize("h, w", [(7, 7), (6, 5), (4, 8), (1, 3)])
def test_avg_pool_ceil_is_torchs_ceil_mode_pool(h, w):
    x = np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)
    pool = torch.nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
    want = pool(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(avg_pool_ceil(jnp.asarray(x.transpose(0, 2, 3, 1)), 2))
    assert got.shape == want.shape == (2, -(-h // 2), -(-w // 2), 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    if h % 2 and w % 2:  # the overhanging corner window holds one pixel: no zero padding averaged in
        np.testing.assert_allclose(got[:, -1, -1], x[:, :, -1, -1], atol=1e-6)


@pytest.mark.parametrize(
    "name, size",
    [("resnet18d", 65), ("resnet26d", 72), ("resnet50d", 72), ("resnetv2_50d", 72), ("resnetv2_18", 65)],
)
def test_same_logits_and_features_as_timm(name, size):
    """Odd sizes: 65 -> 33 -> 17 -> 9 -> 5 -> 3, and 72 -> ... -> 9 -> 5 -> 3 make
    ResNet-D's ceil-mode pools overhang in the projections of stages 3 and 4."""
    reference = timm_model(name)
    variables = convert.from_timm(state_of(reference), name)
    model = models.create(convert.TIMM_MODELS[name])
    x = nchw(size)
    both = jax.jit(lambda v, x: (model.apply(v, x, train=False), model.apply(v, x, train=False, method="features")))
    logits, features = both(variables, x.transpose(0, 2, 3, 1))
    close_to_torchvision(np.asarray(logits), reference, x, slack=3)  # XLA's fused sums: up to ~2x torch's error
    expected = timm_features(reference, x)
    with torch.no_grad():  # after ResNetV2's final BN-ReLU
        expected["pooled"] = reference.forward_head(reference.forward_features(torch.from_numpy(x)), True).numpy()
    assert expected["stage4"].shape[1] == -(-size // 32)
    assert_features_close(features, expected)


def test_training_mode_and_batch_statistics_as_timm():
    """Batch statistics, and running averages updated as timm's, in the deep stem and a D projection."""
    reference = timm_model("resnet18d").train()
    variables = convert.from_timm(state_of(reference), "resnet18d")
    x = nchw(64, batch=4)
    logits, updates = models.create("resnet18d").apply(
        variables, x.transpose(0, 2, 3, 1), train=True, mutable=["batch_stats"]
    )
    close_to_torchvision(np.asarray(logits), reference, x)  # updates timm's running statistics once
    updated = convert.from_timm(state_of(reference), "resnet18d")["batch_stats"]
    for path in (("stem_bn1",), ("stem_bn",), ("stage3", "block0", "shortcut_bn")):
        ours, theirs = updates["batch_stats"], updated
        for p in path:
            ours, theirs = ours[p], theirs[p]
        np.testing.assert_allclose(ours["mean"], theirs["mean"], atol=1e-5)
        np.testing.assert_allclose(ours["var"], theirs["var"], rtol=1e-4)


@pytest.mark.slow
def test_parameter_counts_equal_timms():
    """Every timm model that converts and torchvision lacks (those are in test_models),
    counted on the meta device (no weights allocated)."""
    registered_d = {n for n in models.list_models() if re.fullmatch(r"(preact_)?resnet\d+d", n)}
    assert registered_d <= set(convert.TIMM_MODELS.values())
    assert {f"resnet{d}d" for d in (18, 26, 34, 50, 101, 152, 200)} <= registered_d
    for name, ours in convert.TIMM_MODELS.items():
        if name in convert.TORCHVISION_MODELS:
            continue
        with torch.device("meta"):
            reference = timm.create_model(name, pretrained=False)
        assert models.profile(ours)["params"] == sum(p.numel() for p in reference.parameters()), name


def test_cli_converts_safetensors_and_pth_with_their_preprocessing(tmp_path):
    from safetensors.torch import save_file

    reference = timm_model("resnet18d", num_classes=4)
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, st)
    torch.save(reference.state_dict(), pth)
    x = nchw(64, batch=1)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()

    assert convert.main(["timm", "resnet18d.ra4_e3600_r224_in1k", str(st), str(tmp_path / "a")]) == 0
    model, variables, info = restore(str(tmp_path / "a"))
    assert info["model"] == "resnet18d" and info["num_classes"] == 4
    assert info["source"] == "timm resnet18d.ra4_e3600_r224_in1k"
    assert info["mean"] == info["std"] == [0.5, 0.5, 0.5]  # timm's inception normalisation for this tag
    assert info["image_size"] == 224 and info["crop_fraction"] == 0.9
    np.testing.assert_allclose(np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False)), expected,
                               atol=1e-4)  # fmt: skip

    flags = ["--mean", "0.4", "0.4", "0.4", "--std", "0.2", "0.2", "0.2", "--crop-fraction", "1", "--image-size", "96"]
    assert convert.main(["timm", "resnet18d", str(pth), str(tmp_path / "b"), *flags]) == 0
    model, variables, info = restore(str(tmp_path / "b"))
    assert info["source"] == "timm resnet18d.ra2_in1k"  # timm's default tag, its fields replaced by the flags
    assert info["mean"] == [0.4] * 3 and info["std"] == [0.2] * 3 and info["image_size"] == 96
    assert info["crop_fraction"] == 1.0
    np.testing.assert_allclose(np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False)), expected,
                               atol=1e-4)  # fmt: skip


def test_preprocessing_table_follows_the_libraries():
    assert weights.preprocessing("timm", "resnet50d", "ra4_e3600_r224_in1k") == (
        "resnet50d.ra4_e3600_r224_in1k", weights.Preprocessing((0.5,) * 3, (0.5,) * 3, 0.95, 224)
    )  # fmt: skip
    name, prep = weights.preprocessing("timm", "resnet50")  # timm's default: the RSB a1 weights
    assert name == "resnet50.a1_in1k" and prep.crop_fraction == 0.95 and prep.mean == (0.485, 0.456, 0.406)
    assert weights.preprocessing("torchvision", "resnet50", "IMAGENET1K_V2")[1].crop_fraction == 224 / 232
    assert weights.preprocessing("torchvision", "resnet18")[1].crop_fraction == 224 / 256
    for tag, ((mean, std), crop, size) in weights.TIMM.items():  # the table is timm's own pretrained_cfg
        cfg = timm.models.get_pretrained_cfg(tag)
        assert (mean, std, crop, size) == (cfg.mean, cfg.std, cfg.crop_pct, cfg.input_size[1]), tag
    assert set(weights.TIMM) >= {t for n in convert.TIMM_MODELS for t in timm.list_pretrained(f"{n}.*")} - {
        "resnet50.bamboo"  # no classifier
    }


def test_predict_uses_the_weights_preprocessing(tmp_path):
    """A ResNetV2 (mean = std = 0.5), evaluated at 64 px cropped from 80: predict
    gives timm's probabilities on the image prepared so by hand."""
    from safetensors.torch import save_file

    reference = timm_model("resnetv2_18", num_classes=5)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "w.safetensors")
    out = tmp_path / "converted"
    flags = ["--image-size", "64", "--crop-fraction", "0.8"]
    weights_file = str(tmp_path / "w.safetensors")
    assert convert.main(["timm", "resnetv2_18.ra4_e3600_r224_in1k", weights_file, str(out), *flags]) == 0
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    model, variables, info = restore(str(out))
    got = predict.predict(model, variables, info, [str(tmp_path / "x.png")], top=5)[0]

    resized = Image.fromarray(image).resize((round(90 * 80 / 70), 80), Image.BICUBIC)  # short side 64 / 0.8
    left = (resized.size[0] - 64) // 2
    crop = np.asarray(resized.crop((left, 8, left + 64, 72)), np.float32) / 255
    with torch.no_grad():
        logits = reference(torch.from_numpy(((crop - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()))
    probs = torch.softmax(logits, -1).numpy()[0]
    assert [name for name, _ in got] == [f"class_{i}" for i in np.argsort(-probs)]
    np.testing.assert_allclose([p for _, p in got], np.sort(probs)[::-1], atol=1e-5)


@pytest.fixture(scope="module")
def converted_3_classes(tmp_path_factory):
    """resnet18d with a head for the fixture folder's classes, normalised with mean 0.5 and std
    0.25 at 24 px; and timm's module it came from."""
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("converted")
    reference = timm_model("resnet18d", num_classes=len(CLASSES))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp / "w.safetensors")
    (tmp / "classes.txt").write_text("\n".join(CLASSES))
    flags = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--image-size", "24",
             "--crop-fraction", "1", "--class-names", str(tmp / "classes.txt")]  # fmt: skip
    assert convert.main(["timm", "resnet18d", str(tmp / "w.safetensors"), str(tmp / "out"), *flags]) == 0
    return str(tmp / "out"), reference


def test_evaluation_uses_the_checkpoints_preprocessing(converted_3_classes, image_folder, tmp_path, capsys):
    workdir, reference = converted_3_classes
    config = tiny_config(image_folder, **{"data.pipeline": "device"})  # 16 px, CIFAR mean and std
    metrics = evaluate_checkpoint(config, workdir)
    assert "evaluating with the checkpoint's preprocessing: mean" in capsys.readouterr().out

    data = config.data.copy_and_resolve_references()
    data.image_size = 24
    images, labels, _ = load_split_arrays(data, "test")
    x = ((images.astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(labels).long())
    assert metrics["count"] == len(labels) == 15
    np.testing.assert_allclose(metrics["loss"], float(loss), rtol=1e-4)


def test_fine_tuning_normalises_as_the_pretrained_weights(converted_3_classes, image_folder, capsys):
    """What `train_and_evaluate` does first with ``init_from`` (a fine-tuning run takes a minute here)."""
    workdir, _ = converted_3_classes
    config = tiny_config(image_folder, init_from=workdir)
    use_pretrained_normalization(config)
    assert config.data.mean == (0.5,) * 3 and config.data.std == (0.25,) * 3
    assert config.data.image_size == 16  # the new task's resolution stays the config's
    assert "Normalising as the weights of" in capsys.readouterr().out


def test_errors_name_the_keys_and_the_models(capsys):
    state = state_of(timm_model("resnet18d"))
    del state["layer2.0.downsample.1.weight"]  # the 1x1 convolution after ResNet-D's pool
    state["conv1.0.weight"] = state["conv1.0.weight"][:16]
    state["layer3.0.downsample.0.weight"] = np.zeros((256, 128, 1, 1), np.float32)  # a B-style projection
    with pytest.raises(convert.ConversionError) as e:
        convert.from_timm(state, "resnet18d")
    message = str(e.value)  # one line: the first tensor that does not fit, then how many others and how
    assert "\n" not in message
    assert "'conv1.0.weight': shape (16, 3, 3, 3) does not fit stem_conv1/kernel (3, 3, 3, 32)" in message
    assert "2 more do not fit (1 missing, 1 unexpected)" in message
    with pytest.raises(convert.ConversionError) as e:
        convert.from_timm(state_of(timm_model("resnet18")), "resnet18d")  # a 7x7 stem is not a deep one
    assert "unexpected key 'conv1.weight'; 38 more do not fit" in str(e.value)
    assert "those of torchvision's resnet18 or timm's resnet18" in str(e.value)  # the model the weights fit
    with pytest.raises(ValueError, match="no counterpart for timm's 'resnetv2_50x1_bit'.*GroupNorm"):
        convert.from_timm(state, "resnetv2_50x1_bit")
    with pytest.raises(ValueError, match="no torchvision counterpart for 'resnet50d'.*convert timm resnet50d"):
        convert.from_torchvision(state, "resnet50d")
    with pytest.raises(SystemExit) as stop:
        convert.main(["timm", "resnet50d.nope_in1k", "missing.safetensors", "out"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "no known preprocessing for timm weights 'resnet50d.nope_in1k' (known: resnet50d.ra2_in1k," in err
