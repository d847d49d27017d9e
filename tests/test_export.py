"""resnet_jax.export: each format's artifact, run by its own runtime on real images, gives the JAX model's logits.

Sources: a run trained a few steps (tests/fixtures/ckpt_860d72c: a CIFAR
ResNet whose batch-norm statistics have moved from their initial values), a
ResNet-18 of narrow stages written as `resnet_jax.convert` writes torchvision
weights (the ImageNet stem and normalisation), and real torchvision/timm
ResNet-18 state dicts for the exact state-dict round trip. Images: the CIFAR-10
JPEG copy beside the checkout where it is (../shared), else images made here.
"""

import functools
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, class_image
from fixtures.make_checkpoints import HERE as FIXTURES
from PIL import Image

import resnet_jax
from resnet_jax import convert, models, weights
from resnet_jax.data.augment import normalize
from resnet_jax.errors import CheckpointDamagedError, ConfigError, MissingDependencyError, NotFoundError
from resnet_jax.export import ExportError, main, onnx_graph
from resnet_jax.predict import preprocess

try:  # before any TensorFlow import: torchvision's import of triton crashes in a process that imported TensorFlow
    import torchvision  # noqa: F401
except ImportError:
    pass

TRAINED = str(FIXTURES / "one_seed")  # cifar_resnet20 of 4-8-16 filters at 16 px, 6 steps
POPULATION = str(FIXTURES / "two_seeds")
CIFAR_JPEG = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg", "test")
BATCHES = (3, 8)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    """8 image files: CIFAR-10 test JPEGs of 8 classes, or PNGs made here."""
    found = sorted(glob.glob(os.path.join(CIFAR_JPEG, "*", "0000.jpg")))[:8]
    if len(found) == 8:
        return found
    root = tmp_path_factory.mktemp("made_images")
    rng = np.random.default_rng(0)
    paths = [str(root / f"{i}.png") for i in range(8)]
    for i, path in enumerate(paths):
        Image.fromarray(class_image(i % 3, rng, 32)).save(path)
    return paths


@functools.cache
def restored(workdir, member=None):
    return resnet_jax.restore(workdir, member=member)


def pixels(paths, workdir, n, member=None):
    """The first `n` images as the checkpoint's evaluation resizes them: uint8 NHWC."""
    info = restored(workdir, member)[2]
    return np.stack([preprocess(p, info) for p in paths[:n]])


def normalized(images, workdir, member=None):
    info = restored(workdir, member)[2]
    return np.asarray(normalize(images, info["mean"], info["std"]))


@functools.cache
def _logits_of_all(workdir, paths, dtype, member):
    _, variables, info = restored(workdir, member)
    model = models.create(info["model"], num_classes=info["num_classes"], dtype=dtype, **info["model_kwargs"])
    images = normalized(pixels(paths, workdir, len(paths), member), workdir, member)
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))


def jax_logits(workdir, paths, n, dtype=jnp.float32, member=None):
    """The restored model's own logits of the first `n` images (computed once for all, in inference mode)."""
    return _logits_of_all(workdir, tuple(paths), dtype, member)[:n]


def randomize_stats(variables, seed=0):
    """Batch-norm statistics and affine parameters away from their initial values."""
    rng = np.random.default_rng(seed)
    draw = {"var": lambda s: rng.uniform(0.5, 2.0, s), "mean": lambda s: rng.normal(0, 0.2, s),
            "scale": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.normal(0, 0.2, s)}  # fmt: skip

    def one(path, x):
        name = path[-1].key
        return draw[name](x.shape).astype(np.float32) if name in draw and x.ndim == 1 else np.asarray(x)

    return jax.tree_util.tree_map_with_path(one, variables)


IMAGENET_32 = weights.Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875,
                                    image_size=32)  # fmt: skip
NARROW = {"stage_widths": [8, 16, 32, 64]}  # ResNet-18's layers and strides, 1/8 of its filters


