"""Accuracy peer: PyTorch trains the same CIFAR ResNet with the same short recipe
on the same image folder, so that a figure of ours can be told apart from a
ceiling of the data (e.g. the JPEG copy of CIFAR-10).

    python bench/torch_accuracy.py --data ../shared/data/cifar10-jpeg --epochs 10
    python bench/torch_accuracy.py --data /tmp/d/cifar10-jpeg --recipe configs/cifar10_resnet20.py --device cuda
    python bench/torch_accuracy.py --data ../shared/data/cifar10-jpeg --recipe configs/cifar10_resnet56.py \
        --scale 0.01 --init he

The recipe is read from a config file (default ``configs/cifar10_quick.py``;
a recipe counted in steps, as the paper's, runs its ``num_train_steps``):
the learning rate of every step comes from our own schedule function, then SGD
with momentum (Nesterov if set), weight decay coupled and optionally excluded
from 1-D parameters, label smoothing, pad-and-crop + flip, flip test-time
augmentation. Images are read
through `resnet_jax.data.folder` (Pillow), as our on-device pipeline reads them.
``--scale`` shortens a step-based recipe as the reproduction study's ``--scale``
does; ``--init he`` initialises the convolutions as ours are (normal, std
sqrt(2 / fan_out)) instead of PyTorch's default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.torch_peer import CifarResNet  # noqa: E402
from resnet_jax.data import folder  # noqa: E402
from resnet_jax.reproduce.study import scale_recipe  # noqa: E402
from resnet_jax.training import optim  # noqa: E402


def _recipe(path: str):
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _normalize(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def _crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(3)
    return out.contiguous(memory_format=torch.channels_last)


def train(
    data: str, recipe_path: str, epochs: int, seed: int, threads: int,
    device: str = "cpu", scale: float = 1.0, init: str = "torch",
) -> dict:  # fmt: skip
    """Trains and evaluates; returns test top-1, wall time and images/s."""
    c = _recipe(recipe_path)
    if scale != 1.0:
        scale_recipe(c, scale)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    train_split = folder.list_split(data, c.data.train_split)
    test_split = folder.list_split(data, c.data.eval_split, train_split.class_names)
    size = (c.data.image_size, c.data.image_size)
    x_train, y_train = folder.load_arrays(train_split, size)
    x_test, y_test = folder.load_arrays(test_split, size)
    x_train = _normalize(x_train, c.data.mean, c.data.std).to(device)
    x_test = _normalize(x_test, c.data.mean, c.data.std).to(device)
    y_train, y_test = torch.from_numpy(y_train).long().to(device), torch.from_numpy(y_test).long().to(device)

    model = CifarResNet(int(c.model.removeprefix("cifar_resnet")), len(train_split.class_names))
    if init == "he":
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    model = model.to(device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1 or not c.weight_decay_exclude_bn_bias]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and c.weight_decay_exclude_bn_bias]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=c.learning_rate, momentum=c.momentum, nesterov=c.nesterov,
    )  # fmt: skip
    steps_per_epoch = len(y_train) // c.batch_size
    total = c.num_train_steps if c.num_train_steps > 0 else epochs * steps_per_epoch
    epochs = -(-total // steps_per_epoch)
    lrs = np.asarray(optim.learning_rate_schedule(c, steps_per_epoch, total)(np.arange(total)), np.float64)

    step, train_s = 0, 0.0
    for epoch in range(epochs):
        model.train()
        t_epoch = time.time()
        perm = torch.randperm(len(y_train), generator=gen)
        correct = 0
        for i in range(min(steps_per_epoch, total - step)):
            idx = perm[i * c.batch_size : (i + 1) * c.batch_size]
            x = _crop_flip(x_train[idx], c.data.crop_padding, gen)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            logits = model(x)
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=c.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            step += 1
        train_s += time.time() - t_epoch
        top1 = evaluate(model, x_test, y_test, c.eval_batch_size, c.eval_flip)
        print(f"epoch {epoch + 1} train acc {correct / ((i + 1) * c.batch_size):.4f} test top-1 {top1:.4f}", flush=True)
    return {
        "torch": torch.__version__, "recipe": recipe_path, "scale": scale, "init": init,
        "steps": step, "seed": seed, "test_top1": top1,
        "wall_s": time.time() - t0, "train_images_per_s": step * c.batch_size / train_s,
    }  # fmt: skip


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, flip: bool) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        xb = x[i : i + batch]
        logits = model(xb)
        if flip:
            logits = (logits + model(xb.flip(3))) / 2
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="an image folder root/<split>/<class>/<image>")
    p.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "configs", "cifar10_quick.py"))
    p.add_argument("--epochs", type=int, default=10, help="for a recipe counted in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies a step-based recipe's iteration counts")
    p.add_argument("--init", choices=("torch", "he"), default="torch", help="conv init: PyTorch's default or ours")
    args = p.parse_args()
    result = train(
        args.data, args.recipe, args.epochs, args.seed, args.threads, args.device, args.scale, args.init
    )  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
