"""ResNet-50 on ImageNet with MLPerf Training's LARS recipe (target 75.9% top-1).

Source: mlcommons/training at commit db5b42e0 (the last before the benchmark was
retired), `image_classification/README.md`, the "TPU-V3-64" command of the
TensorFlow 2 reference (`tensorflow2/resnet_ctl_imagenet_main.py`), all of its
values: batch 4,096, `--optimizer=LARS --base_learning_rate=10.0 --momentum=0.9
--weight_decay=0.0002 --lars_epsilon=0 --label_smoothing=0.1
--lr_schedule=polynomial --warmup_epochs=5 --train_epochs=42`, with
`lars_util.py`'s defaults (linear warm-up from 0, then polynomial decay of power
2 to `end_learning_rate` 1e-4, set every step) and `lars_optimizer.py`'s LARS
(trust coefficient `eeta` 0.001; its `epsilon or backend_config.epsilon()` turns
`--lars_epsilon=0` into Keras's 1e-7; batch norm and biases skip both the decay
and the trust ratio), evaluation of the central 224 of the image resized to 256,
bilinear resizing.
The same README's "GPU-V100-8" command is the alternative: lr 8.5, batch 1,024 x
2 accumulation steps = 2,048, 41 epochs (`--config.learning_rate=8.5
--config.batch_size=2048 --config.num_epochs=41`).

Not yet a result of this package. Differences, each in docs/recipes.md: batch-norm statistics are
per group of 64 as the reference's per replica, their running averages the groups' mean; the
reference initialises convolutions with Keras's `he_normal` (truncated normal, fan-in) and the
classifier with N(0, 0.01), ours with torchvision's normal fan-out and uniform; its random crops
(TensorFlow's `sample_distorted_bounding_box`, ours too: ``data.crop_sampler="tf"``) cover 5-100% of
the image in up to 100 tries, ours 8-100% in 10; it resizes bilinearly without
antialiasing, ours bilinearly with it; its polynomial decay runs over ``train - warmup + 1`` steps,
ours over ``train - warmup``; bfloat16 compute instead of float32.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as baseline  # noqa: E402


def get_config(model: str = "resnet50"):
    c = baseline(model)
    c.batch_size = 4096
    c.num_epochs = 42
    c.optimizer = "lars"
    c.learning_rate = 10.0
    c.lr_linear_scaling = False
    c.lr_schedule = "polynomial"
    c.lr_power = 2.0
    c.lr_end = 1e-4
    c.warmup_epochs = 5
    c.momentum = 0.9
    c.nesterov = False
    c.lars_trust_coefficient = 0.001
    c.lars_eps = 1e-7  # `0 or backend_config.epsilon()`
    c.weight_decay = 2e-4
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    c.model_kwargs.zero_init_residual = False  # the reference's batch norms all start at 1
    c.source_devices = 64  # TPU-v3-64's 64 replicas: batch-norm statistics per replica (4,096 over 64)
    c.data.interpolation = "bilinear"  # imagenet_preprocessing._resize_image
    c.data.crop_sampler = "tf"  # imagenet_preprocessing._decode_crop_and_flip: sample_distorted_bounding_box
    return c
