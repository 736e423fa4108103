"""Amaranth generators for olmac's hardware. Reads docs/semantics.md, never golden/."""

from .mac_array import MacArray
from .requant import Requantizer
from .gemm_engine import GemmEngine

__all__ = ["MacArray", "Requantizer", "GemmEngine"]
