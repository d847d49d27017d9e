"""The CIFAR family: 3 stages of 16-32-64 filters, 3x3 stem, no max-pool.

* ``cifar_resnet{20,32,44,56,110,1202}``: 6n+2 layers of basic blocks with
  option-A shortcuts (He et al. 2015, Section 4.2); ``cifar_plain*`` are the
  same stacks without shortcuts.
* ``cifar_preact_resnet110`` (basic, 6n+2), ``cifar_preact_resnet164`` and
  ``cifar_preact_resnet1001`` (bottleneck, 9n+2), as in "Identity Mappings in
  Deep Residual Networks", projection shortcuts where the shape changes.
* ``cifar_wrn_16_4``, ``cifar_wrn_28_10``: Wide ResNets WRN-d-k (Zagoruyko &
  Komodakis 2016), pre-activation basic blocks of widths 16k-32k-64k, (d-4)/6
  blocks per stage.
* ``cifar_resnet18``, ``cifar_resnet34``, ``cifar_resnet50``,
  ``cifar_preact_resnet18``: the ImageNet networks' four stages of 64-128-256-512
  filters (projection shortcuts) behind a 3x3 stride-1 stem of 64 filters and
  no max-pool: the CIFAR baseline most research code trains (ResNet-18: 11.2M
  parameters with 10 classes, against the paper's 0.27M ResNet-20).
"""

from __future__ import annotations

import functools

from resnet_jax.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnet_jax.models.registry import register
from resnet_jax.models.resnet import ResNet


def _cifar(**kwargs) -> functools.partial:
    defaults = dict(stem="cifar", stage_widths=(16, 32, 64), num_classes=10)
    return functools.partial(ResNet, **{**defaults, **kwargs})


for _depth in (20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    register(f"cifar_resnet{_depth}", "cifar")(_cifar(stage_sizes=(_n,) * 3, block=BasicBlock, shortcut="A"))
    if _depth <= 110:
        register(f"cifar_plain{_depth}", "cifar")(_cifar(stage_sizes=(_n,) * 3, block=BasicBlock, shortcut=None))

register("cifar_preact_resnet110", "cifar")(_cifar(stage_sizes=(18,) * 3, block=PreActBasicBlock))
for _depth in (164, 1001):
    _n = (_depth - 2) // 9
    register(f"cifar_preact_resnet{_depth}", "cifar")(_cifar(stage_sizes=(_n,) * 3, block=PreActBottleneck))

for _depth, _k in ((16, 4), (28, 10)):
    _n = (_depth - 4) // 6
    register(f"cifar_wrn_{_depth}_{_k}", "cifar")(
        _cifar(stage_sizes=(_n,) * 3, block=PreActBasicBlock, stage_widths=(16 * _k, 32 * _k, 64 * _k), stem_width=16)
    )

_IMAGENET_STAGES = dict(stage_widths=(64, 128, 256, 512), shortcut="B")
_FOUR_STAGES = {18: ((2, 2, 2, 2), BasicBlock), 34: ((3, 4, 6, 3), BasicBlock), 50: ((3, 4, 6, 3), Bottleneck)}
for _depth, (_sizes, _block) in _FOUR_STAGES.items():
    register(f"cifar_resnet{_depth}", "cifar")(_cifar(stage_sizes=_sizes, block=_block, **_IMAGENET_STAGES))
register("cifar_preact_resnet18", "cifar")(_cifar(stage_sizes=(2, 2, 2, 2), block=PreActBasicBlock, **_IMAGENET_STAGES))
