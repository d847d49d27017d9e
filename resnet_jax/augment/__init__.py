"""The batch augmentations that run inside the compiled train step.

Traced JAX code, not an input pipeline: each is a pure function of a PRNG key
and a batch already on the device, called by the train step on whatever batch a
pipeline of `resnet_jax.data` made (those pipelines read, decode, crop and
batch images on the host, or on the device for small datasets).

* `autoaugment`: TrivialAugmentWide (torchvision) and RandAugment (timm).
* `erasing`: random erasing (torchvision's ``RandomErasing``).
* `mixing`: mixup and cutmix (timm's ``Mixup``, torchvision's ``MixUp`` / ``CutMix``).
* `batch`: the set a config turns on, composed into the one transform the step
  calls (`batch.batch_transform`), and the config's checks (`batch.check`).

Imports point one way: this package knows no pipeline, no model and no
trainer; which of its scalars a population may sweep is the population's
knowledge (`resnet_jax.training.population.SWEEPABLE`).
"""
