"""Our Linen modules from Flax NNX code, through ``flax.nnx.bridge.ToNNX`` (the README's example)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx import bridge

from resnet_jax import models


def test_resnet_from_nnx_trains_updates_batch_stats_and_matches_apply():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    y = jnp.arange(8) % 10
    linen_model = models.create("cifar_resnet20")
    model = bridge.ToNNX(linen_model, rngs=nnx.Rngs(0)).lazy_init(x, train=False)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x, train=True, mutable=["batch_stats"])  # updates the BN running averages
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    stats_before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    params_before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    losses = [float(train_step(model, optimizer, x, y)) for _ in range(5)]
    assert losses[-1] < losses[0] - 0.1, losses
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(stats_before["stem_bn"]["mean"], 0.0)
    assert float(jnp.abs(stats["stem_bn"]["mean"]).max()) > 1e-4  # running averages moved
    assert float(jnp.abs(params["head"]["kernel"] - params_before["head"]["kernel"]).max()) > 1e-4

    # Evaluation uses the running averages, and gives model.apply's logits for the same variables.
    variables = {"params": params, "batch_stats": stats}
    nnx_logits = model(x, train=False)
    np.testing.assert_allclose(nnx_logits, linen_model.apply(variables, x, train=False), atol=1e-6)
    # The backbone's features through the bridge, as method="features" in Linen.
    pooled = model.features(x, train=False)["pooled"]
    expected = linen_model.apply(variables, x, train=False, method="features")["pooled"]
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    # Training mode normalises with the batch's statistics instead.
    assert not np.allclose(nnx_logits, model(x, train=True, mutable=["batch_stats"]), atol=1e-3)
