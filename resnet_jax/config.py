"""The default config: every field the trainer reads, with its meaning.

Recipe files in ``configs/`` start from `default_config()` (or the paper's
CIFAR-10 recipe, `cifar10_paper_config`) and change what their recipe needs;
any field can then be overridden on the command line, e.g.
``--config.num_epochs=10 --config.data.path=/data/my_images``.
"""

from __future__ import annotations

import ml_collections

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "cifar_resnet20"  # a name from resnet_jax.models.list_models()
    # Any other ResNet field, e.g. shortcut="C" (add keys in a config file or with --config.model_kwargs=...).
    c.model_kwargs = ml_collections.ConfigDict({"zero_init_residual": False})
    c.half_precision = False  # compute in bfloat16 (parameters and BN statistics stay float32)
    c.seed = 0  # initialisation, data order and augmentation
    # > 1: train seeds seed ... seed + num_seeds - 1 together in one compiled step (data.pipeline="device");
    # each seed's metrics and curves in <workdir>/seed<k>/ (resnet_jax.training.population)
    c.num_seeds = 1
    c.member_batching = "auto"  # several members: vmap (same kernels; GPU/TPU), loop (one after another; CPU), auto
    # A grid of per-run scalars trained together with num_seeds seeds each, e.g.
    # "learning_rate=0.05,0.1 weight_decay=1e-4,5e-4" (resnet_jax.training.population).
    c.sweep = ""

    c.batch_size = 128  # global, over all devices and processes
    # The recipe's source's device count: the global batch laid out as its devices' batches (each its own
    # batch-norm statistics, mixing draw and copy of a repeated image), whatever devices the run has;
    # 0 = off (resnet_jax.batch_layout).
    c.source_devices = 0
    # k > 1: each global batch as k micro-batches, one after another on the same devices, then one update
    # (resnet_jax.batch_layout). Must divide batch_size (and source_devices when set).
    c.gradient_accumulation_steps = 1
    c.eval_batch_size = 500
    c.num_epochs = 10
    c.num_train_steps = -1  # > 0: train this many steps instead of num_epochs
    # data.pipeline="device": train steps per compiled call (lax.scan), fewer host round trips; on XLA:CPU slower
    # (docs/cpu.md). Must divide the steps per epoch and every step cadence.
    c.steps_per_call = 1

    c.learning_rate = 0.1
    c.lr_linear_scaling = False  # lr *= batch_size / lr_reference_batch
    c.lr_reference_batch = 256
    c.optimizer = "sgd"  # sgd | lars | lamb (resnet_jax.training.optim.make_optimizer)
    c.lr_schedule = "piecewise"  # piecewise | cosine | onecycle | polynomial | constant
    c.lr_boundaries = (32000, 48000)  # piecewise: steps (or epochs, see below)
    c.lr_boundaries_in_epochs = False
    c.lr_decay_factor = 0.1
    c.warmup_epochs = 0.0  # cosine / onecycle / polynomial: linear warmup length
    c.warmup_start_factor = 0.0  # the warm-up starts at this x learning_rate (torchvision's lr_warmup_decay)
    c.lr_step_every_epoch = False  # the rate changes once an epoch, at its start (PyTorch's per-epoch schedulers)
    c.lr_power = 2.0  # polynomial: (lr - lr_end) * (1 - t / T) ** lr_power + lr_end after the warm-up
    c.lr_end = 0.0  # polynomial and cosine: the final learning rate
    c.warmup_constant_steps = 0  # > 0: hold warmup_constant_lr first (the paper's ResNet-110)
    c.warmup_constant_lr = 0.01
    c.momentum = 0.9
    c.nesterov = False
    c.lars_trust_coefficient = 0.001
    c.lars_eps = 0.0
    c.lamb_b1, c.lamb_b2, c.lamb_eps = 0.9, 0.999, 1e-6
    c.max_grad_norm = 0.0  # > 0: clip the gradients' global norm to this before the optimiser (timm's Lamb: 1.0)
    c.weight_decay = 1e-4  # coupled (added to the gradient), as in the paper
    c.weight_decay_exclude_bn_bias = False
    c.label_smoothing = 0.0
    c.loss = "ce"  # ce (softmax cross entropy) | bce (per-class sigmoid, timm's BinaryCrossEntropy)
    c.bce_target_threshold = 0.0  # bce, > 0: targets above it become 1, the others 0 (timm's target_threshold)
    c.ema_decay = 0.0  # > 0: also keep and evaluate an EMA of the weights
    c.ema_every_steps = 1  # update the EMA every N steps (torchvision's V2 recipe: 32)
    # A training loss above this (or not finite) stops the run as diverged; 0: 100 x ln(num_classes)
    # (resnet_jax.training.steps.divergence_bound).
    c.max_train_loss = 0.0

    # Augmentations on the accelerator, inside the train step, on any pipeline (resnet_jax.augment).
    c.auto_augment = ""  # "" | trivial (torchvision's TrivialAugmentWide) | rand (timm's RandAugment)
    c.auto_augment_interpolation = "nearest"  # trivial: of its geometric ops, nearest | bilinear (torchvision's V2)
    # trivial: ShearX/Y of magnitude m, corner (torchvision >= 0.12, vision PR 5285: factor m about the top-left
    # corner) | centre (torchvision 0.11: m radians about the centre, factor tan m; the V2 weights were trained so)
    c.auto_augment_shear = "corner"
    c.randaugment_magnitude = 9.0  # rand: timm's rand-m{magnitude}-mstd{std}-inc1, `layers` ops an image
    c.randaugment_std = 0.5
    c.randaugment_layers = 2
    c.random_erasing = 0.0  # probability of erasing a box of each image (torchvision's RandomErasing), to the mean
    c.mixup_alpha = 0.0  # > 0: mixup with lambda ~ Beta(alpha, alpha) (timm's Mixup, one lambda a batch)
    c.cutmix_alpha = 0.0  # > 0: cutmix; with both on, cutmix with probability mixup_switch_prob
    c.mixup_prob = 1.0  # probability of mixing a batch at all
    c.mixup_switch_prob = 0.5
    # > 0: one lambda (and box) per chunk of this many images of the global batch, as the sources draw one per
    # process batch (torchvision's V2: 128, timm's RSB: 256); 0: one per global batch. Must divide batch_size.
    c.mixup_chunk = 0
    # timm (partner of image i: image B-1-i; timm's box) | torchvision (image i-1; transforms.v2.CutMix's box)
    c.mixup_style = "timm"

    # Fine-tuning: start from another run's (or a converted) checkpoint.
    c.init_from = ""  # a workdir holding checkpoints/ (e.g. from python -m resnet_jax.convert)
    c.freeze_backbone = False  # train the head only
    c.backbone_lr_multiplier = 1.0  # the backbone's lr relative to the head's
    c.freeze_bn = False  # use and keep the pretrained batch-norm statistics

    c.eval_flip = False  # average the logits of each eval image and its mirror image

    c.log_every_steps = 50  # training loss, accuracy and lr: a metrics record every N steps
    c.eval_every_epochs = 1
    c.eval_every_steps = 0  # > 0: evaluate every N steps instead (and at the last step)
    c.curves_every_seconds = 30.0  # curves.png at an evaluation at most this often (and at the last step); < 0: never
    # Checkpoints: every N steps and/or every M minutes, and always at the end and on SIGTERM.
    c.checkpoint_every_steps = 0
    c.checkpoint_every_minutes = 10.0
    c.checkpoint_on_eval = False  # also save at every evaluation (keeps the best by eval top-1 among them)
    c.keep_checkpoints = 3  # the latest K, plus the best by eval top-1
    c.async_checkpoints = True

    c.data = d = ml_collections.ConfigDict()
    d.pipeline = "tfds"  # tfds (tf.data) | grain (no TensorFlow) | device (whole dataset on the device)
    d.name = "cifar10"  # a TFDS dataset name (ignored when path is set)
    d.data_dir = ""  # TFDS data_dir ("" = TFDS's default)
    d.path = ""  # an image folder root/<split>/<class>/<image>, used instead of name
    d.train_split = "train"
    d.eval_split = "test"
    d.image_size = 32
    d.augment = "cifar"  # cifar (pad + crop + flip) | inception (random-resized crop + flip) | none
    d.crop_padding = 4
    d.crop_fraction = 0.875  # inception eval: resize to image_size / crop_fraction, center crop
    # inception: the resampling of the random-resized crops and of the eval resize, bicubic | bilinear (both
    # antialiased; torchvision's reference: bilinear)
    d.interpolation = "bicubic"
    # inception: the training crop's window, torchvision (RandomResizedCrop.get_params: area uniform, aspect
    # log-uniform, 10 tries, on every pipeline) | tf (sample_distorted_bounding_box, the Flax example's; tfds only)
    d.crop_sampler = "torchvision"
    # FixRes: side of the random-resized training crops (0 = image_size); evaluation keeps image_size / crop_fraction
    d.train_image_size = 0
    # FFCV's progressive resizing: "min:max:start_ramp:end_ramp" (e.g. "160:192:65:76"), the training crop size
    # rising over epochs (resnet_jax.data.resolution; one compile per size); "" = off
    d.progressive_resizing = ""
    d.repeated_augmentations = 1  # copies of each image per epoch, each augmented on its own (RASampler); 1 = off
    d.cache = True  # cache decoded images in memory (small datasets)
    d.shuffle_buffer = 0  # 0 = the whole split
    d.prefetch = 2
    d.workers = -1  # grain: decoding processes (-1: one per CPU core less one; 0: in the training process)
    d.mean = CIFAR10_MEAN
    d.std = CIFAR10_STD
    d.verify_images = True  # image folders: decode every file before training
    d.skip_bad_images = False  # ... and skip unreadable ones instead of stopping
    return c


