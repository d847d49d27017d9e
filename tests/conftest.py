"""Test set-up: 8 fake CPU devices, so that every test exercises the sharded
path, and small image-folder fixtures made by the tests themselves."""

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

# Tests compile far more than they run: LLVM's optimisation of XLA:CPU's fused
# loops costs seconds a program (a 4-8-16 ResNet's init: 9 s, 1 s at level 0)
# and buys nothing on 16-pixel images; XLA:CPU's fusion emitters take half of
# what is left (a 4-8-16 ResNet-8's init and step: 5.2 s with them, 2.4 s
# without, 2026-12-03). The fixtures of earlier commits, trained with neither,
# are still met to 1e-5 (tests/test_population.py). The XLA of jax 0.11 and
# 0.12 has no --xla_cpu_use_fusion_emitters (its emitters cannot be turned
# off), and an unknown flag in XLA_FLAGS is a fatal error at JAX's first
# computation, so only the flags this jaxlib's XLA knows are set (`_flags_xla_knows`).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _flags_xla_knows(base: str, optional: tuple[str, ...]) -> str:
    """The flags of `optional` that XLA knows, found by starting JAX in a subprocess with `base` and them
    and leaving out those it names as unknown. JAX failing to start for any other reason (a flag of `base`,
    the user's XLA_FLAGS, that it does not know) is a UsageError that shows XLA's message: XLA's fatal
    error would otherwise end every test process with pytest printing nothing."""
    kept = list(optional)
    while True:
        flags = " ".join([base, *kept]).strip()
        env = dict(os.environ, XLA_FLAGS=flags)
        proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        if proc.returncode == 0:
            return " ".join(kept)
        unknown = re.search(r"Unknown flags? in XLA_FLAGS: (.*)", proc.stderr)
        dropped = set(unknown.group(1).split()) & set(kept) if unknown else set()
        if not dropped:
            raise pytest.UsageError(f"JAX does not start with XLA_FLAGS={flags!r}:\n{proc.stderr[-3000:]}")
        kept = [flag for flag in kept if flag not in dropped]


# A subprocess that imports this file (and every pytest-xdist worker) keeps the
# devices and flags that `env_with_devices` (the controller) gave it.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    eight = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    os.environ["RESNET_JAX_TESTS_FAST_COMPILE"] = _flags_xla_knows(eight, FAST_COMPILE_FLAGS)
    os.environ["XLA_FLAGS"] = f"{eight} {os.environ['RESNET_JAX_TESTS_FAST_COMPILE']}".strip()
FAST_COMPILE = os.environ.get("RESNET_JAX_TESTS_FAST_COMPILE", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests compile the same tiny network: JAX's persistent cache shares the
# programs between tests and with their subprocesses (which inherit the folder
# and leave its removal to the process that made it).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="resnet_jax_tests_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_jax.config import default_config  # noqa: E402

CLASSES = ("circle", "square", "stripes")


def class_image(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy RGB image whose colour and pattern depend on its class."""
    y, x = np.mgrid[:size, :size] / size
    base = rng.uniform(0, 60, (size, size, 3))
    if label == 0:
        mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 < rng.uniform(0.05, 0.15)
    elif label == 1:
        mask = (np.abs(x - 0.5) < 0.3) & (np.abs(y - 0.5) < 0.3)
    else:
        mask = (np.floor(x * rng.integers(3, 6)) % 2) == 0
    base[mask, label] += 180
    return np.clip(base, 0, 255).astype(np.uint8)


def make_image_folder(root, train_per_class: int = 16, test_per_class: int = 5, size: int = 16, seed: int = 0):
    """Writes root/{train,test}/<class>/<n>.png and returns root as a string."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(label, rng, size)).save(d / f"{i:04d}.png")
    return str(root)


def pytest_collection_modifyitems(config, items):
    """The tests marked slow run first, so that the two workers end together
    (a long test begun last would leave one of them waiting)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """3 classes, 48 train and 15 test PNGs of 16x16."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


# model_kwargs of a narrow ResNet-8: cifar_resnet20's blocks, one a stage, 4-8-16 filters.
NARROW_RESNET8 = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16)}


