"""The paper's CIFAR-10 recipe for ResNet-44 (and --config.model=cifar_plain44)."""

from resnet_jax.config import cifar10_paper_config


def get_config():
    return cifar10_paper_config("cifar_resnet44")
