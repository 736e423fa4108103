"""The catalogue of olmac's formal proofs, each with the broken variants it must reject."""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amaranth.hdl import unsigned
from amaranth.lib import data

from olmac.hw.codebook import CodebookDecoder
from olmac.hw.gemm_engine import GemmEngine
from olmac.hw.host_link import FrameReceiver, FrameTransmitter, LoopbackApp, RequestSlots
from olmac.hw.network.layouts import LoadTarget
from olmac.hw.network_app import FixedCommand, InferHandler, LoadHandler
from olmac.hw.mac_array import MacArray
from olmac.hw.outlier_rules import OutlierRules
from olmac.hw.requant import Requantizer
from olmac.hw.result_buffer import ResultBuffer
from olmac.hw.stream import SkidBuffer
from olmac.hw.uart import UARTReceiver
from .mutants import (BlindLaneArray, DeafFrameReceiver, HastyDecoder, LossyRequestSlots,
                      LossyResultBuffer, OnesComplementDecoder, OverrunSkidBuffer,
                      LenientRules, SkewedRequantizer, TamperedArray, WithdrawnStream)
from .properties import (CodebookDecodeProperties, CodebookStreamProperties,
                         FrameReceiverProperties, MacArrayProperties,
                         RequantizerProperties, RequestSlotsProperties, ResultBufferProperties,
                         OutlierRulesProperties, SkidBufferProperties,
                         StreamPortProperties, frame_transmitter_invariants)
from .runner import prove

__all__ = ["Proof", "PROOFS", "run_all"]


@dataclass(frozen=True)
class Proof:
    """One property wrapper, how to run it, and the mutants it must fail on.

    Attributes
    ----------
    name : str
        Build folder name and test id.
    wrapper : Callable
        Builds the property wrapper of the real block.
    mutants : dict
        Mutant name → builder of the same wrapper around a broken block.
    depth : int
        Induction length (``prove``) or cycles checked (``bmc``).
    mode : str
        ``"prove"`` (k-induction) or ``"bmc"``.
    slow : bool
        Takes more than 30 s on the 2-core CI machine: ``make formal`` only, not ``make test``.
    """
    name: str
    wrapper: Callable
    mutants: dict
    depth: int
    mode: str = "prove"
    slow: bool = False


def _decode_proof(idx_bits, zero):
    """The decode proof of a one-weight decoder, with a negation off by one as its mutant."""
    def wrapper(decoder_class):
        return lambda: CodebookDecodeProperties(decoder_class(
            lanes=1, cols=1, idx_bits=idx_bits, zero=zero, entry_bits=3))
    return Proof(f"codebook_decode_i{idx_bits}{'_zero' if zero else ''}",
                 wrapper(CodebookDecoder), {"ones_complement": wrapper(OnesComplementDecoder)},
                 depth=1)


_STREAM_DECODER = dict(lanes=2, cols=2, idx_bits=1, zero=True, entry_bits=2, subgroups=2,
                       granularity="row")


_SMALL_ARRAY = dict(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=8)
#: The same with one multiplier of each outlier kind, two slots each (so a beat may take
#: two sub-beats) and 3-bit outliers.
_OUTLIER_ARRAY = dict(_SMALL_ARRAY, act_outlier_lanes=1, weight_outlier_lanes=1,
                      act_outlier_bits=3, weight_outlier_bits=3, act_outlier_slots=2,
                      weight_outlier_slots=2)
#: The dense array with 1-bit plane shifts (§8).
_PLANE_ARRAY = dict(_SMALL_ARRAY, plane_shift_bits=1)
#: Outliers and plane shifts, one slot for each outlier multiplier, so every beat takes one
#: sub-beat (the k-inductive form's condition).
_OUTLIER_PLANE_ARRAY = dict(_PLANE_ARRAY, act_outlier_lanes=1, weight_outlier_lanes=1,
                            act_outlier_bits=3, weight_outlier_bits=3, act_outlier_slots=1,
                            weight_outlier_slots=1)


_RULES = dict(lanes=3, cols=3, act_outlier_slots=2, weight_outlier_slots=3)


def _array_proof(name, params, mutants, **options):
    """The MAC array's k-inductive proof at its output queue for ``params``; ``mutants``
    maps names to broken-array builders taking ``**params``."""
    config = MacArray.Config(**params)
    return Proof(name, lambda: MacArrayProperties(MacArray(**params), config),
                 {mutant: (lambda build=build: MacArrayProperties(build(**params), config))
                  for mutant, build in mutants.items()},
                 depth=config.latency + 2, **options)


