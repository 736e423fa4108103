"""Where a :class:`~hw.MacArray`'s products are computed: LUT logic, DSP blocks, or two
narrow products packed into one DSP multiply.

Yosys maps every ``$mul`` of at least 2×2 bits into an ECP5 ``MULT18X18D`` by default, and
an unregistered one (about 4 ns at speed grade 6) limits the clock. The blocks here put a
product into a DSP block with its registers on, by instantiating the block for the
platform; a flow that maps every remaining ``*`` to LUT logic (``synth_ecp5 -nodsp``, the
``booth`` pass) then keeps the dense products out of the DSP blocks:

* :class:`DspProduct` is one product in a DSP block with registered inputs and output
  (:data:`DSP_STAGES` cycles). On an ECP5 platform it instantiates ``MULT18X18D``, on an
  iCE40 platform ``SB_MAC16``; elsewhere (simulation, platform-less synthesis) it is a
  ``*`` between the same registers, so every simulator sees the same cycle timing.
* :class:`PackedPair` computes ``a × b0`` and ``a × b1`` with one multiply
  ``a × (b0 + b1·2^k)`` in a :class:`DspProduct` and splits the result with the
  sign-borrow correction (:func:`packed_split`).
* :class:`DotPair` computes ``a0·b0 + a1·b1`` with one multiply
  ``(a0 + a1·2^k) × (b1 + b0·2^k)``, whose middle field is that sum (:func:`dot_field`).

:func:`odd_digit_product` is a dense product of a weight of at most
:data:`ODD_DIGIT_WEIGHT_BITS` bits in LUT logic, cheaper than a Booth multiplier: with
``3a`` computed once per activation, each partial-product bit is one LUT4.
"""

from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .shapes import narrowest_signed, product_bounds, shape_bounds

__all__ = ["MODES", "DSP_STAGES", "PACKED_STAGES", "ODD_DIGIT_WEIGHT_BITS", "product_shape",
           "packed_field_width", "packed_b_width", "packable", "packed_split",
           "two_field_operand", "dot_field_width", "dot_fits", "dot_field", "DotPair",
           "as_signed_operand", "odd_digit_product", "odd_digit_bounds", "DspProduct",
           "PackedPair"]

#: Multiplier placements of :class:`~hw.MacArray` (``multipliers=``).
MODES = ("lut", "dsp", "packed")

#: Cycles from a :class:`DspProduct`'s operands to its product: the DSP's input registers,
#: then its output register.
DSP_STAGES = 2

#: Cycles from a :class:`PackedPair`'s operands to its two products: the DSP block's two
#: stages, then a register for the split (its borrow correction and the first adder-tree
#: level did not fit one cycle after the block's output on ECP5).
PACKED_STAGES = DSP_STAGES + 1

#: Widest signed operand of an ECP5 MULT18X18D.
_ECP5_WIDTH = 18
#: Widest operand of an iCE40 SB_MAC16 (of either signedness).
_ICE40_WIDTH = 16


def product_shape(a_shape, b_shape):
    """The narrowest signed shape of every product of ``a_shape`` × ``b_shape``."""
    return narrowest_signed(*product_bounds(a_shape, b_shape))


def packed_field_width(a_shape, b_shape):
    """Bits of the low field of a packed pair: the width of one product."""
    return product_shape(a_shape, b_shape).width


def packed_b_width(a_shape, b_shape):
    """Width of the packed operand ``b0 + b1·2^k`` (signed)."""
    return packed_field_width(a_shape, b_shape) + Shape.cast(b_shape).width + 1


def packable(a_shape, b_shape):
    """Whether two ``a_shape × b_shape`` products fit one 18×18 signed multiply."""
    a_width = Shape.cast(a_shape).width + (0 if Shape.cast(a_shape).signed else 1)
    return a_width <= _ECP5_WIDTH and packed_b_width(a_shape, b_shape) <= _ECP5_WIDTH


