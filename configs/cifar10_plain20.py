"""The paper's plain 20-layer baseline (no shortcuts) with the CIFAR-10 recipe;
--config.model=cifar_plain{32,44,56,110} for the deeper ones (Fig. 6 left)."""

from resnet_jax.config import cifar10_paper_config


def get_config():
    return cifar10_paper_config("cifar_plain20")
