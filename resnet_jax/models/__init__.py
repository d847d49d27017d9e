"""The ResNet family as Flax linen modules.

>>> from resnet_jax import models
>>> model = models.create("resnet50", num_classes=10)
>>> variables = model.init(jax.random.key(0), images, train=False)
>>> logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

from resnet_jax.models import cifar as _cifar  # noqa: F401  (registers the CIFAR family)
from resnet_jax.models.blocks import (
    BasicBlock,
    BatchNorm,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
)
from resnet_jax.models.profile import count_layers, count_params, profile
from resnet_jax.models.registry import create, family, list_models
from resnet_jax.models.resnet import ResNet

__all__ = [
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "count_layers",
    "count_params",
    "create",
    "family",
    "list_models",
    "profile",
]
