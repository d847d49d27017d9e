"""Top-k predictions of a trained model on image files.

    python -m resnet_jax.predict --workdir runs/r20 cat.jpg dog.png
    python -m resnet_jax.predict --workdir runs/r20 --step best --top 3 *.jpg

Images of any size and mode (grayscale, RGBA, palette, CMYK) are converted to
RGB and resized as the model was evaluated: straight to the training size for
CIFAR-style runs, short side + center crop for ImageNet-style ones. Every file
is read before the model: those that cannot be read are named together, and
nothing is predicted. A SIGTERM or Ctrl-C stops it at once, in one line.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("predict")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_jax.data.augment import normalize  # noqa: E402
from resnet_jax.data.folder import BadImageError, load_rgb  # noqa: E402
from resnet_jax.errors import (  # noqa: E402
    ArgumentParser,
    ConfigError,
    exit_on_user_error,
    run_main,
    stops_held,
    stops_raise,
)
from resnet_jax.restore import restore  # noqa: E402


def read_images(paths: Sequence[str]) -> list[np.ndarray]:
    """Every file of `paths` decoded to RGB uint8; a `BadImageError` naming each
    one that cannot be read (missing, not an image), with the OS's or PIL's reason."""
    images, bad = [], []
    for path in paths:
        try:
            images.append(load_rgb(path))
        except BadImageError as e:
            bad.append(str(e))
    if bad:
        raise BadImageError(f"{len(bad)} of {len(paths)} files cannot be read, so nothing was predicted: "
                            f"{'; '.join(bad)}")  # fmt: skip
    return images


def preprocess(image: str | np.ndarray, info: dict) -> np.ndarray:
    """An image file (or its decoded RGB array) -> uint8 [H, W, 3] at the model's resolution (see module doc)."""
    size = info["image_size"]
    image = Image.fromarray(load_rgb(image) if isinstance(image, str) else image)
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
    model: Any, variables: dict, info: dict, paths: Sequence[str | np.ndarray], top: int = 5
) -> list[list[tuple[str, float]]]:
    """For each path (or decoded image, `read_images`), the `top` (class name, probability) pairs, best first."""
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
    parser = ArgumentParser(prog="python -m resnet_jax.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--step", default="latest", help='"latest", "best" or a step number')
    parser.add_argument("--top", type=int, default=5, help="how many classes to print for each image (>= 1)")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    with exit_on_user_error(), stops_raise("predict", "nothing was written"):
        if args.top < 1:
            raise ConfigError(f"--top={args.top}: print at least one class an image (--top=1 or more)")
        images = read_images(args.images)  # before the model: every unreadable file named, in seconds
        model, variables, info = restore(args.workdir, args.step)
        results = predict(model, variables, info, images, args.top)
        with stops_held():  # printed whole; a stop that came and was swallowed on the way is raised here instead
            for path, preds in zip(args.images, results):
                print(path)
                for name, prob in preds:
                    print(f"  {prob:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    run_main(main)
