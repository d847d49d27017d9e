"""ResNet-101 on ImageNet: the recipe of imagenet_resnet50.py with another depth."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as _resnet50  # noqa: E402


def get_config():
    return _resnet50("resnet101")
