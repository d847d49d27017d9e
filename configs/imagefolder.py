"""Train on your own image folder: root/{train,test}/<class>/<image>, photos of any size.

    python train.py --config configs/imagefolder.py --workdir runs/dogs \
        --config.data.path=/data/dogs_vs_cats --config.model=resnet18

ImageNet-style preprocessing (random-resized crop + flip, resize 256 and
center crop 224 at evaluation) at data.image_size, ImageNet normalisation.
Every file is decoded once before training: unreadable ones are listed by
name (or skipped and counted with --config.data.skip_bad_images=True).
Grayscale, RGBA, palette and CMYK images are converted to RGB.

The Grain pipeline reads the folder (`pip install -e ".[grain]"`): no
TensorFlow, decoding in one process per CPU core (--config.data.workers), each
JPEG decoded only at the scale its crop needs, and a run killed mid-epoch
resumes with the batches it would have seen. --config.data.pipeline=tfds reads
it through tf.data instead; a folder that fits in memory trains faster with
--config.data.pipeline=device.
"""

from resnet_jax.config import IMAGENET_MEAN, IMAGENET_STD, default_config


def get_config():
    c = default_config()
    c.model = "resnet18"
    c.batch_size = 64
    c.eval_batch_size = 64
    c.num_epochs = 30
    c.learning_rate = 0.1
    c.lr_linear_scaling = True
    c.lr_reference_batch = 256
    c.lr_schedule = "cosine"
    c.warmup_epochs = 1
    c.nesterov = True
    c.label_smoothing = 0.1
    c.weight_decay_exclude_bn_bias = True
    d = c.data
    d.path = ""  # required: --config.data.path=/your/folder
    d.train_split, d.eval_split = "train", "test"
    d.pipeline = "grain"
    d.image_size = 224
    d.augment = "inception"
    d.cache = False
    d.shuffle_buffer = 10_000
    d.mean, d.std = IMAGENET_MEAN, IMAGENET_STD
    return c
