"""The paper's CIFAR-10 recipe for ResNet-110 (and --config.model=cifar_plain110).

As in the paper, ResNet-110 warms up at lr 0.01 for 400 iterations (until
the training error is below 80%), then goes back to 0.1."""

from resnet_jax.config import cifar10_paper_config


def get_config():
    return cifar10_paper_config("cifar_resnet110")
