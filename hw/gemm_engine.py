from dataclasses import dataclass, fields

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .codebook import CodebookDecoder
from .config import ConfiguredComponent
from .mac_array import MacArray
from .requant import Requantizer

__all__ = ["GemmEngine"]


class GemmEngine(ConfiguredComponent):
    """The MAC array, behind a codebook decoder when the weights are SYQ codes, followed by
    a requantizer when an output format is given.

    This is the top level that ``olmac gemm --backend rtl`` runs on Verilator.

    Made from keyword arguments, the fields of :class:`GemmEngine.Config`, which validates
    them (see its Raises).

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

    @dataclass(frozen=True, kw_only=True)
    class Config(MacArray.Config):
        """A :class:`MacArray.Config` (the array's parameters, and what follows from them)
        with the engine's decoder and requantizer; plain data, so a job file carries it
        (``dataclasses.asdict``) and a build folder is named after it (:attr:`name`).

        Parameters
        ----------
        out_bits : int or None
            Requantized output width (2..16), or ``None`` to output the accumulators.
        out_signed : bool
            Signedness of the requantized output.
        out_outlier_bits : int or None
            Extract output outliers of this width (§7); only with ``out_bits``.
        codebook : dict or None
            :class:`~hw.codebook.CodebookDecoder.Config` fields other than ``lanes`` and
            ``cols`` (``idx_bits``, ``zero``, ``entry_bits``, ``subgroups``,
            ``granularity``): the weights arrive as codes and the decoder feeds the array at
            full throughput. ``weight_bits`` must then be ``entry_bits + 1``.

        Raises
        ------
        TypeError, ValueError
            As :class:`MacArray.Config`, :class:`~hw.codebook.CodebookDecoder.Config` and
            :class:`Requantizer.Config` raise them.
        ValueError
            If ``out_outlier_bits`` is given without ``out_bits``, or a codebook is combined
            with weight outliers, weight planes or a ``weight_bits`` other than
            ``entry_bits + 1``.
        """
        out_bits: int | None = None
        out_signed: bool = True
        out_outlier_bits: int | None = None
        codebook: dict | None = None

        def __post_init__(self):
            if self.out_outlier_bits is not None and self.out_bits is None:
                raise ValueError(f"Output outliers (out_outlier_bits={self.out_outlier_bits}) "
                                 f"need a requantized output (out_bits)")
            if self.codebook is not None:
                if self.weight_outlier_lanes or self.plane_shift_bits:
                    raise ValueError("A codebook decoder cannot be combined with weight "
                                     "outliers or weight planes")
                decoded = self.decoder.entry_bits + 1
                if self.weight_bits != decoded:
                    raise ValueError(f"Weight width {self.weight_bits} must be the decoded "
                                     f"width entry_bits + 1 = {decoded}")
            super().__post_init__()
            # Making the requantizer's configuration checks its parameters.
            self.requantizer

        @property
        def array(self):
            """The :class:`MacArray.Config` of the array."""
            return MacArray.Config(**{field.name: getattr(self, field.name)
                                      for field in fields(MacArray.Config)})

        @property
        def decoder(self):
            """The :class:`~hw.codebook.CodebookDecoder.Config`, or ``None`` for plain
            weights."""
            if self.codebook is None:
                return None
            return CodebookDecoder.Config(lanes=self.lanes, cols=self.cols, **self.codebook)

        @property
        def requantizer(self):
            """The :class:`Requantizer.Config`, or ``None`` when accumulators are output."""
            if self.out_bits is None:
                return None
            return Requantizer.Config(cols=self.cols, acc_width=self.acc_width,
                                      out_bits=self.out_bits, out_signed=self.out_signed,
                                      outlier_bits=self.out_outlier_bits)

        @property
        def out_layout(self):
            """Payload of the ``out`` port."""
            if self.out_bits is None:
                return self.acc_layout
            return self.requantizer.out_layout

        @property
        def signature(self):
            """The engine's signature: ``act``, ``weights`` (or the decoder's ``codes`` and
            ``load``), the requantizer's ``params`` and ``out``."""
            members = {"act": In(stream.Signature(self.act_layout))}
            if self.decoder is None:
                members["weights"] = In(stream.Signature(self.weight_layout))
            else:
                members["codes"] = In(stream.Signature(self.decoder.codes_layout))
                members["load"] = In(stream.Signature(self.decoder.load_layout))
            if self.requantizer is not None:
                members["params"] = In(stream.Signature(self.requantizer.params_layout))
            members["out"] = Out(stream.Signature(self.out_layout))
            return wiring.Signature(members)

        @property
        def name(self):
            """A file-name-safe identifier, unique per configuration."""
            act = f"{'s' if self.act_signed else 'u'}{self.act_bits}"
            out = "acc" if self.out_bits is None else \
                f"{'s' if self.out_signed else 'u'}{self.out_bits}"
            name = f"l{self.lanes}c{self.cols}_a{act}_w{self.weight_bits}_k{self.max_k}_{out}"
            if self.act_outlier_lanes:
                name += (f"_ao{self.act_outlier_lanes}b{self.act_outlier_bits}"
                         f"s{self.act_outlier_slots}")
            if self.weight_outlier_lanes:
                name += (f"_wo{self.weight_outlier_lanes}b{self.weight_outlier_bits}"
                         f"s{self.weight_outlier_slots}")
            if self.out_outlier_bits:
                name += f"_oo{self.out_outlier_bits}"
            if self.plane_shift_bits:
                name += f"_ps{self.plane_shift_bits}m{self.max_plane_shift}"
            if self.codebook:
                book = self.decoder
                name += (f"_cb{book.idx_bits}{'z' if book.zero else ''}"
                         f"e{book.entry_bits}{book.granularity[0]}{book.subgroups}")
            if self.acc_width != self._required_acc_width():
                name += f"_acc{self.acc_width}"
            if self.multipliers != "lut":
                name += f"_{self.multipliers}"
            if self.product_stages != 1:
                name += f"_p{self.product_stages}"
            if self.dsp_lane_pairs:
                name += f"_dot{self.dsp_lane_pairs}"
            if self.accumulator_stages != 1:
                name += f"_a{self.accumulator_stages}"
            return name

    def elaborate(self, platform):
        m = Module()
        config = self._config
        m.submodules.array = array = MacArray(**vars(config.array))
        wiring.connect(m, wiring.flipped(self.act), array.act)
        if config.decoder is None:
            wiring.connect(m, wiring.flipped(self.weights), array.weights)
        else:
            m.submodules.decoder = decoder = CodebookDecoder(**vars(config.decoder))
            wiring.connect(m, wiring.flipped(self.codes), decoder.codes)
            wiring.connect(m, wiring.flipped(self.load), decoder.load)
            wiring.connect(m, decoder.weights, array.weights)
        if config.requantizer is None:
            wiring.connect(m, array.acc, wiring.flipped(self.out))
        else:
            m.submodules.requantizer = requantizer = Requantizer(**vars(config.requantizer))
            wiring.connect(m, array.acc, requantizer.acc)
            wiring.connect(m, wiring.flipped(self.params), requantizer.params)
            wiring.connect(m, requantizer.out, wiring.flipped(self.out))
        return m
