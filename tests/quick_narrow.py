"""configs/cifar10_quick.py on a narrow ResNet-8 (cifar_resnet20's blocks, one a
stage, 4-8-16 filters, as `conftest.tiny_config`): the config file of the tests
that start train.py, whose runs then compile and trace in a fraction of a
ResNet-20's time, and draw no curves.png (matplotlib's import and drawing cost
more than a tiny run's training; tests/test_plot.py and the population and
study tests draw them). Everything else is the recipe's."""

import importlib.util
import os

_QUICK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cifar10_quick.py")


def get_config():
    spec = importlib.util.spec_from_file_location("cifar10_quick", _QUICK)
    quick = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quick)
    c = quick.get_config()
    c.model_kwargs.stage_sizes, c.model_kwargs.stage_widths = (1, 1, 1), (4, 8, 16)
    c.curves_every_seconds = -1.0
    return c
