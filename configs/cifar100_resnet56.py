"""CIFAR-100 with ResNet-56: the paper's CIFAR-10 schedule (batch 128, lr 0.1
divided by 10 at 32k and 48k iterations, 64k in all, weight decay 1e-4), 100
classes. TFDS cifar100, or a folder with --config.data.path."""

from resnet_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "cifar_resnet56"
    c.num_train_steps = 64000
    c.lr_boundaries = (32000, 48000)
    c.data.name = "cifar100"
    c.data.mean = (0.5071, 0.4865, 0.4409)
    c.data.std = (0.2673, 0.2564, 0.2762)
    return c
