"""ResNet-50 on ImageNet with timm's "ResNet strikes back" procedure A3 (78.1% top-1).

Source: arXiv 2110.00476, Table 1: as A1 (configs/imagenet_resnet50_rsb_a1.py)
but 100 epochs, lr 8e-3, weight decay 0.02, mixup 0.1, RandAugment m6, no
stochastic depth, no repeated augmentation, training at 160 (evaluation at 224,
crop ratio 0.95). Published: 78.1%. Not yet a result of this package.
Differences: A1's (docs/recipes.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50_rsb_a1 import rsb_config  # noqa: E402


def get_config(model: str = "resnet50"):
    return rsb_config(model, epochs=100, lr=8e-3, weight_decay=0.02, mixup=0.1, magnitude=6, drop_path=0.0,
                      repeats=1, train_size=160)  # fmt: skip