def packed_split(p, k):
    """``(a·b0, a·b1)`` from ``p = a·(b0 + b1·2^k)``, each product fitting ``k`` signed bits.

    The low field ``p[0:k]`` read as signed is ``a·b0``. The high field ``p[k:]`` is
    ``floor(p / 2^k)``, one less than ``a·b1`` when ``a·b0`` is negative: that borrow is the
    low field's sign bit ``p[k-1]``, added back.
    """
    p = Value.cast(p)
    low = p[:k].as_signed()
    high = (p[k:].as_signed() + p[k - 1])
    return low, high


def two_field_operand(m, low, high, k, name):
    """``low + high·2^k`` as a signed value, without a wide adder: the low ``k`` bits are
    ``low`` extended, the bits above ``high`` less the borrow of a negative ``low``
    (``low`` narrower than ``k`` bits)."""
    low, high = Value.cast(low), Value.cast(high)
    low_field = Signal(signed(k), name=f"{name}_low")
    m.d.comb += low_field.eq(low)
    if not low.shape().signed:
        return Cat(low_field, as_signed_operand(high)).as_signed()
    high_field = Signal(signed(len(as_signed_operand(high)) + 1), name=f"{name}_high")
    m.d.comb += high_field.eq(high - low[-1])
    return Cat(low_field, high_field).as_signed()


def dot_field_width(a_shape, b_shape):
    """``k`` of a :class:`DotPair`: bits that hold ``a0·b0 + a1·b1`` less the borrow of the
    low field (and so the low field ``a0·b1`` itself)."""
    low, high = product_bounds(a_shape, b_shape)
    return narrowest_signed(2 * low - 1, 2 * high).width


def dot_fits(a_shape, b_shape):
    """Whether a :class:`DotPair` of ``a_shape`` × ``b_shape`` fits one 16×16 multiply (an
    iCE40 SB_MAC16, and so an ECP5 MULT18X18D): each operand is ``k`` bits and a field one
    bit wider than its value (:func:`two_field_operand`)."""
    k = dot_field_width(a_shape, b_shape)
    return all(k + Shape.cast(shape).width + 1 <= _ICE40_WIDTH for shape in (a_shape, b_shape))


def dot_field(p, k):
    """``(s − c, c)`` from ``p = (a0 + a1·2^k)(b1 + b0·2^k)`` with ``s = a0·b0 + a1·b1``:
    the middle field ``p[k:2k]`` read as signed is ``s`` less the borrow ``c`` of a
    negative low field ``a0·b1``, and ``c`` is that field's sign bit ``p[k-1]``. The
    caller adds ``c`` back, as the carry-in of an adder it has anyway."""
    p = Value.cast(p)
    return p[k:2 * k].as_signed(), p[k - 1]


#: Widest weight :func:`odd_digit_product` takes: two radix-4 digits.
ODD_DIGIT_WEIGHT_BITS = 4


def as_signed_operand(value):
    """``value`` as a signed value of the same integer (one bit wider if unsigned), so that
    ``~`` on it is ``-value - 1``."""
    value = Value.cast(value)
    return value if value.shape().signed else Cat(value, Const(0, 1)).as_signed()


