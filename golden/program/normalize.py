"""The layers people write, rewritten onto the ones the lowering runs (docs/program.md §17).

``normalize`` traces a model with ``torch.fx`` (recording where each node comes from in the
user's ``forward``) and rewrites its graph, before any quantization, into the forms
``lowering`` knows: a model on ``(N, C, L)`` sequences run on ``(N, C, 1, L)`` maps (its 1-D layers made
2-D), grouped convolutions made dense (block-diagonal weights), BatchNorm folded into the
Conv2d/Linear before it, eval-mode no-ops
(Dropout, Identity, ``contiguous``) and a trailing softmax dropped, every
``view``/``reshape``/``flatten`` that flattens to ``(N, features)`` made one
``torch.flatten(x, 1)``, functional and adaptive pooling made ``nn.MaxPool2d``/
``nn.AvgPool2d`` modules and ReLU6/Hardtanh/``clamp`` with a lower bound of 0 made a ReLU
with a cap. Nothing here adds arithmetic: each rewrite is exact on the float model (BatchNorm
folding up to float rounding), so the integer semantics of §9–§13 are unchanged.
"""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .types import ProgramError

__all__ = ["Normalized", "normalize", "located", "supported_layers"]

#: Where torch's own frames live: a stack frame outside it is the user's code.
_TORCH_DIR = str(Path(torch.__file__).parent)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in forward')

_DROPPED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_DROPPED_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, torch.dropout}
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_RESHAPES = {torch.flatten, torch.reshape}
_BATCHNORMS = {nn.BatchNorm1d: nn.Linear, nn.BatchNorm2d: nn.Conv2d}
_POOLS = {F.max_pool2d: nn.MaxPool2d, torch.max_pool2d: nn.MaxPool2d,
          F.avg_pool2d: nn.AvgPool2d}
_ONE_D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
_POOLS_1D = {F.max_pool1d: nn.MaxPool1d, torch.max_pool1d: nn.MaxPool1d,
             F.avg_pool1d: nn.AvgPool1d, torch.avg_pool1d: nn.AvgPool1d}
_ADAPTIVE_1D = {F.adaptive_avg_pool1d, torch.adaptive_avg_pool1d}
_CAPS = {F.relu6: (0.0, 6.0), F.hardtanh: (-1.0, 1.0)}
_CLAMPS = {torch.clamp, torch.clip}

#: Every form the lowering supports: (what the user writes, what it lowers to), the table
#: of the README.
SUPPORTED = (
    ("`nn.Linear`", "GEMM (§10)"),
    ("`nn.Conv2d` (dilation=1, zero padding, `padding='same'` with odd kernels)",
     "GEMM on im2col (§10)"),
    ("depthwise and grouped `nn.Conv2d` (`groups` > 1)",
     "one GEMM with a block-diagonal weight (§17)"),
    ("`nn.Conv1d`, `nn.BatchNorm1d`, `nn.MaxPool1d`/`F.max_pool1d`, `nn.AvgPool1d`/"
     "`F.avg_pool1d`, `nn.AdaptiveAvgPool1d`/`F.adaptive_avg_pool1d` on `(N, C, L)` inputs",
     "the 2-D layer of kernel (1, k) on `(C, 1, L)` maps (§17)"),
    ("`nn.BatchNorm1d`/`nn.BatchNorm2d` right after a Linear/Conv2d",
     "folded into its weights and bias (§17)"),
    ("`nn.ReLU`, `F.relu`, `torch.relu`, `Tensor.relu` after a GEMM or residual add",
     "the requantizer's lower clamp 0 (§10)"),
    ("`nn.ReLU6`, `F.relu6`, `nn.Hardtanh(0, m)`, `torch.clamp(x, 0, m)` after a GEMM",
     "the requantizer's clamp, scale ≤ m/hi (§17)"),
    ("`a + b` (residual add) with a Linear/Conv2d operand", "fused into its requantization (§11)"),
    ("`torch.cat([a, b, ...], 1)` on channels `(N, C, H, W)` or features `(N, F)`",
     "a `concat` (a layout): GEMM operands written in its format, others requantized "
     "into it (§17)"),
    ("`nn.Sigmoid`, `nn.Tanh`, `nn.Hardswish`, `nn.SiLU`, `nn.GELU` and their functions",
     "a lookup table of every input code (§12, §17), evaluated by the core's table part"),
    ("`nn.AvgPool2d`, `F.avg_pool2d` (padding ≤ kernel/2, `count_include_pad=True`)",
     "SUM over the zero-padded window + requantization (§12)"),
    ("`nn.AdaptiveAvgPool2d`, `F.adaptive_avg_pool2d` (output size dividing the input)",
     "an average pool (§12, §17)"),
    ("`nn.MaxPool2d`, `F.max_pool2d` (padding ≤ kernel/2, e.g. `MaxPool2d(3, 2, padding=1)`)",
     "MAX; padding never wins (§12)"),
    ("`nn.Flatten`, `torch.flatten(x, 1)`, `x.flatten(1)`, `x.view(x.size(0), -1)`, "
     "`x.reshape(x.shape[0], -1)`", "flatten (§12)"),
    ("`nn.Dropout`, `nn.Identity`, `Tensor.contiguous`", "dropped (eval mode, §17)"),
    ("a trailing `softmax`/`log_softmax`", "dropped: argmax-preserving, the logits are its "
     "input (§17)"),
)


