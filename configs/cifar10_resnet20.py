"""The paper's CIFAR-10 recipe (He et al. 2015, Section 4.2) for ResNet-20.

Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k
and 48k iterations, 64k iterations in all (about 164 epochs). The recipe is
`resnet_jax.config.cifar10_paper_config`; other depths: --config.model=cifar_resnet56
(or cifar_plain56, ...), or the other files of this folder.
"""

from resnet_jax.config import cifar10_paper_config


def get_config():
    return cifar10_paper_config("cifar_resnet20")
