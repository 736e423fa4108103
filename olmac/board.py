"""Host side of a network board (docs/host_link.md §6): the command protocol of
:class:`hw.network_app.NetworkApp` over a :class:`olmac.host_link.SerialLink`.

``olmac board run`` loads a compiled network (a demo's or a user's integer program;
optionally), sends images and returns their logits, compared with the golden integer model
when asked (:func:`run_board`); ``olmac board build`` builds the board top
(:mod:`fpga.board`).
"""

import struct
from dataclasses import dataclass

import numpy as np
import torch

from olmac.spec import INFO_MAGIC, PROTOCOL_VERSION, Command, Status
from .host_link import SerialLink

__all__ = ["BoardInfo", "BoardError", "BoardClient", "encode_load", "load_requests",
           "encode_infer", "decode_infer", "parse_info", "run_board", "compare_with_golden",
           "demo_inputs", "MEMORIES"]

#: ``LOAD`` memory numbers by the names of ``CompiledNetwork.contents`` (``tables`` only
#: where the program has lookup tables).
MEMORIES = {"program": 0, "weights": 1, "params": 2, "tables": 4}


class BoardError(RuntimeError):
    """The board answered a command with an error status (``status``), or with a reply
    that does not fit the command."""

    def __init__(self, message, status=None, applied=None):
        super().__init__(message)
        self.status = status
        self.applied = applied


@dataclass(frozen=True)
class BoardInfo:
    """What ``INFO`` reports."""
    version: int
    width: int
    input_words: int
    output_words: int
    depths: dict
    word_bytes: dict

    @property
    def max_request(self):
        """The board's longest request (``NetworkApp.request_bytes``): one ``INFER``, or a
        ``LOAD`` of one word of its widest memory where that is longer."""
        return max(1 + self.input_words * self.width * 2, 4 + max(self.word_bytes.values()))

    def check(self, compiled):
        """Raise :class:`BoardError` unless ``compiled`` can be loaded into this board
        (the table depth too: it sets the width of the ops' table offsets)."""
        wanted = dict(width=compiled.width, input_words=compiled.input_words,
                      output_words=compiled.output_words,
                      depths={**compiled.config.depths, "tables": compiled.config.table_depth})
        have = dict(width=self.width, input_words=self.input_words,
                    output_words=self.output_words, depths=self.depths)
        if wanted != have:
            raise BoardError(f"the compiled network ({wanted}) does not fit the board ({have})")


def parse_info(reply: bytes) -> BoardInfo:
    """Decode an ``INFO`` reply (status byte included)."""
    if len(reply) < 4 or reply[0] != Status.OK or reply[1:3] != INFO_MAGIC:
        raise BoardError(f"not an INFO reply: {reply.hex(' ')}")
    if reply[3] != PROTOCOL_VERSION:
        raise BoardError(f"protocol version {reply[3]}, this host speaks {PROTOCOL_VERSION}")
    if len(reply) != 23:
        raise BoardError(f"not an INFO reply of protocol version {PROTOCOL_VERSION}: "
                         f"{reply.hex(' ')}")
    (version, width, inputs, outputs, program, weights, params, data, *sizes, tables,
     table_bytes) = struct.unpack("<BBHHHHHHBBBHB", reply[3:])
    return BoardInfo(version, width, inputs, outputs,
                     {"program": program, "weights": weights, "params": params, "data": data,
                      "tables": tables},
                     dict(zip(("program", "weights", "params", "tables"), (*sizes, table_bytes))))


def encode_load(memory: str, address: int, words, word_bytes: int) -> bytes:
    """A ``LOAD`` request writing ``words`` from ``address`` of ``memory``."""
    body = b"".join(int(word).to_bytes(word_bytes, "little") for word in words)
    return bytes([Command.LOAD, MEMORIES[memory]]) + address.to_bytes(2, "little") + body


