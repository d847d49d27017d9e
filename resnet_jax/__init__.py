"""resnet_jax: the ResNet family in JAX and Flax, with a data-parallel trainer.

The package imports without TensorFlow; the tf.data pipelines are imported
only when a config asks for them.
"""

from resnet_jax.export import export
from resnet_jax.restore import restore

__version__ = "0.1.0"
__all__ = ["export", "restore"]
