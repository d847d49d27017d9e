"""ResNet-50 on ImageNet with torchvision's "V2" recipe (80.858% top-1).

Source: torchvision's `IMAGENET1K_V2` weights, trained with the command of
pytorch/vision PR 5201 / issue 3995 ("How to train state-of-the-art models
using TorchVision's latest primitives"): 8 GPUs x batch 128, SGD lr 0.5,
5 linear warm-up epochs then cosine, 600 epochs, weight decay 2e-5 (none on
batch norm), label smoothing 0.1, mixup 0.2 / cutmix 1.0, TrivialAugmentWide,
random erasing 0.1, repeated augmentation x4, EMA every 32 steps (decay 0.99998,
adjusted by torchvision for batch and steps), training crops of 176, evaluation
resized to 232 and cropped to 224. Published: 80.858% top-1, 95.434% top-5.

Not yet a result of this package: nobody has trained it here (600 epochs of
ImageNet are weeks of a GPU). Differences: the dense head's bias takes no decay
here (`weight_decay_exclude_bn_bias` excludes every 1-D parameter; torchvision
exempts the norms only); the augmentations run on the accelerator, inside the
train step (`resnet_jax.data.batch_augment`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as baseline  # noqa: E402


def get_config(model: str = "resnet50"):
    c = baseline(model)
    c.batch_size = 1024
    c.num_epochs = 600
    c.learning_rate = 0.5
    c.lr_linear_scaling = False
    c.lr_schedule = "cosine"
    c.warmup_epochs = 5
    c.nesterov = False
    c.weight_decay = 2e-5
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0
    c.auto_augment = "trivial"
    c.random_erasing = 0.1
    c.ema_every_steps = 32
    # torchvision: alpha = (1 - 0.99998) * world_size * batch_per_gpu * ema_steps / epochs
    c.ema_decay = 1 - (1 - 0.99998) * c.batch_size * c.ema_every_steps / c.num_epochs
    c.model_kwargs.zero_init_residual = False
    d = c.data
    d.train_image_size = 176
    d.image_size = 224
    d.crop_fraction = 224 / 232
    d.repeated_augmentations = 4
    return c
