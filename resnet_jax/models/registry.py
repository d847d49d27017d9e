"""Model registry: `create(name, ...)` and `list_models()`.

Every network of the package is registered under one name. ImageNet networks
use torchvision's names (``resnet50``); CIFAR networks carry a ``cifar_``
prefix (``cifar_resnet20``) so that the 20-layer CIFAR network is never
confused with an ImageNet stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from resnet_jax.errors import ConfigError, ConfigTypeError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers a constructor (a class or `functools.partial`) under `name`."""

    def wrap(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = constructor
        _FAMILY[name] = family
        return constructor

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, optionally only those of `family` ("imagenet" or "cifar")."""
    return sorted(n for n in _MODELS if family is None or _FAMILY[n] == family)


def family(name: str) -> str:
    """The family ("imagenet" or "cifar") of a registered model."""
    _check(name)
    return _FAMILY[name]


def _check(name: str) -> None:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")


def create(name: str, /, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Builds the registered model `name`.

    Args:
      name: a name from `list_models()`.
      num_classes: size of the classification head (default: 1000 for the
        ImageNet family, 10 for the CIFAR family).
      **overrides: any other `ResNet` field, e.g. ``dtype=jnp.bfloat16``,
        ``shortcut="C"``, ``zero_init_residual=True``, ``stride_on_3x3=False``,
        or the Flax module ``name`` (``create("resnet50", name="backbone")``).
    """
    _check(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    try:
        return _MODELS[name](**overrides)
    except TypeError as e:
        raise ConfigTypeError(f"bad override for model {name!r}: {e}") from None
