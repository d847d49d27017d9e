"""The train state: parameters, batch-norm statistics, optimiser state, step,
an optional EMA of the weights, and the RNG key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.training import population


class TrainState(flax.struct.PyTreeNode):
    """Everything a training run needs to continue; a pytree (checkpointable).

    Attributes:
      step: number of optimiser updates done.
      params, batch_stats: the model's variables.
      opt_state: the optimiser's state.
      ema_params, ema_batch_stats: exponential moving average of the variables
        (None when EMA is off).
      rng: raw key data (uint32) of the run's PRNG key.
      apply_fn, tx: the model's apply and the optimiser (static, not saved).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    ema_params: Any | None
    ema_batch_stats: Any | None
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def apply_gradients(
        self, grads: Any, batch_stats: Any, ema_decay: Any = 0.0, tx: optax.GradientTransformation | None = None,
        ema_every: int = 1,
    ) -> TrainState:
        """One optimiser update (with `tx`, e.g. built from a population member's
        hyperparameters; default: the state's own); also updates the EMA when it
        is on, every `ema_every` steps."""
        updates, opt_state = (tx or self.tx).update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema_params, ema_stats = self.ema_params, self.ema_batch_stats
        if ema_params is not None:
            decay = ema_decay if ema_every == 1 else jnp.where((self.step + 1) % ema_every == 0, ema_decay, 1.0)

            def ema(old: Any, new: Any) -> Any:
                return jax.tree_util.tree_map(lambda o, n: decay * o + (1 - decay) * n, old, new)

            ema_params, ema_stats = ema(ema_params, params), ema(ema_stats, batch_stats)
        return self.replace(
            step=self.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_params,
            ema_batch_stats=ema_stats,
        )

    def variables(self, ema: bool = False) -> dict:
        """``{"params", "batch_stats"}`` for `model.apply` (the EMA ones if `ema`)."""
        if ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def step_of(state: TrainState) -> int:
    """The state's step as a Python int (the members of a stacked state share it)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_size: int,
    seeds: Sequence[int],
    mesh: Mesh,
    use_ema: bool = False,
) -> TrainState:
    """The states of a population's members, one per seed, stacked on a leading
    axis and replicated over `mesh`, as the loop holds them (`population.stored`:
    for one seed, its network's state alone). Each member's arrays are those its
    seed makes alone: `population.member(state, len(seeds), k)` is a network's
    whole state."""

    def init(key: jax.Array) -> TrainState:
        init_key, run_key = jax.random.split(key)
        x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init(init_key, x, train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            ema_params=params if use_ema else None,
            ema_batch_stats=batch_stats if use_ema else None,
            rng=jax.random.key_data(run_key),
            apply_fn=model.apply,
            tx=tx,
        )

    keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])

    def init_all(keys: jax.Array) -> TrainState:
        return population.stored(jax.vmap(init)(jax.random.wrap_key_data(keys)), len(seeds))

    return jax.jit(init_all, out_shardings=parallel.replicated(mesh))(keys)
