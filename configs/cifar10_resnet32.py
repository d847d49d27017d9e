"""The paper's CIFAR-10 recipe for ResNet-32 (and --config.model=cifar_plain32)."""

from resnet_jax.config import cifar10_paper_config


def get_config():
    return cifar10_paper_config("cifar_resnet32")