@pytest.fixture(scope="module")
def torch_sources(tmp_path_factory):
    """{model name: (library, its state dict, the workdir of its conversion at 32 px)}:
    random weights and batch-norm statistics."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    from test_convert import randomize_batch_norm

    out = {}
    for library, name in (("torchvision", "resnet18"), ("timm", "resnet18d"), ("timm", "resnetv2_18")):
        torch.manual_seed(0)
        net = getattr(torchvision.models, name)() if library == "torchvision" else timm.create_model(name)
        state = {k: v.numpy().copy() for k, v in randomize_batch_norm(net).state_dict().items()}
        convert_fn = convert.from_torchvision if library == "torchvision" else convert.from_timm
        workdir = str(tmp_path_factory.mktemp(name))
        convert.write_checkpoint(convert_fn(state, name), convert.model_for(library, name), workdir,
                                 preprocessing=IMAGENET_32, source=f"{library} {name}")  # fmt: skip
        out[name] = (library, state, workdir)
    return out


class _State(dict):
    """A saved state as a dict, with the `.step` that `Checkpointer.save` reads."""

    @property
    def step(self):
        return self["step"]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """The workdir of a narrow ResNet-18 (random weights and batch-norm statistics, 10 classes) as a
    torchvision conversion at 32 px is written: ImageNet normalisation, fed normalised floats."""
    from resnet_jax.restore import read_metadata
    from resnet_jax.training.checkpoint import Checkpointer

    model = models.create("resnet18", num_classes=10, **NARROW)
    variables = randomize_stats(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    staged, workdir = (str(tmp_path_factory.mktemp(name)) for name in ("staged", "narrow_resnet18"))
    convert.write_checkpoint(variables, "resnet18", staged, preprocessing=IMAGENET_32, source="torchvision resnet18")
    metadata = read_metadata(staged)
    metadata["model_kwargs"].update(NARROW)  # write_checkpoint writes the default widths
    saved = Checkpointer(workdir, async_save=False)
    saved.save(_State({"step": np.zeros((), np.int32), **jax.tree_util.tree_map(np.asarray, variables)}), metadata)
    saved.close()
    assert restored(workdir)[2]["model_kwargs"]["stage_widths"] == NARROW["stage_widths"]
    return workdir


def run_onnx(path, images):
    import onnxruntime

    runner = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return runner.run(["logits"], {"images": images})[0]


def run_savedmodel(path, images):
    tf = pytest.importorskip("tensorflow")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return serve(images=tf.constant(images))["logits"].numpy()


def assert_logits(got, want):
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt, run", [("onnx", run_onnx), ("savedmodel", run_savedmodel)])
def test_onnx_and_savedmodel_give_the_jax_logits(fmt, run, image_paths, imagenet_run, tmp_path):
    """The trained run fed raw pixels (uint8, the preprocessing baked in), the
    ImageNet-style conversion fed normalised floats; two batch sizes."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    for workdir, preprocessing in ((TRAINED, "uint8"), (imagenet_run, "none")):
        out = str(tmp_path / f"{os.path.basename(workdir)}.{fmt}")
        description = resnet_jax.export(workdir, fmt, out, preprocess=preprocessing, platforms=["cpu"])
        assert description["input"]["dtype"] == ("uint8" if preprocessing == "uint8" else "float32")
        assert json.load(open(out + ".json")) == json.loads(json.dumps(description))
        for n in BATCHES:
            images = pixels(image_paths, workdir, n)
            feed = images if preprocessing == "uint8" else normalized(images, workdir)
            assert_logits(run(out, feed), jax_logits(workdir, image_paths, n))


STABLEHLO_RUNNER = """
import sys
sys.modules["resnet_jax"] = None  # an import of resnet_jax fails: the artifact must not need it
import jax, numpy as np
for path in sys.argv[1:]:
    exported = jax.export.deserialize(open(path, "rb").read())
    assert not isinstance(exported.in_avals[0].shape[0], int), exported.in_avals  # a symbolic batch
    for n in {batches}:
        np.save(f"{{path}}.{{n}}.npy", np.asarray(exported.call(np.load(f"{{path}}.in{{n}}.npy"))))
"""