def supported_layers() -> str:
    """The table of supported layers (Markdown), as the README shows it."""
    rows = ["| you write | it runs as |", "|---|---|"]
    rows += [f"| {layer} | {lowered} |" for layer, lowered in SUPPORTED]
    return "\n".join(rows)


def located(node: fx.Node, message: str) -> str:
    """``message`` with `` at file.py:line`` of the innermost user ``forward`` that made
    ``node``, where fx recorded it."""
    frames = [(path, line) for path, line in _FRAME.findall(node.stack_trace or "")
              if not path.startswith(_TORCH_DIR)]
    if not frames:
        return message
    path, line = frames[-1]
    return f"{message} at {Path(path).name}:{line}"


@dataclass
class Normalized:
    """A traced, rewritten model: ``module`` (its graph in the lowering's forms), the
    ``notes`` on what was dropped or folded (one line each) and ``errors``, the refusal of
    each node the rewrite refused (one line each), by node. ``input_shape`` is the
    per-sample shape ``module`` takes: the model's, or ``(C, 1, L)`` for a model on
    ``(C, L)`` sequences, whose 1-D layers became 2-D ones on maps of height 1."""
    module: fx.GraphModule
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    errors: dict[fx.Node, str] = field(default_factory=dict)


def _arg(node: fx.Node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


@torch.no_grad()
def normalize(model: nn.Module, sample: torch.Tensor) -> Normalized:
    """Trace ``model`` and rewrite it into the lowering's forms, running ``sample`` (a batch
    of at least two inputs) through it for the shapes the rewrites need.

    Raises
    ------
    ProgramError
        If torch.fx cannot trace the model or ``sample`` cannot run through it.
    """
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types for untraceable code
        raise ProgramError(f"torch.fx cannot trace the model: {error}") from error
    module = fx.GraphModule(tracer.root, graph)
    module.eval()
    _propagate(module, sample)
    result = _Rewrite(module, len(sample))
    if sample.dim() == 3:
        result.lift()
        sample = sample.unsqueeze(2)
        module.recompile()
        if not result.errors:  # a refused 1-D form would not run on the lifted input
            _propagate(module, sample)
    for node in list(graph.nodes):
        result.visit(node)
    graph.eliminate_dead_code()
    module.recompile()
    return Normalized(module, tuple(sample.shape[1:]), result.notes, result.errors)


def _propagate(module: fx.GraphModule, sample: torch.Tensor) -> None:
    """Record every node's output shape on ``sample`` (``node.meta``)."""
    try:
        ShapeProp(module).propagate(sample)
    except Exception as error:  # the user's forward can raise anything on a bad shape
        cause = error.__cause__ or error  # ShapeProp wraps the error with the whole graph
        raise ProgramError(f"the model cannot run on inputs of shape "
                           f"{tuple(sample.shape[1:])}: {cause}") from error


def _single(value) -> int:
    return value if isinstance(value, int) else value[0]


def _two_d(layer: nn.Module) -> nn.Module:
    """The 2-D layer that computes ``layer`` (a 1-D one) on ``(N, C, 1, L)`` maps (§17)."""
    if isinstance(layer, nn.Conv1d):
        padding = layer.padding if isinstance(layer.padding, str) else (0, layer.padding[0])
        twin = nn.Conv2d(layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]),
                         (1, layer.stride[0]), padding, (1, layer.dilation[0]), layer.groups,
                         layer.bias is not None, layer.padding_mode)
        twin.weight.copy_(layer.weight.unsqueeze(2))
        if layer.bias is not None:
            twin.bias.copy_(layer.bias)
    elif isinstance(layer, nn.BatchNorm1d):
        twin = nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                              layer.track_running_stats)
        twin.load_state_dict(layer.state_dict())
    elif isinstance(layer, nn.MaxPool1d):
        twin = nn.MaxPool2d((1, _single(layer.kernel_size)), (1, _single(layer.stride)),
                            (0, _single(layer.padding)), (1, _single(layer.dilation)),
                            layer.return_indices, layer.ceil_mode)
    elif isinstance(layer, nn.AvgPool1d):
        twin = nn.AvgPool2d((1, _single(layer.kernel_size)), (1, _single(layer.stride)),
                            (0, _single(layer.padding)), layer.ceil_mode,
                            layer.count_include_pad)
    else:
        twin = nn.AdaptiveAvgPool2d((1, _single(layer.output_size)))
    return twin.eval()


