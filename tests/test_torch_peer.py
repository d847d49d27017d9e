"""The PyTorch referee (bench/torch_peer.py) is the same network as ours: with
the same weights and batch it gives the same training loss and gradients, so a
difference between the two trainers is not in the model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models

torch = pytest.importorskip("torch")
from bench.torch_peer import CifarResNet  # noqa: E402


def _torch_copy(params: dict, depth: int) -> "torch.nn.Module":
    """Our `cifar_resnet<depth>` parameters in the peer's float64 module."""

    def t(a, conv=False):
        a = np.asarray(a, np.float64)
        return torch.from_numpy(a.transpose(3, 2, 0, 1).copy() if conv else a)

    def bn(module, p):
        module.weight.copy_(t(p["scale"]))
        module.bias.copy_(t(p["bias"]))

    net = CifarResNet(depth, 10).double()
    n = (depth - 2) // 6
    with torch.no_grad():
        net.stem[0].weight.copy_(t(params["stem_conv"]["kernel"], conv=True))
        bn(net.stem[1], params["stem_bn"])
        for i, block in enumerate(net.layers):
            p = params[f"stage{i // n + 1}"][f"block{i % n}"]
            block.conv1.weight.copy_(t(p["conv1"]["kernel"], conv=True))
            block.conv2.weight.copy_(t(p["conv2"]["kernel"], conv=True))
            bn(block.bn1, p["bn1"])
            bn(block.bn2, p["bn2"])
        net.fc.weight.copy_(t(params["head"]["kernel"]).T)
        net.fc.bias.copy_(t(params["head"]["bias"]))
    return net


@pytest.mark.slow
def test_same_loss_and_gradients_as_the_pytorch_peer():
    depth = 20
    model = models.create(f"cifar_resnet{depth}", num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    rng = np.random.RandomState(0)
    x, y = rng.randn(32, 32, 32, 3).astype(np.float32), rng.randint(0, 10, 32)

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
    net = _torch_copy(variables["params"], depth).train()
    torch_loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)),
                                                   torch.from_numpy(y))  # fmt: skip
    torch_loss.backward()

    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-5)
    pairs = [
        (grads["stem_conv"]["kernel"], net.stem[0].weight.grad, True),
        (grads["head"]["kernel"], net.fc.weight.grad.T, False),
    ]
    n = (depth - 2) // 6
    for i, block in enumerate(net.layers):
        g = grads[f"stage{i // n + 1}"][f"block{i % n}"]
        pairs += [
            (g["conv1"]["kernel"], block.conv1.weight.grad, True),
            (g["bn2"]["scale"], block.bn2.weight.grad, False),
        ]
    for ours, theirs, conv in pairs:
        theirs = theirs.numpy().transpose(2, 3, 1, 0) if conv else theirs.numpy()
        # float32 against float64: PyTorch's own float32 stem gradient is off by
        # 2.5e-3 of its largest entry here; a wrong network is off by O(1).
        np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, atol=1e-2 * np.abs(theirs).max(), rtol=0)


def test_referee_crops_pad_with_black_as_ours_do():
    """bench/torch_accuracy's crops are windows of the uint8 image padded with
    black (0), some flipped: what our pipelines feed, before normalisation."""
    from bench.torch_accuracy import crop_flip

    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 8, 8, 3), np.uint8)
    out = crop_flip(torch.from_numpy(images), 2, torch.Generator().manual_seed(0)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    flipped = 0
    for image, crop in zip(padded, out):
        windows = [image[y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        plain = any(np.array_equal(crop, w) for w in windows)
        mirrored = any(np.array_equal(crop[:, ::-1], w) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert (out == 0).any() and 10 < flipped < 54  # black borders entered; about half flipped
