"""``python -m resnet_jax.export``: see `resnet_jax.export`."""

import sys

from resnet_jax.export import main

sys.exit(main())
