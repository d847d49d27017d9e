"""Repeated augmentation (Hoffer et al. 2020, "Augment your batch"; DeiT), as
torchvision's `RASampler` (references/classification/sampler.py, from DeiT's
samplers.py; timm's `RepeatAugSampler` is the same sampler) selects examples.

``config.data.repeated_augmentations`` = r (default 1: off). RASampler shuffles
the N indices, repeats each r times in place (``[a, a, a, b, b, b, ...]``), deals
that list to the replicas and keeps the first ``N // 256 * 256 / world`` of each
replica's part: an epoch as long as without repetition, made of about N / r
images seen r times each. Here the replica is a process's share of the dataset
(n examples, ``length`` = steps_per_epoch x local batch trained per epoch):
position ``p`` of epoch ``e`` reads example ``order[p // r]`` of the epoch's
permutation ``order`` of the share, so the epoch uses its first
``ceil(length / r)`` examples, each r times in consecutive positions of that
stream: RASampler's list before it deals it. RASampler then deals the list to
the replicas, so an image's copies go to r different GPUs, each with its own
batch-norm statistics and mixing draw. With ``source_devices`` set, the batch
layout (`resnet_jax.batch_layout`) deals each batch's run of the stream to the
source's devices the same way (position ``d * b + u`` of a batch reads
position ``u * S + d`` of its run); without it the copies stay side by side.
Each position keeps its own augmentation draw, so the r copies are augmented
independently, and the epoch keeps its number of steps (the learning-rate
schedule is unchanged).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_jax.errors import ConfigError


def repeats(cfg: Any) -> int:
    """``config.data.repeated_augmentations`` (`cfg`: ``config.data``), checked; 1 when absent."""
    r = cfg.get("repeated_augmentations", 1)
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ConfigError(f"data.repeated_augmentations={r!r}: use a whole number of copies per image, 1 = off")
    return int(r)


def num_selected(length: int, r: int) -> int:
    """How many distinct examples an epoch of `length` positions reads with `r` copies of each."""
    return -(-length // r)
