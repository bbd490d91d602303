"""gRPC's transport: HTTP/2 over cleartext TCP (h2c, prior knowledge), unary calls only, as an
``asyncio.Protocol`` on the server's event loop.

Why not grpc.aio: its completion queue hands the loop one call at a time (one ``request_call`` at a
time, four queue events and two tasks per call), which cost more server CPU per call than the whole
inference. Here a connection's bytes are parsed where they arrive, each complete call is one task, and
its answer is one ``transport.write`` when it fits the peer's windows.

What a connection does (RFC 9113; the gRPC over HTTP/2 protocol):

- The client's preface, then SETTINGS both ways (ours: ``MAX_CONCURRENT_STREAMS``, a large
  ``INITIAL_WINDOW_SIZE``, ``MAX_FRAME_SIZE``, ``MAX_HEADER_LIST_SIZE``) and a connection WINDOW_UPDATE;
  PING is answered; PRIORITY and unknown frame types are ignored; PADDED and PRIORITY flags are honoured.
- Header blocks (HEADERS + CONTINUATION) are decoded by ``hpack``'s Decoder, whose dynamic table is the
  client's to size. Answers never use the dynamic table: their blocks are constant bytes or literals.
- Flow control both ways: received DATA is acknowledged as it is taken in (the message limit bounds what
  a stream may send); answers respect the peer's connection and stream windows, its
  ``INITIAL_WINDOW_SIZE`` changes and ``MAX_FRAME_SIZE``, and wait for WINDOW_UPDATE; while the transport
  asks to pause writing, nothing more is read and queued DATA waits.
- RST_STREAM from the client cancels that call; a client's GOAWAY lets the open calls finish, then the
  connection closes. ``GrpcServer.stop`` sends GOAWAY with the last stream taken, lets calls finish
  within the grace period, then closes. Protocol errors end the connection with GOAWAY and their code.
- gRPC: ``POST``, ``content-type: application/grpc[+proto]`` (otherwise HTTP 415), ``:path`` must be a
  route (otherwise UNIMPLEMENTED), exactly one length-prefixed message, ``grpc-encoding``
  identity/gzip/deflate, ``grpc-timeout`` as the call's deadline, the other headers as metadata.
  Answers: HEADERS, DATA, trailers (``grpc-status``, percent-encoded ``grpc-message``); errors as
  trailers-only answers. A route raises :class:`GrpcError` for a status; anything else it raises is
  logged and the client gets INTERNAL with the exception's type only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote

import hpack
from hpack.exceptions import HPACKError, OversizedHeaderListError

from inferd.core.errors import InvalidInputError, PayloadTooLargeError
from inferd.http.compression import ENCODINGS, decompress
from inferd.http.wire import BodyLimit

logger = logging.getLogger("inferd.grpc")


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (the ``grpc-status`` trailer)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """Raised by a route: the call ends with ``status``, ``message`` and extra trailing metadata."""

    def __init__(self, status: GrpcStatus, message: str, trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.trailers = trailers


@dataclass(slots=True)
class Call:
    """What a route knows of its call besides the request message."""

    method: str  # the :path, /<service>/<RPC>
    metadata: list[tuple[str, str]]
    deadline: float | None  # loop.time() at which the client gives up; None: no deadline
    loop: asyncio.AbstractEventLoop

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.loop.time()


# A route: the request message (decompressed) and its call → the response message.
Route = Callable[[bytes, Call], Awaitable[bytes]]


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag(enum.IntFlag):
    END_STREAM = 0x1  # ACK on SETTINGS and PING
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


# Plain ints for the per-frame tests: an IntFlag operand makes every ``&`` build an IntFlag.
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = (
    int(f) for f in (Flag.END_STREAM, Flag.END_HEADERS, Flag.PADDED, Flag.PRIORITY)
)
_END_TRAILERS = _END_STREAM | _END_HEADERS
ACK = _END_STREAM


class H2Error(enum.IntEnum):
    """HTTP/2 error codes (RST_STREAM, GOAWAY)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1

