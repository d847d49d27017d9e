"""resnet_jax: the ResNet family in JAX and Flax, with a data-parallel trainer."""

__version__ = "0.1.0"
