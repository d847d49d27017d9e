"""Published ImageNet weights that convert, and the preprocessing each set expects.

A tag names one set of weights the way its library does: torchvision's weight
enums (``resnet50.IMAGENET1K_V2``) and timm's pretrained tags
(``resnet50d.ra4_e3600_r224_in1k``). The values are the libraries' own:

* torchvision: ``weights.transforms()`` resizes the short side to
  ``resize_size`` and crops ``crop_size``: 256 -> 224 for IMAGENET1K_V1, 232 ->
  224 for IMAGENET1K_V2 (and resnext101_64x4d's V1), ImageNet mean and std.
* timm 1.0.31: each tag's ``pretrained_cfg`` in ``timm/models/resnet.py`` and
  ``resnetv2.py``: ``mean``, ``std``, ``crop_pct``, ``input_size``. Several use
  mean = std = 0.5 (timm's "inception" normalisation). Many also name a larger
  ``test_input_size``/``test_crop_pct`` that scores higher (timm's results
  table); convert with ``--image-size``/``--crop-fraction`` to use those.

Without a tag, a model gets its library's first weights: torchvision's
IMAGENET1K_V1, timm's default tag (the one ``timm.create_model(name,
pretrained=True)`` loads).
"""

from __future__ import annotations

import dataclasses

from resnet_jax.config import IMAGENET_MEAN, IMAGENET_STD
from resnet_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the short side to ``image_size / crop_fraction``,
    crop the centre ``image_size`` square, normalise RGB in [0, 1] with `mean` and `std`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float
    image_size: int


FIELDS = tuple(f.name for f in dataclasses.fields(Preprocessing))
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's IMAGENET_INCEPTION_MEAN / _STD

_V2 = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
       "wide_resnet101_2")  # fmt: skip
TORCHVISION: dict[str, tuple] = {
    **{f"{name}.IMAGENET1K_V1": (IMAGENET, 224 / 256, 224) for name in ("resnet18", "resnet34", *_V2)},
    "resnext101_64x4d.IMAGENET1K_V1": (IMAGENET, 224 / 232, 224),
    **{f"{name}.IMAGENET1K_V2": (IMAGENET, 224 / 232, 224) for name in _V2},
}
TIMM: dict[str, tuple] = {  # (normalisation, crop_pct, input_size) of timm's pretrained_cfg, default tag first
    "resnet18.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet18.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet18.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet18.tv_in1k": (IMAGENET, 0.875, 224),
    "resnet18.fb_ssl_yfcc100m_ft_in1k": (IMAGENET, 0.875, 224),
    "resnet18.fb_swsl_ig1b_ft_in1k": (IMAGENET, 0.875, 224),
    "resnet18.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet26.bt_in1k": (IMAGENET, 0.875, 224),
    "resnet34.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet34.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet34.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet34.bt_in1k": (IMAGENET, 0.875, 224),
    "resnet34.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnet34.tv_in1k": (IMAGENET, 0.875, 224),
    "resnet34.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet50.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet50.a1h_in1k": (IMAGENET, 0.9, 176),
    "resnet50.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet50.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet50.b1k_in1k": (IMAGENET, 0.95, 224),
    "resnet50.b2k_in1k": (IMAGENET, 0.95, 224),
    "resnet50.c1_in1k": (IMAGENET, 0.95, 224),
    "resnet50.c2_in1k": (IMAGENET, 0.95, 224),
    "resnet50.d_in1k": (IMAGENET, 0.95, 224),
    "resnet50.ram_in1k": (IMAGENET, 0.875, 224),
    "resnet50.am_in1k": (IMAGENET, 0.875, 224),
    "resnet50.ra_in1k": (IMAGENET, 0.875, 224),
    "resnet50.bt_in1k": (IMAGENET, 0.875, 224),
    "resnet50.tv_in1k": (IMAGENET, 0.875, 224),
    "resnet50.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnet50.fb_ssl_yfcc100m_ft_in1k": (IMAGENET, 0.875, 224),
    "resnet50.fb_swsl_ig1b_ft_in1k": (IMAGENET, 0.875, 224),
    "resnet50.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet101.a1h_in1k": (IMAGENET, 0.95, 224),
    "resnet101.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet101.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet101.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet101.tv_in1k": (IMAGENET, 0.875, 224),
    "resnet101.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnet101.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet152.a1h_in1k": (IMAGENET, 0.95, 224),
    "resnet152.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet152.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet152.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet152.tv_in1k": (IMAGENET, 0.875, 224),
    "resnet152.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnet152.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet200.untrained": (IMAGENET, 0.875, 224),
    "resnet18d.ra2_in1k": (IMAGENET, 0.875, 224),
    "resnet18d.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnet26d.bt_in1k": (IMAGENET, 0.875, 224),
    "resnet34d.ra2_in1k": (IMAGENET, 0.875, 224),
    "resnet50d.ra2_in1k": (IMAGENET, 0.875, 224),
    "resnet50d.ra4_e3600_r224_in1k": (INCEPTION, 0.95, 224),
    "resnet50d.a1_in1k": (IMAGENET, 0.95, 224),
    "resnet50d.a2_in1k": (IMAGENET, 0.95, 224),
    "resnet50d.a3_in1k": (IMAGENET, 0.95, 160),
    "resnet50d.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet101d.ra2_in1k": (IMAGENET, 0.95, 256),
    "resnet101d.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet152d.ra2_in1k": (IMAGENET, 0.95, 256),
    "resnet152d.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnet200d.ra2_in1k": (IMAGENET, 0.95, 256),
    "resnext50_32x4d.a1h_in1k": (IMAGENET, 0.95, 224),
    "resnext50_32x4d.a1_in1k": (IMAGENET, 0.95, 224),
    "resnext50_32x4d.a2_in1k": (IMAGENET, 0.95, 224),
    "resnext50_32x4d.a3_in1k": (IMAGENET, 0.95, 160),
    "resnext50_32x4d.ra_in1k": (IMAGENET, 0.875, 224),
    "resnext50_32x4d.tv_in1k": (IMAGENET, 0.875, 224),
    "resnext50_32x4d.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k": (IMAGENET, 0.875, 224),
    "resnext50_32x4d.fb_swsl_ig1b_ft_in1k": (IMAGENET, 0.875, 224),
    "resnext50_32x4d.gluon_in1k": (IMAGENET, 0.875, 224),
    "resnext101_32x8d.tv_in1k": (IMAGENET, 0.875, 224),
    "resnext101_32x8d.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k": (IMAGENET, 0.875, 224),
    "resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k": (IMAGENET, 0.875, 224),
    "resnext101_32x8d.fb_swsl_ig1b_ft_in1k": (IMAGENET, 0.875, 224),
    "resnext101_64x4d.c1_in1k": (IMAGENET, 0.95, 224),
    "resnext101_64x4d.tv_in1k": (IMAGENET, 0.875, 224),
    "resnext101_64x4d.gluon_in1k": (IMAGENET, 0.875, 224),
    "wide_resnet50_2.racm_in1k": (IMAGENET, 0.875, 224),
    "wide_resnet50_2.tv_in1k": (IMAGENET, 0.875, 224),
    "wide_resnet50_2.tv2_in1k": (IMAGENET, 0.875, 176),
    "wide_resnet101_2.tv_in1k": (IMAGENET, 0.875, 224),
    "wide_resnet101_2.tv2_in1k": (IMAGENET, 0.875, 176),
    "resnetv2_18.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnetv2_18d.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnetv2_34.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnetv2_34d.ra4_e3600_r224_in1k": (INCEPTION, 0.9, 224),
    "resnetv2_34d.ra4_e3600_r384_in1k": (INCEPTION, 1.0, 384),
    "resnetv2_50.a1h_in1k": (INCEPTION, 0.95, 224),
    "resnetv2_50d.untrained": (INCEPTION, 0.875, 224),
    "resnetv2_101.a1h_in1k": (INCEPTION, 0.95, 224),
    "resnetv2_101d.untrained": (INCEPTION, 0.875, 224),
    "resnetv2_152.untrained": (INCEPTION, 0.875, 224),
    "resnetv2_152d.untrained": (INCEPTION, 0.875, 224),
}
_TABLES = {"torchvision": TORCHVISION, "timm": TIMM}


