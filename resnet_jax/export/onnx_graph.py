"""A trained `ResNet` as an ONNX graph, built from the model's fields and variables with the `onnx` package alone.

The graph is the network of `resnet_jax.models` operator for operator: NHWC
input transposed to NCHW once, ``Conv`` (grouped for ResNeXt, torchvision's
symmetric padding), ``BatchNormalization`` with the running statistics,
``Relu``, ``MaxPool``, ResNet-D's ceil-mode ``AveragePool``, option A's strided
``Slice`` and channel ``Pad``, ``GlobalAveragePool`` and ``Gemm``. Every
network of the registry (CIFAR, pre-activation, ResNeXt, Wide, ResNet-D,
plain) is expressed; the batch dimension is symbolic (``batch``). Why this
route rather than a JAX-to-ONNX converter or ``torch.onnx``: docs/export.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_jax import models

OPSET = 17


class _Graph:
    """Nodes and initializers under construction, with unique value names."""

    def __init__(self, onnx: Any):
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        self.count += 1
        out = f"{kind.lower()}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out


class _Builder:
    """Walks the model's stem, stages and head as `ResNet._forward` and the blocks build them."""

    def __init__(self, graph: _Graph, model: Any, variables: dict):
        self.g, self.model = graph, model
        self.params, self.stats = variables["params"], variables.get("batch_stats", {})

    def _lookup(self, tree: dict, path: tuple[str, ...]) -> dict:
        for p in path:
            tree = tree[p]
        return tree

    def conv(self, x: str, path: tuple[str, ...], strides: int = 1, groups: int = 1) -> str:
        kernel = np.asarray(self._lookup(self.params, path)["kernel"], np.float32)
        pad = kernel.shape[0] // 2
        w = self.g.const("/".join(path) + "/kernel", kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        return self.g.op(
            "Conv", [x, w], kernel_shape=list(kernel.shape[:2]), strides=[strides, strides], pads=[pad] * 4,
            group=groups,
        )  # fmt: skip

    def bn(self, x: str, path: tuple[str, ...]) -> str:
        p, s = self._lookup(self.params, path), self._lookup(self.stats, path)
        name = "/".join(path)
        inputs = [x] + [
            self.g.const(f"{name}/{k}", np.asarray(v, np.float32))
            for k, v in (("scale", p["scale"]), ("bias", p["bias"]), ("mean", s["mean"]), ("var", s["var"]))
        ]
        return self.g.op("BatchNormalization", inputs, epsilon=float(self.model.bn_epsilon))

    def relu(self, x: str) -> str:
        return self.g.op("Relu", [x])

    def stem(self, x: str) -> str:
        m = self.model
        if m.stem == "deep":
            for k, strides in ((1, 2), (2, 1)):
                x = self.relu(self.bn(self.conv(x, (f"stem_conv{k}",), strides), (f"stem_bn{k}",)))
            x = self.conv(x, ("stem_conv3",))
        else:
            x = self.conv(x, ("stem_conv",), 2 if m.stem == "imagenet" else 1)
        if not self.preact:
            x = self.relu(self.bn(x, ("stem_bn",)))
        if m.stem != "cifar":
            x = self.g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        return x

    @property
    def preact(self) -> bool:
        return self.model.block in (models.PreActBasicBlock, models.PreActBottleneck)

    def shortcut(self, x: str, y: str, block: tuple[str, ...], channels: int, features: int, strides: int) -> str:
        """The block's shortcut of `x` (`y`: the pre-activated input that a pre-activation projection reads)."""
        kind = self.model.shortcut
        if kind == "A":
            if strides > 1:
                x = self.g.op("Slice", [x, self._ints([0, 0]), self._ints([2**62, 2**62]), self._ints([2, 3]),
                                        self._ints([strides, strides])])  # fmt: skip
            if features > channels:
                x = self.g.op("Pad", [x, self._ints([0, 0, 0, 0, 0, features - channels, 0, 0])])
            return x
        if not (kind == "C" or (kind == "B" and (strides != 1 or channels != features))):
            return x
        source = y if self.preact else x
        if self.model.avg_down and strides > 1:
            source = self.g.op(
                "AveragePool", [source], kernel_shape=[strides, strides], strides=[strides, strides], ceil_mode=1,
                count_include_pad=0,
            )  # fmt: skip
            projected = self.conv(source, (*block, "shortcut_conv"))
        else:
            projected = self.conv(source, (*block, "shortcut_conv"), strides)
        return projected if self.preact else self.bn(projected, (*block, "shortcut_bn"))

    def _ints(self, values: list[int]) -> str:
        self.g.count += 1
        return self.g.const(f"ints_{self.g.count}", np.asarray(values, np.int64))

    def block(self, x: str, block: tuple[str, ...], channels: int, filters: int, strides: int) -> tuple[str, int]:
        """One block (its kind from the model's `block`); returns its output and width."""
        m = self.model
        bottleneck = m.block in (models.Bottleneck, models.PreActBottleneck)
        features = filters * 4 if bottleneck else filters
        if bottleneck:
            width = int(filters * m.base_width / 64) * m.groups
            s1, s3 = (1, strides) if m.stride_on_3x3 else (strides, 1)
            convs = [(width, s1, 1), (width, s3, m.groups), (features, 1, 1)]
        else:
            convs = [(filters, strides, 1), (filters, 1, 1)]
        if self.preact:
            y = self.relu(self.bn(x, (*block, "bn1")))
            branch = y
            for k, (_, s, groups) in enumerate(convs, 1):
                if k > 1:
                    branch = self.relu(self.bn(branch, (*block, f"bn{k}")))
                branch = self.conv(branch, (*block, f"conv{k}"), s, groups)
            if m.shortcut is None:
                return branch, features
            return self.g.op("Add", [branch, self.shortcut(x, y, block, channels, features, strides)]), features
        branch = x
        for k, (_, s, groups) in enumerate(convs, 1):
            branch = self.bn(self.conv(branch, (*block, f"conv{k}"), s, groups), (*block, f"bn{k}"))
            if k < len(convs):
                branch = self.relu(branch)
        if m.shortcut is not None:
            branch = self.g.op("Add", [branch, self.shortcut(x, x, block, channels, features, strides)])
        return self.relu(branch), features

    def network(self, x: str) -> str:
        m = self.model
        x = self.stem(x)
        channels = m.stem_width or m.stage_widths[0]
        for i, (size, filters) in enumerate(zip(m.stage_sizes, m.stage_widths)):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x, channels = self.block(x, (f"stage{i + 1}", f"block{j}"), channels, filters, strides)
        if self.preact:
            x = self.relu(self.bn(x, ("final_bn",)))
        x = self.g.op("Flatten", [self.g.op("GlobalAveragePool", [x])])
        head = self.params["head"]
        kernel = self.g.const("head/kernel", np.asarray(head["kernel"], np.float32))
        bias = self.g.const("head/bias", np.asarray(head["bias"], np.float32))
        return self.g.op("Gemm", [x, kernel, bias])


def build(
    model: Any, variables: dict, image_size: int, preprocess: str, mean: Any, std: Any, doc: str = ""
) -> Any:
    """The ONNX ``ModelProto`` of `model` with `variables` (float32): input ``images``
    [batch, size, size, 3] NHWC (uint8 with `preprocess` "uint8", else float32),
    output ``logits`` [batch, num_classes] float32.

    `preprocess`: "none" (the input is normalised as for ``model.apply``),
    "normalize" (RGB in [0, 1]: ``(x - mean) / std`` in the graph) or "uint8"
    (raw pixels: ``(x - 255 mean) / (255 std)``, as `resnet_jax.data.augment.normalize`).
    """
    import onnx

    g = _Graph(onnx)
    x = "images"
    if preprocess == "uint8":
        x = g.op("Cast", [x], to=onnx.TensorProto.FLOAT)
    if preprocess in ("uint8", "normalize"):
        scale = 255.0 if preprocess == "uint8" else 1.0
        x = g.op("Sub", [x, g.const("mean", np.asarray(mean, np.float32) * np.float32(scale))])
        x = g.op("Div", [x, g.const("std", np.asarray(std, np.float32) * np.float32(scale))])
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    logits = _Builder(g, model, variables).network(x)
    g.nodes.append(onnx.helper.make_node("Identity", [logits], ["logits"], name="logits"))
    in_type = onnx.TensorProto.UINT8 if preprocess == "uint8" else onnx.TensorProto.FLOAT
    num_classes = np.shape(variables["params"]["head"]["kernel"])[1]
    graph = onnx.helper.make_graph(
        g.nodes,
        "resnet_jax",
        [onnx.helper.make_tensor_value_info("images", in_type, ["batch", image_size, image_size, 3])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", num_classes])],
        initializer=g.initializers,
    )
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="resnet_jax", doc_string=doc
    )
    proto.ir_version = 8  # what ONNX Runtime 1.15+ reads: opset 17 needs no newer
    onnx.checker.check_model(proto)
    return proto
