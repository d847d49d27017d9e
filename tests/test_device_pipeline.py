"""The on-device pipeline: whole dataset on the device, augmentation in the step."""

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import parallel
from resnet_jax.data.device import DevicePipeline
from resnet_jax.training import steps
from resnet_jax.training.compiled import compile_train_step
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.metrics import empty_window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_on_device_pipeline(tiny, tmp_path):
    narrow = {"model_kwargs.stage_sizes": (1, 1, 1), "model_kwargs.stage_widths": (4, 8, 16)}
    results = train_and_evaluate(tiny(num_epochs=2, **{"data.pipeline": "device"}, **narrow), str(tmp_path))
    assert results["eval"]["count"] == 15
    assert np.isfinite(results["eval"]["loss"])


def test_epochs_are_permutations_and_batches_are_augmented():
    mesh = parallel.make_mesh()
    n = 64
    # Image i holds the value i everywhere, so a batch tells which examples it took.
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None] + 1, (n, 8, 8, 3)).copy()
    labels = np.arange(n, dtype=np.int32) % 4
    p = DevicePipeline((images, labels), (images[:8], labels[:8]), ("a", "b", "c", "d"), 16, 16, [0], mesh)
    assert p.steps_per_epoch == 4
    seen = []
    for i, (perm, key) in enumerate(p.train_epoch(0)):
        batch = p.make_batch(p.data, perm[0], key[0], i)  # the inputs of the population's one member
        imgs = np.asarray(batch["image"])
        ids = imgs.max(axis=(1, 2, 3)).astype(int) - 1
        np.testing.assert_array_equal(np.asarray(batch["label"]), ids % 4)
        assert (imgs == 0).any()  # zero padding entered some crops
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(n))
    first = [int(np.asarray(perm)[0, 0]) for perm, _ in [next(p.train_epoch(e)) for e in range(3)]]
    assert len(set(first)) > 1  # each epoch has its own order


class Counter(flax.struct.PyTreeNode):
    """The one field of a train state that the on-device pipeline reads, and the labels of its last batch."""

    step: jax.Array
    labels: jax.Array = None


def test_compiled_step_takes_the_batch_of_the_states_step(monkeypatch):
    """The batch index comes from state.step on the device, so a resumed state gets its own batch."""
    mesh = parallel.make_mesh()
    n = 64
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None] + 1, (n, 8, 8, 3)).copy()
    labels = np.arange(n, dtype=np.int32)
    p = DevicePipeline((images, labels), (images[:8], labels[:8]), tuple("abcd"), 16, 16, [0], mesh,
                       augment_images=False)  # fmt: skip

    def step_fn(state, batch, hp, options):  # the batch's labels are kept in the state
        zero = jnp.zeros(())
        return state.replace(step=state.step + 1, labels=batch["label"]), {"loss": zero, "accuracy": zero,
                                                                           "diverged": zero > 1}

    monkeypatch.setattr(steps, "train_step", step_fn)

    def run(state, item):
        options = SimpleNamespace(micro_batches=1)  # the patched step reads no option; compile_train_step this one
        state, _ = compile_train_step(options, p, {}, 1)(state, empty_window(1), item)
        return state, state.labels

    perm, key = next(p.train_epoch(1))
    state, taken = Counter(step=jnp.int32(4), labels=jnp.zeros(16, jnp.int32)), []  # epoch 1, batch 0
    for item in p.train_epoch(1):
        state, batch_labels = run(state, item)
        taken.append(np.asarray(batch_labels))
    want = [np.asarray(perm)[0, i * 16:(i + 1) * 16] for i in range(4)]
    np.testing.assert_array_equal(np.stack(taken), np.stack(want))
    resumed = list(p.train_epoch(1, start_step=2))
    assert len(resumed) == 2
    # resumed at step 6 = batch 2 of epoch 1
    _, batch_labels = run(Counter(step=jnp.int32(6), labels=jnp.zeros(16, jnp.int32)), resumed[0])
    np.testing.assert_array_equal(np.asarray(batch_labels), want[2])


def test_imports_and_trains_without_tensorflow():
    """The GPU image has no TensorFlow: the package and the on-device path must work there."""
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import resnet_jax, resnet_jax.models, resnet_jax.predict, resnet_jax.evaluate
        from resnet_jax import models, parallel
        from resnet_jax.config import default_config
        from resnet_jax.data.device import DevicePipeline
        from resnet_jax.training import loop, population
        from resnet_jax.training.compiled import compile_train_step
        from resnet_jax.training.metrics import empty_window
        from resnet_jax.training.state import create_train_state
        c = default_config()
        mesh = parallel.make_mesh()
        rng = np.random.default_rng(0)
        data = (rng.integers(0, 256, (32, 8, 8, 3), np.uint8), rng.integers(0, 10, 32).astype(np.int32))
        p = DevicePipeline(data, data, tuple("abcdefghij"), 16, 16, [0], mesh)
        model = models.create("cifar_resnet20", stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))
        options = loop.step_options(c, model, 10, population.from_config(c), 2, 2)
        state = create_train_state(model, options.make_tx({}), 8, [0], mesh)
        step = compile_train_step(options, p, {}, 1)
        for item in p.train_epoch(0):
            state, window = step(state, empty_window(1), item)
        assert "tensorflow" not in sys.modules
        print("ok", int(state.step), float(window[0, 0]))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok 2 ")
