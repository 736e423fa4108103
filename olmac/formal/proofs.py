"""The catalogue of olmac's formal proofs, each with the broken variants it must reject."""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from amaranth.hdl import unsigned
from amaranth.lib import data

from olmac.hw.codebook import CodebookDecoder
from olmac.hw.gemm_engine import GemmEngine
from olmac.hw.host_link import FrameReceiver, FrameTransmitter, LoopbackApp, RequestSlots
from olmac.hw.network import (ActOutlierStore, BeatWalk, CodebookPath, CopyPart, Loader,
                              LoadTarget,
                              NarrowMemories, NetworkCore, OutputWalk, ParamFeed, Reducer,
                              Sequencer, StorePart, Storer, TablePart, WideMemories,
                              WriteBack)
from olmac.hw.network_app import Dispatcher, FixedCommand, InferHandler, LoadHandler
from olmac.hw.mac_array import MacArray
from olmac.hw.outlier_rules import OutlierRules
from olmac.spec import Command
from olmac.hw.requant import Requantizer
from olmac.hw.result_buffer import ResultBuffer
from olmac.hw.serial_requant import SerialRequantizer
from olmac.hw.stream import SkidBuffer
from olmac.hw.uart import UARTReceiver
from .mutants import (BlindLaneArray, DeafFrameReceiver, DroppedTransfer, EagerDispatcher,
                      HastyDecoder, LossyRequestSlots, LossyResultBuffer,
                      OnesComplementDecoder, OverrunSkidBuffer, LenientRules,
                      SkewedRequantizer, SkewedSerialRequantizer, SpuriousStream,
                      TamperedArray, TamperedLoads, WithdrawnStream)
from .properties import (CodebookDecodeProperties, CodebookLoadProperties,
                         CodebookStreamProperties,
                         FrameReceiverProperties, MacArrayProperties,
                         RequantizerProperties, RequestSlotsProperties, ResultBufferProperties,
                         OutlierRulesProperties, SerialRequantizerProperties,
                         SkidBufferProperties, StreamPortProperties, dispatcher_counts,
                         fixed_command_counts, frame_transmitter_counts,
                         gemm_engine_counts, infer_handler_counts, load_handler_counts,
                         loopback_counts)
from .network_mutants import ForcedOutput
from .network_properties import PART_SPECS, PartProperties
from .runner import prove