def odd_digit_product(a, triple, w):
    """``(a·w − c, c)`` for a signed weight ``w`` of 2..:data:`ODD_DIGIT_WEIGHT_BITS` bits,
    with ``c`` the sign bit of ``w``; ``a`` signed (:func:`as_signed_operand`), ``triple``
    equal to ``3·a``.

    A 4-bit weight (narrower ones sign-extended; 2 bits need only the first digit) is
    ``w = e + 2·d`` with the digits ``e = w[0] + 2·w[1] − 2 ∈ {−2, −1, 0, 1}`` and
    ``d = 2·w[2] + 4·(1 − w[3]) − 3 ∈ {1, 3, −3, −1}``: the odd-digit recoding of
    ``2w + 1``. Each digit's multiple of ``a`` is chosen among a value and its complement
    (``~x = −x − 1``): ``e·a`` from ``~(2a), ~a, 0, a`` and ``d·a`` from ``a, 3a, ~(3a),
    ~a``, so every bit of either is a function of two weight bits and two operand bits,
    one LUT4, where a Booth multiplier needs several levels. Each complement is one short
    (``−1`` when ``w[1] = 0``, and ``−2`` from ``2·d·a`` when ``w[3] = 1``): the first is
    the sum's carry-in, the second half made up by the free low bit of ``2·(d·a)`` (set to
    ``w[3]``), which leaves ``−w[3]``. The caller adds ``c`` back, e.g. as the carry-in of an
    adder it has anyway.
    """
    w = Value.cast(w)
    width = len(w)
    if not 2 <= width <= ODD_DIGIT_WEIGHT_BITS or not w.shape().signed:
        raise TypeError(f"Odd-digit weight must be signed of 2..{ODD_DIGIT_WEIGHT_BITS} bits, "
                        f"not {w.shape()!r}")
    if width == 2:
        # w = e with e = w[0] + 2·(1 − w[1]) − 2: the first digit alone, short when w[1] = 1
        return _low_digit(a, ~w[1], w[0]), w[1]
    bits = [w[index] if index < width else w[-1] for index in range(ODD_DIGIT_WEIGHT_BITS)]
    low = _low_digit(a, bits[1], bits[0])
    high = Mux(bits[3], Mux(bits[2], ~a, ~triple), Mux(bits[2], triple, a))
    return low + Cat(bits[3], high).as_signed() + ~bits[1], bits[3]


def odd_digit_bounds(a_shape, w_shape):
    """Inclusive ``(low, high)`` of :func:`odd_digit_product`'s first result, ``a·w − c``:
    one below the product only where the weight is negative, so a 4×4 one fits 7 bits
    (−57..63) where the product needs 8 (−56..64)."""
    a_low, a_high = shape_bounds(a_shape)
    w_low, w_high = shape_bounds(w_shape)
    values = [a * w for a in (a_low, a_high) for w in (0, w_high)]
    values += [a * w - 1 for a in (a_low, a_high) for w in (w_low, -1)]
    return min(values), max(values)


def _low_digit(a, high, low):
    """``e·a`` for ``e = low + 2·high − 2``, complemented (one short) where ``e < 0``."""
    return Mux(high, Mux(low, a, 0), Mux(low, ~a, ~(a << 1)))


def _platform_family(platform):
    family = getattr(platform, "family", None)
    return family.lower() if isinstance(family, str) else None


