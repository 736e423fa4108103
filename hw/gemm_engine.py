from amaranth.hdl import *
from amaranth.lib import wiring

from .codebook import CodebookDecoder
from .mac_array import MacArray
from .requant import Requantizer

__all__ = ["GemmEngine"]


class GemmEngine(wiring.Component):
    """The MAC array, behind a codebook decoder when the weights are SYQ codes, followed by
    a requantizer when an output format is given.

    This is the top level that ``olmac gemm --backend rtl`` runs on Verilator.

    Parameters
    ----------
    **array_params
        As for :class:`MacArray`.
    out_bits : int or None
        Requantized output width (2..16), or ``None`` to output the accumulators.
    out_signed : bool
        Signedness of the requantized output.
    out_outlier_bits : int or None
        Extract output outliers of this width (§7); only with ``out_bits``.
    codebook : dict or None
        :class:`~hw.codebook.CodebookDecoder` parameters (``idx_bits``, ``zero``,
        ``entry_bits``, ``subgroups``, ``granularity``): the weights arrive as codes and the
        decoder feeds the array at full throughput. ``weight_bits`` must then be
        ``entry_bits + 1``.

    Raises
    ------
    TypeError, ValueError
        As :class:`MacArray` and :class:`Requantizer` raise them.
    ValueError
        If ``out_outlier_bits`` is given without ``out_bits``, or a codebook is combined with
        weight outliers, weight planes or a ``weight_bits`` other than ``entry_bits + 1``.

    Members
    -------
    act, weights
        The array's inputs; with a codebook, ``codes`` and ``load`` (the decoder's) replace
        ``weights``.
    params
        The requantizer's parameter stream; only with ``out_bits``.
    out
        Accumulator vectors, or requantized vectors with ``out_bits``.
    """

    def __init__(self, *, out_bits=None, out_signed=True, out_outlier_bits=None,
                 codebook=None, **array_params):
        if out_outlier_bits is not None and out_bits is None:
            raise ValueError(f"Output outliers (out_outlier_bits={out_outlier_bits}) need a "
                             f"requantized output (out_bits)")
        self._decoder = None
        if codebook is not None:
            if array_params.get("weight_outlier_lanes") or array_params.get("plane_shift_bits"):
                raise ValueError("A codebook decoder cannot be combined with weight outliers "
                                 "or weight planes")
            self._decoder = CodebookDecoder(lanes=array_params["lanes"],
                                            cols=array_params["cols"], **codebook)
            if array_params.get("weight_bits") != self._decoder.entry_bits + 1:
                raise ValueError(f"Weight width {array_params.get('weight_bits')} must be the "
                                 f"decoded width entry_bits + 1 = "
                                 f"{self._decoder.entry_bits + 1}")
        self._array = MacArray(**array_params)
        self._requantizer = None
        array_members = self._array.signature.members
        members = {"act": array_members["act"]}
        if self._decoder is None:
            members["weights"] = array_members["weights"]
        else:
            members["codes"] = self._decoder.signature.members["codes"]
            members["load"] = self._decoder.signature.members["load"]
        if out_bits is None:
            members["out"] = array_members["acc"]
        else:
            self._requantizer = Requantizer(cols=self._array.cols,
                                            acc_width=self._array.acc_width,
                                            out_bits=out_bits, out_signed=out_signed,
                                            outlier_bits=out_outlier_bits)
            members["params"] = self._requantizer.signature.members["params"]
            members["out"] = self._requantizer.signature.members["out"]
        super().__init__(members)

    @property
    def array(self):
        """The :class:`MacArray`."""
        return self._array

    @property
    def decoder(self):
        """The :class:`~hw.codebook.CodebookDecoder`, or ``None`` for plain weights."""
        return self._decoder

    @property
    def requantizer(self):
        """The :class:`Requantizer`, or ``None`` when accumulators are output."""
        return self._requantizer

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = self._array
        wiring.connect(m, wiring.flipped(self.act), self._array.act)
        if self._decoder is None:
            wiring.connect(m, wiring.flipped(self.weights), self._array.weights)
        else:
            m.submodules.decoder = self._decoder
            wiring.connect(m, wiring.flipped(self.codes), self._decoder.codes)
            wiring.connect(m, wiring.flipped(self.load), self._decoder.load)
            wiring.connect(m, self._decoder.weights, self._array.weights)
        if self._requantizer is None:
            wiring.connect(m, self._array.acc, wiring.flipped(self.out))
        else:
            m.submodules.requantizer = self._requantizer
            wiring.connect(m, self._array.acc, self._requantizer.acc)
            wiring.connect(m, wiring.flipped(self.params), self._requantizer.params)
            wiring.connect(m, self._requantizer.out, wiring.flipped(self.out))
        return m