def _stream_proof(name, build, depth, invariants=None, slow=False):
    """The stream rules on every port through which ``build()`` sends, all inputs free; the
    mutant withdraws a beat of the first such port."""
    return Proof(f"streams_{name}", lambda: StreamPortProperties(build(), invariants),
                 {"withdrawn": lambda: StreamPortProperties(WithdrawnStream(build()),
                                                            invariants)},
                 depth=depth, slow=slow)


#: Blocks whose stream ports have no proof of their own above, at small sizes.
_STREAM_BLOCKS = {
    "frame_transmitter": (lambda: FrameTransmitter(max_reply=2), 8,
                          frame_transmitter_invariants),
    # A byte takes about 40 cycles at the smallest divisor: the mutant's base case needs them.
    "uart_receiver": (lambda: UARTReceiver(divisor=4), 44, None, True),
    "fixed_command": (lambda: FixedCommand(bytes([0, 1])), 4),
    "infer_handler": (lambda: InferHandler(width=1, input_words=2), 8),
    "load_handler": (lambda: LoadHandler(
        load_layout=data.StructLayout({"memory": LoadTarget, "address": range(2),
                                       "word": unsigned(8)}),
        depths=dict(program=2, weights=2, params=2),
        word_bytes=dict(program=1, weights=1, params=1)), 8),
    "loopback_app": (lambda: LoopbackApp(), 4),
    "gemm_engine": (lambda: GemmEngine(lanes=2, cols=2, act_bits=2, weight_bits=2,
                                       max_k=4), 10),
}


def _requant_proof(out_signed, *, at_queue):
    """§3 on a one-column u2/s2 requantizer with 4-bit accumulators, parameters and shifts
    up to 5, against an input skewed by one: end to end (bounded), or at the output queue's
    write port (k-induction over the pipeline's latency and one cycle more)."""
    latency = Requantizer.latency if at_queue else None
    def wrapper(requantizer_class):
        return lambda: RequantizerProperties(
            requantizer_class(cols=1, acc_width=4, out_bits=2, out_signed=out_signed),
            param_bits=4, max_shift=5, latency=latency)
    name = f"requant_{'s' if out_signed else 'u'}2{'_datapath' if at_queue else ''}"
    if at_queue:
        return Proof(name, wrapper(Requantizer), {"skewed": wrapper(SkewedRequantizer)},
                     depth=Requantizer.latency + 1, slow=True)
    return Proof(name, wrapper(Requantizer), {"skewed": wrapper(SkewedRequantizer)},
                 depth=10, mode="bmc", slow=True)


