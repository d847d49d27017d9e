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
through `resnet_jax.data.folder` (Pillow), as our on-device pipeline reads them,
and cropped as it crops them: the uint8 pixels padded with black, then
normalised. ``--checkpoint FILE`` saves the run at the end of every epoch and
resumes from it (for runs spread over several calls of a GPU machine).
``--scale`` shortens a step-based recipe as the reproduction study's ``--scale``
does; ``--init he`` initialises the convolutions as ours are (normal, std
sqrt(2 / fan_out)) instead of PyTorch's default.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/torch_accuracy.py")

import contextlib
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench  # noqa: E402
from bench.torch_peer import CifarResNet  # noqa: E402
from resnet_jax import errors  # noqa: E402
from resnet_jax.data import folder  # noqa: E402
from resnet_jax.reproduce.study import scale_recipe  # noqa: E402
from resnet_jax.training import optim  # noqa: E402


def _recipe(path: str):
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels-last), on the images' device."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in (mean, std))
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def crop_flip(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crops of uint8 NHWC images padded by `pad` black pixels, and
    horizontal flips of half of them (as `resnet_jax.data.augment.crop_flip`)."""
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(images.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(images.device)
    cols = torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    rows = dy[:, None] + torch.arange(h, device=images.device)
    return padded[torch.arange(b, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def train(
    data: str, recipe_path: str, epochs: int, seed: int, threads: int,
    device: str = "cpu", scale: float = 1.0, init: str = "torch", checkpoint: str = "", batch_size: int = 0,
) -> dict:  # fmt: skip
    """Trains and evaluates (resuming from `checkpoint` if it exists); returns
    test top-1, wall time and images/s."""
    c = _recipe(recipe_path)
    if scale != 1.0:
        scale_recipe(c, scale)
    c.batch_size = batch_size or c.batch_size
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    train_split = folder.list_split(data, c.data.train_split)
    test_split = folder.list_split(data, c.data.eval_split, train_split.class_names)
    size = (c.data.image_size, c.data.image_size)
    x_train, y_train = folder.load_arrays(train_split, size)
    x_test, y_test = folder.load_arrays(test_split, size)
    x_train = torch.from_numpy(x_train).to(device)  # uint8: cropped, then normalised per step
    x_test = _normalize(torch.from_numpy(x_test).to(device), c.data.mean, c.data.std)
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

    step, train_s, first_epoch = 0, 0.0, 0
    if checkpoint and os.path.isfile(checkpoint):
        saved = torch.load(checkpoint, map_location=device, weights_only=False)  # our own file
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        step, train_s, first_epoch, top1 = saved["step"], saved["train_s"], saved["epoch"] + 1, saved["top1"]
        print(f"resumed from {checkpoint} after epoch {first_epoch} (step {step})", flush=True)
    for epoch in range(first_epoch, epochs):
        model.train()
        t_epoch = time.time()
        perm = torch.randperm(len(y_train), generator=gen)
        correct = 0
        for i in range(min(steps_per_epoch, total - step)):
            idx = perm[i * c.batch_size : (i + 1) * c.batch_size].to(device)
            x = _normalize(crop_flip(x_train[idx], c.data.crop_padding, gen), c.data.mean, c.data.std)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            logits = model(x)
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=c.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += (logits.argmax(1) == y_train[idx]).sum()
            step += 1
        correct = int(correct)  # one device sync an epoch, not one a step
        train_s += time.time() - t_epoch
        top1 = evaluate(model, x_test, y_test, c.eval_batch_size, c.eval_flip)
        print(f"epoch {epoch + 1} train acc {correct / ((i + 1) * c.batch_size):.4f} test top-1 {top1:.4f}", flush=True)
        if checkpoint:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step,
                     "train_s": train_s, "epoch": epoch, "top1": top1}  # fmt: skip
            save(state, checkpoint)
    return {
        "torch": torch.__version__, "recipe": recipe_path, "scale": scale, "init": init,
        "steps": step, "seed": seed, "test_top1": top1,
        "wall_s": time.time() - t0, "train_images_per_s": step * c.batch_size / train_s,
    }  # fmt: skip


def save(state: dict, checkpoint: str) -> None:
    """`state` into `checkpoint` whole: a temporary file renamed over the earlier epoch's, stops held meanwhile;
    a write error is one line, the earlier epoch's checkpoint kept."""
    temporary = checkpoint + ".tmp"
    try:
        with errors.stops_held():
            with open(temporary, "wb") as f:
                torch.save(state, f)
            os.replace(temporary, checkpoint)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise errors.cannot_write_output(checkpoint, e, "the checkpoint of the epoch before is as it was") from None


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


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__file__, __doc__)
    p.add_argument("--data", required=True, help="an image folder root/<split>/<class>/<image>")
    p.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "configs", "cifar10_quick.py"))
    p.add_argument("--epochs", type=bench.positive, default=10, help="for a recipe counted in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=bench.positive, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies a step-based recipe's iteration counts")
    p.add_argument("--init", choices=("torch", "he"), default="torch", help="conv init: PyTorch's default or ours")
    p.add_argument("--checkpoint", default="", help="save every epoch to this file and resume from it")
    p.add_argument("--batch-size", type=int, default=0, help="default: the recipe's")
    p.add_argument("--out", default="", help="also write the result as JSON to this file")
    args = p.parse_args(argv)
    bench.existing(args.data, "--data: an image folder root/<split>/<class>/<image>")
    bench.existing(args.recipe, "--recipe: a config file")
    result = train(
        args.data, args.recipe, args.epochs, args.seed, args.threads, args.device, args.scale, args.init,
        args.checkpoint, args.batch_size,
    )  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        bench.write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    bench.run(main, "nothing was written but --checkpoint's finished epochs (the same command resumes from them)")
