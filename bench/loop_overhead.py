"""What the training loop costs beyond its compiled step, and what a population costs.

    python bench/loop_overhead.py proxy --repeats 5   # host-bound proxy: ResNet-20's state, a near-empty step
    python bench/loop_overhead.py resnet20           # ResNet-20, batch 128, the real step
    python bench/loop_overhead.py sweep      # 6-member lr x wd sweep against 6 separate runs
    python bench/loop_overhead.py stacking --step resnet20   # one member stacked, against one network unstacked
    python bench/loop_overhead.py calls      # the call alone: an identity on the state, stacked and not

* proxy / resnet20: `train_and_evaluate` (logging every 50 steps, one
  evaluation and one checkpoint at the end) against a bare Python loop over the
  same jitted step on the same on-device pipeline, timed just before and just
  after the loop's training in the same process, both in windows of 50 steps
  (the loop's are its log records, the first two left out: compilation; the
  bare loop's lie within one epoch: the loop also draws each epoch's
  permutation, a sort on the device, which the median leaves out). Reported:
  the median over ``--repeats`` runs of loop / bare (medians of their windows)
  and the ratio of the 10th percentiles of all windows.
  The proxy's step only counts (the train state of ResNet-20, no model): what
  is left is the host's cost per step; ``loop_host_us_per_step`` is the loop
  around a compiled step replaced by a Python no-op.
* stacking: the step every run compiles, a population of one member
  (`compile_train_step`: the member axis added inside the program, the state
  held unstacked between calls), against the program the trainer compiled for
  one network before every run became a population (the same step on the
  state without the axis, the window of one network), on the same pipeline and
  the same step (``--step``: the proxy's or ResNet-20's), in alternating blocks
  of 50 steps in one process (each first in every other round). Reported: the
  median over the blocks of population / network, and the ratio of their 10th
  percentiles.
* calls: a jitted identity (state donated) on ResNet-20's train state, stacked
  on an axis of 1 and not, in alternating blocks of 50 calls: what JAX's call
  alone costs for the extra axis, no step around it; and the state stacked but
  for its conv kernels (the leaves the axis takes from rank 4 to rank 5).
* sweep: the wall time of one run training a 3 x 2 grid of learning rate and
  weight decay (6 members, looped in one step: the CPU default) against the 6
  runs one after another, each from start-up to its end (compilation, data,
  evaluation and checkpoint included), with the same steps.

Synthetic uint8 CIFAR-sized data (N images, 10 classes), kept on the device.
Prints one JSON line; README and docs/cpu.md hold the figures with their commit.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/loop_overhead.py")

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench  # noqa: E402
from resnet_jax import parallel  # noqa: E402
from resnet_jax.config import default_config  # noqa: E402
from resnet_jax.data.device import DevicePipeline  # noqa: E402
from resnet_jax.plot import read_metrics  # noqa: E402
from resnet_jax.training import loop, optim, population  # noqa: E402
from resnet_jax.training.compiled import compile_train_step  # noqa: E402
from resnet_jax.training.metrics import accumulate, empty_window  # noqa: E402
from resnet_jax.training.state import create_train_state  # noqa: E402


def _config(num_steps: int, batch: int) -> Any:
    c = default_config()
    c.model, c.batch_size, c.num_train_steps = "cifar_resnet20", batch, num_steps
    c.lr_schedule, c.eval_every_steps, c.log_every_steps = "constant", num_steps, 50
    c.checkpoint_every_minutes, c.data.pipeline = 0.0, "device"
    return c


def _use_synthetic_data(n: int, seed: int = 0) -> None:
    """Makes the trainer's `make_pipeline` return an on-device pipeline over n random images."""
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n).astype(np.int32)

    def make(config: Any, mesh: Any, seeds: Any = None) -> DevicePipeline:
        seeds = [config.seed] if seeds is None else seeds
        return DevicePipeline((images, labels), (images[:1000], labels[:1000]), tuple("abcdefghij"),
                              config.batch_size, config.eval_batch_size, seeds, mesh)  # fmt: skip

    loop.make_pipeline = make


