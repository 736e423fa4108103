"""A float ONNX model (opset ≥ 13) as a ``torch.fx`` graph of the PyTorch layers it stands
for, so that ``olmac quantize`` lowers it like a model written in PyTorch
(docs/program.md §17).

Read with the ``onnx`` package alone (``onnx2torch`` needs ``torchvision``, whose wheel on
PyPI is built against CUDA torch and does not import beside the CPU torch). Every ONNX op
becomes the module or function PyTorch's exporter made it from (``Conv`` an ``nn.Conv2d``
or ``nn.Conv1d``, ``Gemm`` an ``nn.Linear``, ``Clip`` an ``nn.Hardtanh``, ``Sigmoid`` an
``nn.Sigmoid`` ...), so the lowering supports and refuses exactly what it does for
PyTorch. The subgraphs an exporter computes shapes with (``Shape``, ``Gather``,
``Unsqueeze``, ``Concat``, ``Constant``) are evaluated here, with the batch size left
symbolic, so ``x.view(x.size(0), -1)`` arrives as a flatten. A ``Transpose`` of the input
with ``perm = (0, 3, 1, 2)`` (an NHWC model) stays a ``permute`` of the input.
"""

import operator
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

__all__ = ["OnnxError", "MIN_OPSET", "load_onnx"]

#: The oldest default-domain opset read (13: ``Squeeze``/``Unsqueeze`` axes as inputs).
MIN_OPSET = 13

#: The batch dimension while shapes are evaluated: symbolic, any size.
_BATCH = -(1 << 62)

_ACTIVATIONS = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh,
                "HardSwish": nn.Hardswish, "Softplus": nn.Softplus, "Elu": nn.ELU,
                "Selu": nn.SELU, "Mish": nn.Mish}


class OnnxError(ValueError):
    """The file is not an ONNX model this importer reads; the message names the file and
    every node it cannot read, one line each."""


