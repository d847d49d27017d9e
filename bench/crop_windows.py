"""The training crop's window on one image size: the mean area (a fraction of the
image) and the share of whole-image windows of torchvision's own
`RandomResizedCrop.get_params`, of this package's samplers (`data.crop_sampler`
"torchvision" on tf.data and on Grain, "tf" on tf.data), and of TensorFlow's
`sample_distorted_bounding_box` with ``min_object_covered=0.08``.

    python bench/crop_windows.py --draws 20000 --height 375 --width 500
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/crop_windows.py")

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torchvision.transforms as T  # noqa: E402  (before TensorFlow: the other order crashes)

import bench  # noqa: E402


def summary(windows: np.ndarray, height: int, width: int) -> dict[str, float]:
    """(top, left, h, w) rows -> mean area fraction and the share of whole-image windows."""
    h, w = windows[:, 2].astype(np.float64), windows[:, 3].astype(np.float64)
    return {"mean_area": round(float(np.mean(h * w) / (height * width)), 4),
            "whole": round(float(np.mean((h == height) & (w == width))), 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = bench.parser(__file__, __doc__)
    parser.add_argument("--draws", type=bench.positive, default=20000)
    parser.add_argument("--height", type=bench.positive, default=375)
    parser.add_argument("--width", type=bench.positive, default=500)
    args = parser.parse_args(argv)
    n, height, width = args.draws, args.height, args.width

    import tensorflow as tf
    import torch

    from resnet_jax.data import augment

    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    results = {"torchvision get_params": summary(
        np.array([T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]),
        height, width)}  # fmt: skip
    rng = np.random.default_rng(0)
    grain = np.array([augment.np_crop_window(rng, height, width) for _ in range(n)])
    results["grain, torchvision sampler"] = summary(grain, height, width)
    seeds = tf.stack([tf.zeros(n, tf.int64), tf.range(n, dtype=tf.int64)], 1)
    shape = tf.constant([height, width, 3])

    def tf_windows(window_fn) -> np.ndarray:
        return tf.function(lambda s: tf.map_fn(window_fn, s, fn_output_signature=tf.int32))(seeds).numpy()

    for sampler in augment.CROP_SAMPLERS:
        windows = tf_windows(lambda seed, sampler=sampler: augment.tf_crop_window(shape, seed, sampler=sampler))
        results[f"tf.data, {sampler} sampler"] = summary(windows, height, width)

    def older(seed):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=seed, min_object_covered=0.08,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )  # fmt: skip
        return tf.stack([begin[0], begin[1], size[0], size[1]])

    results["sample_distorted_bounding_box, min_object_covered=0.08"] = summary(tf_windows(older), height, width)
    print(json.dumps({"draws": n, "height": height, "width": width, "results": results}, indent=1))


if __name__ == "__main__":
    bench.run(main)