def _counting_step(state: Any, batch: Any, hp: Any = None, options: Any = None) -> tuple[Any, dict[str, jax.Array]]:
    """The proxy: counts the step (the batch is not read: XLA drops its making)."""
    x = jnp.zeros(())
    return state.replace(step=state.step + 1), {"loss": x, "accuracy": x, "diverged": x > 1}


def _loop_windows(config: Any) -> list[float]:
    """us/step of each log window of `train_and_evaluate` (the first two left out: compilation)."""
    workdir = tempfile.mkdtemp(prefix="loop_overhead_")
    loop.train_and_evaluate(config, workdir)
    return [r["seconds"] / r["steps"] * 1e6 for r in read_metrics(workdir)["train"][2:]]


def _host_us_per_step(config: Any) -> float:
    """The loop with a compiled step that does nothing (a Python no-op): its own host cost per step."""
    real = loop.compile_train_step
    loop.compile_train_step = lambda *args, **kwargs: (lambda state, window, item: (state, window))
    try:
        return statistics.median(_loop_windows(config))
    finally:
        loop.compile_train_step = real


def _bare_loop(config: Any, step_fn: Any) -> Callable[[int], list[float]]:
    """``blocks(n)``: us/step of each of n blocks of ``log_every_steps`` steps of
    a bare Python loop over the same step, jitted with the state donated, on
    the same pipeline (within one epoch), compiled here."""
    mesh = parallel.make_mesh()
    pipeline = loop.make_pipeline(config, mesh)
    model = loop.model_from_config(config, 10)
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, pipeline.steps_per_epoch, 1))
    state = create_train_state(model, tx, 32, [0], mesh)  # one network
    spe, block = pipeline.steps_per_epoch, config.log_every_steps

    def bare(state: Any, data: Any, perm: Any, key: Any) -> Any:
        return step_fn(state, pipeline.make_batch(data, perm, key, state.step % spe))

    jitted = jax.jit(bare, donate_argnums=0)
    perm, key = population.take(next(pipeline.train_epoch(0)), 0)
    state, metrics = jitted(state, pipeline.data, perm, key)
    jax.block_until_ready(metrics)

    def blocks(n: int) -> list[float]:
        nonlocal state
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            for _ in range(block):
                state, metrics = jitted(state, pipeline.data, perm, key)
            jax.block_until_ready(metrics)
            out.append((time.perf_counter() - t0) / block * 1e6)
        return out

    return blocks