class _Rewrite:
    """One pass over the graph, rewriting node by node (``visit``)."""

    def __init__(self, module: fx.GraphModule, batch: int):
        self.module, self.graph, self.batch = module, module.graph, batch
        self.modules = dict(module.named_modules())
        self.notes: list[str] = []
        self.errors: dict[fx.Node, str] = {}
        self.lifted: set[str] = set()  # targets of the 1-D modules made 2-D (``lift``)

    def refuse(self, node: fx.Node, message: str) -> None:
        self.errors[node] = located(node, message)

    def drop(self, node: fx.Node) -> None:
        node.replace_all_uses_with(node.args[0])
        self.graph.erase_node(node)

    def replace(self, node: fx.Node, op: str, target, args: tuple,
                meta: dict | None = None) -> None:
        with self.graph.inserting_after(node):
            new = self.graph.create_node(op, target, args, name=node.name)
        new.meta.update(node.meta)
        new.meta.update(meta or {})
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    def become(self, node: fx.Node, module: nn.Module, meta: dict | None = None) -> None:
        """Make ``node`` a call of ``module`` on its first argument: a module node keeps its
        name and target (the submodule is swapped; the user's model keeps its own), a
        function or method node is replaced by a call of a new submodule of its name."""
        if node.op == "call_module":
            self.module.add_submodule(node.target, module)
            self.modules[node.target] = module
            node.meta.update(meta or {})
            return
        name = node.name
        while hasattr(self.module, name):
            name += "_"
        self.module.add_submodule(name, module)
        self.modules[name] = module
        self.replace(node, "call_module", name, (node.args[0],), meta)

    def lift(self) -> None:
        """A model on ``(N, C, L)`` as one on ``(N, C, 1, L)`` (§17): functional 1-D pooling
        made modules, then every 1-D layer (on a 3-D tensor) its 2-D twin."""
        for node in list(self.graph.nodes):
            function = node.target if node.op == "call_function" else None
            if function in _POOLS_1D:
                self.pool(node, _POOLS_1D[function])
            elif function in _ADAPTIVE_1D:
                self.become(node, nn.AdaptiveAvgPool1d(_arg(node, 1, "output_size", None)))
        for node in list(self.graph.nodes):
            module = self.modules.get(node.target) if node.op == "call_module" else None
            shape = _shape(node.args[0]) if node.args else None
            if isinstance(module, _ONE_D) and shape is not None and len(shape) == 3:
                self.become(node, _two_d(module))
                self.lifted.add(node.target)
        self.notes.append("ran the model on (C, 1, L) maps: each 1-D layer as the 2-D one of "
                          "kernel (1, k)")

    def visit(self, node: fx.Node) -> None:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        method = node.target if node.op == "call_method" else None
        function = node.target if node.op == "call_function" else None
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            self.ungroup(node, module)
        elif isinstance(module, _DROPPED_MODULES) or method == "contiguous" \
                or function in _DROPPED_FUNCTIONS:
            self.drop(node)
        elif isinstance(module, _SOFTMAX_MODULES) or method in ("softmax", "log_softmax") \
                or function in _SOFTMAX_FUNCTIONS:
            self.softmax(node)
        elif isinstance(module, tuple(_BATCHNORMS)):
            self.batchnorm(node, module)
        elif method in ("view", "reshape", "flatten") or function in _RESHAPES:
            self.reshape(node)
        elif function in _POOLS:
            self.pool(node, _POOLS[function])
        elif isinstance(module, nn.AdaptiveAvgPool2d) or function is F.adaptive_avg_pool2d:
            size = module.output_size if module is not None else _arg(node, 1, "output_size", None)
            self.adaptive(node, size)
        elif isinstance(module, (nn.ReLU6, nn.Hardtanh)):
            self.cap(node, type(module).__name__, module.min_val, module.max_val)
        elif function in _CAPS:
            low, high = _CAPS[function]
            if function is F.hardtanh:
                low, high = _arg(node, 1, "min_val", low), _arg(node, 2, "max_val", high)
            self.cap(node, function.__name__, low, high)
        elif function in _CLAMPS or method in ("clamp", "clip"):
            self.cap(node, "clamp", _arg(node, 1, "min", None), _arg(node, 2, "max", None))

    def ungroup(self, node: fx.Node, conv: nn.Conv2d) -> None:
        """A grouped (or depthwise) convolution as the dense one with its block-diagonal
        weight (§17): output channel ``o`` of group ``g`` keeps its weights on the input
        channels of group ``g`` and has 0 on every other, so it computes the same sums."""
        dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, 1, conv.bias is not None,
                          conv.padding_mode)
        dense.weight.zero_()
        per_in = conv.in_channels // conv.groups
        per_out = conv.out_channels // conv.groups
        for group in range(conv.groups):
            outputs = slice(group * per_out, (group + 1) * per_out)
            dense.weight[outputs, group * per_in:(group + 1) * per_in] = conv.weight[outputs]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
        self.notes.append(f"made the grouped convolution '{node.target}' (groups="
                          f"{conv.groups}) dense, with a block-diagonal weight")
        self.become(node, dense.eval())  # eval, as the traced model: BatchNorm folds into it

    def softmax(self, node: fx.Node) -> None:
        users = list(node.users)
        dim = self.modules[node.target].dim if node.op == "call_module" \
            else _arg(node, 1, "dim", None)
        shape = _shape(node)
        if [user.op for user in users] != ["output"] or shape is None or len(shape) != 2 \
                or dim not in (1, -1):
            self.refuse(node, f"unsupported layer '{node.name}' (a softmax other than the "
                        f"model's result over dim 1 of (N, classes); a trailing one is "
                        f"dropped)")
            return
        name = node.target if node.op == "call_module" else node.name
        self.notes.append(f"dropped the trailing '{name}': softmax/log_softmax keep the "
                          f"argmax, the program's logits are its input")
        self.drop(node)

    def batchnorm(self, node: fx.Node, bn: nn.Module) -> None:
        before = node.args[0]
        kind = _BATCHNORMS[type(bn)]
        layer = self.modules.get(before.target) if isinstance(before, fx.Node) and \
            before.op == "call_module" else None
        shared = isinstance(layer, nn.Module) and sum(
            other.op == "call_module" and other.target == before.target
            for other in self.graph.nodes) > 1
        name = before.name if isinstance(before, fx.Node) else repr(before)
        if not isinstance(layer, kind) or len(before.users) != 1 or shared \
                or bn.running_mean is None:
            why = ("its input is used elsewhere" if isinstance(layer, kind) and
                   len(before.users) != 1 else "the layer is called more than once" if shared
                   else "it has no running statistics" if bn.running_mean is None
                   # a lifted BatchNorm1d is a 2-D one now: name the layer the user wrote
                   else f"it must directly follow an nn."
                        f"{'Conv1d' if node.target in self.lifted else kind.__name__}")
            self.refuse(node, f"cannot fold BatchNorm '{node.target}' into '{name}': {why}")
            return
        fuse = fuse_conv_bn_eval if kind is nn.Conv2d else fuse_linear_bn_eval
        folded = fuse(layer, bn)
        self.module.add_submodule(before.target, folded)
        self.modules[before.target] = folded
        self.notes.append(f"folded BatchNorm '{node.target}' into '{before.target}'")
        self.drop(node)

    def reshape(self, node: fx.Node) -> None:
        source, shape, out = node.args[0], _shape(node.args[0]), _shape(node)
        if shape is not None and out is not None and shape[0] == self.batch \
                and out == (self.batch, math.prod(shape[1:])):
            if len(shape) == 2:
                self.drop(node)
            # torch.flatten(x, 1) is the lowering's own form: kept, with its name.
            elif node.target is not torch.flatten or node.args[1:] != (1,) or node.kwargs:
                self.replace(node, "call_function", torch.flatten, (source, 1))
            return
        kind = f"Tensor.{node.target}" if node.op == "call_method" else \
            f"torch.{node.target.__name__}"
        self.refuse(node, f"unsupported layer '{node.name}' ({kind} to shape "
                    f"{list(out[1:]) if out else '?'} per sample; only flattening to "
                    f"(N, features), e.g. x.view(x.size(0), -1))")

    def pool(self, node: fx.Node, kind: type) -> None:
        params = dict(zip(("kernel_size", "stride", "padding"), node.args[1:]), **node.kwargs)
        if any(isinstance(value, fx.Node) for value in params.values()):
            self.refuse(node, f"unsupported layer '{node.name}' ({node.target.__name__} with "
                        f"computed parameters; only constants)")
            return
        try:
            pool = kind(**params)
        except TypeError as error:
            self.refuse(node, f"unsupported layer '{node.name}' ({node.target.__name__}: "
                        f"{error})")
            return
        self.become(node, pool)

    def adaptive(self, node: fx.Node, size) -> None:
        shape = _shape(node.args[0])
        size = (size, size) if isinstance(size, int) else tuple(size or (None, None))
        if shape is None or len(shape) != 4 or len(size) != 2:
            self.refuse(node, f"unsupported layer '{node.name}' (adaptive_avg_pool2d on a "
                        f"tensor of shape {shape})")
            return
        out = tuple(s if o is None else o for s, o in zip(shape[2:], size))
        if any(s % o for s, o in zip(shape[2:], out)):
            self.refuse(node, f"unsupported layer '{node.name}' (adaptive average pooling "
                        f"{tuple(shape[2:])} → {out}; only an output size dividing the input)")
            return
        kernel = tuple(s // o for s, o in zip(shape[2:], out))
        self.become(node, nn.AvgPool2d(kernel))

    def cap(self, node: fx.Node, kind: str, low, high) -> None:
        if low != 0 or isinstance(high, fx.Node) or (high is not None and high <= 0):
            self.refuse(node, f"unsupported layer '{node.name}' ({kind} with bounds "
                        f"[{low}, {high}]; only [0, m] with m > 0, a ReLU with a cap)")
            return
        self.become(node, nn.ReLU(), {} if high is None else {"olmac_cap": float(high)})
