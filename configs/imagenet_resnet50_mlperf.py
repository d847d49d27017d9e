"""ResNet-50 on ImageNet with MLPerf Training's LARS recipe (target 75.9% top-1).

Source: mlcommons/training `image_classification` (the TensorFlow 2 reference
and its `lars_util.py`): LARS (momentum 0.9, trust coefficient 0.001, epsilon
0, no weight decay or trust ratio on batch norm and bias), 5 linear warm-up
epochs then polynomial decay of power 2 to 0.0001, label smoothing 0.1, weight
decay 5e-5, about 41 epochs to the 75.9% target, at batch sizes of 3k and up.
The peak learning rate is tuned with the batch in MLPerf submissions; 10.8
here is the TensorFlow Model Garden's MLPerf LARS value: set `learning_rate`
and `batch_size` together for your hardware.

Not yet a result of this package.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as baseline  # noqa: E402


def get_config(model: str = "resnet50"):
    c = baseline(model)
    c.batch_size = 3072
    c.num_epochs = 41
    c.optimizer = "lars"
    c.learning_rate = 10.8
    c.lr_linear_scaling = False
    c.lr_schedule = "polynomial"
    c.lr_power = 2.0
    c.lr_end = 1e-4
    c.warmup_epochs = 5
    c.nesterov = False
    c.weight_decay = 5e-5
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    return c