def test_stablehlo_runs_without_resnet_jax_in_float32_and_bfloat16(image_paths, imagenet_run, tmp_path):
    """Fed raw pixels, [0, 1] RGB and normalised floats; the bfloat16 artifact gives
    the bfloat16 JAX model's logits to bfloat16's precision."""
    cases = [(TRAINED, "float32", "uint8"), (imagenet_run, "float32", "normalize"),
             (TRAINED, "float32", "none"), (TRAINED, "bfloat16", "uint8")]  # fmt: skip
    paths, expected = [], {}
    for k, (workdir, dtype, preprocessing) in enumerate(cases):
        path = str(tmp_path / f"{k}.stablehlo")
        platforms = ("cpu", "cuda", "tpu") if k == 0 else ("cpu",)  # the default: lowered for all three
        resnet_jax.export(workdir, "stablehlo", path, dtype=dtype, preprocess=preprocessing, platforms=platforms)
        assert jax.export.deserialize(open(path, "rb").read()).platforms == platforms
        for n in BATCHES:
            images = pixels(image_paths, workdir, n)
            feed = {"uint8": images, "normalize": images / np.float32(255), "none": normalized(images, workdir)}
            np.save(f"{path}.in{n}.npy", feed[preprocessing])
            expected[path, n] = jax_logits(workdir, image_paths, n, getattr(jnp, dtype))
        paths.append(path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = STABLEHLO_RUNNER.format(batches=BATCHES)
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (path, n), want in expected.items():
        got = np.load(f"{path}.{n}.npy")
        if path == paths[-1]:  # bfloat16: XLA fuses differently in and out of the export; 8-bit mantissas
            np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max(), rtol=0)
        else:
            assert_logits(got, want)
    float32 = np.load(f"{paths[0]}.{BATCHES[0]}.npy")
    assert np.abs(np.load(f"{paths[-1]}.{BATCHES[0]}.npy") - float32).max() > 1e-4  # bfloat16 was computed


@pytest.mark.parametrize("name", ["resnet18", "resnet18d", "resnetv2_18"])
def test_state_dict_round_trip_is_exact_and_loads_strictly(name, torch_sources, tmp_path):
    """torchvision/timm -> convert -> export gives back the original tensors exactly, and the library's own
    model loads them with strict=True. (The converted weights' logits are the library's: test_convert, test_timm.)"""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    library, original, workdir = torch_sources[name]
    out = str(tmp_path / f"{name}.safetensors")
    description = resnet_jax.export(workdir, library, out)
    state = load_file(out)
    assert set(state) == set(original)
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):  # convert keeps no count: exported as 0
            assert state[key].dtype == torch.float32 and np.array_equal(state[key].numpy(), value), key
    if library == "torchvision":
        import torchvision

        net = getattr(torchvision.models, name)(num_classes=description["num_classes"])
    else:
        import timm

        net = timm.create_model(name, num_classes=description["num_classes"])
    net.load_state_dict(state, strict=True)


ARCHITECTURES = [
    ("resnext50_32x4d", {"groups": 2, "base_width": 32, "stride_on_3x3": False}), ("resnet50d", {}),
    ("preact_resnet50d", {}), ("preact_resnet18", {}), ("plain18", {}), ("resnet18", {"shortcut": "C"}),
    ("cifar_resnet20", {}), ("cifar_wrn_16_4", {"stem_width": 4}),
]  # fmt: skip


@pytest.mark.parametrize("name, kwargs", ARCHITECTURES)
def test_onnx_graph_expresses_every_architecture(name, kwargs):
    """Bottleneck with ResNeXt groups and v1 strides, ResNet-D's stem and ceil-mode pool
    (odd sizes), pre-activation, plain, shortcuts A and C, Wide: ONNX Runtime's
    logits are the JAX model's."""
    onnxruntime = pytest.importorskip("onnxruntime")
    cifar = name.startswith("cifar")
    widths = (4, 8, 16) if cifar else (4, 8, 16, 32)
    model = models.create(name, num_classes=5, stage_sizes=(1,) * len(widths), stage_widths=widths, **kwargs)
    size = 17 if cifar else 33  # odd sizes: ResNet-D's ceil-mode pools overhang
    x = np.random.default_rng(0).standard_normal((3, size, size, 3)).astype(np.float32)
    variables = randomize_stats(model.init(jax.random.key(0), x, train=False))
    proto = onnx_graph.build(model, variables, size, "none", None, None)
    runner = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_logits(runner.run(["logits"], {"images": x})[0], np.asarray(model.apply(variables, x, train=False)))


