"""resnet_jax: the ResNet family in JAX and Flax, with a data-parallel trainer.

The package imports without TensorFlow; the tf.data pipelines are imported
only when a config asks for them. ``import resnet_jax`` itself imports
nothing heavy: `export` and `restore` (functions named as their modules)
import JAX when first used, so that ``python -m resnet_jax.<command>`` can
take its signals before its imports that take seconds.
"""

import importlib
import sys
import types

__version__ = "0.1.0"
__all__ = ["export", "restore"]


class _Package(types.ModuleType):
    """The package's module: ``resnet_jax.export`` and ``resnet_jax.restore`` stay
    the functions when their modules are imported (which sets the package's
    attribute of that name to the module)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


def __getattr__(name: str) -> object:
    if name in __all__:
        importlib.import_module(f"{__name__}.{name}")  # its import sets the function (`_Package`)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
