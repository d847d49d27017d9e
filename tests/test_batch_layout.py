"""The batch layout (`resnet_jax.batch_layout`): a recipe's source devices laid
out in every global batch. Against timm's own `RepeatAugSampler` (the sampler
torchvision's `RASampler` also is): where each copy of an image goes; then the
TV2 and RSB recipes' pipelines (tf.data, Grain, on-device) over a folder whose
images carry their identity, so every batch-norm group and mixing chunk can be
read off the batch."""

import collections
import importlib.util
import os

import jax
import numpy as np
import pytest
from conftest import ROOT
from test_resolution import PER_CLASS, id_folder, identity  # noqa: F401 (id_folder: a fixture)

from resnet_jax import batch_layout, parallel
from resnet_jax.config import default_config
from resnet_jax.data import make_pipeline
from resnet_jax.errors import ConfigError

timm_samplers = pytest.importorskip("timm.data.distributed_sampler")


def timm_positions(n, replicas, repeats, steps, per_device):
    """timm's RepeatAugSampler over a dataset of `n` unshuffled indices: the index
    each (step, replica, slot) reads, as a [steps, replicas * per_device] array."""
    ranks = []
    for rank in range(replicas):
        sampler = timm_samplers.RepeatAugSampler(
            list(range(n)), num_replicas=replicas, rank=rank, shuffle=False, num_repeats=repeats, selected_round=0
        )
        ranks.append(list(sampler)[: steps * per_device])
    return np.stack([np.asarray(r).reshape(steps, per_device) for r in ranks], 1).reshape(steps, -1)


def layout_of(batch_size, source_devices, copies, micro_batches=1, processes=1, **fields):
    c = default_config()
    c.batch_size, c.source_devices, c.gradient_accumulation_steps = batch_size, source_devices, micro_batches
    c.data.repeated_augmentations = copies
    c.update(fields)
    return batch_layout.from_config(c, processes)


@pytest.mark.parametrize("source_devices, per_device, copies", [(8, 128, 4), (8, 16, 3), (4, 6, 4), (2, 5, 3)])
def test_copies_are_dealt_as_timms_repeat_aug_sampler(source_devices, per_device, copies):
    """Position ``d * b + u`` of step t reads example ``(t * B + order[d * b + u]) // r`` of the
    epoch's order: exactly what rank d of RepeatAugSampler reads at slot u of its batch t."""
    steps, batch = 3, source_devices * per_device
    layout = layout_of(batch, source_devices, copies)
    assert (layout.bn_group_size, layout.mixup_chunk) == (per_device, per_device)
    order = layout.order()
    ours = np.stack([(t * batch + order) // copies for t in range(steps)])
    n = steps * batch  # timm keeps n / replicas indices a rank: an epoch as long as without copies
    np.testing.assert_array_equal(ours, timm_positions(n, source_devices, copies, steps, per_device))
    # and the side-by-side layout of before is not it: the copies of an image share a device there
    side_by_side = np.stack([(t * batch + np.arange(batch)) // copies for t in range(steps)])
    assert not np.array_equal(side_by_side, ours)


def test_each_process_deals_its_share_to_its_own_source_devices():
    layout = layout_of(32, 8, 4, processes=2)
    local = layout.order()
    assert sorted(local.tolist()) == list(range(16))  # a permutation of the share
    whole = layout.order(whole=True)
    np.testing.assert_array_equal(whole, np.concatenate([local, 16 + local]))
    assert layout_of(32, 8, 1).order() is None and layout_of(32, 0, 4).order() is None  # identity: no copy


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(source_devices=3), "source_devices=3 must divide batch_size=32"),
        (dict(source_devices=4, mixup_chunk=16), "mixup_chunk=16 contradicts source_devices=4"),
        (dict(source_devices=4, model_kwargs={"bn_group_size": 4}), "bn_group_size=4 contradicts source_devices=4"),
        (dict(gradient_accumulation_steps=3), "gradient_accumulation_steps=3 must divide batch_size=32"),
        (dict(source_devices=2, gradient_accumulation_steps=4), "must divide source_devices=2"),
        (dict(source_devices=-1), "source_devices=-1 must be a whole number >= 0"),
        (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps=0 must be a whole number >= 1"),
    ],
)
def test_a_layout_that_cannot_work_is_one_line(fields, message):
    c = default_config()
    c.batch_size = 32
    c.update(fields)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        batch_layout.from_config(c)


def recipe(name, root, pipeline):
    """Recipe `name`'s config over the identity folder: its copies and its source's 8 devices, 2 images each."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.batch_size, c.eval_batch_size = 2 * c.source_devices, 8
    d = c.data
    d.pipeline, d.path, d.eval_split, d.image_size, d.train_image_size = pipeline, root, "test", 16, 0
    d.cache, d.shuffle_buffer, d.workers, d.progressive_resizing = False, 64, 0, ""
    return c.copy_and_resolve_references()


def device_batches(p, epoch):
    make = jax.jit(lambda data, perm, key, step: p.make_batch(data, perm, key, step))
    perm, key = next(iter(p.train_epoch(epoch)))
    return [jax.device_get(make(p.data, perm[0], key[0], step)) for step in range(p.steps_per_epoch)]


@pytest.mark.parametrize("pipeline", ["tfds", "grain", "device"])
@pytest.mark.parametrize("name", ["imagenet_resnet50_tv2", "imagenet_resnet50_rsb_a1"])
def test_recipe_batches_hold_different_images_in_each_group_and_chunk(name, pipeline, id_folder):  # noqa: F811
    c = recipe(name, id_folder, pipeline)
    layout = batch_layout.from_config(c)
    r, s, b = layout.copies, layout.source_devices, layout.device_batch
    copies = {"imagenet_resnet50_tv2": 4, "imagenet_resnet50_rsb_a1": 3}[name]
    assert (r, s, b, layout.bn_group_size, layout.mixup_chunk) == (copies, 8, 2, 2, 2)
    p = make_pipeline(c, parallel.make_mesh())
    batch = c.batch_size
    for epoch in range(2):
        batches = device_batches(p, epoch) if pipeline == "device" else list(p.train_epoch(epoch))
        assert len(batches) == 3 * PER_CLASS // batch
        for t, batches_t in enumerate(batches):
            ids = np.array([identity(im) for im in batches_t["image"]])
            for group in ids.reshape(s, b):  # each source device's batch: its BN group and mixing chunk
                assert len(set(group.tolist())) == b, ids
            # the positions of equal images are those of timm's sampler with num_replicas = 8
            want = timm_positions(batch * len(batches), s, r, len(batches), b)[t]
            for index in set(want.tolist()):
                assert len(set(ids[want == index].tolist())) == 1
            assert len(set(ids.tolist())) == len(set(want.tolist()))
            counts = collections.Counter(ids.tolist())
            assert max(counts.values()) <= r
    if pipeline == "grain":
        p.data_iterator.close()