def test_a_member_of_a_population_is_exported(image_paths, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="holds 2 networks trained together"):
        resnet_jax.export(POPULATION, "onnx", str(tmp_path / "m.onnx"))
    out = str(tmp_path / "m1.onnx")
    description = resnet_jax.export(POPULATION, "onnx", out, member=1, preprocess="uint8")
    assert description["source"]["member"] == 1 and description["source"]["step"] == 6
    images = pixels(image_paths, TRAINED, 4)
    want = jax_logits(POPULATION, image_paths, 4, member=1)
    assert_logits(run_onnx(out, images), want)
    assert np.abs(jax_logits(POPULATION, image_paths, 4, member=0) - want).max() > 1e-3  # another network


def test_ema_weights_are_exported_when_asked(image_paths, tmp_path):
    """A run that kept EMA weights (here: the fixture's weights, shrunk): ema=True exports those."""
    pytest.importorskip("onnxruntime")
    from resnet_jax.restore import read_metadata
    from resnet_jax.training.checkpoint import Checkpointer

    tree = Checkpointer(TRAINED, async_save=False).restore_tree(6)
    ema = {"ema_params": jax.tree_util.tree_map(lambda p: 0.8 * np.asarray(p), tree["params"]),
           "ema_batch_stats": jax.tree_util.tree_map(np.asarray, tree["batch_stats"])}  # fmt: skip
    workdir = str(tmp_path / "ema_run")
    saved = Checkpointer(workdir, async_save=False)
    saved.save(_State({**jax.tree_util.tree_map(np.asarray, tree), **ema}), read_metadata(TRAINED))
    saved.close()
    images = pixels(image_paths, TRAINED, 4)
    model, _, info = restored(TRAINED)
    variables = {"params": ema["ema_params"], "batch_stats": ema["ema_batch_stats"]}
    want = np.asarray(model.apply(variables, normalized(images, TRAINED), train=False))
    out = str(tmp_path / "ema.onnx")
    assert resnet_jax.export(workdir, "onnx", out, ema=True, preprocess="uint8")["source"]["ema"] is True
    assert_logits(run_onnx(out, images), want)
    assert np.abs(want - jax_logits(TRAINED, image_paths, 4)).max() > 1e-3  # not the plain weights


def test_bad_requests_are_one_line_and_write_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "out" / "m.stablehlo")
    with pytest.raises(NotFoundError, match="holds no checkpoints/ folder"):
        resnet_jax.export(str(tmp_path), "stablehlo", out)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; formats: stablehlo, onnx"):
        resnet_jax.export(TRAINED, "tflite", out)
    with pytest.raises(ExportError, match="torchvision has no counterpart for 'cifar_resnet20'"):
        resnet_jax.export(TRAINED, "torchvision", out)
    with pytest.raises(ExportError, match="the onnx format is float32 only"):
        resnet_jax.export(TRAINED, "onnx", out, dtype="bfloat16")
    with pytest.raises(ExportError, match="a timm state dict holds weights, not computation"):
        resnet_jax.export(TRAINED, "timm", out, preprocess="uint8")
    with pytest.raises(ConfigError, match="holds no EMA weights"):
        resnet_jax.export(TRAINED, "stablehlo", out, ema=True)
    damaged = str(tmp_path / "damaged")
    shutil.copytree(TRAINED, damaged)
    with open(f"{damaged}/checkpoints/6/metadata/metadata", "wb") as f:
        f.write(bytes(range(256)))
    with pytest.raises(CheckpointDamagedError, match="checkpoints/6 cannot be read"):
        resnet_jax.export(damaged, "stablehlo", out)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"needs onnx: pip install 'resnet-jax-flax\[export\]'"):
        resnet_jax.export(TRAINED, "onnx", out)
    assert not os.path.exists(os.path.dirname(out))


def test_cli_exports_and_reports_a_bad_request_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "m.stablehlo")
    assert main(["--workdir", TRAINED, "--format", "stablehlo", "--out", out, "--platforms", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out and json.load(open(out + ".json"))["source"]["step"] == 6
    assert os.path.getsize(out) > 0
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.export", "--workdir", str(tmp_path), "--format", "stablehlo",
         "--out", out + "2"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and "holds no checkpoints/ folder" in proc.stderr
