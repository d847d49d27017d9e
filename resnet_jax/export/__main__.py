"""``python -m resnet_jax.export``: see `resnet_jax.export`."""

from resnet_jax.errors import run_main
from resnet_jax.export import main

run_main(main)
