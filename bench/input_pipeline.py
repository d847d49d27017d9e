"""Input-pipeline throughput for ImageNet-style preprocessing (random-resized
crop + flip at 224) on a folder of full-size JPEGs that this script makes:
tf.data (decoding only the crop window of each JPEG) and the Grain pipeline
(decoding each JPEG at the smallest DCT scale its crop allows).

    python bench/input_pipeline.py --images 600 --threads 1 2 --workers 1 2

Reports images/s for each tf.data thread count and each number of Grain worker
processes, and images/s per thread or worker (a CPU core each, when the machine
has that many). tf.data reads the files once before timing; Grain reads them
every epoch (from the page cache), and its rate is timed from its first batch
on (the seconds to that batch, mostly starting the workers, are reported apart).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/input_pipeline.py")

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import bench  # noqa: E402


def make_folder(root: str, num_images: int, size: tuple[int, int] = (500, 375)) -> None:
    """root/train/<2 classes>/*.jpg of `size` (ImageNet's typical 500x375), smooth
    random content so that JPEG sizes are realistic (about 60-120 kB)."""
    rng = np.random.default_rng(0)
    for i in range(num_images):
        d = os.path.join(root, "train", f"class{i % 2}")
        os.makedirs(d, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)
        image = Image.fromarray(small).resize(size, Image.BICUBIC)
        noise = rng.integers(-20, 20, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        image.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    os.makedirs(os.path.join(root, "test", "class0"), exist_ok=True)
    image.save(os.path.join(root, "test", "class0", "0.jpg"))


def measure(root: str, threads: int, batch: int, size: int) -> float:
    import tensorflow as tf

    from resnet_jax.data import augment

    files = sorted(tf.io.gfile.glob(os.path.join(root, "train", "*", "*.jpg")))
    ds = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file).cache()
    for _ in ds:  # file reads out of the measurement: this times decoding and cropping
        pass
    ds = ds.enumerate().map(
        lambda i, x: augment.tf_inception_crop(x, tf.stack([tf.constant(0, tf.int64), i]), size),
        num_parallel_calls=threads,
    )
    ds = ds.batch(batch)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    n, t0 = 0, time.perf_counter()
    for _ in range(2):
        for images in ds:
            n += int(images.shape[0])
    return n / (time.perf_counter() - t0)


def measure_grain(root: str, workers: int, batch: int, size: int) -> tuple[float, float]:
    """Images/s of the Grain pipeline's training batches over two epochs, from the
    first batch on, and the seconds to that first batch."""
    import itertools

    from resnet_jax import parallel
    from resnet_jax.config import default_config
    from resnet_jax.data.grain import GrainPipeline

    cfg = default_config().data
    cfg.update(path=root, image_size=size, augment="inception", workers=workers, verify_images=False)
    pipeline = GrainPipeline(cfg, batch, batch, 0, parallel.make_mesh())
    t0 = time.perf_counter()
    batches = itertools.chain(pipeline.train_epoch(0), pipeline.train_epoch(1))
    next(batches)
    t1 = time.perf_counter()
    n = sum(len(b["label"]) for b in batches)
    rate = n / (time.perf_counter() - t1)
    pipeline.data_iterator.close()
    return rate, t1 - t0


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--images", type=bench.positive, default=600)
    p.add_argument("--threads", type=bench.positive, nargs="*", default=[1, 2],
                   help="tf.data threads (none: no tf.data)")
    p.add_argument("--workers", type=bench.positive, nargs="*", default=[1, 2],
                   help="Grain worker processes (none: no Grain)")
    p.add_argument("--batch", type=bench.positive, default=64)
    p.add_argument("--size", type=bench.positive, default=224)
    args = p.parse_args(argv)
    if args.workers and args.images < args.batch:  # Grain keeps whole batches only
        p.error(f"--images {args.images} is fewer than --batch {args.batch}: Grain would give no batch")
    with tempfile.TemporaryDirectory() as root:
        make_folder(root, args.images)
        kb = np.mean([os.path.getsize(os.path.join(root, "train", "class0", f)) for f in os.listdir(
            os.path.join(root, "train", "class0"))]) / 1024  # fmt: skip
        results = {"images": args.images, "mean_jpeg_kb": round(kb, 1), "cpu_cores": os.cpu_count()}
        for t in args.threads:
            rate = measure(root, t, args.batch, args.size)
            results[f"images_per_s_{t}_threads"] = round(rate, 1)
            results[f"images_per_s_per_thread_{t}"] = round(rate / t, 1)
        for w in args.workers:
            rate, start = measure_grain(root, w, args.batch, args.size)
            results[f"grain_images_per_s_{w}_workers"] = round(rate, 1)
            results[f"grain_images_per_s_per_worker_{w}"] = round(rate / w, 1)
            results[f"grain_seconds_to_first_batch_{w}"] = round(start, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    bench.run(main)