class DspProduct(wiring.Component):
    """``p = a × b``, :data:`DSP_STAGES` cycles after ``a`` and ``b``: registered operands,
    then a registered product, in one DSP block where the platform has one.

    On an ECP5 platform (``platform.family == "ecp5"``) this is a ``MULT18X18D`` with its
    input and output registers on; on an iCE40 platform an ``SB_MAC16`` with its input
    registers and its 16×16 output register on. Without a platform, or on another one, it
    is the same two register stages around a ``*``, so simulation and platform-less
    synthesis see the same cycle timing (and Yosys maps that ``*`` as it likes).

    Parameters
    ----------
    a_shape, b_shape : ShapeLike
        Operand shapes; at most 17 bits unsigned or 18 bits signed (16 on iCE40).

    Raises
    ------
    TypeError
        If an operand is wider than an 18×18 signed multiply takes.

    Members
    -------
    a : In(a_shape)
    b : In(b_shape)
    p : Out(product_shape(a_shape, b_shape))
    """

    def __init__(self, a_shape, b_shape):
        for name, shape in (("A", a_shape), ("B", b_shape)):
            shape = Shape.cast(shape)
            if shape.width + (0 if shape.signed else 1) > _ECP5_WIDTH:
                raise TypeError(f"DSP operand {name} must fit 18 signed bits, not {shape!r}")
        self._a_shape, self._b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        super().__init__({"a": In(a_shape), "b": In(b_shape),
                          "p": Out(product_shape(a_shape, b_shape))})

    def elaborate(self, platform):
        m = Module()
        family = _platform_family(platform)
        if family == "ecp5":
            self._ecp5(m)
        elif family == "ice40" and all(
                shape.width <= _ICE40_WIDTH for shape in (self._a_shape, self._b_shape)):
            self._ice40(m)
        else:
            a = Signal(self._a_shape, name="a_reg", reset_less=True)
            b = Signal(self._b_shape, name="b_reg", reset_less=True)
            m.d.sync += [a.eq(self.a), b.eq(self.b), self.p.eq(a * b)]
        return m

    def _ecp5(self, m):
        a, b = Signal(signed(_ECP5_WIDTH)), Signal(signed(_ECP5_WIDTH))
        p = Signal(2 * _ECP5_WIDTH)
        m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(p)]
        ports = {f"i_A{bit}": a[bit] for bit in range(_ECP5_WIDTH)}
        ports |= {f"i_B{bit}": b[bit] for bit in range(_ECP5_WIDTH)}
        ports |= {f"i_C{bit}": Const(0) for bit in range(_ECP5_WIDTH)}
        ports |= {f"o_P{bit}": p[bit] for bit in range(2 * _ECP5_WIDTH)}
        m.submodules.mult = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
            p_REG_PIPELINE_CLK="NONE", p_REG_INPUTC_CLK="NONE",
            p_GSR="DISABLED", p_RESETMODE="SYNC", p_CLK0_DIV="ENABLED",
            p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
            i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
            i_CLK0=ClockSignal(), i_CE0=Const(1), i_RST0=Const(0),
            **ports)

    def _ice40(self, m):
        p = Signal(32)
        # the block's operands are 16 bits, extended here as the flags below read them
        a, b = Signal(Shape(16, self._a_shape.signed)), Signal(Shape(16, self._b_shape.signed))
        m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(p)]
        m.submodules.mult = Instance(
            "SB_MAC16",
            p_NEG_TRIGGER=Const(0, 1), p_C_REG=Const(0, 1), p_A_REG=Const(1, 1),
            p_B_REG=Const(1, 1), p_D_REG=Const(0, 1), p_TOP_8x8_MULT_REG=Const(0, 1),
            p_BOT_8x8_MULT_REG=Const(0, 1), p_PIPELINE_16x16_MULT_REG1=Const(0, 1),
            p_PIPELINE_16x16_MULT_REG2=Const(1, 1), p_TOPOUTPUT_SELECT=Const(3, 2),
            p_TOPADDSUB_LOWERINPUT=Const(0, 2), p_TOPADDSUB_UPPERINPUT=Const(0, 1),
            p_TOPADDSUB_CARRYSELECT=Const(0, 2), p_BOTOUTPUT_SELECT=Const(3, 2),
            p_BOTADDSUB_LOWERINPUT=Const(0, 2), p_BOTADDSUB_UPPERINPUT=Const(0, 1),
            p_BOTADDSUB_CARRYSELECT=Const(0, 2), p_MODE_8x8=Const(0, 1),
            p_A_SIGNED=Const(int(self._a_shape.signed), 1),
            p_B_SIGNED=Const(int(self._b_shape.signed), 1),
            i_CLK=ClockSignal(), i_CE=Const(1),
            i_A=a, i_B=b, i_C=Const(0, 16), i_D=Const(0, 16),
            i_AHOLD=Const(0), i_BHOLD=Const(0), i_CHOLD=Const(0), i_DHOLD=Const(0),
            i_IRSTTOP=Const(0), i_IRSTBOT=Const(0), i_ORSTTOP=Const(0), i_ORSTBOT=Const(0),
            i_OLOADTOP=Const(0), i_OLOADBOT=Const(0), i_ADDSUBTOP=Const(0),
            i_ADDSUBBOT=Const(0), i_OHOLDTOP=Const(0), i_OHOLDBOT=Const(0), i_CI=Const(0),
            i_ACCUMCI=Const(0), i_SIGNEXTIN=Const(0),
            o_O=p)


