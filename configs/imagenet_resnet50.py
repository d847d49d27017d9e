"""ResNet-50 on ImageNet (TFDS imagenet2012, or an image folder via data.path).

Global batch 1024, lr 0.1 x batch / 256 (= 0.4), 5 warmup epochs then cosine,
90 epochs, Nesterov momentum 0.9, label smoothing 0.1, weight decay 1e-4
excluding batch-norm and bias parameters, bfloat16 compute, zero-init of the
last BN of each residual branch. Inception-style random-resized crops at 224;
evaluation resizes to 256 and takes the central 224.

Input through tf.data (TFDS imagenet2012 as TFRecord files, or a folder);
--config.data.pipeline=grain --config.data.crop_sampler=torchvision reads an
ImageNet folder, or imagenet2012 prepared with `tfds build imagenet2012
--file_format=array_record`, without TensorFlow.

Target (not yet a result of this package): 76.1-76.5% top-1, torchvision's
ResNet-50 v1.5 (76.13%) and the Flax ImageNet example (76.3-76.5%).

Not one published recipe. Closest: the Flax ImageNet example
(google/flax examples/imagenet, `configs/tpu.py`, `train.py`,
`input_pipeline.py`), whose lr 0.1 x batch / 256, 5 warm-up epochs from 0 then
cosine, Nesterov momentum 0.9, L2 decay 1e-4 on the kernels only, batch 1,024,
bfloat16, zero-initialised last batch norm of each block and training crop
(TensorFlow's `sample_distorted_bounding_box`, ``min_object_covered=0.1``, 10
attempts, the evaluation crop when it returns the whole image:
``data.crop_sampler="tf"``, tf.data only) it keeps. It differs from that example
in 90 epochs (the example's 100), label smoothing 0.1 (none there) and
torchvision's initialisation (flax's LeCun normal). `--config.data.pipeline=grain`
needs ``--config.data.crop_sampler=torchvision`` (torchvision's window).
Other depths: configs/imagenet_resnet{18,34,101,152}.py.
"""

from resnet_jax.config import IMAGENET_MEAN, IMAGENET_STD, default_config


def get_config(model: str = "resnet50"):
    c = default_config()
    c.model = model
    c.model_kwargs.zero_init_residual = True
    c.half_precision = True
    c.batch_size = 1024
    # The flax example's BatchNorm(axis_name="batch") normalises over the global batch: no device layout.
    c.source_devices = 0
    c.eval_batch_size = 1024
    c.num_epochs = 90
    c.learning_rate = 0.1
    c.lr_linear_scaling = True
    c.lr_reference_batch = 256
    c.lr_schedule = "cosine"
    c.warmup_epochs = 5
    c.nesterov = True
    c.label_smoothing = 0.1
    c.weight_decay = 1e-4
    c.weight_decay_exclude_bn_bias = True
    c.log_every_steps = 100
    c.keep_checkpoints = 2
    c.checkpoint_every_steps = 2500

    d = c.data
    d.name = "imagenet2012"
    d.train_split = "train"
    d.eval_split = "validation"
    d.image_size = 224
    d.augment = "inception"
    d.crop_sampler = "tf"  # the Flax example's window: sample_distorted_bounding_box (tf.data only)
    d.crop_fraction = 224 / 256
    d.cache = False
    d.shuffle_buffer = 16 * 1024
    d.prefetch = 4
    d.mean, d.std = IMAGENET_MEAN, IMAGENET_STD
    d.verify_images = False  # 1.28M files: check a folder once with a separate pass if needed
    return c
