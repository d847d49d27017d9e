"""Two processes on localhost (JAX's multi-controller runtime, gloo CPU
collectives) train a few steps and end with the same parameters as one process
that saw the same global batches.

Each process holds one CPU device, against one process holding two. (With two
fake CPU devices in each of two processes, jax 0.10's gloo path gave gradients
about 1% off behind batch norm while the forward pass matched: an XLA CPU
collectives issue, not one of this package; real clusters use one process per
GPU/host with NCCL or TPU ICI.)"""

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import env_with_devices

WORKER = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    import jax, numpy as np
    from resnet_jax import models, parallel
    from resnet_jax.config import default_config
    from resnet_jax.training import loop, population
    from resnet_jax.training.compiled import compile_train_step
    from resnet_jax.training.metrics import LOSS, empty_window
    from resnet_jax.training.state import create_train_state

    out, num_processes = sys.argv[1], int(sys.argv[2])
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        parallel.initialize_distributed(sys.argv[3], num_processes, int(sys.argv[4]))
    assert jax.process_count() == num_processes
    c = default_config()
    mesh = parallel.make_mesh()
    model = models.create("cifar_resnet20", stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))  # a narrow ResNet-8
    options = loop.step_options(c, model, 10, population.from_config(c), 10, 100)
    state = create_train_state(model, options.make_tx({}), 8, [0], mesh)
    train = compile_train_step(options, SimpleNamespace(mesh=mesh), {}, 1)
    step = lambda state, batch: train(state, empty_window(1, parallel.replicated(mesh)), batch)
    rng = np.random.default_rng(0)
    local = 16 // jax.process_count()
    lo = jax.process_index() * local
    for _ in range(3):
        images = rng.integers(0, 256, (16, 8, 8, 3), np.uint8)
        labels = rng.integers(0, 10, 16).astype(np.int32)
        state, window = step(state, {"image": images[lo:lo + local], "label": labels[lo:lo + local]})
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree_util.tree_leaves(state.params)]
    if jax.process_index() == 0:
        np.savez(out, loss=float(window.addressable_data(0)[0, LOSS]), *leaves)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env, two_devices = env_with_devices(1), env_with_devices(2)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.npz"), "1"], env=two_devices, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    address = f"localhost:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "two.npz"), "2", address, str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-5)
    names = [k for k in one.files if k != "loss"]
    assert len(names) > 20
    for k in names:
        np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-5, err_msg=k)