def _attributes(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Importer:
    def __init__(self, model, path: Path):
        import onnx
        from onnx import numpy_helper
        self.path = path
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.nodes: dict[str, fx.Node] = {}
        self.shapes: dict[str, tuple] = {}
        self.errors: list[str] = []
        inputs = [i for i in model.graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise OnnxError(f"{path}: the model must take one input tensor, not {len(inputs)}")
        self.input = inputs[0].name
        self.nodes[self.input] = self.graph.placeholder("x")
        inferred = onnx.shape_inference.infer_shapes(model).graph
        for info in (*inferred.input, *inferred.value_info, *inferred.output):
            dims = info.type.tensor_type.shape.dim
            # the batch dimension stays symbolic, even where the export fixed it
            self.shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") and i else _BATCH
                for i, d in enumerate(dims))

    def module(self, node, name: str, layer: nn.Module, args) -> fx.Node:
        name = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "layer"
        while hasattr(self.root, name):
            name += "_"
        self.root.add_module(name, layer)
        return self.graph.call_module(name, tuple(args))

    def tensor(self, name: str) -> fx.Node:
        if name not in self.nodes:
            raise KeyError(name)
        return self.nodes[name]

    def weight(self, node, index: int) -> torch.Tensor:
        name = node.input[index]
        if name not in self.constants:
            raise ValueError(f"its input {index} ('{name}') must be a constant (initializer)")
        return torch.from_numpy(np.array(self.constants[name], dtype=np.float32))

    def run(self, model) -> fx.GraphModule:
        for node in model.graph.node:
            label = node.name or f"{node.op_type} → {node.output[0]}"
            try:
                self.convert(node)
            except KeyError as error:
                self.errors.append(f"unsupported ONNX node '{label}' ({node.op_type}): its "
                                   f"input {error} comes from a node that was not read")
            except (ValueError, NotImplementedError) as error:
                self.errors.append(f"unsupported ONNX node '{label}' ({node.op_type}): {error}")
        if self.errors:
            raise OnnxError(f"{self.path}: " + "\n".join(self.errors))
        outputs = [o.name for o in model.graph.output]
        if len(outputs) != 1:
            raise OnnxError(f"{self.path}: the model must return one tensor, not {len(outputs)}")
        self.graph.output(self.tensor(outputs[0]))
        return fx.GraphModule(self.root, self.graph, class_name="OnnxModel")

    def constant_inputs(self, node) -> bool:
        return all(name in self.constants or name == "" for name in node.input)

    def convert(self, node) -> None:
        kind, attrs, out = node.op_type, _attributes(node), node.output[0]
        if kind == "Constant":
            from onnx import numpy_helper
            self.constants[out] = numpy_helper.to_array(attrs["value"])
        elif kind == "Shape":
            self.constants[out] = np.array(self.shape_of(node.input[0]), dtype=np.int64)
        elif kind in ("Gather", "Unsqueeze", "Concat", "Squeeze", "Cast", "Slice") \
                and self.constant_inputs(node):
            self.constants[out] = self.evaluate(kind, node, attrs)
        elif kind in ("Identity", "Dropout"):
            self.alias(out, node.input[0])
        else:
            self.nodes[out] = self.layer(node, kind, attrs)

    def alias(self, out: str, source: str) -> None:
        if source in self.constants:
            self.constants[out] = self.constants[source]
        else:
            self.nodes[out] = self.tensor(source)
            if source in self.shapes:
                self.shapes[out] = self.shapes[source]

    def shape_of(self, name: str) -> tuple:
        if name not in self.shapes:
            raise ValueError(f"the shape of '{name}' is not known here; export with a fixed "
                             f"input shape")
        return self.shapes[name]

    def evaluate(self, kind, node, attrs) -> np.ndarray:
        values = [self.constants[name] for name in node.input if name]
        if kind == "Gather":
            return np.take(values[0], values[1], axis=attrs.get("axis", 0))
        if kind == "Unsqueeze":
            return np.expand_dims(values[0], tuple(int(a) for a in values[1]))
        if kind == "Squeeze":
            return np.squeeze(values[0], tuple(int(a) for a in values[1])) \
                if len(values) > 1 else np.squeeze(values[0])
        if kind == "Concat":
            return np.concatenate(values, axis=attrs["axis"])
        if kind == "Cast":
            return values[0]
        starts, ends = values[1], values[2]
        axes = values[3] if len(values) > 3 else range(len(starts))
        index = [slice(None)] * values[0].ndim
        for axis, start, end in zip(axes, starts, ends):
            index[int(axis)] = slice(int(start), int(min(end, 1 << 62)))
        return values[0][tuple(index)]

    def layer(self, node, kind, attrs) -> fx.Node:
        name = node.name or node.output[0]
        if kind in _ACTIVATIONS:
            return self.module(node, name, _ACTIVATIONS[kind](), [self.tensor(node.input[0])])
        if kind == "Clip":
            low, high = (float(self.constants[n]) if n else None
                         for n in (list(node.input) + ["", ""])[1:3])
            if low is None or high is None:
                raise ValueError("Clip needs both bounds (ReLU6, Hardtanh)")
            return self.module(node, name, nn.Hardtanh(low, high), [self.tensor(node.input[0])])
        if kind == "Conv":
            return self.conv(node, name, attrs)
        if kind == "Gemm":
            return self.gemm(node, name, attrs)
        if kind in ("MaxPool", "AveragePool"):
            return self.pool(node, name, kind, attrs)
        if kind == "GlobalAveragePool":
            return self.module(node, name, nn.AdaptiveAvgPool2d(1), [self.tensor(node.input[0])])
        if kind == "BatchNormalization":
            return self.batchnorm(node, name, attrs)
        if kind == "Add":
            if any(n in self.constants for n in node.input):
                raise ValueError("an Add of a constant (a bias is part of Conv or Gemm)")
            return self.graph.call_function(operator.add, tuple(map(self.tensor, node.input)))
        if kind == "Flatten":
            if attrs.get("axis", 1) != 1:
                raise ValueError(f"axis={attrs['axis']}; only axis=1")
            return self.module(node, name, nn.Flatten(), [self.tensor(node.input[0])])
        if kind == "Reshape":
            return self.reshape(node, name)
        if kind in ("Softmax", "LogSoftmax"):
            layer = (nn.Softmax if kind == "Softmax" else nn.LogSoftmax)(attrs.get("axis", -1))
            return self.module(node, name, layer, [self.tensor(node.input[0])])
        if kind == "Transpose":
            perm = tuple(attrs.get("perm", ()))
            if node.input[0] != self.input or perm != (0, 3, 1, 2):
                raise ValueError(f"perm={perm}; only the NHWC input to NCHW, perm=(0, 3, 1, 2)")
            n, h, w, c = self.shape_of(node.input[0])
            self.shapes[node.output[0]] = (n, c, h, w)
            return self.graph.call_method("permute", (self.tensor(node.input[0]), 0, 3, 1, 2))
        raise NotImplementedError(
            "supported ONNX ops: Conv, Gemm, Relu, Clip, Add, MaxPool, AveragePool, "
            "GlobalAveragePool, BatchNormalization, Flatten, Reshape to (N, -1), Softmax, "
            "Dropout, Identity, an NHWC input Transpose; " + ", ".join(_ACTIVATIONS)
            + " as the lowering takes them")

    def conv(self, node, name, attrs) -> fx.Node:
        weight = self.weight(node, 0 + 1)
        bias = self.weight(node, 2) if len(node.input) > 2 and node.input[2] else None
        spatial = weight.dim() - 2
        if spatial not in (1, 2):
            raise ValueError(f"a {spatial}-D convolution; only 1-D and 2-D")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise ValueError(f"auto_pad={attrs['auto_pad']!r}; export with explicit pads")
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        if pads[:spatial] != pads[spatial:]:
            raise ValueError(f"pads={pads}: only symmetric padding")
        groups = attrs.get("group", 1)
        cls = nn.Conv2d if spatial == 2 else nn.Conv1d
        layer = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                    stride=tuple(attrs.get("strides", [1] * spatial)), padding=tuple(pads[:spatial]),
                    dilation=tuple(attrs.get("dilations", [1] * spatial)), groups=groups,
                    bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return self.module(node, name, layer, [self.tensor(node.input[0])])

    def gemm(self, node, name, attrs) -> fx.Node:
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            raise ValueError("transA, alpha or beta other than a Linear layer's")
        weight = self.weight(node, 1)
        weight = weight if attrs.get("transB", 0) else weight.T
        bias = self.weight(node, 2) if len(node.input) > 2 and node.input[2] else None
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias.reshape(-1).expand(weight.shape[0]))
        return self.module(node, name, layer, [self.tensor(node.input[0])])

    def pool(self, node, name, kind, attrs) -> fx.Node:
        kernel = tuple(attrs["kernel_shape"])
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        if pads[:len(kernel)] != pads[len(kernel):] or attrs.get("ceil_mode", 0) \
                or any(d != 1 for d in attrs.get("dilations", [1])):
            raise ValueError("asymmetric padding, ceil_mode or dilation")
        stride = tuple(attrs.get("strides", kernel))
        if len(kernel) != 2:
            raise ValueError(f"a {len(kernel)}-D pool; only 2-D")
        if kind == "MaxPool":
            layer = nn.MaxPool2d(kernel, stride, tuple(pads[:2]))
        else:
            layer = nn.AvgPool2d(kernel, stride, tuple(pads[:2]),
                                 count_include_pad=bool(attrs.get("count_include_pad", 0))
                                 or pads == [0] * 4)
        return self.module(node, name, layer, [self.tensor(node.input[0])])

    def batchnorm(self, node, name, attrs) -> fx.Node:
        scale, bias, mean, var = (self.weight(node, i) for i in range(1, 5))
        layer = nn.BatchNorm2d(len(scale), eps=attrs.get("epsilon", 1e-5)).eval()
        with torch.no_grad():
            layer.weight.copy_(scale)
            layer.bias.copy_(bias)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        return self.module(node, name, layer, [self.tensor(node.input[0])])

    def reshape(self, node, name) -> fx.Node:
        if node.input[1] not in self.constants:
            raise ValueError("a reshape to a shape computed from data")
        target = [int(v) for v in self.constants[node.input[1]]]
        if len(target) != 2 or (target[1] != -1 and target[0] not in (_BATCH, 0, -1)):
            raise ValueError(f"to {target}; only the flatten to (N, -1)")
        return self.module(node, name, nn.Flatten(), [self.tensor(node.input[0])])


def load_onnx(path: Path | str) -> fx.GraphModule:
    """The float ONNX model at ``path`` as an ``fx.GraphModule`` in eval mode.

    Raises
    ------
    OnnxError
        If the file does not read as an ONNX model, its default-domain opset is older than
        ``MIN_OPSET``, it has not exactly one input and one output, or it holds nodes this
        importer cannot read: each of those named, one line each, with what is supported.
    """
    import onnx
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # protobuf's, onnx's and the OS's errors alike
        raise OnnxError(f"{path} is not a valid ONNX model: "
                        f"{' '.join(str(error).split()) or type(error).__name__}") from None
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx", 0)) < MIN_OPSET:
        raise OnnxError(f"{path}: opset {opsets.get('', opsets.get('ai.onnx'))} is older than "
                        f"{MIN_OPSET}; export with opset_version={MIN_OPSET} or later")
    return _Importer(model, path).run(model).eval()
