"""Host side of the framed link (docs/host_link.md): frame codec, CRC and a serial port.

Pure Python: nothing here imports the hardware, so the host-side reading of the frame
format is independent of :mod:`hw.host_link`, and both take the constants from :mod:`olmac.spec`.
``pyserial`` is imported only when a :class:`SerialLink` is opened.

>>> encode_frame(b"hi").hex(" ")
'a5 02 00 68 69 a4 16'
>>> decode_reply(b"\\x00hi"), FrameDecoder().feed(encode_reply(b"hi"))
(b'hi', [b'\\x00hi'])
"""

import binascii
import time

from olmac.spec import ERROR_KIND, MAX_LENGTH, REPLY_KIND, SYNC, ErrorCode, check_int

__all__ = [
    "crc16_ccitt", "encode_frame", "encode_reply", "encode_error", "decode_frame",
    "decode_reply", "FrameDecoder", "FrameError", "LinkError", "SerialLink",
]

_DESCRIPTIONS = {
    ErrorCode.CRC: "frame with a bad CRC",
    ErrorCode.LENGTH: "frame length 0 or over the device's maximum",
    ErrorCode.TRUNCATED: "frame truncated (inter-byte timeout)",
    ErrorCode.FRAMING: "UART framing error",
    ErrorCode.GARBAGE: "bytes outside a frame",
    ErrorCode.BUSY: "frame arrived while the previous request was still being processed",
    ErrorCode.REPLY_OVERFLOW: "the application's reply overflowed the reply memory",
}


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final
    XOR. Pass a previous result as ``crc`` to continue over more data.

    >>> hex(crc16_ccitt(b"123456789"))
    '0x29b1'
    """
    return binascii.crc_hqx(data, crc)


def encode_frame(payload: bytes) -> bytes:
    """``SYNC``, 16-bit little-endian length, ``payload``, then the CRC of length and
    payload, little-endian.

    Raises
    ------
    ValueError
        If ``payload`` is empty or longer than :data:`MAX_LENGTH`.
    """
    payload = bytes(payload)
    if not 1 <= len(payload) <= MAX_LENGTH:
        raise ValueError(f"Payload length must be in 1..{MAX_LENGTH}, not {len(payload)}")
    body = len(payload).to_bytes(2, "little") + payload
    return bytes([SYNC]) + body + crc16_ccitt(body).to_bytes(2, "little")


def encode_reply(data: bytes) -> bytes:
    """The frame a device sends for the application reply ``data``."""
    return encode_frame(bytes([REPLY_KIND]) + bytes(data))


def encode_error(code: int) -> bytes:
    """The frame a device sends to report error ``code``."""
    return encode_frame(bytes([ERROR_KIND, int(code)]))


class FrameError(ValueError):
    """A frame from the device could not be decoded (bad CRC, bad length, bad kind)."""


class LinkError(Exception):
    """The device answered with an error frame; ``code`` is an :class:`ErrorCode` (or the
    raw byte if the code is unknown). The request it answers was not applied."""

    def __init__(self, code: int):
        try:
            code = ErrorCode(code)
        except ValueError:
            description = "unknown error"
            name = f"0x{code:02x}"
        else:
            description = _DESCRIPTIONS[code]
            name = code.name
        self.code = code
        super().__init__(f"device reported {name}: {description}")


def decode_frame(frame: bytes, *, max_payload: int = MAX_LENGTH) -> bytes:
    """The payload of one complete ``frame``.

    Raises
    ------
    FrameError
        If the frame does not start with ``SYNC``, its length field is 0, over
        ``max_payload`` or disagrees with the frame's size, or the CRC does not match.
    """
    frame = bytes(frame)
    if len(frame) < 6 or frame[0] != SYNC:
        raise FrameError(f"Not a frame: {frame[:8].hex(' ')}")
    length = int.from_bytes(frame[1:3], "little")
    if not 1 <= length <= max_payload:
        raise FrameError(f"Frame length must be in 1..{max_payload}, not {length}")
    if len(frame) != length + 5:
        raise FrameError(f"Frame of length {length} must be {length + 5} bytes, "
                         f"not {len(frame)}")
    expected = crc16_ccitt(frame[1:3 + length])
    received = int.from_bytes(frame[3 + length:], "little")
    if received != expected:
        raise FrameError(f"Frame CRC must be 0x{expected:04x}, not 0x{received:04x}")
    return frame[3:3 + length]


def decode_reply(payload: bytes) -> bytes:
    """The application's reply in the payload of a frame from the device.

    Raises
    ------
    LinkError
        If the frame is an error frame.
    FrameError
        If the payload starts with an unknown kind byte or an error frame is malformed.
    """
    payload = bytes(payload)
    if payload[:1] == bytes([REPLY_KIND]):
        return payload[1:]
    if payload[:1] == bytes([ERROR_KIND]):
        if len(payload) != 2:
            raise FrameError(f"Error frame payload must be 2 bytes, not {payload.hex(' ')}")
        raise LinkError(payload[1])
    raise FrameError(f"Frame kind must be 0x{REPLY_KIND:02x} or 0x{ERROR_KIND:02x}, "
                     f"not {payload[:1].hex() or 'empty'}")


class FrameDecoder:
    """Incremental decoder: :meth:`feed` it bytes as they arrive, in any pieces; it
    returns the payloads of the frames they complete.

    Bytes before a sync byte are skipped and counted in :attr:`skipped`. A damaged frame
    (bad length or CRC) raises :class:`FrameError` from :meth:`feed` once it is complete;
    the decoder has then dropped only its sync byte and resumes the search for a frame
    right after it, so a good frame hidden in the damaged one's bytes is still found by
    the next call (``feed(b"")`` carries on without new bytes). Frames completed before
    the damaged one in the same call are returned by the next call.

    Parameters
    ----------
    max_payload : int
        Longest payload accepted, 1..65535.

    Raises
    ------
    TypeError
        If ``max_payload`` is not an integer in 1..65535.
    """

    def __init__(self, max_payload: int = MAX_LENGTH):
        self._max_payload = check_int("Maximum payload length", max_payload, (1, MAX_LENGTH))
        self._buffer = bytearray()
        self._ready = []
        #: Bytes skipped while searching for a sync byte.
        self.skipped = 0

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; returns the payloads of all frames now complete, oldest first.

        Raises
        ------
        FrameError
            At a damaged frame (see the class description).
        """
        self._buffer += data
        while True:
            start = self._buffer.find(SYNC)
            if start < 0:
                self.skipped += len(self._buffer)
                self._buffer.clear()
                break
            self.skipped += start
            del self._buffer[:start]
            if len(self._buffer) < 3:
                break
            length = int.from_bytes(self._buffer[1:3], "little")
            if not 1 <= length <= self._max_payload:
                del self._buffer[:1]
                raise FrameError(f"Frame length must be in 1..{self._max_payload}, "
                                 f"not {length}")
            if len(self._buffer) < length + 5:
                break
            frame = bytes(self._buffer[:length + 5])
            try:
                payload = decode_frame(frame, max_payload=self._max_payload)
            except FrameError:
                del self._buffer[:1]
                raise
            del self._buffer[:length + 5]
            self._ready.append(payload)
        ready, self._ready = self._ready, []
        return ready