# Ours. The windows are large so that a request (up to the message limit) arrives without a round trip
# per 64 KiB; what a client can make us hold is bounded by the streams times the message limit.
MAX_CONCURRENT_STREAMS = 100
RECEIVE_WINDOW = 1 << 24
RECEIVE_FRAME_SIZE = 1 << 20
MAX_HEADER_LIST_SIZE = 16_384
MAX_HEADER_BLOCK = 1 << 16  # compressed bytes over HEADERS + CONTINUATION

_FRAME_HEADER = struct.Struct(">BHBBL")  # 24-bit length as 8 + 16 bits, type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_MESSAGE_PREFIX = struct.Struct(">BL")  # compressed flag, length
_STREAM_MASK = 0x7FFFFFFF


def _frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


def frame(ftype: FrameType, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _frame_header(len(payload), ftype, flags, stream_id) + payload


# -- HPACK for answers: never the dynamic table (RFC 7541 6.1 indexed, 6.2.2 literal without indexing) --


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(value: bytes) -> bytes:
    return _hpack_int(len(value), 7, 0) + value


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a literal name."""
    return b"\x00" + _hpack_string(name) + _hpack_string(value)


def _literal_indexed_name(index: int, value: bytes) -> bytes:
    return _hpack_int(index, 4, 0) + _hpack_string(value)


_STATUS_NAME_INDEX = 8  # static table: ":status"
_CONTENT_TYPE_INDEX = 31  # static table: "content-type"
RESPONSE_HEADERS = b"\x88" + _literal_indexed_name(_CONTENT_TYPE_INDEX, b"application/grpc")  # :status 200
OK_TRAILERS = literal(b"grpc-status", b"0")
_ENCODINGS = ("identity", *ENCODINGS)
_ACCEPT_ENCODING = ",".join(_ENCODINGS)
# grpc-message: percent-encode what is not printable ASCII, and '%' itself.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_TIMEOUT_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that are the transport's, not the call's metadata.
_NOT_METADATA = frozenset(
    {b"content-type", b"te", b"grpc-encoding", b"grpc-accept-encoding", b"grpc-timeout"}
)


def error_block(status: GrpcStatus, message: str, trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A trailers-only answer's header block."""
    parts = [
        RESPONSE_HEADERS,
        literal(b"grpc-status", b"%d" % status),
        literal(b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode("ascii")),
    ]
    parts.extend(literal(name.encode("ascii"), value.encode("ascii")) for name, value in trailers)
    return b"".join(parts)


def parse_timeout(value: str) -> float:
    """``grpc-timeout`` in seconds; ValueError when malformed."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise ValueError(value)
    return int(match.group(1)) * _TIMEOUT_UNIT_S[match.group(2)]


class _ConnectionError(Exception):
    def __init__(self, code: H2Error, message: str) -> None:
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    def __init__(self, code: H2Error) -> None:
        super().__init__(code.name)
        self.code = code


@dataclass(slots=True, eq=False)
class _Stream:
    id: int
    send_window: int
    recv_window: int = RECEIVE_WINDOW
    route: Route | None = None
    call: Call | None = None
    encoding: str = "identity"
    body: bytearray = field(default_factory=bytearray)
    declared: int = -1  # the message's length, once its prefix is in
    ended: bool = False  # the client's END_STREAM arrived
    task: asyncio.Task[None] | None = None
    pending: memoryview | None = None  # DATA waiting for window
    trailers: bytes = b""


class GrpcServer:
    """Listens, owns the connections, and stops them gracefully."""

    def __init__(self, routes: dict[str, Route], *, limit: BodyLimit) -> None:
        self._routes = {path.encode("ascii"): route for path, route in routes.items()}
        self.limit = limit
        self._server: asyncio.Server | None = None
        self._connections: set[Http2Connection] = set()

    def route(self, path: bytes) -> Route | None:
        return self._routes.get(path)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind and listen; the bound port. OSError when the address is taken (unless every process
        that shares it passed ``reuse_port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Http2Connection(self), host, port, reuse_port=reuse_port, backlog=2048
        )
        return int(self._server.sockets[0].getsockname()[1])

    def track(self, connection: Http2Connection, open_: bool) -> None:
        if open_:
            self._connections.add(connection)
        else:
            self._connections.discard(connection)

    async def stop(self, grace_s: float | None) -> None:
        """GOAWAY to every connection, up to ``grace_s`` for their calls to finish, then close them."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.go_away()
        waiting = [c.closed for c in connections if not c.closed.done()]
        if waiting and grace_s:
            await asyncio.wait(waiting, timeout=grace_s)
        for connection in connections:
            if not connection.closed.done():
                connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class Http2Connection(asyncio.Protocol):
    """One client connection: frames in, calls out as tasks, answers back."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._preface = False  # the client's preface arrived
        self._settled = False  # its first SETTINGS arrived
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self._last_block = (
            b""  # the last header block if only indexed fields: decoding it again changes nothing
        )
        self._last_headers: list[tuple[bytes, bytes]] = []
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, HEADERS flags, block so far
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._going_away = False  # either side sent GOAWAY: no new streams, close when the last one ends
        self._recv_unacked = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._blocked: list[_Stream] = []  # streams with DATA waiting for window or for the transport
        self._paused = False
        self._handlers: dict[int, Callable[[int, int, memoryview], None]] = {
            FrameType.DATA: self._on_data,
            FrameType.HEADERS: self._on_headers,
            FrameType.PRIORITY: self._on_priority,
            FrameType.RST_STREAM: self._on_rst_stream,
            FrameType.SETTINGS: self._on_settings,
            FrameType.PUSH_PROMISE: self._on_push_promise,
            FrameType.PING: self._on_ping,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.WINDOW_UPDATE: self._on_window_update,
            FrameType.CONTINUATION: self._on_continuation,
        }

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self._server.track(self, True)
        settings = b"".join(
            _SETTING.pack(setting, value)
            for setting, value in (
                (Setting.MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (Setting.INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
                (Setting.MAX_FRAME_SIZE, RECEIVE_FRAME_SIZE),
                (Setting.MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
            )
        )
        self._write(
            frame(FrameType.SETTINGS, 0, 0, settings)
            + frame(FrameType.WINDOW_UPDATE, 0, 0, _U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()
        self._blocked.clear()
        self._server.track(self, False)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # A client that does not read its answers gets no more calls run until it does.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._flush()

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        pos = 0
        try:
            if not self._preface:
                if len(data) < len(PREFACE):
                    if not PREFACE.startswith(data):
                        raise _ConnectionError(H2Error.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                    self._buffer = data
                    return
                if not data.startswith(PREFACE):
                    raise _ConnectionError(H2Error.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                self._preface = True
                pos = len(PREFACE)
            view = memoryview(data)
            end = len(data)
            unpack = _FRAME_HEADER.unpack_from
            while end - pos >= 9:
                high, low, ftype, flags, stream_id = unpack(data, pos)
                length = high << 16 | low
                if length > RECEIVE_FRAME_SIZE:
                    raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                payload = view[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._on_frame(ftype, flags, stream_id & _STREAM_MASK, payload)
                if self._transport is None or self._transport.is_closing():
                    self._buffer = b""
                    return
            self._buffer = data[pos:] if pos < end else b""
        except _ConnectionError as exc:
            logger.debug("gRPC connection error %s: %s", exc.code.name, exc)
            self._fail(exc.code, str(exc))

    # -- frames in ----------------------------------------------------------------------------------

    def _on_frame(self, ftype: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is not None and (
            ftype != FrameType.CONTINUATION or stream_id != self._continuation[0]
        ):
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "a header block was interrupted")
        if not self._settled:
            if ftype != FrameType.SETTINGS or flags & ACK:
                raise _ConnectionError(H2Error.PROTOCOL_ERROR, "the preface must be followed by SETTINGS")
            self._settled = True
        handler = self._handlers.get(ftype)
        if handler is None:
            return  # unknown frame types are ignored (RFC 9113 5.5)
        try:
            handler(flags, stream_id, payload)
        except _StreamError as exc:
            self._reset(stream_id, exc.code)

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        # The connection window counts every DATA byte, padding and ignored streams included.
        self._recv_unacked += size
        if self._recv_unacked > RECEIVE_WINDOW:
            raise _ConnectionError(H2Error.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self._recv_unacked >= RECEIVE_WINDOW // 2:
            self._write(frame(FrameType.WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked)))
            self._recv_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise _ConnectionError(H2Error.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream already answered or reset: what was in flight is dropped
        if stream.ended:
            raise _StreamError(H2Error.STREAM_CLOSED)
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise _StreamError(H2Error.FLOW_CONTROL_ERROR)
        data = _unpad(flags, payload)
        if stream.route is not None:  # not already answered
            self._take(stream, data)
        if flags & _END_STREAM:
            stream.ended = True
            self._dispatch(stream)
        elif stream.recv_window < RECEIVE_WINDOW // 2 and stream.route is not None:
            self._write(
                frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(RECEIVE_WINDOW - stream.recv_window))
            )
            stream.recv_window = RECEIVE_WINDOW

    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = _unpad(flags, payload)
        if flags & _PRIORITY:
            if len(block) < 5:
                raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(H2Error.ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, flags, bytes(block))
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        _, header_flags, block = self._continuation
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(H2Error.ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, header_flags, bytes(block))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        if block == self._last_block:
            return self._last_headers
        try:
            # raw=True: names and values stay bytes
            headers = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        except OversizedHeaderListError:
            raise _ConnectionError(H2Error.ENHANCE_YOUR_CALM, "a header list over the limit") from None
        except HPACKError as exc:
            raise _ConnectionError(H2Error.COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
        # Only indexed fields of one byte each (0x81-0xfe): the table did not change, the next equal
        # block decodes to the same list.
        if block and min(block) > 0x80 and max(block) < 0xFF:
            self._last_block, self._last_headers = block, headers
        else:
            self._last_block = b""
        return headers

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)  # always: the decoder's table must follow the client's
        end_stream = bool(flags & _END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if stream.ended or not end_stream:
                raise _StreamError(H2Error.PROTOCOL_ERROR)
            stream.ended = True
            self._dispatch(stream)
            return
        if stream_id <= self._last_stream:
            return  # a stream already answered or reset
        if stream_id % 2 == 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "a client stream with an even id")
        self._last_stream = stream_id
        if self._going_away:
            return
        if len(self._streams) >= MAX_CONCURRENT_STREAMS:
            raise _StreamError(H2Error.REFUSED_STREAM)
        stream = _Stream(stream_id, self._peer_initial_window, ended=end_stream)
        self._streams[stream_id] = stream
        self._start_call(stream, headers)
        if end_stream:
            self._dispatch(stream)

    def _on_priority(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _StreamError(H2Error.FRAME_SIZE_ERROR)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id > self._last_stream:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._close_stream(stream)
            if stream.task is not None:
                stream.task.cancel()

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        for offset in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, offset)
            if setting == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(H2Error.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(H2Error.FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif setting == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise _ConnectionError(H2Error.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif setting == Setting.ENABLE_PUSH and value > 1:
                raise _ConnectionError(H2Error.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE sizes a table our answers never use; the rest bind a server to nothing.
        self._write(frame(FrameType.SETTINGS, ACK, 0))
        self._flush()

    def _on_push_promise(self, flags: int, stream_id: int, payload: memoryview) -> None:
        raise _ConnectionError(H2Error.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self._write(frame(FrameType.PING, ACK, 0, bytes(payload)))

    def _on_goaway(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise _ConnectionError(H2Error.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "GOAWAY too short")
        self._going_away = True
        self._close_if_idle()

    def _on_window_update(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise _ConnectionError(H2Error.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & _STREAM_MASK
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(H2Error.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(H2Error.FLOW_CONTROL_ERROR, "the connection window over 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                if stream_id > self._last_stream:
                    raise _ConnectionError(H2Error.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return
            if increment == 0:
                raise _StreamError(H2Error.PROTOCOL_ERROR)
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise _StreamError(H2Error.FLOW_CONTROL_ERROR)
        if self._blocked:
            self._flush()

    # -- calls --------------------------------------------------------------------------------------

    def _start_call(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        """Check a new stream's headers; it either gets its route or is answered at once."""
        method = path = content_type = None
        encoding = timeout = None
        metadata: list[tuple[str, str]] = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
            elif name == b"content-type":
                content_type = value
            elif name not in _NOT_METADATA:
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
            elif name == b"grpc-encoding":
                encoding = value.decode("latin-1")
            elif name == b"grpc-timeout":
                timeout = value.decode("latin-1")
        if method is None or path is None:
            raise _StreamError(H2Error.PROTOCOL_ERROR)
        if method != b"POST":
            self._answer_early(stream, _HTTP_STATUS_405)
            return
        if content_type is None or not (
            content_type == b"application/grpc"
            or content_type.startswith((b"application/grpc+", b"application/grpc;"))
        ):
            self._answer_early(stream, _HTTP_STATUS_415)
            return
        route = self._server.route(path)
        if route is None:
            self._fail_call(stream, GrpcStatus.UNIMPLEMENTED, f"no method {path.decode('latin-1')!r} here")
            return
        if encoding is not None and encoding not in _ENCODINGS:
            self._fail_call(
                stream,
                GrpcStatus.UNIMPLEMENTED,
                f"grpc-encoding {encoding!r} is not supported; use one of {_ACCEPT_ENCODING}",
                (("grpc-accept-encoding", _ACCEPT_ENCODING),),
            )
            return
        deadline = None
        if timeout is not None:
            try:
                deadline = self._loop.time() + parse_timeout(timeout)
            except ValueError:
                self._fail_call(stream, GrpcStatus.INTERNAL, f"grpc-timeout {timeout!r} is malformed")
                return
        stream.route = route
        stream.encoding = encoding or "identity"
        stream.call = Call(path.decode("latin-1"), metadata, deadline, self._loop)

    def _take(self, stream: _Stream, data: memoryview) -> None:
        body = stream.body
        body += data
        if stream.declared < 0 and len(body) >= 5:
            stream.declared = _MESSAGE_PREFIX.unpack_from(body)[1]
            if stream.declared > self._server.limit.size:
                self._fail_call(
                    stream,
                    GrpcStatus.RESOURCE_EXHAUSTED,
                    self._server.limit.refuse("request message").message,
                )
                return
        if stream.declared >= 0 and len(body) > 5 + stream.declared:
            self._fail_call(stream, GrpcStatus.INTERNAL, "a unary call takes exactly one request message")

    def _dispatch(self, stream: _Stream) -> None:
        """The client's END_STREAM: run the call with its one message."""
        if stream.route is None or stream.call is None:
            return  # answered already
        body = stream.body
        if stream.declared < 0 or len(body) != 5 + stream.declared:
            self._fail_call(stream, GrpcStatus.INTERNAL, "a unary call takes exactly one request message")
            return
        message = bytes(memoryview(body)[5:])
        if body[0]:
            if stream.encoding == "identity":
                self._fail_call(stream, GrpcStatus.INTERNAL, "a compressed message without grpc-encoding")
                return
            try:
                message = decompress(message, stream.encoding, self._server.limit)
            except PayloadTooLargeError as exc:
                self._fail_call(stream, GrpcStatus.RESOURCE_EXHAUSTED, exc.message)
                return
            except InvalidInputError as exc:
                self._fail_call(stream, GrpcStatus.INTERNAL, exc.message)
                return
        stream.body = bytearray()
        stream.task = self._loop.create_task(self._run(stream, stream.route, message, stream.call))

    async def _run(self, stream: _Stream, route: Route, message: bytes, call: Call) -> None:
        try:
            answer = await route(message, call)
        except GrpcError as exc:
            self._fail_call(stream, exc.status, exc.message, exc.trailers)
        except Exception as exc:  # never a traceback to the client; the log has it
            logger.exception("gRPC %s failed", call.method)
            self._fail_call(stream, GrpcStatus.INTERNAL, f"internal error: {type(exc).__name__}")
        else:
            self._answer(stream, answer)

    # -- frames out ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _headers(self, stream_id: int, block: bytes, flags: int) -> bytes:
        """A header block as HEADERS (+ CONTINUATION when over the peer's frame size)."""
        limit = self._peer_max_frame
        if len(block) <= limit:
            return _frame_header(len(block), FrameType.HEADERS, flags | _END_HEADERS, stream_id) + block
        chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
        out = [frame(FrameType.HEADERS, flags, stream_id, chunks[0])]
        out += [frame(FrameType.CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
        out.append(frame(FrameType.CONTINUATION, _END_HEADERS, stream_id, chunks[-1]))
        return b"".join(out)

    def _answer(self, stream: _Stream, message: bytes) -> None:
        if self._streams.get(stream.id) is not stream:
            return  # reset by the client meanwhile
        sid = stream.id
        size = 5 + len(message)
        prefix = _MESSAGE_PREFIX.pack(0, len(message))
        if (
            not self._paused
            and size <= self._send_window
            and size <= stream.send_window
            and size <= self._peer_max_frame
        ):
            self._send_window -= size
            stream.send_window -= size
            self._write(
                b"".join(
                    (
                        _frame_header(len(RESPONSE_HEADERS), FrameType.HEADERS, _END_HEADERS, sid),
                        RESPONSE_HEADERS,
                        _frame_header(size, FrameType.DATA, 0, sid),
                        prefix,
                        message,
                        _frame_header(len(OK_TRAILERS), FrameType.HEADERS, _END_TRAILERS, sid),
                        OK_TRAILERS,
                    )
                )
            )
            self._close_stream(stream)
            return
        self._write(self._headers(sid, RESPONSE_HEADERS, 0))
        stream.pending = memoryview(prefix + message)
        stream.trailers = OK_TRAILERS
        self._blocked.append(stream)
        self._flush()

    def _flush(self) -> None:
        """Send what the windows allow of the blocked streams' DATA, and the trailers of those done."""
        if self._paused or not self._blocked:
            return
        out: list[bytes | memoryview] = []
        for stream in list(self._blocked):
            data = stream.pending
            assert data is not None
            while data and self._send_window > 0 and stream.send_window > 0:
                size = min(len(data), self._send_window, stream.send_window, self._peer_max_frame)
                out.append(_frame_header(size, FrameType.DATA, 0, stream.id))
                out.append(data[:size])
                data = data[size:]
                self._send_window -= size
                stream.send_window -= size
            stream.pending = data
            if not data:
                out.append(self._headers(stream.id, stream.trailers, _END_STREAM))
                self._close_stream(stream)
        if out:
            self._write(b"".join(out))

    def _fail_call(
        self, stream: _Stream, status: GrpcStatus, message: str, trailers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """A trailers-only answer; the rest of the request, if any, is not wanted."""
        self._answer_early(stream, error_block(status, message, trailers))

    def _answer_early(self, stream: _Stream, block: bytes) -> None:
        stream.route = None
        stream.body = bytearray()
        if self._streams.get(stream.id) is not stream:
            return
        self._write(self._headers(stream.id, block, _END_STREAM))
        if not stream.ended:
            self._write(frame(FrameType.RST_STREAM, 0, stream.id, _U32.pack(H2Error.NO_ERROR)))
        self._close_stream(stream)

    def _reset(self, stream_id: int, code: H2Error) -> None:
        self._write(frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(code)))
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._close_stream(stream)
            if stream.task is not None:
                stream.task.cancel()

    def _close_stream(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if stream.pending is not None:
            stream.pending = None
            if stream in self._blocked:
                self._blocked.remove(stream)
        if self._going_away:
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if not self._streams and self._transport is not None:
            self._transport.close()

    def _fail(self, code: H2Error, message: str) -> None:
        self._write(
            frame(FrameType.GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(code) + message.encode())
        )
        if self._transport is not None:
            self._transport.close()

    def go_away(self) -> None:
        """The server stops: no stream after the last one taken; close once those are answered."""
        if self._transport is None or self._transport.is_closing():
            return
        self._going_away = True
        self._write(frame(FrameType.GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(H2Error.NO_ERROR)))
        self._close_if_idle()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()


_HTTP_STATUS_405 = _literal_indexed_name(_STATUS_NAME_INDEX, b"405")
_HTTP_STATUS_415 = _literal_indexed_name(_STATUS_NAME_INDEX, b"415")


def _unpad(flags: int, payload: memoryview) -> memoryview:
    if not flags & _PADDED:
        return payload
    if not payload:
        raise _ConnectionError(H2Error.PROTOCOL_ERROR, "PADDED frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise _ConnectionError(H2Error.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