__all__ = ["Proof", "PROOFS", "Run", "run_all"]


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
        Takes more than 30 s on the 2-core CI machine: ``make formal`` and ``make test-full``,
        not ``make test``.
    cross_check : bool
        A bounded check that a k-inductive proof of the catalogue covers: ``make test-full``
        only, not ``make formal`` (which must fit 10 minutes on 2 cores).
    """
    name: str
    wrapper: Callable
    mutants: dict
    depth: int
    mode: str = "prove"
    slow: bool = False
    cross_check: bool = False


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
_DECODER_CONFIG = CodebookDecoder.Config(**_STREAM_DECODER)


_SMALL_ARRAY = dict(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=8)
#: The same with one multiplier of each outlier kind, two slots each (so a beat may take
#: two sub-beats) and 3-bit outliers.
_OUTLIER_ARRAY = dict(_SMALL_ARRAY, act_outlier_lanes=1, weight_outlier_lanes=1,
                      act_outlier_bits=3, weight_outlier_bits=3, act_outlier_slots=2,
                      weight_outlier_slots=2)
#: The dense array with 1-bit plane shifts (§8).
_PLANE_ARRAY = dict(_SMALL_ARRAY, plane_shift_bits=1)
#: The dense array with split accumulators (its 7-bit accumulator in halves of 4 and 3 bits).
_SPLIT_ARRAY = dict(_SMALL_ARRAY, accumulator_stages=2)
#: Split accumulators with outliers, one slot for each outlier multiplier (one sub-beat).
_OUTLIER_SPLIT_ARRAY = dict(_SPLIT_ARRAY, act_outlier_lanes=1, weight_outlier_lanes=1,
                            act_outlier_bits=3, weight_outlier_bits=3, act_outlier_slots=1,
                            weight_outlier_slots=1)
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


def _stream_proof(name, build, depth, invariants=None, slow=False, counting=None,
                  broken=None, withdrawn=True):
    """The stream rules on every port through which ``build()`` sends, all inputs free, and
    with ``counting`` its count relation; the mutants withdraw a beat of the first such port
    (unless not ``withdrawn``), lose one taken on the first port through which it receives
    (with ``counting``), and are the broken blocks ``broken`` names (name → builder)."""
    mutants = {"withdrawn": lambda: WithdrawnStream(build())} if withdrawn else {}
    if counting is not None:
        mutants["dropped"] = lambda: DroppedTransfer(build())
    mutants.update(broken or {})
    return Proof(f"streams_{name}",
                 lambda: StreamPortProperties(build(), invariants, counting),
                 {fault: (lambda block=block: StreamPortProperties(block(), invariants,
                                                                   counting))
                  for fault, block in mutants.items()},
                 depth=depth, slow=slow)


_GEMM = dict(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=4)
#: The latency of the GEMM engine's requantizer (no ``split_stages``).
_REQUANT_LATENCY = Requantizer.Config(cols=1, acc_width=4, out_bits=2).latency
_COMMANDS = [Command.LOAD, Command.INFO]

#: Blocks whose stream ports have no proof of their own above, at small sizes: builder,
#: depth, invariants, slow, count relation.
_STREAM_BLOCKS = {
    # Mutant `roomy`: a transmitter with a 3-byte reply memory, checked for 2 (it frames a
    # reply that should overflow).
    "frame_transmitter": (lambda: FrameTransmitter(max_reply=2), 8, None, False,
                          frame_transmitter_counts(2),
                          {"roomy": lambda: FrameTransmitter(max_reply=3)}),
    # A byte takes about 40 cycles at the smallest divisor, so a withdrawn beat shows only
    # after them (its base case took 437 s in make formal at a load of 20): the mutant is a
    # beat offered from nothing and withdrawn instead, which fails in two cycles.
    "uart_receiver": (lambda: UARTReceiver(divisor=4), 44, None, False, None,
                      {"spurious": lambda: SpuriousStream(UARTReceiver(divisor=4))}, False),
    "fixed_command": (lambda: FixedCommand(bytes([0, 1]), action=True), 4, None, False,
                      fixed_command_counts),
    # Mutant `short`: a handler that sends images of one word, checked for two.
    "infer_handler": (lambda: InferHandler(width=1, input_words=2), 8, None, False,
                      infer_handler_counts(2),
                      {"short": lambda: InferHandler(width=1, input_words=1)}),
    "load_handler": (lambda: LoadHandler(
        load_layout=data.StructLayout({"memory": LoadTarget, "address": range(2),
                                       "word": unsigned(8)}),
        depths=dict(program=2, weights=2, params=2),
        word_bytes=dict(program=1, weights=1, params=1)), 8, None, False,
        load_handler_counts),
    "loopback_app": (lambda: LoopbackApp(), 4, None, False, loopback_counts),
    # Without a requantizer the engine is the array and its output queue: the relation
    # needs the array's latency. Depth: the pipeline's state is its last `latency` inputs,
    # and the mutant's base case needs a first result on `out` (latency + 6 cycles).
    "gemm_engine": (lambda: GemmEngine(**_GEMM), MacArray.Config(**_GEMM).latency + 6, None,
                    False, gemm_engine_counts(MacArray.Config(**_GEMM).latency)),
    # The composition array → requantizer, each with its output queue and credits. The
    # requantizer's 32-bit multipliers make it slow; its `out` is a ResultBuffer like the
    # engine's above, whose withdrawn mutant fails there (here it took 105 s), so only the
    # dropped transfer is its mutant.
    "gemm_engine_requant": (lambda: GemmEngine(**_GEMM, out_bits=2),
                            MacArray.Config(**_GEMM).latency + _REQUANT_LATENCY + 2, None,
                            True, gemm_engine_counts(MacArray.Config(**_GEMM).latency,
                                                     _REQUANT_LATENCY), None, False),
    # Free handlers: any handler that keeps the stream rules, one that ends its reply
    # before it has taken its whole request included. Mutant: the dispatcher before the fix.
    "dispatcher": (lambda: Dispatcher(_COMMANDS), 4, None, False, dispatcher_counts,
                   {"eager": lambda: EagerDispatcher(_COMMANDS)}),
}


#: The network core's parts at small sizes: one lane, memories of 2-4 words; with one
#: activation-outlier lane and a one-codebook SYQ decoder; two lanes, narrow memories and
#: the serial requantizer (per-channel side answers).
_NET = NetworkCore.Config(width=1, act_bits=2, weight_bits=2, max_k=4, data_depth=4,
                          weight_depth=2, param_depth=2, program_depth=2)
_NET_OPTIONS = replace(_NET, act_outlier_lanes=1, act_outlier_block_words=1, outlier_depth=2,
                       codebook_subgroups=1)
_NET_SERIAL = replace(_NET, width=2, data_depth=2, requantizer="serial", memories="narrow")
_NET_COPIES = replace(_NET, packed_depth=2, copies=True)
_NET_PREFETCH = replace(_NET, packed_depth=2, prefetch=True)

#: name → (the part's entry in ``PART_SPECS``, builder, mutants[, depth, default 4]):
#: ``withdrawn`` (the first sending port hides a beat), ``lost:<port>`` (the receiving port
#: says ready without taking: a transfer lost), ``phantom:<port>`` (a sending port offers a
#: beat that never was, and withdraws it), ``unwritten:<port>`` (a memory write dropped).
_NETWORK_PARTS = {
    "sequencer": ("sequencer", lambda: Sequencer(_NET), ("withdrawn", "lost:descriptor")),
    # a claimed LOAD and the op after it start beside the back
    "sequencer_prefetch": ("sequencer", lambda: Sequencer(_NET_PREFETCH),
                           ("withdrawn", "lost:descriptor")),
    "loader": ("loader", lambda: Loader(_NET), ("withdrawn", "lost:load")),
    "storer": ("storer", lambda: Storer(_NET), ("withdrawn",)),
    "beat_walk": ("beat_walk", lambda: BeatWalk(_NET), ("withdrawn",)),
    "beat_walk_options": ("beat_walk", lambda: BeatWalk(_NET_OPTIONS), ("withdrawn",)),
    # Three address stages (carrying the outlier block's address and the codebook tiles
    # too) put the first beat three cycles later: a withdrawn one is beyond a depth-4 base
    # case.
    "beat_walk_stages": ("beat_walk",
                         lambda: BeatWalk(replace(_NET_OPTIONS, walk_stages=3)),
                         ("withdrawn",), 7),
    "output_walk": ("output_walk", lambda: OutputWalk(_NET), ("withdrawn",)),
    "reducer": ("reducer", lambda: Reducer(_NET), ("withdrawn", "lost:beats")),
    "reducer_stage": ("staged_reducer", lambda: Reducer(replace(_NET, reducer_stage=True)),
                      ("withdrawn", "lost:beats")),
    "param_feed": ("param_feed", lambda: ParamFeed(_NET), ("withdrawn", "lost:words")),
    "write_back": ("write_back", lambda: WriteBack(_NET), ("unwritten:write",)),
    "copy_part": ("copy_part", lambda: CopyPart(_NET_COPIES), ("withdrawn", "lost:results")),
    "store_part": ("store_part", lambda: StorePart(_NET_PREFETCH),
                   ("withdrawn", "lost:results", "phantom:outputs")),
    "act_outlier_store": ("act_outlier_store", lambda: ActOutlierStore(_NET_OPTIONS),
                          ("withdrawn", "lost:results")),
    "table_part": ("table_part", lambda: TablePart(TablePart.Config(width=1, depth=4)),
                   ("withdrawn", "lost:results")),
    "codebook_path": ("codebook_path", lambda: CodebookPath(_NET_OPTIONS), ("withdrawn",)),
    "wide_memories": ("wide_memories", lambda: WideMemories(_NET, {}),
                      ("withdrawn", "lost:side")),
    # A narrow memory offers a word only after gathering its rows (10 cycles for a
    # descriptor): a withdrawn one is beyond a depth-4 base case, a phantom one is not.
    "narrow_memories": ("narrow_memories",
                        lambda: NarrowMemories(replace(_NET, memories="narrow"), {}),
                        ("phantom:descriptor", "lost:side")),
    "narrow_channels": ("narrow_memories",
                        lambda: NarrowMemories(_NET_SERIAL, {}, per_channel=True),
                        ("phantom:side_words", "lost:side")),
}


def _broken_part(part, fault):
    """``part`` with one of the faults of ``_NETWORK_PARTS``."""
    kind, _, port = fault.partition(":")
    if kind == "withdrawn":
        return WithdrawnStream(part)
    member = {"lost": "ready", "phantom": "valid", "unwritten": "en"}[kind]
    return ForcedOutput(part, (port, member), int(kind != "unwritten"))


def _part_proof(name, spec, build, faults, depth=4):
    """The stream rules and counts of a network part (``network_properties``), and the
    mutants that must fail them, proved to ``depth``."""
    environment, promises, pace = PART_SPECS[spec]
    def wrap(part):
        return PartProperties(part, environment=environment, promises=promises, pace=pace)
    return Proof(f"net_{name}", lambda: wrap(build()),
                 {fault.partition(":")[0]: (lambda fault=fault: wrap(_broken_part(build(),
                                                                               fault)))
                  for fault in faults},
                 depth=depth)


def _requant_proof(out_signed, *, at_queue, split_stages=0):
    """§3 on a one-column u2/s2 requantizer with 4-bit accumulators, parameters and shifts
    up to 5, against an input skewed by one: end to end (bounded), or at the output queue's
    write port (k-induction over the pipeline's latency and one cycle more), there also with
    ``split_stages`` (its 32-bit multipliers then in registered partial products)."""
    options = dict(cols=1, acc_width=4, out_bits=2, out_signed=out_signed,
                   split_stages=split_stages)
    latency = Requantizer.Config(**options).latency
    def wrapper(requantizer_class):
        return lambda: RequantizerProperties(requantizer_class(**options), param_bits=4,
                                             max_shift=5,
                                             latency=latency if at_queue else None)
    name = (f"requant_{'s' if out_signed else 'u'}2{'_datapath' if at_queue else ''}"
            f"{f'_split{split_stages}' if split_stages else ''}")
    if at_queue:
        return Proof(name, wrapper(Requantizer), {"skewed": wrapper(SkewedRequantizer)},
                     depth=latency + 1, slow=True)
    # The datapath proofs above cover §3 by k-induction and the queue's counting is proved
    # on its own: this end-to-end bounded form (66-363 s) is a cross-check.
    return Proof(name, wrapper(Requantizer), {"skewed": wrapper(SkewedRequantizer)},
                 depth=10, mode="bmc", slow=True, cross_check=True)


def _serial_requant_proof(out_signed, cols, per_channel):
    """§3 on a serial requantizer with 2-bit outputs (u2/s2) and 4-bit accumulators,
    parameters as :func:`_requant_proof` has them, against an input skewed by one;
    k-induction."""
    params = dict(cols=cols, acc_width=4, out_bits=2, out_signed=out_signed,
                  per_channel=per_channel)
    def wrapper(requantizer_class):
        return lambda: SerialRequantizerProperties(requantizer_class(**params),
                                                   per_channel=per_channel, param_bits=4,
                                                   max_shift=5)
    columns = "" if cols == 1 else f"_{cols}col"
    name = (f"serial_requant_{'s' if out_signed else 'u'}2{columns}"
            f"{'_per_channel' if per_channel else ''}")
    return Proof(name, wrapper(SerialRequantizer),
                 {"skewed": wrapper(SkewedSerialRequantizer)}, depth=3, slow=True)


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
    # Loads in batch order and the entries tiles decode with: bounded (the tables are a
    # memory); 8 cycles see a batch of loads and the tiles around it under any stalls.
    Proof("codebook_loads",
          lambda: CodebookLoadProperties(CodebookDecoder(**_STREAM_DECODER), _DECODER_CONFIG),
          {fault: (lambda fault=fault: CodebookLoadProperties(
              TamperedLoads(fault, **_STREAM_DECODER), _DECODER_CONFIG))
           for fault in TamperedLoads.FAULTS},
          depth=8, mode="bmc"),
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
    # One column; two with the vector's parameters in one beat, and with a beat per
    # channel (as the narrow network core feeds it).
    _requant_proof(True, at_queue=True, split_stages=2),
    *(_serial_requant_proof(out_signed, 1, False) for out_signed in (False, True)),
    *(_serial_requant_proof(out_signed, 2, per_channel) for out_signed, per_channel
      in ((False, False), (True, True))),
    # 2×2 signed 2-bit, dense: 6 cycles from a reduction's last beat to `acc`, so 12 cycles
    # see every reduction closed in the first six.
    # A cross-check of `mac_array_2x2_dense` (the same array at its queue, k-induction).
    Proof("mac_array_2x2",
          lambda: MacArrayProperties(MacArray(**_SMALL_ARRAY)),
          {"blind_lane": lambda: MacArrayProperties(BlindLaneArray(**_SMALL_ARRAY))},
          depth=12, mode="bmc", slow=True, cross_check=True),
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
    _array_proof("mac_array_2x2_dense", _SMALL_ARRAY, {"blind_lane": BlindLaneArray}),
    _array_proof("mac_array_2x2_split", _SPLIT_ARRAY, {"blind_lane": BlindLaneArray}),
    _array_proof("mac_array_2x2_outlier_split", _OUTLIER_SPLIT_ARRAY,
                 {fault: (lambda fault=fault, **p: TamperedArray(fault, **p))
                  for fault in ("act_outlier", "weight_outlier")}, slow=True),
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
    *(_part_proof(name, *spec) for name, spec in _NETWORK_PARTS.items()),
)


@dataclass(frozen=True)
class Run:
    """One run of ``make formal``: a proof, or one of its mutants, and what it found.

    Attributes
    ----------
    name : str
        The proof's name, with ``-<mutant>`` for a mutant (its build folder).
    proof : Proof
        The catalogue entry.
    mutant : str or None
        The mutant's name, ``None`` for the proof itself.
    result : ProofResult
        SymbiYosys' verdict, wall-clock and CPU seconds.
    """
    name: str
    proof: Proof
    mutant: str | None
    result: object

    @property
    def as_expected(self):
        """A proof passes, a mutant fails."""
        return self.result.passed == (self.mutant is None)

    @property
    def line(self):
        """The run's name, mode, depth, verdict, wall-clock and CPU seconds, and log."""
        result = self.result
        return (f"{self.name:40} {self.proof.mode:5} depth {self.proof.depth:3} "
                f"{result.status:7} {'ok' if self.as_expected else 'UNEXPECTED'} "
                f"{result.seconds:6.1f} s {result.cpu_seconds:6.1f} s CPU  {result.log}")


def run_all(build_dir, *, jobs=None, cpu_seconds=None):
    """Runs every proof of ``make formal`` (all but the cross-checks) and its mutants under
    ``build_dir``, ``jobs`` at a time (default: one per CPU; each is a SymbiYosys process);
    yields a :class:`Run` for each, in catalogue order.

    The longest runs start first, so that no long run starts last (longest processing time
    first): ``cpu_seconds`` maps run names to the CPU seconds of an earlier run; runs it
    does not name count as longer than all it names if slow, shorter if not.
    """
    build_dir = Path(build_dir)
    known = cpu_seconds or {}
    runs = []
    for proof in PROOFS:
        if proof.cross_check:
            continue
        runs.append((proof, proof.name, None, proof.wrapper))
        runs += [(proof, f"{proof.name}-{mutant}", mutant, build)
                 for mutant, build in proof.mutants.items()]

    def expected_length(item):
        proof, name, _mutant, _build = item
        return known.get(name, float("inf") if proof.slow else -1.0)

    def run(item):
        proof, name, mutant, build = item
        return Run(name, proof, mutant, prove(build(), build_dir / name, depth=proof.depth,
                                              mode=proof.mode))

    # Threads suffice: each run waits on its own solver process.
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = {id(item): pool.submit(run, item)
                   for item in sorted(runs, key=expected_length, reverse=True)}
        for item in runs:
            yield futures[id(item)].result()