#: Device reports after which :meth:`SerialLink.request` sends its frame again: the frame
#: was damaged, cut or crowded out on the way, so the device did not apply it (docs/host_link.md
#: §4). ``REPLY_OVERFLOW`` is not among them: the same request would overflow again.
RETRY_CODES = frozenset({ErrorCode.CRC, ErrorCode.LENGTH, ErrorCode.TRUNCATED,
                         ErrorCode.FRAMING, ErrorCode.GARBAGE, ErrorCode.BUSY})


class SerialLink:
    """Request/reply over a serial port: send one frame, wait for the device's answer.

    The device buffers one request at a time, so each :meth:`request` waits for its reply
    before returning. ``GARBAGE`` reports that arrive first (stray bytes before a frame
    are reported separately from the frame's own answer) are skipped; if no other answer
    follows, the ``GARBAGE`` report is raised at the timeout.

    A request whose answer times out, or is one of :data:`RETRY_CODES`, is sent again, up to
    ``attempts`` times in all; :attr:`last_attempts` says what each attempt of the latest
    request met, and the error raised after the last one lists them. A reply lost on the
    way back (timeout) means the device may have applied the request: commands are sent
    again only because every board command is idempotent (docs/host_link.md §6).

    Parameters
    ----------
    port : str
        A serial device (``/dev/ttyUSB1``) or a pyserial URL (``loop://``,
        ``socket://host:port``).
    baudrate : int
        Bits per second; the device's ``f_clk / divisor``.
    timeout : float
        Seconds to wait for a whole reply.
    max_payload : int
        Longest reply frame payload accepted.
    attempts : int
        Sends of one request at most, 1..16.

    Raises
    ------
    TypeError
        If ``attempts`` is not an integer in 1..16.
    serial.SerialException
        If the port cannot be opened.
    """

    def __init__(self, port: str, baudrate: int = 115200, *, timeout: float = 1.0,
                 max_payload: int = MAX_LENGTH, attempts: int = 3):
        import serial  # only the host link needs pyserial

        self._attempts = check_int("Attempts", attempts, (1, 16))
        self._port_name = port
        self._timeout = timeout
        self._max_payload = max_payload
        self.last_attempts = []
        self._serial = serial.serial_for_url(port, baudrate=baudrate, timeout=0.01)

    @property
    def port(self) -> str:
        """The port's name."""
        return self._port_name

    def close(self):
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def send(self, payload: bytes):
        """Send one request frame (stale input from earlier exchanges is dropped first)."""
        self._serial.reset_input_buffer()
        self._serial.write(encode_frame(payload))
        self._serial.flush()

    def receive(self) -> bytes:
        """Wait for the next answer and return the application's reply.

        Raises
        ------
        LinkError
            If the device answers with an error frame.
        TimeoutError
            If no answer arrives within the timeout (the message names the port).
        """
        decoder = FrameDecoder(self._max_payload)
        garbage = None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            chunk = self._serial.read(max(1, self._serial.in_waiting))
            try:
                payloads = decoder.feed(chunk)
            except FrameError:
                continue  # a frame damaged on the way back: keep looking
            for payload in payloads:
                try:
                    return decode_reply(payload)
                except LinkError as error:
                    if error.code != ErrorCode.GARBAGE:
                        raise
                    garbage = error
        if garbage is not None:
            raise garbage
        raise TimeoutError(f"No reply from {self._port_name} within {self._timeout} s")

    def request(self, payload: bytes) -> bytes:
        """Send ``payload`` and return the application's reply (see :meth:`receive`),
        sending it again after a timeout or a retryable error report.

        Raises
        ------
        LinkError, TimeoutError
            As :meth:`receive` raises them, from the last attempt, when every attempt failed
            or an error is not retryable; the message ends with what each attempt met.
        """
        self.last_attempts = []
        while True:
            self.send(payload)
            try:
                reply = self.receive()
            except (LinkError, TimeoutError) as error:
                retry = isinstance(error, TimeoutError) or error.code in RETRY_CODES
                self.last_attempts.append(
                    "timeout" if isinstance(error, TimeoutError) else getattr(
                        error.code, "name", str(error.code)))
                if not retry or len(self.last_attempts) == self._attempts:
                    error.args = (f"{error.args[0]} ({len(self.last_attempts)} "
                                  f"attempt{'s' if len(self.last_attempts) > 1 else ''}: "
                                  f"{', '.join(self.last_attempts)})",)
                    raise
            else:
                self.last_attempts.append("ok")
                return reply
