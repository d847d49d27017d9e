"""The paper's plain 20-layer baseline (no shortcuts) with the CIFAR-10 recipe;
--config.model=cifar_plain{32,44,56,110} for the deeper ones (Fig. 6 left)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from cifar10_resnet20 import get_config as _resnet20  # noqa: E402


def get_config():
    c = _resnet20()
    c.model = "cifar_plain20"
    return c
