"""Image folders laid out ``root/<split>/<class>/<file>``, read with Pillow.

This module needs no TensorFlow: it lists and checks a user's folder before
training starts (so that a corrupt file is reported by name, not met in the
middle of an epoch), and decodes small datasets into uint8 arrays for the
on-device pipeline.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image

from resnet_jax.errors import DatasetError, NotFoundError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BadImageError(UserError, ValueError):
    """One or more files of an image folder cannot be decoded."""


@dataclass(frozen=True)
class FolderSplit:
    """The files of one split: paths, integer labels and class names."""

    root: str
    split: str
    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def list_classes(root: str, split: str) -> list[str]:
    """Sorted class folder names of ``root/split`` (errors name what is missing)."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(root):
        raise NotFoundError(f"image folder {root!r} does not exist")
    if not os.path.isdir(split_dir):
        splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise NotFoundError(f"image folder {root!r} has no split {split!r}; it has: {splits}")
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not classes:
        raise NotFoundError(f"{split_dir!r} holds no class folders (expected {split_dir}/<class>/<image>)")
    return classes


def list_split(root: str, split: str, class_names: Sequence[str] | None = None) -> FolderSplit:
    """Lists ``root/split/<class>/*`` in a deterministic (sorted) order.

    Args:
      root: the folder's root.
      split: a sub-folder of `root`, e.g. "train".
      class_names: the class list to use (e.g. the training split's), so that
        labels agree between splits; default: this split's folders.
    """
    found = list_classes(root, split)
    class_names = tuple(class_names or found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise DatasetError(f"{os.path.join(root, split)!r} has classes not in the training split: {unknown}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, split, name)
        if not os.path.isdir(class_dir):
            continue
        files = [f for f in sorted(os.listdir(class_dir)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise DatasetError(
                f"class folder {class_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); fill it or remove it"
            )
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise NotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {os.path.join(root, split)!r}")
    return FolderSplit(root, split, tuple(paths), np.asarray(labels, np.int32), class_names)


@contextlib.contextmanager
def open_image(file: str | IO[bytes], name: str | None = None) -> Iterator[Image.Image]:
    """`Image.open` of a path or an open binary file; a failure to open or decode
    it inside the ``with`` block is a `BadImageError` naming `name` (default: the path)."""
    try:
        with Image.open(file) as im:
            yield im
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{name or file}: not a readable image ({e})") from None


def load_rgb(file: str | IO[bytes], size: tuple[int, int] | None = None, name: str | None = None) -> np.ndarray:
    """Decodes any image (a path or an open binary file) into an RGB uint8 array
    (grayscale, RGBA, palette, CMYK...), resized to `size` (height, width) if given.

    Raises:
      BadImageError: naming the file, when it is not a decodable image.
    """
    with open_image(file, name) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, np.uint8)


def _decode_all(split: FolderSplit, size: tuple[int, int] | None, num_threads: int, keep: bool) -> list:
    """Each file decoded: its array (None unless `keep`: checking a large folder
    must not hold it in memory), or the `BadImageError` message (a str)."""

    def one(path: str) -> np.ndarray | str | None:
        try:
            image = load_rgb(path, size)
        except BadImageError as e:
            return str(e)
        return image if keep else None

    with ThreadPoolExecutor(num_threads) as pool:
        return list(pool.map(one, split.paths))


def _keep_good(split: FolderSplit, decoded: list, skip_bad: bool) -> tuple[FolderSplit, list]:
    """Raises naming every unreadable file, or drops them when `skip_bad`."""
    bad = [d for d in decoded if isinstance(d, str)]
    if bad and not skip_bad:
        listing = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise BadImageError(
            f"{len(bad)} of {len(split)} files in {os.path.join(split.root, split.split)!r} are not readable "
            f"images (set config.data.skip_bad_images=True to skip them):\n  {listing}"
        )
    if bad:
        print(f"Skipping {len(bad)} unreadable files of {len(split)} in {split.root}/{split.split}.")
    keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    kept = FolderSplit(
        split.root, split.split, tuple(split.paths[i] for i in keep), split.labels[keep], split.class_names
    )
    return kept, [decoded[i] for i in keep]


def verify(split: FolderSplit, skip_bad: bool = False, num_threads: int = 8) -> FolderSplit:
    """Decodes every file once; bad files raise (all named) or are dropped.

    Args:
      split: the listed split.
      skip_bad: drop unreadable files (and print how many) instead of raising.
      num_threads: decoding threads.
    """
    return _keep_good(split, _decode_all(split, None, num_threads, keep=False), skip_bad)[0]


def load_arrays(
    split: FolderSplit, size: tuple[int, int] | None = None, skip_bad: bool = False, num_threads: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole split into ``(images uint8 [N, H, W, 3], labels int32 [N])``,
    checking every file on the way (as `verify`).

    Images of another size are resized to `size` (default: the first image's).
    """
    if size is None:
        size = load_rgb(split.paths[0]).shape[:2]
    kept, images = _keep_good(split, _decode_all(split, size, num_threads, keep=True), skip_bad)
    return np.stack(images), kept.labels.copy()
