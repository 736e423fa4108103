"""A block-RAM ROM with a registered output, two cycles from address to data.

On most targets this is an :class:`amaranth.lib.memory.Memory` read port followed by fabric
flip-flops. On ECP5 it is built from ``DP16KD`` blocks with their output register enabled
(``REGMODE = "OUTREG"``): Yosys never turns that register on when it infers a block RAM, and
without it the block's clock-to-output (about 5.6 ns at speed grade 6 in nextpnr's model)
plus one route to a fabric flip-flop already exceeds a 150 MHz clock period.
"""

from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from olmac.spec import check_int

__all__ = ["RegisteredRom", "dp16kd_initvals"]

#: Words of one DP16KD in its 18-bit mode, and the words each INITVAL_xx parameter holds.
_DP16KD_WORDS = 1024
_WORDS_PER_INITVAL = 16
#: Each word of an INITVAL_xx sits in a 20-bit slot (18 data bits, 2 unused).
_INITVAL_SLOT = 20


def dp16kd_initvals(words):
    """The ``INITVAL_00`` .. ``INITVAL_3F`` parameters of a DP16KD in its 18-bit mode whose
    word ``i`` is ``words[i]`` (at most 1024 words of 18 bits; the rest are zero), as
    ``{name: int}``. The packing is the one Yosys's ``brams_map_16kd.v`` uses.

    Raises
    ------
    ValueError
        If there are more than 1024 words or a word is not an 18-bit unsigned integer.
    """
    words = list(words)
    if len(words) > _DP16KD_WORDS:
        raise ValueError(f"A DP16KD holds at most {_DP16KD_WORDS} 18-bit words, not "
                         f"{len(words)}")
    for word in words:
        if not isinstance(word, int) or not 0 <= word < 1 << 18:
            raise ValueError(f"Each DP16KD word must be an 18-bit unsigned integer, not "
                             f"{word!r}")
    words += [0] * (_DP16KD_WORDS - len(words))
    initvals = {}
    for index in range(_DP16KD_WORDS // _WORDS_PER_INITVAL):
        value = 0
        for slot in range(_WORDS_PER_INITVAL):
            value |= words[index * _WORDS_PER_INITVAL + slot] << (slot * _INITVAL_SLOT)
        initvals[f"INITVAL_{index:02X}"] = value
    return initvals


class RegisteredRom(wiring.Component):
    """A read-only memory with a registered output: the word at the address presented on a
    cycle with ``en`` high appears on ``data`` after the next cycle with ``en`` high, and
    ``data`` holds while ``en`` is low (a two-stage pipeline with one enable).

    Parameters
    ----------
    shape : ShapeLike
        Shape of one word.
    depth : int
        Words, 2..65536.
    init : sequence
        The ``depth`` words, as ``shape`` accepts them.
    domain : str
        Clock domain.

    Raises
    ------
    TypeError
        If ``depth`` is not an integer in 2..65536.
    ValueError
        If ``init`` does not hold ``depth`` words.

    Members
    -------
    addr : In(range(depth))
    en : In(1)
    data : Out(shape)
    """

    def __init__(self, shape, depth, init, *, domain="sync"):
        self._depth = check_int("ROM depth", depth, (2, 1 << 16))
        init = list(init)
        if len(init) != depth:
            raise ValueError(f"ROM contents must hold depth={depth} words, not {len(init)}")
        self._shape = shape
        self._init = init
        self._domain = domain
        super().__init__({"addr": In(range(depth)), "en": In(1), "data": Out(shape)})

    def _words(self):
        """The contents as unsigned integers of the word width."""
        if isinstance(self._shape, ShapeCastable):
            return [Const.cast(self._shape.const(word)).value for word in self._init]
        width = Shape.cast(self._shape).width
        return [word & ((1 << width) - 1) for word in self._init]

    def elaborate(self, platform):
        if getattr(platform, "family", None) == "ecp5" and self._depth <= _DP16KD_WORDS // 2:
            return self._elaborate_dp16kd()
        m = Module()
        m.submodules.memory = memory = Memory(shape=self._shape, depth=self._depth,
                                              init=self._init, attrs={"ram_style": "block"})
        read = memory.read_port(domain=self._domain)
        # The output register has no reset: a reset would join its enable (an iCE40
        # flip-flop resets only while enabled), one more LUT between a feeder's handshake
        # and the enable of every data bit (on the UP5K 8×8 array, a critical path).
        data = Signal(self._shape, reset_less=True)
        m.d.comb += [read.addr.eq(self.addr), read.en.eq(self.en), self.data.eq(data)]
        with m.If(self.en):
            m.d[self._domain] += data.eq(read.data)
        return m

    def _elaborate_dp16kd(self):
        # Each block gives 36 bits of a word: port A reads bits 0..17 at address `addr`,
        # port B bits 18..35 at `addr + 512`, both in the 18-bit mode with the output
        # register on (CE clocks the array, OCE the output register).
        m = Module()
        width = Shape.cast(self._shape).width
        words = self._words()
        data = Signal(width)
        half = _DP16KD_WORDS // 2
        for block in range(-(-width // 36)):
            low = [(word >> (36 * block)) & 0x3FFFF for word in words]
            high = [(word >> (36 * block + 18)) & 0x3FFFF for word in words]
            contents = low + [0] * (half - len(low)) + high
            a_data, b_data = Signal(18, name=f"block{block}_a"), Signal(18, name=f"block{block}_b")
            ports = {}
            for port, offset, out in (("A", 0, a_data), ("B", half, b_data)):
                # In the 18-bit mode AD*13..AD*4 are the word address; AD*1..AD*0 are byte
                # enables for writes, AD*3..AD*2 unused.
                address = Signal(14, name=f"block{block}_address_{port.lower()}")
                m.d.comb += address.eq(Cat(Const(0, 4), self.addr + offset))
                ports.update({
                    f"i_CLK{port}": ClockSignal(self._domain),
                    f"i_CE{port}": self.en, f"i_OCE{port}": self.en,
                    f"i_WE{port}": Const(0), f"i_RST{port}": Const(0),
                    **{f"i_CS{port}{bit}": Const(0) for bit in range(3)},
                    **{f"i_AD{port}{bit}": address[bit] for bit in range(14)},
                    **{f"i_DI{port}{bit}": Const(0) for bit in range(18)},
                    **{f"o_DO{port}{bit}": out[bit] for bit in range(18)},
                })
            m.submodules[f"block{block}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=18, p_DATA_WIDTH_B=18,
                p_REGMODE_A="OUTREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
                **{f"p_{name}": Const(value, 320)
                   for name, value in dp16kd_initvals(contents).items()},
                **ports)
            m.d.comb += data[36 * block:36 * block + 36].eq(Cat(a_data, b_data))
        m.d.comb += self.data.eq(data)
        return m