def cifar10_paper_config(model: str = "cifar_resnet20") -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 recipe (He et al. 2015, Section 4.2) for `model`.

    Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k
    and 48k iterations, 64k iterations in all (about 164 epochs); crops of the
    image padded by 4 and flips, made on the device from images decoded once
    (``data.pipeline="device"``: CIFAR fits in memory, and no TensorFlow is
    needed for an image folder). Networks of 110 layers or more (ResNet-110,
    ResNet-1202, plain-110) first warm up at lr 0.01 for 400 iterations, as the
    paper does for ResNet-110 ("until the training error is below 80%").
    """
    c = default_config()
    c.model = model
    c.batch_size = 128
    # The paper trained "with a mini-batch size of 128 on two GPUs" (section 4.2); its code is not published, so
    # whether batch norm was per GPU is not known: statistics over the whole batch (2 gives per-GPU ones).
    c.source_devices = 0
    c.num_train_steps = 64000
    c.lr_schedule = "piecewise"
    c.lr_boundaries = (32000, 48000)
    c.data.pipeline = "device"
    depth = int("".join(ch for ch in model.rsplit("_", 1)[-1] if ch.isdigit()) or 0)
    if depth >= 110:
        c.warmup_constant_steps = 400
        c.warmup_constant_lr = 0.01
    return c
