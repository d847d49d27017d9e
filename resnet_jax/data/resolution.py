"""The size of the training crops in each epoch: FixRes and progressive resizing.

Two options of ``config.data`` (read with defaults, so configs without them keep
training at ``image_size``):

- ``train_image_size`` (int, 0 = ``image_size``): FixRes (Touvron et al. 2019,
  "Fixing the train-test resolution discrepancy"): random-resized crops of this
  size for training, while evaluation keeps resizing the short side to
  ``image_size / crop_fraction`` and cropping ``image_size``. torchvision's V2
  recipe: ``train_image_size=176, image_size=224, crop_fraction=224/232``.
- ``progressive_resizing`` (str, "" = off): ``"min:max:start_ramp:end_ramp"``,
  FFCV's ImageNet schedule (libffcv/ffcv-imagenet, ``get_resolution``): ``min``
  up to epoch ``start_ramp``, ``max`` from epoch ``end_ramp``, in between the
  linear interpolation rounded to a multiple of 32; e.g. ``"160:192:65:76"``.

`ffcv_ramp(epochs)` is the ramp of FFCV's ResNet-50 configs for a run of `epochs`
(the ``start_ramp``/``end_ramp`` of every ``rn50_*_epochs.yaml``), and
`ffcv_ramp_reference` the same as an ``ml_collections`` reference to a config's
``num_epochs``: a recipe's ramp then follows the epoch count wherever it is set,
command line included, and is fixed when the config is resolved.

Both change only the training crops, so they need ``augment="inception"``, and
they exclude each other. Epochs count from 0, as in FFCV. The compiled train step
is traced once per distinct size (`training_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet_jax.errors import ConfigError

ROUND_TO = 32  # FFCV's ramp: sizes rounded to a multiple of 32


@dataclass(frozen=True)
class Ramp:
    """FFCV's linear resolution ramp from `min_res` (to epoch `start`) to `max_res` (from epoch `end`)."""

    min_res: int
    max_res: int
    start: int
    end: int

    def at(self, epoch: int) -> int:
        """``get_resolution(epoch)`` of ffcv-imagenet's train_imagenet.py."""
        if epoch <= self.start:
            return self.min_res
        if epoch >= self.end:
            return self.max_res
        interp = np.interp([epoch], [self.start, self.end], [self.min_res, self.max_res])
        return int(np.round(interp[0] / ROUND_TO)) * ROUND_TO


@dataclass(frozen=True)
class TrainSizes:
    """The training crop size of every epoch (picklable: Grain workers hold one)."""

    image_size: int  # without either option
    ramp: Ramp | None = None

    def at(self, epoch: int) -> int:
        return self.image_size if self.ramp is None else self.ramp.at(epoch)


# libffcv/ffcv-imagenet at 4dd291a1, rn50_configs/rn50_{E}_epochs.yaml: E -> (start_ramp, end_ramp).
FFCV_RN50_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}


def ffcv_ramp(epochs: int) -> tuple[int, int]:
    """FFCV's ResNet-50 ``(start_ramp, end_ramp)`` for a run of `epochs`:
    ``3E/4 - 1`` and ``7E/8 - 1`` (floored, and 0 at least), which is every
    published yaml's pair (`FFCV_RN50_RAMPS`: 16, 24, 32, 40, 56 and 88 epochs)
    and the same fractions of any other run."""
    return max(0, 3 * epochs // 4 - 1), max(0, 7 * epochs // 8 - 1)


def ffcv_ramp_reference(epochs: Any, min_res: int, max_res: int) -> Any:
    """``"min:max:start_ramp:end_ramp"`` of `ffcv_ramp` as a string reference to
    `epochs`, an ``ml_collections`` ``FieldReference`` to an int (``config.get_ref("num_epochs")``):
    its value follows the epoch count until ``copy_and_resolve_references``."""

    def at_least_zero(x: Any) -> Any:
        return (x + abs(x)) // 2  # max(0, x) with a FieldReference's own operations

    start, end = at_least_zero(epochs * 3 // 4 - 1), at_least_zero(epochs * 7 // 8 - 1)
    return f"{min_res}:{max_res}:" + start.to_str() + ":" + end.to_str()


def parse_ramp(spec: str) -> Ramp | None:
    """``"min:max:start_ramp:end_ramp"`` (e.g. "160:192:65:76") as a `Ramp`; "" as None."""
    if not spec.strip():
        return None
    try:
        min_res, max_res, start, end = (int(part) for part in spec.split(":"))
    except ValueError:
        raise ConfigError(
            f"data.progressive_resizing={spec!r}: expected 'min:max:start_ramp:end_ramp' in pixels and epochs, "
            "e.g. '160:192:65:76' (FFCV's ResNet-50 schedule)"
        ) from None
    if not 0 < min_res <= max_res or not 0 <= start <= end:
        raise ConfigError(f"data.progressive_resizing={spec!r}: needs 0 < min <= max and 0 <= start_ramp <= end_ramp")
    return Ramp(min_res, max_res, start, end)


def train_sizes(cfg: Any) -> TrainSizes:
    """The schedule ``config.data`` (`cfg`) asks for, checked (`ConfigError` names a bad option)."""
    fixed = int(cfg.get("train_image_size", 0) or 0)
    ramp = parse_ramp(str(cfg.get("progressive_resizing", "") or ""))
    if fixed < 0:
        raise ConfigError(f"data.train_image_size={fixed}: use a size in pixels, or 0 for data.image_size")
    if fixed and ramp is not None:
        raise ConfigError("set data.train_image_size or data.progressive_resizing, not both")
    sizes = TrainSizes(fixed or cfg.image_size, ramp)
    if (ramp is not None or sizes.image_size != cfg.image_size) and cfg.augment != "inception":
        raise ConfigError(
            "data.train_image_size and data.progressive_resizing set the size of random-resized training crops: "
            f"they need data.augment='inception' (not {cfg.augment!r})"
        )
    return sizes


def train_resolution(epoch: int, cfg: Any) -> int:
    """The side of the training crops in `epoch` (from 0) under ``config.data`` `cfg`."""
    return train_sizes(cfg).at(epoch)


def training_sizes(cfg: Any, num_epochs: int) -> list[int]:
    """The distinct training sizes of epochs 0 .. `num_epochs` - 1, in the order first used:
    one compilation of the train step each."""
    sizes = train_sizes(cfg)
    return list(dict.fromkeys(sizes.at(epoch) for epoch in range(num_epochs)))
