"""ResNet-50 on ImageNet with torchvision's "V2" recipe (80.858% top-1).

Source: torchvision's `IMAGENET1K_V2` weights, trained with the command of the
blog post "How to Train State-Of-The-Art Models Using TorchVision's Latest
Primitives" (pytorch/vision issue 3995): `torchrun --nproc_per_node=8 train.py
--model resnet50 --batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr
--lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment ta_wide --epochs 600
--random-erase 0.1 --weight-decay 0.00002 --norm-weight-decay 0.0
--label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --train-crop-size 176
--model-ema --val-resize-size 232 --ra-sampler --ra-reps 4`, with the defaults of
`references/classification/train.py` and `presets.py`: 8 x 128 = 1,024 images a
step, SGD momentum 0.9, the learning rate set once an epoch, a warm-up from
0.01 x lr (`--lr-warmup-decay`), EMA every 32 steps (decay 0.99998, adjusted by
torchvision for batch and steps), bilinear interpolation in the random-resized
crop (`RandomResizedCrop`'s window: ``data.crop_sampler="torchvision"``),
TrivialAugmentWide and the evaluation resize, mixup or cutmix drawn once per GPU
batch of 128 with each image paired with the previous one (`roll(1)`) and
`transforms.v2.CutMix`'s box, in float32 (the command has no `--amp`). The
weights were trained in late 2021, with torchvision 0.11's TrivialAugmentWide,
whose shear turns by m radians about the centre (vision PR 5285 later made it
factor m about the corner): ``auto_augment_shear="centre"``.
Published: 80.858% top-1, 95.434% top-5 (the weights' EMA).

Not yet a result of this package: nobody has trained it here (600 epochs of ImageNet are weeks of a
GPU). Differences, each in docs/recipes.md: batch-norm statistics are per group of 128 as
torchvision's per GPU, but the running averages are the groups' mean where DDP keeps the first
GPU's; the dense head's bias takes no decay here (`weight_decay_exclude_bn_bias` excludes every 1-D
parameter; torchvision exempts the norms only); the EMA is not reset to the weights during the
warm-up epochs as torchvision's is; bfloat16 compute instead of float32; the augmentations run
on the accelerator, inside the train step (`resnet_jax.augment.batch`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as baseline  # noqa: E402


def get_config(model: str = "resnet50"):
    c = baseline(model)
    c.batch_size = 8 * 128  # nproc_per_node x batch-size
    c.num_epochs = 600
    c.learning_rate = 0.5
    c.lr_linear_scaling = False
    c.lr_schedule = "cosine"
    c.warmup_epochs = 5
    c.warmup_start_factor = 0.01  # --lr-warmup-decay's default
    c.lr_step_every_epoch = True  # train.py steps its schedulers once an epoch
    c.nesterov = False
    c.weight_decay = 2e-5
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0
    c.mixup_style = "torchvision"
    c.auto_augment = "trivial"
    c.auto_augment_interpolation = "bilinear"
    c.auto_augment_shear = "centre"  # torchvision 0.11's TrivialAugmentWide shear, before vision PR 5285
    c.random_erasing = 0.1
    c.ema_every_steps = 32
    # torchvision: alpha = (1 - 0.99998) * world_size * batch_per_gpu * ema_steps / epochs, resolved from the
    # batch, the EMA's period and the epochs wherever they are set (command line included)
    steps = c.get_ref("batch_size").to_float() * c.get_ref("ema_every_steps") / c.get_ref("num_epochs")
    c.ema_decay = 1 - (1 - 0.99998) * steps
    c.model_kwargs.zero_init_residual = False
    # --nproc_per_node=8: each GPU's 128 images its own batch-norm statistics, mixing draw and copy of a repeated
    # image (RASampler deals the 4 copies to 4 GPUs), whatever devices this run has (resnet_jax.batch_layout)
    c.source_devices = 8
    d = c.data
    d.train_image_size = 176
    d.image_size = 224
    d.crop_fraction = 224 / 232
    d.interpolation = "bilinear"
    d.crop_sampler = "torchvision"  # presets.py: RandomResizedCrop
    d.repeated_augmentations = 4
    return c
