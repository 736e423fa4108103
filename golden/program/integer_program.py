"""``IntegerProgram``: ops in execution order over named values (docs/program.md §9),
checked when it is built."""

from dataclasses import dataclass
from typing import Mapping

from .checks import check_program
from .ops import Gemm
from .types import Value

__all__ = ["IntegerProgram"]


@dataclass(frozen=True, eq=False)
class IntegerProgram:
    """An integer program (§9): ``ops`` in execution order over the named ``values``.

    The input is ``N`` images of ``input_shape`` integer pixels in
    ``pixel_min..pixel_max`` (pixel ``p`` stands for ``p·pixel_scale``); the first op is
    the ``QuantizeInput`` producing ``"input"``; ``output`` names the value returned (the
    logits, ``s16``). With ``real_inputs`` the program takes real values (standardized
    features, say) that the host quantizes to pixels first (§13, ``quantize_inputs``).
    ``input_order``, if not empty, permutes each input's dimensions before
    ``quantize_input`` (an NHWC model: ``(2, 0, 1)``). Construction checks every rule of
    §9 and raises ``ProgramError`` naming the op and field.
    """
    input_shape: tuple[int, ...]
    pixel_max: int
    pixel_scale: float
    values: Mapping[str, Value]
    ops: tuple
    output: str
    pixel_min: int = 0
    real_inputs: bool = False
    input_order: tuple[int, ...] = ()

    def __post_init__(self):
        check_program(self)

    def arranged(self, x):
        """``N`` inputs of ``input_shape`` in the layout of the value ``"input"``: their
        dimensions permuted by ``input_order`` (a layout, no arithmetic)."""
        if not self.input_order:
            return x
        return x.permute(0, *(1 + d for d in self.input_order))

    def describe(self) -> str:
        """One line per op: kind, name, input/output formats and widths."""
        lines = []
        for index, op in enumerate(self.ops):
            out = self.values[op.output]
            ins = ", ".join(f"{name}:{self.values[name].format}" for name in op.inputs)
            extra = ""
            if isinstance(op, Gemm):
                extra = (f" {op.layer} {op.in_features}→{op.out_features} {op.scheme} "
                         f"w{op.weight_bits}/a{self.values[op.input].bits}"
                         f"{' relu' if op.relu else ''}")
            lines.append(f"{index:2d} {op.KIND:14s} {op.name:12s} ({ins}) → "
                         f"{op.output}:{out.format}{list(out.shape)}{extra}")
        return "\n".join(lines)