class PackedPair(wiring.Component):
    """``p0 = a × b0`` and ``p1 = a × b1`` from one multiply ``a × (b0 + b1·2^k)`` in a
    :class:`DspProduct`, :data:`PACKED_STAGES` cycles after the operands (the split is
    registered).

    ``k`` is the width of one product, so the low product sits in ``k`` bits of the result
    and the high one above it; :func:`packed_split` undoes the borrow a negative low product
    takes from the high field. The packed operand ``b0 + b1·2^k`` is built without a wide
    adder: the low ``k`` bits are ``b0`` sign-extended, the high bits ``b1 - sign(b0)``.

    Parameters
    ----------
    a_shape, b_shape : ShapeLike
        Shapes of ``a`` and of ``b0``, ``b1``.

    Raises
    ------
    ValueError
        If two products do not fit one 18×18 signed multiply (see :func:`packable`).

    Members
    -------
    a : In(a_shape)
    b0, b1 : In(b_shape)
    p0, p1 : Out(product_shape(a_shape, b_shape))
    """

    def __init__(self, a_shape, b_shape):
        if not packable(a_shape, b_shape):
            raise ValueError(f"Two {Shape.cast(a_shape)!r} × {Shape.cast(b_shape)!r} products "
                             f"do not fit one 18×18 signed multiply")
        self._a_shape, self._b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        shape = product_shape(a_shape, b_shape)
        super().__init__({"a": In(a_shape), "b0": In(b_shape), "b1": In(b_shape),
                          "p0": Out(shape), "p1": Out(shape)})

    @property
    def field_width(self):
        """``k``: bits of the low field."""
        return packed_field_width(self._a_shape, self._b_shape)

    def elaborate(self, platform):
        m = Module()
        k = self.field_width
        packed_shape = signed(packed_b_width(self._a_shape, self._b_shape))
        m.submodules.dsp = dsp = DspProduct(self._a_shape, packed_shape)
        m.d.comb += [dsp.a.eq(self.a), dsp.b.eq(two_field_operand(m, self.b0, self.b1, k, "b"))]
        p0, p1 = packed_split(dsp.p, k)
        m.d.sync += [self.p0.eq(p0), self.p1.eq(p1)]
        return m


class DotPair(wiring.Component):
    """``s − c`` and ``c`` with ``s = a0·b0 + a1·b1`` (see :func:`dot_field`), from one
    multiply ``(a0 + a1·2^k) × (b1 + b0·2^k)`` in a :class:`DspProduct`,
    :data:`DSP_STAGES` cycles after the operands: two products and their sum in one DSP
    block. The product's low field is ``a0·b1``, its high field ``a1·b0`` (both unused),
    its middle field the sum.

    Parameters
    ----------
    a_shape, b_shape : ShapeLike
        Shapes of ``a0``, ``a1`` and of ``b0``, ``b1``.

    Raises
    ------
    ValueError
        If the packed operands do not fit one 16×16 multiply (see :func:`dot_fits`).

    Members
    -------
    a0, a1 : In(a_shape)
    b0, b1 : In(b_shape)
    s : Out(signed(dot_field_width(a_shape, b_shape)))
        ``a0·b0 + a1·b1 − c``.
    c : Out(1)
        The borrow to add back.
    """

    def __init__(self, a_shape, b_shape):
        if not dot_fits(a_shape, b_shape):
            raise ValueError(f"A dot pair of {Shape.cast(a_shape)!r} × {Shape.cast(b_shape)!r} "
                             f"does not fit one 16×16 multiply")
        self._a_shape, self._b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        self._k = dot_field_width(a_shape, b_shape)
        super().__init__({"a0": In(a_shape), "a1": In(a_shape), "b0": In(b_shape),
                          "b1": In(b_shape), "s": Out(signed(self._k)), "c": Out(1)})

    def elaborate(self, platform):
        m = Module()
        k = self._k
        a = two_field_operand(m, self.a0, self.a1, k, "a")
        b = two_field_operand(m, self.b1, self.b0, k, "b")
        m.submodules.dsp = dsp = DspProduct(a.shape(), b.shape())
        m.d.comb += [dsp.a.eq(a), dsp.b.eq(b)]
        s, c = dot_field(dsp.p, k)
        m.d.comb += [self.s.eq(s), self.c.eq(c)]
        return m
