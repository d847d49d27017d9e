"""The on-device pipeline for datasets that fit in device memory (CIFAR-10/100).

The decoded uint8 arrays are placed on every device once; each epoch's
permutation is drawn on the device, and gathering, pad-and-crop and flips
(`make_batch`) run inside the compiled train step
(`resnet_jax.training.compiled`): no host round trip per batch. The augmentation
is `augment.crop_flip`, the same semantics as the tf.data path. No TensorFlow
is needed when the arrays are given (or read from an image folder with Pillow).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data import augment
from resnet_jax.data.pipeline import Batch, DataInfo, array_eval_batches, check_class_names


class DevicePipeline:
    """Training batches made on the device; evaluation batches from host arrays."""

    def __init__(
        self,
        train: tuple[np.ndarray, np.ndarray],
        eval: tuple[np.ndarray, np.ndarray],
        class_names: tuple[str, ...],
        batch_size: int,
        eval_batch_size: int,
        seeds: Sequence[int],
        mesh: Mesh,
        crop_padding: int = 4,
        augment_images: bool = True,
        copies: int = 1,
        order: np.ndarray | None = None,
    ):
        """
        Args:
          train, eval: (uint8 images [N, H, W, 3], int labels [N]) of the whole split.
          class_names: names of the labels.
          batch_size, eval_batch_size: global batch sizes.
          seeds: the data seed (permutations and augmentation) of each
            population member: each draws its own batches, its inputs stacked
            on a leading axis (`resnet_jax.training.compiled`).
          mesh: the device mesh.
          crop_padding: zero padding before the random crop (0: no crop).
          augment_images: random crop and flip (False: plain shuffled batches).
          copies: repeated augmentation: position p of an epoch reads example
            ``perm[p // copies]`` (`resnet_jax.data.repeated`), each copy cropped on its own.
          order: position i of a batch holds position ``order[i]`` of its run of
            the epoch (`resnet_jax.batch_layout`: the copies dealt to the
            source's devices); None: in turn.
        """
        images, labels = train
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"train images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        self.info = DataInfo(check_class_names(class_names), len(labels), len(eval[1]), images.shape[1])
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.mesh, self.crop_padding, self.augment_images = mesh, crop_padding, augment_images
        self.copies = copies
        self._order = order
        self.num_members = len(seeds)
        self._key = jax.vmap(jax.random.key)(jnp.asarray(seeds))
        self.data = parallel.replicate({"image": images, "label": labels.astype(np.int32)}, mesh)
        self._eval = (eval[0], eval[1].astype(np.int32))

        def permute(key: jax.Array, epoch: int) -> tuple[jax.Array, jax.Array]:
            key = jax.random.fold_in(key, epoch)
            return jax.random.permutation(key, len(labels)).astype(jnp.int32), key

        self._permute = jax.vmap(permute, in_axes=(0, None))  # once an epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.info.num_train // self.batch_size

    def make_batch(self, data: Batch, perm: jax.Array, key: jax.Array, step: jax.Array) -> Batch:
        """Batch `step` of an epoch (traced inside jit): gather, crop, flip."""
        if self._order is None and self.copies == 1:
            idx = jax.lax.dynamic_slice_in_dim(perm, step * self.batch_size, self.batch_size)
        else:
            order = jnp.arange(self.batch_size) if self._order is None else jnp.asarray(self._order)
            idx = perm[(step * self.batch_size + order.astype(jnp.int32)) // self.copies]
        images, labels = data["image"][idx], data["label"][idx]
        if self.augment_images:
            images = augment.crop_flip(jax.random.fold_in(key, step), images, self.crop_padding)
        sharding = parallel.batch_sharding(self.mesh)
        return {
            "image": jax.lax.with_sharding_constraint(images, sharding),
            "label": jax.lax.with_sharding_constraint(labels, sharding),
        }

    def train_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        """One item per step from `start_step`: the epoch's (permutation, key), the
        same device arrays for every step; the compiled step reads the batch's
        index within the epoch from ``state.step % steps_per_epoch`` on the device."""
        perm, key = self._permute(self._key, epoch)
        for _ in range(start_step, self.steps_per_epoch):
            yield perm, key

    def eval_batches(self) -> Iterator[Batch]:
        return array_eval_batches(
            *self._eval, self.eval_batch_size, (jax.process_index(), jax.process_count())
        )
