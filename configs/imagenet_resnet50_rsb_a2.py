"""ResNet-50 on ImageNet with timm's "ResNet strikes back" procedure A2 (79.8% top-1).

Source: arXiv 2110.00476, Table 1: as A1 (configs/imagenet_resnet50_rsb_a1.py)
but 300 epochs, weight decay 0.02, mixup 0.1. Published: 79.8%. Not yet a
result of this package. Differences: A1's (docs/recipes.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50_rsb_a1 import rsb_config  # noqa: E402


def get_config(model: str = "resnet50"):
    return rsb_config(model, epochs=300, lr=5e-3, weight_decay=0.02, mixup=0.1, magnitude=7, drop_path=0.05,
                      repeats=3, train_size=224)  # fmt: skip
