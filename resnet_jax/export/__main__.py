"""``python -m resnet_jax.export``: see `resnet_jax.export`."""

from resnet_jax.errors import run_main, stop_while_starting

stop_while_starting("export")  # before the imports that take seconds

import jax  # noqa: E402, F401  (and what an export needs, while a stop still ends it at once)

import resnet_jax.restore  # noqa: E402, F401
from resnet_jax.export import main  # noqa: E402

run_main(main)