def tags(source: str, model: str) -> list[str]:
    """The known tags of `source` ("torchvision" or "timm") for `model`, its default first."""
    return [t for t in _TABLES[source] if t.split(".")[0] == model]


def preprocessing(source: str, model: str, tag: str = "", **given: object) -> tuple[str, Preprocessing]:
    """The weights' name (``model.tag``) and their `Preprocessing`.

    Args:
      source: "torchvision" or "timm".
      model: the library's model name, e.g. "resnet50d".
      tag: the weights' tag, e.g. "ra4_e3600_r224_in1k" ("" = the default).
      **given: fields of `Preprocessing` to use instead of the table's (None:
        the table's; mean and std any sequence). With all four given, any tag
        (or none) is accepted.

    Raises:
      ConfigError: an unknown tag, and not every field given.
    """
    given = {k: tuple(v) if k in ("mean", "std") else v for k, v in given.items() if v is not None}
    known = tags(source, model)
    name = f"{model}.{tag}" if tag else (known[0] if known else model)
    if set(given) == set(FIELDS):
        found = Preprocessing(**given)
    elif name in _TABLES[source]:
        (mean, std), crop_fraction, image_size = _TABLES[source][name]
        found = dataclasses.replace(Preprocessing(mean, std, crop_fraction, image_size), **given)
    else:
        raise ConfigError(
            f"no known preprocessing for {source} weights {name!r} (known: {', '.join(known) or 'none'}); "
            f"give the tag of the weights, or all of --mean, --std, --crop-fraction and --image-size"
        )
    if len(found.mean) != 3 or len(found.std) != 3 or min(found.std) <= 0:
        raise ConfigError(f"mean and std need 3 values each (std > 0), got {found.mean} and {found.std}")
    if not 0 < found.crop_fraction <= 1 or found.image_size < 1:
        raise ConfigError(f"crop fraction must be in (0, 1] and image size >= 1, got {found.crop_fraction}, "
                          f"{found.image_size}")
    return name, found