def load_requests(compiled, info: BoardInfo, max_payload: int):
    """``LOAD`` requests that write every memory image of ``compiled`` (its lookup tables
    too, where it has them), each at most ``max_payload`` bytes, then ``RESTART``; yields
    ``(request, words)``."""
    for memory in (name for name in MEMORIES if name in compiled.contents):
        words = list(compiled.contents[memory])
        size = info.word_bytes[memory]
        per_frame = max(1, (max_payload - 4) // size)
        for start in range(0, len(words), per_frame):
            chunk = words[start:start + per_frame]
            yield encode_load(memory, start, chunk, size), len(chunk)
    yield bytes([Command.RESTART]), 0


def encode_infer(compiled, pixels: torch.Tensor) -> bytes:
    """The ``INFER`` request of one image of integer pixels."""
    slots = compiled.pack_inputs(pixels[None])[0] & 0xFFFF
    return bytes([Command.INFER]) + slots.astype("<u2").tobytes()


def decode_infer(compiled, reply: bytes) -> torch.Tensor:
    """The logits (``F`` int64) of an ``INFER`` reply (status byte included)."""
    _check_status(reply, "INFER")
    expected = 1 + compiled.output_words * compiled.width * 2
    if len(reply) != expected:
        raise BoardError(f"INFER reply of {len(reply)} bytes, expected {expected}")
    slots = np.frombuffer(reply[1:], dtype="<u2").astype(np.int64)
    return compiled.unpack_outputs(slots.reshape(1, compiled.output_words, compiled.width))[0]


def _check_status(reply: bytes, command: str):
    if not reply:
        raise BoardError(f"empty reply to {command}")
    if reply[0] != Status.OK:
        try:
            name = Status(reply[0]).name
        except ValueError:
            name = f"0x{reply[0]:02x}"
        applied = int.from_bytes(reply[1:3], "little") if len(reply) >= 3 else None
        raise BoardError(f"{command} failed: {name}" + (f" after {applied} words"
                                                        if applied is not None else ""),
                         reply[0], applied)


class BoardClient(SerialLink):
    """A :class:`SerialLink` that speaks the network board's commands.

    ``max_payload`` is the board's longest request (``NetworkApp.request_bytes``; by
    default ``BoardInfo.max_request`` of the connected board, learnt from ``INFO``).
    """

    def __init__(self, port, baudrate=115200, *, timeout=5.0, max_payload=None):
        super().__init__(port, baudrate, timeout=timeout)
        self._board_max_payload = max_payload

    def info(self) -> BoardInfo:
        """Ask the board for its configuration."""
        return parse_info(self.request(bytes([Command.INFO])))

    def load(self, compiled) -> int:
        """Write every memory image of ``compiled`` and restart the program; returns the
        words written. Raises :class:`BoardError` if the board does not fit ``compiled``
        or refuses a write."""
        info = self.info()
        info.check(compiled)
        max_payload = self._board_max_payload or info.max_request
        written = 0
        for request, words in load_requests(compiled, info, max_payload):
            reply = self.request(request)
            _check_status(reply, "LOAD" if request[0] == Command.LOAD else "RESTART")
            if request[0] == Command.LOAD:
                count = int.from_bytes(reply[1:3], "little")
                if count != words:
                    raise BoardError(f"LOAD wrote {count} of {words} words")
                written += count
        return written

    def infer(self, compiled, pixels: torch.Tensor) -> torch.Tensor:
        """Run one image of integer pixels; returns its logits."""
        return decode_infer(compiled, self.request(encode_infer(compiled, pixels)))


def run_board(port, program, pixels: torch.Tensor, *, width=None, baud=115200, load=False,
              timeout=5.0) -> torch.Tensor:
    """``olmac board run``: the logits (``N × F`` int64) of ``program`` (an
    :class:`olmac.golden.program.IntegerProgram`) on the integer ``pixels`` (``N`` images)
    on the board at ``port``, compiled for ``width`` (default: the board's, from ``INFO``)
    and loaded into the board first if ``load`` (otherwise the board runs what it holds,
    which must have been built or loaded from the same program).

    Raises
    ------
    BoardError
        If the board does not fit the compiled program or refuses a command.
    olmac.compiler.CompileError
        If the program does not run on the network core at that width.
    olmac.host_link.FrameError, olmac.host_link.LinkError, TimeoutError, OSError
        As :class:`BoardClient` raises.
    """
    from olmac.compiler import compile_for_board
    with BoardClient(port, baud, timeout=timeout) as board:
        info = board.info()
        print(f"board: width {info.width}, {info.input_words} input words, "
              f"{info.output_words} output words, protocol v{info.version}")
        compiled = compile_for_board(program, width=width or info.width)
        info.check(compiled)
        if load:
            print(f"loaded {board.load(compiled)} words")
        return torch.stack([board.infer(compiled, image) for image in pixels])


def compare_with_golden(program, pixels: torch.Tensor, logits: torch.Tensor,
                        labels=None) -> int:
    """Compare every image's ``logits`` with the golden integer model of ``program`` on
    ``pixels``; prints each mismatch and a summary (with the accuracy when ``labels`` are
    given) and returns the number of mismatching images."""
    from olmac.golden.program import run_integer
    expected = run_integer(program, pixels)
    mismatches = 0
    for index, (got, want) in enumerate(zip(logits, expected)):
        if not torch.equal(got, want):
            mismatches += 1
            print(f"image {index}: board {got.tolist()} != golden {want.tolist()}")
    summary = f"{len(pixels)} images: {mismatches} mismatches against the golden integer model"
    if labels is not None:
        correct = int((logits.argmax(1) == torch.as_tensor(labels)[:len(logits)]).sum())
        summary += f", accuracy {correct / max(len(pixels), 1):.1%}"
    print(summary)
    return mismatches


def demo_inputs(model="cnn", *, images=20):
    """The demo ``model``'s integer program (:func:`fpga.board.demo_network`), its first
    ``images`` test images as integer pixels and their labels."""
    from olmac.fpga.board import demo_network
    from olmac.golden.program import to_pixels
    program, _compiled, data = demo_network(model)
    return program, to_pixels(data.images[:images]), data.labels[:images]
