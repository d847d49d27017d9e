"""ResNet-18 with a CIFAR stem (3x3 stride-1 stem of 64 filters, no max-pool;
4 stages of 64-128-256-512, 11.2M parameters): the CIFAR-10 baseline of much
research code, not the paper's 3-stage 0.27M ResNet-20.

SGD lr 0.1, momentum 0.9, weight decay 5e-4 (on every parameter), cosine to 0
over 200 epochs, batch 128, crops of the image padded by 4 and flips; the
images are decoded once and kept on the device. Accuracy on CIFAR-10 (JPEG
copy) and wall time: still to be measured on a GPU (see README "Results").
--config.model=cifar_resnet34, cifar_resnet50 or cifar_preact_resnet18 for the others.
"""

from resnet_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "cifar_resnet18"
    c.batch_size = 128
    c.num_epochs = 200
    c.learning_rate = 0.1
    c.lr_schedule = "cosine"
    c.warmup_epochs = 0.0
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.data.pipeline = "device"
    return c