PROOFS = (
    # 130 bits: three payload slices, each with its own copy of the state.
    Proof("skid_buffer", lambda: SkidBufferProperties(SkidBuffer(unsigned(130))),
          {"overrun": lambda: SkidBufferProperties(OverrunSkidBuffer(unsigned(130)))},
          depth=2),
    Proof("result_buffer_d2", lambda: ResultBufferProperties(ResultBuffer(2, 2), order=False),
          {fault: (lambda fault=fault: ResultBufferProperties(LossyResultBuffer(2, 2, fault),
                                                              order=False))
           for fault in ("drop", "withdraw")},
          depth=6),
    Proof("result_buffer_d3", lambda: ResultBufferProperties(ResultBuffer(3, 3), order=False),
          {"drop": lambda: ResultBufferProperties(LossyResultBuffer(3, 3, "drop"),
                                                  order=False)},
          depth=8),
    Proof("result_buffer_order_d2",
          lambda: ResultBufferProperties(ResultBuffer(2, 2), order=True),
          {"drop": lambda: ResultBufferProperties(LossyResultBuffer(2, 2, "drop"),
                                                  order=True)},
          depth=12, mode="bmc", slow=True),
    # Binary, ternary-style (zero code) and the widest codebooks, 3-bit entries.
    *(_decode_proof(idx_bits, zero) for idx_bits, zero in ((0, False), (1, True), (3, True))),
    # 2×2 tiles, per-column codebooks: several read ports and a load stream beside the tiles.
    Proof("codebook_streams",
          lambda: CodebookStreamProperties(CodebookDecoder(**_STREAM_DECODER)),
          {"hasty": lambda: CodebookStreamProperties(HastyDecoder(**_STREAM_DECODER))},
          depth=4),
    Proof("request_slots",
          lambda: RequestSlotsProperties(RequestSlots(max_payload=3), max_payload=3),
          {"drop": lambda: RequestSlotsProperties(LossyRequestSlots(max_payload=3),
                                                  max_payload=3)},
          depth=6),
    # Payloads of one and two bytes, a frame byte at most every two cycles. Mutants: a byte
    # missed unreported, and a receiver that waits one cycle longer than its timeout (which
    # shows only after a byte and four quiet cycles: depth 5).
    Proof("frame_receiver",
          lambda: FrameReceiverProperties(FrameReceiver(max_payload=2, timeout=2),
                                          max_payload=2, timeout=2),
          {"deaf": lambda: FrameReceiverProperties(DeafFrameReceiver(max_payload=2, timeout=2),
                                                   max_payload=2, timeout=2),
           "late": lambda: FrameReceiverProperties(FrameReceiver(max_payload=2, timeout=3),
                                                   max_payload=2, timeout=2)},
          depth=5),
    # Bounded: the output queue is a memory; about 7 cycles from input to output, so 10
    # cycles see the first three transfers under every stall pattern.
    *(_requant_proof(out_signed, at_queue=at_queue) for at_queue in (True, False)
      for out_signed in (False, True)),
    # 2×2 signed 2-bit, dense: 6 cycles from a reduction's last beat to `acc`, so 12 cycles
    # see every reduction closed in the first six.
    Proof("mac_array_2x2",
          lambda: MacArrayProperties(MacArray(**_SMALL_ARRAY)),
          {"blind_lane": lambda: MacArrayProperties(BlindLaneArray(**_SMALL_ARRAY))},
          depth=12, mode="bmc", slow=True),
    # The outlier merge: bounded like the dense array (its output queue is a memory), and
    # only to the first result (6 cycles from a beat to `acc`, so one-beat reductions): with
    # 1-bit plane shifts as well the solver's step 7 ran past 10 minutes. Each mutant drops
    # one kind of outlier.
    Proof("mac_array_2x2_outliers",
          lambda: MacArrayProperties(MacArray(**_OUTLIER_ARRAY)),
          {fault: (lambda fault=fault: MacArrayProperties(TamperedArray(fault,
                                                                        **_OUTLIER_ARRAY)))
           for fault in ("act_outlier", "weight_outlier")},
          depth=7, mode="bmc", slow=True),
    # k-induction at the output queue's write port: every reduction of any length, with plane
    # shifts, then with outliers too (one sub-beat per beat).
    _array_proof("mac_array_2x2_planes", _PLANE_ARRAY,
                 {"blind_lane": BlindLaneArray,
                  "plane_shift": lambda **p: TamperedArray("plane_shift", **p)}),
    *(_stream_proof(name, *spec) for name, spec in _STREAM_BLOCKS.items()),
    # The MAC array's fault flag: three lanes and columns (indices of two bits can point past
    # them), two activation and three weight outlier slots.
    Proof("outlier_rules",
          lambda: OutlierRulesProperties(OutlierRules(**_RULES)),
          {"lenient": lambda: OutlierRulesProperties(LenientRules(**_RULES))}, depth=3),
    _array_proof("mac_array_2x2_outlier_planes", _OUTLIER_PLANE_ARRAY,
                 {fault: (lambda fault=fault, **p: TamperedArray(fault, **p))
                  for fault in TamperedArray.FAULTS}, slow=True),
)


def run_all(build_dir, *, jobs=None):
    """Runs every proof (and its mutants) under ``build_dir``, ``jobs`` at a time (default:
    one per CPU; each is a SymbiYosys process), yielding ``(as_expected, line)`` in catalogue
    order.

    A proof is as expected when it passes, a mutant when it fails. The line names the run,
    its verdict and its time.
    """
    build_dir = Path(build_dir)
    runs = []
    for proof in PROOFS:
        runs.append((proof, proof.name, proof.wrapper, True))
        runs += [(proof, f"{proof.name}-{name}", build, False)
                 for name, build in proof.mutants.items()]

    def run(item):
        proof, name, build, expected = item
        result = prove(build(), build_dir / name, depth=proof.depth, mode=proof.mode)
        good = result.passed == expected
        return good, (f"{name:40} {proof.mode:5} depth {proof.depth:3} {result.status:7} "
                      f"{'ok' if good else 'UNEXPECTED'} {result.seconds:6.1f} s  "
                      f"{result.log}")

    # Threads suffice: each run waits on its own solver process.
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        yield from pool.map(run, runs)
