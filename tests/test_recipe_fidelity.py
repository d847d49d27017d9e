"""Each recipe config against its published source, field by field.

Every row of docs/recipes.md's table for a recipe is here, with the published
value (its source named in a comment) and how to read ours from the resolved
config. A row marked "same" in the docs must equal the published value here; a
row with a reason must differ from it (so a fix that makes a field equal its
source also updates the docs). A "same" row of a behaviour (`BEHAVIOURS`) names
the test that checks it against the source's code, or says "not tested" and why.
Recipes whose fields follow another field (FFCV's ramp the epochs,
torchvision's EMA decay the batch and epochs, timm's warm-up start the learning
rate) are also resolved with those set on the command line.
"""

import importlib.util
import math
import os
import re

import pytest
from absl import flags
from conftest import ROOT
from ml_collections import config_flags

from resnet_jax import batch_layout
from resnet_jax.data import augment, resolution

Row = tuple  # (label, published value, ours(config) or None where ours is no config field)


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().copy_and_resolve_references()


def from_command_line(name, *overrides):
    """The config as train.py builds it from ``--config=configs/<name>.py`` and `overrides`, resolved."""
    values = flags.FlagValues()
    argv = ["train.py", f"--config={os.path.join(ROOT, 'configs', name + '.py')}", *overrides]
    config_flags.DEFINE_config_file("config", None, "recipe", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config.copy_and_resolve_references()


def warmup(c):
    return (c.warmup_epochs, c.warmup_start_factor)


def schedule(c):
    return (c.lr_schedule, c.lr_end, "epoch" if c.lr_step_every_epoch else "step")


def crops(c):
    d = c.data
    return (d.augment, d.train_image_size or d.image_size, d.interpolation, d.crop_sampler)


def eval_resize(c):
    d = c.data
    return (d.image_size, augment.eval_short_side(d.image_size, d.crop_fraction), d.interpolation)


def window_and_resize(c):
    return (c.data.augment, c.data.interpolation, c.data.crop_sampler)


def evaluation(c):
    return (c.data.image_size, round(c.data.crop_fraction, 4), c.data.interpolation)


def mixing(c):
    return (c.mixup_alpha, c.cutmix_alpha, c.mixup_prob, c.mixup_switch_prob)


def groups(c):
    return batch_layout.from_config(c.copy_and_resolve_references()).bn_group_size


def draws(c):
    return (batch_layout.from_config(c.copy_and_resolve_references()).mixup_chunk, c.mixup_style)


# libffcv/ffcv-imagenet at 4dd291a1: rn50_configs/rn50_24_epochs.yaml and train_imagenet.py
FFCV = [
    ("batch", 8 * 512, lambda c: c.batch_size),  # dist.world_size 8 x training.batch_size 512
    ("lr", (1.7, False), lambda c: (c.learning_rate, c.lr_linear_scaling)),  # lr.lr, not scaled
    ("warm-up", (2, 1e-4), warmup),  # lr.lr_peak_epoch default 2; get_cyclic_lr starts at 1e-4 x lr
    ("schedule", ("onecycle", 0.0, "step"), schedule),  # cyclic: linear to 0 at the last epoch, per iteration
    ("epochs", 24, lambda c: c.num_epochs),  # training.epochs
    ("optimizer", ("sgd", 0.9, False), lambda c: (c.optimizer, c.momentum, c.nesterov)),
    ("weight decay", 1e-4, lambda c: c.weight_decay),  # training.weight_decay
    ("decay exclusions", "names containing 'bn'", None),  # create_optimizer: downsample BN and fc.bias decay
    ("grad clip", 0.0, lambda c: c.max_grad_norm),
    ("loss", "ce", lambda c: c.loss),
    ("label smoothing", 0.1, lambda c: c.label_smoothing),
    ("mixup/cutmix", (0.0, 0.0, 1.0, 0.5), mixing),
    ("augmentation", "", lambda c: c.auto_augment),
    ("random erasing", 0.0, lambda c: c.random_erasing),
    ("repeated augmentation", 1, lambda c: c.data.repeated_augmentations),
    ("EMA", 0.0, lambda c: c.ema_decay),
    ("stochastic depth", 0.0, lambda c: c.model_kwargs.get("drop_path_rate", 0.0)),
    ("zero-init residual", False, lambda c: c.model_kwargs.zero_init_residual),  # torchvision resnet50()
    # RandomResizedCropRGBImageDecoder (scale 0.08-1, ratio 3/4-4/3), resized with OpenCV's INTER_AREA
    ("train crops", ("inception", "area", "torchvision"), window_and_resize),
    ("progressive resizing", "160:192:17:20", lambda c: c.data.progressive_resizing),  # resolution section
    ("eval", (256, 0.875, "area"), evaluation),  # validation.resolution 256, DEFAULT_CROP_RATIO 224/256
    ("eval flip", True, lambda c: c.eval_flip),  # validation.lr_tta
    ("BlurPool", True, None),  # training.use_blurpool 1
    ("batch norm", 512, groups),  # per-GPU statistics (torch.nn.BatchNorm2d under DDP)
    ("BN running averages", "the first GPU's (DDP broadcast_buffers)", None),
    ("precision", "float16", None),  # autocast + GradScaler
]

# pytorch/vision: the V2 command (blog post / issue 3995), references/classification/train.py and presets.py
TV2 = [
    ("batch", 8 * 128, lambda c: c.batch_size),  # --nproc_per_node=8 --batch-size 128
    ("lr", (0.5, False), lambda c: (c.learning_rate, c.lr_linear_scaling)),  # --lr 0.5
    ("warm-up", (5, 0.01), warmup),  # --lr-warmup-epochs 5, --lr-warmup-decay default 0.01
    ("schedule", ("cosine", 0.0, "epoch"), schedule),  # cosineannealinglr, --lr-min 0, stepped per epoch
    ("epochs", 600, lambda c: c.num_epochs),
    ("optimizer", ("sgd", 0.9, False), lambda c: (c.optimizer, c.momentum, c.nesterov)),
    ("weight decay", 2e-5, lambda c: c.weight_decay),
    ("decay exclusions", "norm layers", None),  # --norm-weight-decay 0.0: fc.bias decays
    ("grad clip", 0.0, lambda c: c.max_grad_norm),
    ("loss", "ce", lambda c: c.loss),
    ("label smoothing", 0.1, lambda c: c.label_smoothing),
    ("mixup/cutmix", (0.2, 1.0, 1.0, 0.5), mixing),  # RandomChoice([RandomMixup, RandomCutmix]), p=1.0
    ("mixing draws", (128, "torchvision"), draws),  # collate_fn per process batch; batch.roll(1, 0)
    ("augmentation", ("trivial", "bilinear"), lambda c: (c.auto_augment, c.auto_augment_interpolation)),
    # torchvision 0.11's _apply_op: F.affine(shear=[math.degrees(magnitude), 0.0]) about the centre (vision PR 5285,
    # January 2022, made it atan(magnitude) about the corner; the V2 weights were trained in late 2021)
    ("TrivialAugmentWide shear", "centre", lambda c: c.auto_augment_shear),
    ("random erasing", 0.1, lambda c: c.random_erasing),  # --random-erase 0.1
    ("repeated augmentation", 4, lambda c: c.data.repeated_augmentations),  # --ra-sampler --ra-reps 4
    # --model-ema, --model-ema-steps 32, --model-ema-decay 0.99998 adjusted by batch, steps and epochs
    ("EMA", (32, 1 - (1 - 0.99998) * 1024 * 32 / 600), lambda c: (c.ema_every_steps, c.ema_decay)),
    ("EMA warm-up", "reset during the warm-up epochs", None),
    ("stochastic depth", 0.0, lambda c: c.model_kwargs.get("drop_path_rate", 0.0)),
    ("zero-init residual", False, lambda c: c.model_kwargs.zero_init_residual),
    ("train crops", ("inception", 176, "bilinear", "torchvision"), crops),  # --train-crop-size 176, presets.py
    ("eval", (224, round(224 / 232, 4), "bilinear"), evaluation),  # --val-resize-size 232, --val-crop-size 224
    ("eval flip", False, lambda c: c.eval_flip),
    ("batch norm", 128, groups),  # per-GPU statistics, no --sync-bn
    ("BN running averages", "the first GPU's (DDP broadcast_buffers)", None),
    ("precision", "float32", None),  # the command has no --amp
]

# arXiv 2110.00476 Table 1, and timm at ae1ff579 (train.py defaults, timm.optim.Lamb, BinaryCrossEntropy, Mixup)
RSB_A1 = [
    ("batch", 2048, lambda c: c.batch_size),
    ("lr", (5e-3, False), lambda c: (c.learning_rate, c.lr_linear_scaling)),
    ("warm-up", (5, 1e-4 / 5e-3), warmup),  # --warmup-epochs 5 from --warmup-lr 1e-4
    ("schedule", ("cosine", 1e-6, "epoch"), schedule),  # --sched cosine, --min-lr 1e-6, per epoch
    ("cosine over", "all epochs (warmup_prefix=False)", None),
    ("cooldown", "10 epochs (train.py default)", None),
    ("epochs", 600, lambda c: c.num_epochs),
    ("optimizer", ("lamb", 0.9, 0.999, 1e-6), lambda c: (c.optimizer, c.lamb_b1, c.lamb_b2, c.lamb_eps)),
    ("weight decay", 0.01, lambda c: c.weight_decay),
    ("decay exclusions", True, lambda c: c.weight_decay_exclude_bn_bias),  # bias and 1-D params: no decay/trust
    ("grad clip", 1.0, lambda c: c.max_grad_norm),  # Lamb(max_grad_norm=1.0)
    ("loss", ("bce", 0.2), lambda c: (c.loss, c.bce_target_threshold)),  # --bce-loss --bce-target-thresh 0.2
    ("label smoothing", 0.0, lambda c: c.label_smoothing),  # Table 1: no label smoothing
    ("mixup/cutmix", (0.2, 1.0, 1.0, 0.5), mixing),
    ("mixing draws", (256, "timm"), draws),  # Mixup(mode="batch") on each GPU's 256, x.flip(0)
    ("augmentation", ("rand", 7.0, 0.5, 2), lambda c: (c.auto_augment, c.randaugment_magnitude,
                                                     c.randaugment_std, c.randaugment_layers)),  # fmt: skip
    ("RandAugment interpolation", "random (bilinear or bicubic)", None),
    ("random erasing", 0.0, lambda c: c.random_erasing),
    ("repeated augmentation", 3, lambda c: c.data.repeated_augmentations),
    ("EMA", 0.0, lambda c: c.ema_decay),
    ("stochastic depth", 0.05, lambda c: c.model_kwargs.get("drop_path_rate", 0.0)),
    ("zero-init residual", True, lambda c: c.model_kwargs.zero_init_residual),  # timm ResNet zero_init_last_bn
    ("train crops", ("inception", 224, "random", "torchvision"), crops),  # --train-interpolation random
    # --crop-pct 0.95, resnet50's bicubic; transforms_imagenet_eval: Resize(math.floor(img_size / crop_pct))
    ("eval", (224, math.floor(224 / 0.95), "bicubic"), eval_resize),
    ("eval flip", False, lambda c: c.eval_flip),
    ("batch norm", 256, groups),  # per-GPU statistics, no --sync-bn
    ("BN running averages", "the first GPU's (DDP broadcast_buffers)", None),
    ("precision", "float16", None),
]
RSB_A2 = [row for row in RSB_A1 if row[0] not in ("epochs", "weight decay", "mixup/cutmix")] + [
    ("epochs", 300, lambda c: c.num_epochs),
    ("weight decay", 0.02, lambda c: c.weight_decay),
    ("mixup/cutmix", (0.1, 1.0, 1.0, 0.5), mixing),
]
RSB_A3 = [row for row in RSB_A2 if row[0] not in ("epochs", "lr", "warm-up", "augmentation", "stochastic depth",
                                                  "repeated augmentation", "train crops")] + [  # fmt: skip
    ("epochs", 100, lambda c: c.num_epochs),
    ("lr", (8e-3, False), lambda c: (c.learning_rate, c.lr_linear_scaling)),
    ("warm-up", (5, 1e-4 / 8e-3), warmup),
    ("augmentation", ("rand", 6.0, 0.5, 2), lambda c: (c.auto_augment, c.randaugment_magnitude,
                                                     c.randaugment_std, c.randaugment_layers)),  # fmt: skip
    ("stochastic depth", 0.0, lambda c: c.model_kwargs.get("drop_path_rate", 0.0)),
    ("repeated augmentation", 1, lambda c: c.data.repeated_augmentations),
    ("train crops", ("inception", 160, "random", "torchvision"), crops),
]

# mlcommons/training at db5b42e0: image_classification/README.md "TPU-V3-64" command, tensorflow2/lars_util.py,
# lars_optimizer.py, common.py, resnet_model.py, imagenet_preprocessing.py
MLPERF = [
    ("batch", 4096, lambda c: c.batch_size),
    ("lr", (10.0, False), lambda c: (c.learning_rate, c.lr_linear_scaling)),  # --base_learning_rate=10.0
    ("warm-up", (5, 0.0), warmup),  # --warmup_epochs=5, warmup_rate = lr * step / warmup_steps
    ("schedule", ("polynomial", 1e-4, "step", 2.0), lambda c: (*schedule(c), c.lr_power)),  # power 2, end 1e-4
    ("decay steps", "train - warmup + 1", None),
    ("epochs", 42, lambda c: c.num_epochs),  # --train_epochs=42
    ("optimizer", ("lars", 0.9, False), lambda c: (c.optimizer, c.momentum, c.nesterov)),
    ("LARS", (0.001, 1e-7), lambda c: (c.lars_trust_coefficient, c.lars_eps)),  # eeta; `0 or epsilon()`
    ("weight decay", 2e-4, lambda c: c.weight_decay),  # --weight_decay=0.0002
    ("decay exclusions", True, lambda c: c.weight_decay_exclude_bn_bias),  # skip_list batch_normalization, bias
    ("grad clip", 0.0, lambda c: c.max_grad_norm),
    ("loss", "ce", lambda c: c.loss),
    ("label smoothing", 0.1, lambda c: c.label_smoothing),  # --label_smoothing=0.1
    ("mixup/cutmix", (0.0, 0.0, 1.0, 0.5), mixing),
    ("augmentation", "", lambda c: c.auto_augment),
    ("random erasing", 0.0, lambda c: c.random_erasing),
    ("repeated augmentation", 1, lambda c: c.data.repeated_augmentations),
    ("EMA", 0.0, lambda c: c.ema_decay),
    ("stochastic depth", 0.0, lambda c: c.model_kwargs.get("drop_path_rate", 0.0)),
    ("zero-init residual", False, lambda c: c.model_kwargs.zero_init_residual),
    ("initialisation", "he_normal convs, N(0, 0.01) dense", None),
    # _decode_crop_and_flip: sample_distorted_bounding_box(min_object_covered=0.1, area_range=(0.05, 1.0),
    # max_attempts=100); ours: the "tf" sampler with tf_inception_crop's 8-100% and 10 attempts
    ("train crops", ("tf", "5-100%, 100 attempts"), lambda c: (c.data.crop_sampler, "8-100%, 10 attempts")),
    ("eval", (224, 0.875), lambda c: evaluation(c)[:2]),  # _RESIZE_MIN 256, central 224
    # _resize_image: tf.compat.v1.image.resize(BILINEAR, align_corners=False), no antialiasing
    ("resize", ("bilinear", "not antialiased"), lambda c: (c.data.interpolation, "antialiased")),
    ("eval flip", False, lambda c: c.eval_flip),
    ("batch norm", 64, groups),  # 4096 over --num_replicas=64; Keras moving averages ON_READ, MEAN
    ("precision", "float32", None),  # --dtype=fp32
]

FFCV.append(("top-1", {16: 73.8, 24: 75.6, 32: 76.6, 40: 77.2, 56: 78.0, 88: 78.4}, None))  # README's table
TV2.append(("top-1", 80.858, None))  # the IMAGENET1K_V2 weights' metrics (EMA)
RSB_A1.append(("top-1", 80.4, None))  # Table 1
RSB_A2[:] = [row for row in RSB_A2 if row[0] != "top-1"] + [("top-1", 79.8, None)]
RSB_A3[:] = [row for row in RSB_A3 if row[0] != "top-1"] + [("top-1", 78.1, None)]
MLPERF.append(("top-1", 75.9, None))  # --target_accuracy=0.759: the benchmark stops there

RECIPES = {
    "imagenet_resnet50_ffcv": FFCV,
    "imagenet_resnet50_tv2": TV2,
    "imagenet_resnet50_rsb_a1": RSB_A1,
    "imagenet_resnet50_rsb_a2": RSB_A2,
    "imagenet_resnet50_rsb_a3": RSB_A3,
    "imagenet_resnet50_mlperf": MLPERF,
}


def equal(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def docs_rows() -> dict[str, dict[str, list[str]]]:
    """docs/recipes.md: section -> {row label: the row's cells}."""
    text = open(os.path.join(ROOT, "docs", "recipes.md")).read()
    tables = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        name = re.match(r"`?(\w+)`?", section).group(1)
        rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|-")]
        cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[1:]]
        tables[name] = {row[0]: row for row in cells}
    return tables


def docs_tables() -> dict[str, dict[str, str]]:
    """docs/recipes.md: recipe -> {row label: its last column ("same", "same (tests...)" or the reason)}."""
    return {name: {label: row[-1] for label, row in rows.items()} for name, rows in docs_rows().items()}


def says_same(verdict: str) -> bool:
    """"same", alone or followed by the tests that check it ("same (tests/...)") or by "; not tested: why"."""
    return re.match(r"same(\s*\(|;|$)", verdict) is not None


# Rows whose published value is a behaviour of the source's code, not only a number the config holds.
BEHAVIOURS = {
    "warm-up", "schedule", "optimizer", "LARS", "decay exclusions", "grad clip", "loss", "mixup/cutmix",
    "mixing draws", "augmentation", "TrivialAugmentWide shear", "random erasing", "repeated augmentation", "EMA",
    "stochastic depth", "zero-init residual", "train crops", "progressive resizing", "eval", "eval flip",
    "batch norm", "resize",
}
TEST_REFERENCE = re.compile(r"(tests/\w+\.py)::(test_\w+)")


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_field_equals_its_source_or_its_difference_is_stated(name):
    config, table = load(name), docs_tables()[name]
    labels = [label for label, _, _ in RECIPES[name]]
    assert sorted(labels) == sorted(table), "the test's rows and docs/recipes.md's differ"
    for label, published, ours in RECIPES[name]:
        same = says_same(table[label])
        if ours is None:
            assert not same, f"{label}: not a config field here, so docs/recipes.md must give the reason"
            continue
        assert equal(ours(config), published) == same, (label, ours(config), published, table[label])


@pytest.mark.parametrize("epochs", sorted(resolution.FFCV_RN50_RAMPS))
def test_ffcvs_ramp_follows_the_epochs_set_on_the_command_line(epochs):
    """Each rn50_<E>_epochs.yaml's resolution section (libffcv/ffcv-imagenet at 4dd291a1)."""
    yaml = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}[epochs]
    c = from_command_line("imagenet_resnet50_ffcv", f"--config.num_epochs={epochs}")
    assert c.num_epochs == epochs and c.data.progressive_resizing == f"160:192:{yaml[0]}:{yaml[1]}"
    assert c.batch_size == 4096 and c.learning_rate == 1.7  # neither follows the epochs in FFCV's yamls


