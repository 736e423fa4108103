"""olmac: quantized-inference hardware generated from PyTorch models, proven bit-exact.

The integer semantics every part implements is written once in ``docs/semantics.md``.
"""

__version__ = "0.1.0"
