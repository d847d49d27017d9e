"""The paper's CIFAR-10 recipe for ResNet-110 (and --config.model=cifar_plain110).

As in the paper, ResNet-110 warms up at lr 0.01 for 400 iterations (until
the training error is below 80%), then goes back to 0.1."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from cifar10_resnet20 import get_config as _resnet20  # noqa: E402


def get_config():
    c = _resnet20()
    c.model = "cifar_resnet110"
    c.warmup_constant_steps = 400
    c.warmup_constant_lr = 0.01
    return c