def tiny_config(path: str, **overrides):
    """A config that trains a narrow ResNet-8 (cifar_resnet20's blocks, one a
    stage, 4-8-16 filters: fewer ops to compile than a ResNet-20) at 16x16 on
    `path` in seconds."""
    c = default_config()
    c.model_kwargs.update(NARROW_RESNET8)
    c.data.path = path
    c.data.image_size = 16
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 1
    c.learning_rate = 0.05
    c.lr_schedule = "constant"
    c.log_every_steps = 1
    c.async_checkpoints = False
    c.checkpoint_on_eval = True  # a checkpoint at every evaluation, as the tests of faults and resumes expect
    c.curves_every_seconds = -1.0  # no curves.png (a second of matplotlib a run); the tests of curves ask for them
    return override(c, **overrides)


def override(c, **overrides):
    """`c` with each ``"a.b": value`` of `overrides` set (dotted keys reach nested fields)."""
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def step_options(c, model, num_classes: int = 10, steps_per_epoch: int = 10, total_steps: int = 100):
    """The train step's options of config `c` for `model` (`loop.step_options`)."""
    from resnet_jax.training import loop, population

    return loop.step_options(c, model, num_classes, population.from_config(c), steps_per_epoch, total_steps)


def host_step(options, mesh):
    """``step(state, batch) -> (state, window)``: the compiled train step of one
    network's state (a population of one) over host batches sharded on `mesh`, each call from an empty
    log window (so ``window[k]`` holds member k's loss and accuracy of that step)."""
    from types import SimpleNamespace

    from resnet_jax import parallel
    from resnet_jax.training.compiled import compile_train_step
    from resnet_jax.training.metrics import empty_window

    train = compile_train_step(options, SimpleNamespace(mesh=mesh), {}, 1)
    return lambda state, batch: train(state, empty_window(1, parallel.replicated(mesh)), batch)


def train_steps(config, num_steps: int, member_batching: str | None = None):
    """`num_steps` calls of the run's compiled step (`loop.setup` of `config`)
    from its initial state, each from an empty log window: ``(state, losses)``,
    the state as the loop holds it (`population.stored`: stacked for several
    members, one network's for one) and each step's loss of each member ([steps, K])."""
    from resnet_jax import parallel
    from resnet_jax.training import loop
    from resnet_jax.training.metrics import LOSS, empty_window

    mesh = parallel.make_mesh()
    built = loop.setup(config.copy_and_resolve_references(), mesh)
    train = built.compile_step(member_batching or config.member_batching)
    state, losses, spe = built.state, [], built.pipeline.steps_per_epoch
    for step in range(num_steps):
        if step % spe == 0:
            items = built.pipeline.train_epoch(step // spe)
        empty = empty_window(built.members.size, parallel.replicated(mesh))
        state, window = train(state, empty, next(items))
        losses.append(np.asarray(window)[:, LOSS])
    return state, np.stack(losses)


@pytest.fixture
def tiny(image_folder):
    """`tiny_config` bound to the image folder shared by all tests."""
    return lambda **kw: tiny_config(image_folder, **kw)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


QUICK_NARROW = os.path.join(ROOT, "tests", "quick_narrow.py")


def cli_args(folder, workdir, *extra):
    """``train.py`` with the quick recipe on a narrow ResNet-8 (tests/quick_narrow.py), shrunk to the fixture
    folder's 16x16 images."""
    return [
        sys.executable, os.path.join(ROOT, "train.py"), "--config", QUICK_NARROW,
        "--workdir", str(workdir), f"--config.data.path={folder}", "--config.data.image_size=16",
        "--config.batch_size=16", "--config.eval_batch_size=16", "--config.eval_flip=False", *extra,
    ]  # fmt: skip


def env_with_devices(n):
    """The environment of a subprocess on `n` fake CPU devices that imports this checkout."""
    flags = f"--xla_force_host_platform_device_count={n} {FAST_COMPILE}"
    env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tensorboard_events(folder: str) -> list:
    """The events of the TensorBoard files in `folder`, file after file, as
    TensorFlow reads them (it checks every frame's length and CRCs)."""
    import glob

    import tensorflow as tf
    from tensorflow.core.util.event_pb2 import Event

    paths = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    return [Event.FromString(record.numpy()) for path in paths for record in tf.data.TFRecordDataset(path)]


def wait_for(condition, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Polls `condition()` while `proc` runs; fails with its output if it ends or time runs out first."""
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
