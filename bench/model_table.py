"""Markdown table of every registered model: parameters and multiply-accumulates.

    python bench/model_table.py                  # print the table
    python bench/model_table.py --write docs/models.md  # replace the marked block in docs/models.md

Counts come from `resnet_jax.models.profile` (abstract evaluation, no FLOPs
spent), on one image at the family's default resolution: 224 for ImageNet
networks, 32 for CIFAR networks. With ``--write``, the text between
``<!-- model-table:start -->`` and ``<!-- model-table:end -->`` is replaced.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports that take seconds: a stop while it starts is one line
    from resnet_jax.errors import stop_while_starting

    stop_while_starting("bench/model_table.py")

import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
from resnet_jax import models  # noqa: E402
from resnet_jax.models.profile import default_resolution  # noqa: E402

START = "<!-- model-table:start -->"
END = "<!-- model-table:end -->"


def rows(names: Iterable[str] | None = None) -> list[dict]:
    """One dict per model: name, family, resolution, params, macs."""
    names = models.list_models() if names is None else list(names)
    out = []
    for name in names:
        resolution = default_resolution(name)
        counts = models.profile(name, resolution=resolution)
        out.append(dict(name=name, family=models.family(name), resolution=resolution, **counts))
    return out


def markdown_table(names: Iterable[str] | None = None) -> str:
    """The Markdown table of `names` (default: every registered model), ending with a newline."""
    lines = [
        "| Model | Family | Resolution | Parameters | GMACs |",
        "|---|---|--:|--:|--:|",
    ]
    for r in rows(names):
        lines.append(f"| `{r['name']}` | {r['family']} | {r['resolution']} | {r['params']:,} | {r['macs'] / 1e9:.2f} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str) -> str:
    """`text` with the lines between the START and END markers replaced by `table`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"expected the markers {START!r} and then {END!r} in the file")
    head = text[: start + len(START)]
    return f"{head}\n{table.rstrip(chr(10))}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = bench.parser(__file__, __doc__)
    parser.add_argument("--write", metavar="FILE", type=Path, help="replace the marked block of FILE")
    parser.add_argument("models", nargs="*", help="model names (default: all registered models)")
    args = parser.parse_args(argv)
    table = markdown_table(args.models or None)
    if args.write is None:
        sys.stdout.write(table)
        return 0
    if not args.write.is_file():
        parser.error(f"{args.write} does not exist")
    text = args.write.read_text()
    try:
        new = replace_block(text, table)
    except ValueError as e:
        parser.error(f"{args.write}: {e}")
    if new != text:
        bench.write_text(str(args.write), new)
    print(f"wrote {len(table.splitlines()) - 2} models to {args.write}")
    return 0


if __name__ == "__main__":
    bench.run(main)
