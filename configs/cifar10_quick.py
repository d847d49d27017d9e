"""A short CIFAR-10 recipe a CPU can finish: ResNet-20 in 10 epochs.

One-cycle learning rate (linear up for 1 epoch to 0.1, linear down to 0),
Nesterov momentum, label smoothing 0.1, batch 32 (4x the updates of batch 128:
ResNet-20 underfits in 10 epochs; per image it is about 12% slower than 128 on
a 2-core CPU, see docs/cpu.md), weight decay 5e-4 excluding BN and biases,
crops of an image padded by 2 pixels (not 4: in 10 epochs the lighter
augmentation scored 0.6-1.1 points higher on two seeds, see README "Results"),
and flip test-time augmentation at evaluation.

The data are decoded once and kept in memory (the on-device pipeline, which on
a CPU is host memory): 365-373 img/s against 286-321 through tf.data, which
decodes every JPEG every epoch on the same 2 cores (README "Results"). Set
config.data.path to an image folder (e.g. the CIFAR-10 JPEG copy) or keep the
TFDS cifar10 dataset.
"""

from resnet_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "cifar_resnet20"
    c.batch_size = 32
    c.num_epochs = 10
    c.learning_rate = 0.1
    c.lr_schedule = "onecycle"
    c.warmup_epochs = 1
    c.warmup_start_factor = 1 / 25
    c.nesterov = True
    c.weight_decay = 5e-4
    c.weight_decay_exclude_bn_bias = True
    c.label_smoothing = 0.1
    c.data.crop_padding = 2
    c.data.pipeline = "device"
    c.eval_flip = True
    return c
