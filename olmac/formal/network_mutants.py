"""Broken variants of the network core's parts that their proofs must reject (beside
:class:`~olmac.formal.mutants.WithdrawnStream`, a sending port's beat withdrawn)."""

from amaranth.asserts import AnySeq
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ForcedOutput"]


class ForcedOutput(wiring.Component):
    """Any part one of whose outputs reads ``value`` in cycles chosen freely; everything
    else passes through. Forcing a receiving port's ``ready`` to 1 loses a transfer (the
    producer moves on, the part never takes the beat); a write enable to 0 drops a write; a
    sending port's ``valid`` to 1 offers a beat that never was (and withdraws it).

    Parameters
    ----------
    part : wiring.Component
        The part to break (built by the caller).
    path : tuple of str
        The output's member path, e.g. ``("load", "ready")``.
    value : int
        0 or 1.

    Raises
    ------
    ValueError
        If ``path`` is not a one-bit output of ``part``.
    """

    def __init__(self, part, path, value):
        members = {path: member for path, member, _value in part.signature.flatten(part)}
        if (path not in members or members[path].flow != Out
                or Shape.cast(members[path].shape).width != 1):
            raise ValueError(f"path must name a one-bit output of the part, not {path!r}")
        self._part = part
        self._path = path
        self._value = value
        super().__init__(part.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.part = part = self._part
        for (path, member, outer), (_, _, inner) in zip(self.signature.flatten(self),
                                                       part.signature.flatten(part)):
            if member.flow == In:
                m.d.comb += inner.eq(outer)
            elif path == self._path:
                m.d.comb += outer.eq(Mux(AnySeq(1), self._value, inner))
            else:
                m.d.comb += outer.eq(inner)
        return m
