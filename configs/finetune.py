"""Fine-tune a pretrained backbone on an image folder.

    python -m resnet_jax.convert torchvision resnet18 resnet18.safetensors runs/tv_resnet18
    python train.py --config configs/finetune.py --workdir runs/ft \
        --config.init_from=runs/tv_resnet18 --config.data.path=/data/my_images

A new head for the folder's classes; the backbone learns at a tenth of the
head's rate (--config.backbone_lr_multiplier), or not at all
(--config.freeze_backbone=True); --config.freeze_bn=True keeps the pretrained
batch-norm statistics. ImageNet preprocessing at data.image_size.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagefolder import get_config as _imagefolder  # noqa: E402


def get_config():
    c = _imagefolder()
    c.model = "resnet18"
    c.init_from = ""  # required: a workdir with checkpoints/
    c.num_epochs = 5
    c.learning_rate = 0.01
    c.lr_linear_scaling = False
    c.warmup_epochs = 0
    c.backbone_lr_multiplier = 0.1
    c.weight_decay_exclude_bn_bias = True
    return c
