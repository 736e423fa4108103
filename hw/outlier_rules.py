"""The producer rules of a MAC array's outlier slots, checked in hardware (docs/semantics.md
§6): a beat that breaks them raises a sticky fault instead of giving wrong sums silently."""

from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import ARRAY_DIM, check_int
from .config import ConfigProperty, ConfiguredComponent

__all__ = ["OutlierRules"]


def _index_shape(count):
    return unsigned(max(1, (count - 1).bit_length()))


class OutlierRules(ConfiguredComponent):
    """Raises ``fault`` for good once a beat's outlier slots break §6's producer rules.

    The rules: every valid outlier's position is in the array (activation lane
    ``< lanes``; weight lane ``< lanes`` and column ``< cols``), and no two valid outliers of
    one kind in one beat share a position. A beat that breaks them would be summed wrongly
    (an index past the array selects another lane or no column; a second outlier at a
    position is added to the dense products but not to the weight-outlier lanes' full
    activation), so the array flags it rather than trusting the producer. The flag stays
    high until reset: every result from then on is suspect.

    The positions are compared from the array's registered slots, and the verdict is
    registered once more before it reaches ``fault``, so the check adds no logic to the
    array's datapath paths (``fault`` rises two cycles after the beat is taken). The
    duplicate check compares every pair of slots, ``slots·(slots-1)/2`` comparators of a
    few bits per kind.

    Made from keyword arguments, the fields of :class:`OutlierRules.Config`.

    Members
    -------
    act : In(ArrayLayout(StructLayout({"valid": 1, "lane": ...}), act_outlier_slots))
        The activation-outlier positions of the beat being checked (only with slots).
    weights : In(ArrayLayout(StructLayout({"valid": 1, "lane": ..., "col": ...}), ...))
        Its weight-outlier positions (only with slots).
    check : In(1)
        ``act`` and ``weights`` hold a beat the array has taken (once per beat).
    fault : Out(1)
        A checked beat broke the rules; sticky until reset.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The array's dimensions and outlier slots, validated.

        Parameters
        ----------
        lanes, cols : int
            The array's lanes and columns, 1..64.
        act_outlier_slots, weight_outlier_slots : int
            Outlier slots of a beat of each kind, 0..1024 (0: none of that kind).

        Raises
        ------
        TypeError
            If a parameter is not an integer in its range.
        """
        lanes: int
        cols: int
        act_outlier_slots: int = 0
        weight_outlier_slots: int = 0

        def __post_init__(self):
            check_int("Lane count", self.lanes, ARRAY_DIM)
            check_int("Column count", self.cols, ARRAY_DIM)
            check_int("Activation outlier slot count", self.act_outlier_slots, (0, 1024))
            check_int("Weight outlier slot count", self.weight_outlier_slots, (0, 1024))

        @property
        def act_layout(self):
            """One activation outlier's position: ``valid`` and ``lane``."""
            return data.StructLayout({"valid": unsigned(1), "lane": _index_shape(self.lanes)})

        @property
        def weight_layout(self):
            """One weight outlier's position: ``valid``, ``lane`` and ``col``."""
            return data.StructLayout({"valid": unsigned(1), "lane": _index_shape(self.lanes),
                                      "col": _index_shape(self.cols)})

        @property
        def signature(self):
            """``act``/``weights`` (where there are slots), ``check`` and ``fault``."""
            members = {"check": In(1), "fault": Out(1)}
            if self.act_outlier_slots:
                members["act"] = In(data.ArrayLayout(self.act_layout, self.act_outlier_slots))
            if self.weight_outlier_slots:
                members["weights"] = In(data.ArrayLayout(self.weight_layout,
                                                         self.weight_outlier_slots))
            return wiring.Signature(members)

    lanes = ConfigProperty()
    cols = ConfigProperty()
    act_outlier_slots = ConfigProperty()
    weight_outlier_slots = ConfigProperty()

    def _broken(self, slots, fields, bounds):
        """Per slot: valid and out of range, or at the position of an earlier valid slot."""
        broken = []
        for index, slot in enumerate(slots):
            position = [getattr(slot, field) for field in fields]
            wrong = Const(0)
            for value, bound in zip(position, bounds):
                if bound < 1 << len(value):     # an index of 2^n positions is always in range
                    wrong = wrong | (value >= bound)
            for earlier in slots[:index]:
                same = Cat(*(getattr(earlier, field) == value
                             for field, value in zip(fields, position))).all()
                wrong = wrong | (earlier.valid & same)
            broken.append(slot.valid & wrong)
        return broken

    def elaborate(self, platform):
        m = Module()
        config = self._config
        broken = []
        if config.act_outlier_slots:
            slots = [self.act[index] for index in range(config.act_outlier_slots)]
            broken += self._broken(slots, ("lane",), (config.lanes,))
        if config.weight_outlier_slots:
            slots = [self.weights[index] for index in range(config.weight_outlier_slots)]
            broken += self._broken(slots, ("lane", "col"), (config.lanes, config.cols))
        verdict = Signal()
        m.d.sync += verdict.eq(self.check & Cat(*broken).any())
        with m.If(verdict):
            m.d.sync += self.fault.eq(1)
        return m
