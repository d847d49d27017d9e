"""The paper's CIFAR-10 recipe for ResNet-56 (and --config.model=cifar_plain56)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from cifar10_resnet20 import get_config as _resnet20  # noqa: E402


def get_config():
    c = _resnet20()
    c.model = "cifar_resnet56"
    return c
