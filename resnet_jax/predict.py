"""Top-k predictions of a trained model on image files.

    python -m resnet_jax.predict --workdir runs/r20 cat.jpg dog.png
    python -m resnet_jax.predict --workdir runs/r20 --step best --top 3 *.jpg

Images of any size and mode (grayscale, RGBA, palette, CMYK) are converted to
RGB and resized as the model was evaluated: straight to the training size for
CIFAR-style runs, short side + center crop for ImageNet-style ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from resnet_jax.data.augment import normalize
from resnet_jax.data.folder import load_rgb
from resnet_jax.errors import exit_on_user_error, run_main
from resnet_jax.restore import restore


def preprocess(path: str, info: dict) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] at the model's resolution (see module doc)."""
    size = info["image_size"]
    image = Image.fromarray(load_rgb(path))
    if info["centre_crop"]:
        short = round(size / info["crop_fraction"])
        w, h = image.size
        scale = short / min(w, h)
        image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.uint8)


def predict(
    model: Any, variables: dict, info: dict, paths: Sequence[str], top: int = 5
) -> list[list[tuple[str, float]]]:
    """For each path, the `top` (class name, probability) pairs, best first."""
    images = np.stack([preprocess(p, info) for p in paths])
    x = normalize(images, info["mean"], info["std"])
    probs = np.asarray(jax.nn.softmax(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)))
    names = info["class_names"]
    out = []
    for p in probs:
        order = np.argsort(-p)[:top]
        out.append([(names[i], float(p[i])) for i in order])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--step", default="latest", help='"latest", "best" or a step number')
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        model, variables, info = restore(args.workdir, args.step)
        results = predict(model, variables, info, args.images, args.top)
    for path, preds in zip(args.images, results):
        print(path)
        for name, prob in preds:
            print(f"  {prob:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    run_main(main)
