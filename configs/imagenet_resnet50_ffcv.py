"""ResNet-50 on ImageNet with FFCV's recipe (75.6% top-1 in 24 epochs, 78.1% in 88).

Source: libffcv/ffcv-imagenet `rn50_configs` (`rn50_{16,24,32,40,56,88}_epochs.yaml`):
SGD lr 1.7 at batch 1024, momentum 0.9, weight decay 1e-4 (none on batch
norm), label smoothing 0.1, a triangular schedule (linear up over 2
epochs, linear down to 0), progressive resizing from 160 to 192 over the last
epochs (`data.progressive_resizing`: the ramp's epochs scale with `num_epochs`)
and evaluation at 256 (FFCV's `val_res` 256 with a 224/256 centre crop ratio),
test-time flips. Published: 71% (16 epochs), 75.6% (24), 78.1% (88) on 8 A100s.
`--config.num_epochs=88` for the long one.

Not yet a result of this package. Differences: FFCV's BlurPool is not
implemented; the onecycle schedule here starts at lr/25, FFCV's at 0 (with
`lr_schedule="onecycle"`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from imagenet_resnet50 import get_config as baseline  # noqa: E402


def get_config(model: str = "resnet50"):
    c = baseline(model)
    c.batch_size = 1024
    c.num_epochs = 24
    c.learning_rate = 1.7
    c.lr_linear_scaling = False
    c.lr_schedule = "onecycle"
    c.warmup_epochs = 2
    c.nesterov = False
    c.weight_decay = 1e-4
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    c.eval_flip = True
    c.model_kwargs.zero_init_residual = False
    # FFCV's ramp for 88 epochs is 65 -> 76 (of 88): the same fractions of the run.
    start, end = round(c.num_epochs * 65 / 88), round(c.num_epochs * 76 / 88)
    c.data.progressive_resizing = f"160:192:{start}:{end}"
    c.data.image_size = 256
    c.data.crop_fraction = 224 / 256
    return c