def test_ffcvs_ramp_rule_for_other_epoch_counts():
    assert resolution.ffcv_ramp(100) == (74, 86) and resolution.ffcv_ramp(1) == (0, 0)
    c = from_command_line("imagenet_resnet50_ffcv", "--config.num_epochs=100")
    assert c.data.progressive_resizing == "160:192:74:86"
    assert resolution.training_sizes(c.data, 100) == [160, 192]
    c = from_command_line("imagenet_resnet50_ffcv", "--config.data.progressive_resizing=128:160:3:5")
    assert c.data.progressive_resizing == "128:160:3:5"


def test_fields_that_follow_others_follow_them_on_the_command_line():
    c = from_command_line("imagenet_resnet50_tv2", "--config.num_epochs=300", "--config.batch_size=512")
    assert c.ema_decay == pytest.approx(1 - (1 - 0.99998) * 512 * 32 / 300, rel=1e-12)
    c = from_command_line("imagenet_resnet50_rsb_a1", "--config.learning_rate=0.002")
    assert c.warmup_start_factor * c.learning_rate == pytest.approx(1e-4)  # timm's --warmup-lr stays 1e-4


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_behaviour_called_same_names_the_test_that_checks_it(name):
    """A "same" behaviour row (its published value not an absence: "none", "no") names existing test functions,
    ``(tests/test_x.py::test_y)``, or says "not tested" and why."""
    checked = 0
    for label, row in docs_rows()[name].items():
        published, verdict = row[1], row[-1]
        if label not in BEHAVIOURS or not says_same(verdict) or re.match(r"(none|no)\b", published):
            continue
        references = TEST_REFERENCE.findall(verdict)
        assert references or re.search(r"not tested[:;,] \w", verdict), f"{label!r}: names no test: {verdict!r}"
        for path, function in references:
            with open(os.path.join(ROOT, path)) as f:
                assert re.search(rf"^def {function}\(", f.read(), re.M), f"{label!r}: no {path}::{function}"
        checked += 1
    assert checked >= 5


def crop_sampler_table() -> dict[str, str]:
    """docs/recipes.md's table under "The training crop's window": each config its first cell names (braces
    expanded: ``imagenet_resnet50_rsb_a{1,2,3}``) -> the sampler in its second."""
    text = open(os.path.join(ROOT, "docs", "recipes.md")).read()
    section = text.split("## The training crop's window")[1].split("\n## ")[0]
    table = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for name in re.findall(r"`([\w{},]+)`", cells[0]):
                stem, _, rest = name.partition("{")
                for end in rest.rstrip("}").split(",") if rest else [""]:
                    table[stem + end] = cells[1]
    return table


CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.startswith(("image", "finetune")))


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_crops_with_the_sampler_docs_give_its_source(name):
    """Every ImageNet-style config is in docs/recipes.md's table of crop samplers, with its ``data.crop_sampler``."""
    assert load(name).data.crop_sampler == crop_sampler_table()[name]