def _p10(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[0]


def overhead(what: str, num_steps: int, batch: int, repeats: int = 1) -> dict[str, Any]:
    """`repeats` runs of the loop, each with the bare loop timed just before and
    just after its training, in the same process (the same threads alive, the
    same drift of a shared machine), in windows of the same ``log_every_steps``
    steps. Reported: the median over the runs of loop / bare (medians of their
    windows), and the ratio of the 10th percentiles of all windows (the noise of
    a shared machine only ever adds time)."""
    config = _config(num_steps, batch)
    real_step, real_train = loop.steps.train_step, loop._Run.train
    if what == "proxy":
        step_fn = _counting_step
    else:
        options = loop.step_options(config, loop.model_from_config(config, 10), 10,
                                    population.from_config(config), 1, num_steps)  # fmt: skip
        step_fn = lambda s, b: real_step(s, b, {}, options)  # noqa: E731
    blocks, n = _bare_loop(config, step_fn), max(2, num_steps // config.log_every_steps // 3)
    loops, bares = [], []

    def between_bare(run: Any, *args: Any) -> Any:
        bares.append(blocks(n))
        try:
            return real_train(run, *args)
        finally:
            bares[-1] += blocks(n)

    loop._Run.train = between_bare
    if what == "proxy":
        loop.steps.train_step = _counting_step
    try:
        for _ in range(repeats):
            loops.append(_loop_windows(config))
    finally:
        loop.steps.train_step, loop._Run.train = real_step, real_train
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(loops, bares)]
    out = {"what": what, "batch": batch, "steps": num_steps, "window": config.log_every_steps,
           "loop_median_us": [statistics.median(x) for x in loops],
           "bare_median_us": [statistics.median(x) for x in bares],
           "ratios": ratios, "median_ratio": statistics.median(ratios),
           "p10_ratio": _p10(sum(loops, [])) / _p10(sum(bares, []))}  # fmt: skip
    if what == "proxy":
        out["loop_host_us_per_step"] = _host_us_per_step(config)
    return out


def stacking(step_name: str, num_steps: int, batch: int, repeats: int) -> dict[str, Any]:
    config = _config(num_steps, batch)
    mesh = parallel.make_mesh()
    pipeline = loop.make_pipeline(config, mesh)
    model, members, spe = loop.model_from_config(config, 10), population.from_config(config), pipeline.steps_per_epoch
    options = loop.step_options(config, model, 10, members, spe, num_steps)
    step_fn = _counting_step if step_name == "proxy" else loop.steps.train_step
    population_step = compile_train_step(options, pipeline, members.hyperparameters(), 1)  # traced at its first call
    item = next(pipeline.train_epoch(0))
    states = {"population": create_train_state(model, options.make_tx({}), 32, [config.seed], mesh)}
    one = create_train_state(model, options.make_tx({}), 32, [config.seed], mesh)  # one member: one network's
    states["network"] = jax.device_put(one, parallel.replicated(mesh))  # placed as the trainer placed it

    def network_step(state: Any, window: Any, data: Any, perm: Any, key: Any) -> Any:
        state, metrics = step_fn(state, pipeline.make_batch(data, perm, key, state.step % spe), {}, options)
        return state, accumulate(window, metrics)

    jitted = jax.jit(network_step, donate_argnums=0)
    one_item = population.take(item, 0)
    calls = {
        "population": lambda state, window: population_step(state, window, item),
        "network": lambda state, window: jitted(state, window, pipeline.data, *one_item),
    }
    windows = {"population": empty_window(1, parallel.replicated(mesh)),
               "network": jax.device_put(empty_window(1)[0], parallel.replicated(mesh))}
    block = config.log_every_steps

    def time_block(name: str) -> float:
        t0, window = time.perf_counter(), windows[name]
        for _ in range(block):
            states[name], window = calls[name](states[name], window)
        jax.block_until_ready(window)
        return (time.perf_counter() - t0) / block * 1e6

    times: dict[str, list[float]] = {"population": [], "network": []}
    real_step, loop.steps.train_step = loop.steps.train_step, step_fn
    try:
        for name in calls:  # compilation
            time_block(name)
        for r in range(repeats * max(1, num_steps // block // 2)):
            for name in (("population", "network") if r % 2 else ("network", "population")):  # either first in turn
                times[name].append(time_block(name))
    finally:
        loop.steps.train_step = real_step
    ratio = statistics.median(times["population"]) / statistics.median(times["network"])
    return {"what": "stacking", "step": step_name, "batch": batch, "blocks": len(times["population"]), "window": block,
            "population_median_us": statistics.median(times["population"]),
            "network_median_us": statistics.median(times["network"]),
            "median_ratio": ratio, "p10_ratio": _p10(times["population"]) / _p10(times["network"])}  # fmt: skip


def calls(num_steps: int, repeats: int) -> dict[str, Any]:
    """A jitted identity on ResNet-20's train state (donated), stacked on an axis
    of 1 and not: what JAX's call alone costs for the extra axis."""
    config, mesh = _config(num_steps, 128), parallel.make_mesh()
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 100, 100))
    made = create_train_state(loop.model_from_config(config, 10), tx, 32, [0], mesh)
    unstacked = jax.tree_util.tree_map(np.asarray, made)  # one member: its network's state
    stacked = jax.tree_util.tree_map(lambda x: x[None], unstacked)
    # The conv kernels (rank 4) alone unstacked: what the axis costs on the leaves it makes rank 5.
    conv_unstacked = jax.tree_util.tree_map(lambda s, u: u if u.ndim == 4 else s, stacked, unstacked)
    states = {name: jax.device_put(tree, parallel.replicated(mesh))  # every variant placed alike
              for name, tree in (("stacked", stacked), ("unstacked", unstacked),
                                 ("stacked_but_conv_kernels", conv_unstacked))}  # fmt: skip
    identity, block = jax.jit(lambda state: state, donate_argnums=0), 50

    def time_block(name: str) -> float:
        t0 = time.perf_counter()
        for _ in range(block):
            states[name] = identity(states[name])
        jax.block_until_ready(states[name])
        return (time.perf_counter() - t0) / block * 1e6

    times: dict[str, list[float]] = {name: [time_block(name)] for name in states}
    for r in range(repeats * max(1, num_steps // block // 2)):
        for name in (list(states) if r % 2 else list(states)[::-1]):
            times[name].append(time_block(name))
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    ranks = [x.ndim for x in jax.tree_util.tree_leaves(unstacked)]
    return {"what": "calls", "arrays": len(ranks), "rank_4_arrays": ranks.count(4), "blocks": len(times["stacked"]) - 1,
            "stacked_median_us": medians["stacked"], "unstacked_median_us": medians["unstacked"],
            "stacked_but_conv_kernels_median_us": medians["stacked_but_conv_kernels"],
            "median_ratio": medians["stacked"] / medians["unstacked"],
            "p10_ratio": _p10(times["stacked"][1:]) / _p10(times["unstacked"][1:])}  # fmt: skip


def sweep(num_steps: int, batch: int) -> dict[str, Any]:
    config = _config(num_steps, batch)
    config.sweep = "learning_rate=0.05,0.1,0.2 weight_decay=1e-4,5e-4"
    t0 = time.perf_counter()
    loop.train_and_evaluate(config, tempfile.mkdtemp(prefix="sweep_"))
    together = time.perf_counter() - t0
    members = population.from_config(config)
    t0 = time.perf_counter()
    for k in range(members.size):
        loop.train_and_evaluate(population.member_config(config, members, k), tempfile.mkdtemp(prefix="alone_"))
    alone = time.perf_counter() - t0
    return {"what": "sweep", "members": members.size, "batch": batch, "steps": num_steps,
            "member_batching": parallel.member_batching(config.member_batching),
            "together_s": together, "separate_s": alone, "ratio": together / alone}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("what", choices=["proxy", "resnet20", "sweep", "stacking", "calls"])
    p.add_argument("--step", choices=["proxy", "resnet20"], default="proxy", help="stacking: the step timed")
    p.add_argument("--steps", type=int, default=0, help="default: 3000 (proxy), 300 (resnet20), 40 (sweep)")
    p.add_argument("--batch", type=bench.positive, default=128)
    p.add_argument("--examples", type=bench.positive, default=50000, help="synthetic training images")
    p.add_argument("--repeats", type=bench.positive, default=1, help="loop runs, each with the bare loop around it")
    args = p.parse_args(argv)
    _use_synthetic_data(args.examples)
    num_steps = args.steps or {"proxy": 3000, "resnet20": 300, "sweep": 40, "stacking": 3000, "calls": 3000}[args.what]
    if args.what == "calls":
        out = calls(num_steps, args.repeats)
    elif args.what == "sweep":
        out = sweep(num_steps, args.batch)
    elif args.what == "stacking":
        out = stacking(args.step, num_steps, args.batch, args.repeats)
    else:
        out = overhead(args.what, num_steps, args.batch, args.repeats)
    out.update(device=f"{jax.device_count()} x {jax.devices()[0].device_kind}", jax=jax.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    bench.run(main)
