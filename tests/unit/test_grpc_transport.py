"""The HTTP/2 transport for gRPC, fed bytes as a client would send them (a fake asyncio transport records
what the server writes), and over real sockets for listening, GOAWAY on stop and SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hpack
import pytest

from inferd.grpc.transport import (
    ACK,
    MAX_CONCURRENT_STREAMS,
    PREFACE,
    RECEIVE_FRAME_SIZE,
    RECEIVE_WINDOW,
    Call,
    Flag,
    FrameType,
    GrpcError,
    GrpcServer,
    GrpcStatus,
    H2Error,
    Http2Connection,
    Route,
    Setting,
    frame,
    parse_timeout,
)
from inferd.http.wire import BodyLimit

PATH = "/pkg.Service/Echo"
BLOCKED = "/pkg.Service/Blocked"  # waits for Recorder.release
U32 = struct.Struct(">L")


@dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def parse_frames(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9], "big")
        frames.append(Frame(ftype, flags, stream, bytes(data[pos + 9 : pos + 9 + length])))
        pos += 9 + length
    assert pos == len(data)
    return frames


def message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BL", int(compressed), len(payload)) + payload


def settings(**values: int) -> bytes:
    return b"".join(struct.pack(">HL", Setting[name], value) for name, value in values.items())


@dataclass
class Client:
    """One connection, driven frame by frame; ``frames()`` returns what the server wrote since the last
    call, and ``writes`` counts the transport writes."""

    routes: dict[str, Route]
    limit: int = 1 << 20
    transport: FakeTransport = field(default_factory=FakeTransport)
    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)
    decoder: hpack.Decoder = field(default_factory=hpack.Decoder)
    seen: int = 0
    writes: int = 0

    def __post_init__(self) -> None:
        self.server = GrpcServer(self.routes, limit=BodyLimit.server(self.limit))
        self.connection = Http2Connection(self.server)
        write = self.transport.write

        def counted(data: bytes) -> None:
            self.writes += 1
            write(data)

        self.transport.write = counted  # type: ignore[method-assign]
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, *frames: bytes) -> None:
        self.connection.data_received(b"".join(frames))

    def open(self, **peer_settings: int) -> list[Frame]:
        self.send(PREFACE, frame(FrameType.SETTINGS, 0, 0, settings(**peer_settings)))
        return self.frames()

    def block(
        self,
        path: str = PATH,
        *,
        method: str = "POST",
        content_type: str = "application/grpc",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "x")]
        headers += [("content-type", content_type), ("te", "trailers"), *extra]
        return bytes(self.encoder.encode(headers))

    def call(self, stream: int, payload: bytes, **kwargs: Any) -> None:
        self.send(
            frame(FrameType.HEADERS, Flag.END_HEADERS, stream, self.block(**kwargs)),
            frame(FrameType.DATA, Flag.END_STREAM, stream, message(payload)),
        )

    def frames(self) -> list[Frame]:
        new = bytes(self.transport.data[self.seen :])
        self.seen = len(self.transport.data)
        return parse_frames(new)

    def headers(self, f: Frame) -> dict[str, str]:
        assert f.type == FrameType.HEADERS and f.flags & Flag.END_HEADERS
        return dict(self.decoder.decode(f.payload))

    def goaway(self, frames: list[Frame]) -> tuple[int, int, bytes]:
        (f,) = [f for f in frames if f.type == FrameType.GOAWAY]
        return U32.unpack(f.payload[:4])[0], U32.unpack(f.payload[4:8])[0], f.payload[8:]


@dataclass
class Recorder:
    """Routes that record their calls."""

    calls: list[tuple[bytes, Call]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: int = 0

    async def echo(self, payload: bytes, call: Call) -> bytes:
        self.calls.append((payload, call))
        return payload[::-1]

    async def blocked(self, payload: bytes, call: Call) -> bytes:
        self.calls.append((payload, call))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return payload

    def routes(self) -> dict[str, Route]:
        return {PATH: self.echo, BLOCKED: self.blocked}


def connected(rec: Recorder, *, limit: int = 1 << 20) -> Client:
    """A client past the preface and SETTINGS exchange."""
    client = Client(rec.routes(), limit=limit)
    client.open()
    return client


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_preface_settings_ping_and_a_call_answered_in_one_write() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = Client(rec.routes())
        first = client.frames()
        assert [f.type for f in first] == [FrameType.SETTINGS, FrameType.WINDOW_UPDATE]
        ours = {s: v for s, v in (struct.unpack(">HL", first[0].payload[i : i + 6]) for i in range(0, 24, 6))}
        assert ours[Setting.MAX_CONCURRENT_STREAMS] == MAX_CONCURRENT_STREAMS
        assert ours[Setting.INITIAL_WINDOW_SIZE] == RECEIVE_WINDOW
        assert ours[Setting.MAX_FRAME_SIZE] == RECEIVE_FRAME_SIZE
        assert U32.unpack(first[1].payload)[0] + 65_535 == RECEIVE_WINDOW

        (settings_ack,) = client.open()
        assert (settings_ack.type, settings_ack.flags, settings_ack.payload) == (FrameType.SETTINGS, ACK, b"")
        client.send(frame(FrameType.PING, 0, 0, b"12345678"))
        (pong,) = client.frames()
        assert (pong.type, pong.flags, pong.payload) == (FrameType.PING, ACK, b"12345678")

        writes = client.writes
        client.call(1, b"abc", extra=(("authorization", "Bearer k"), ("grpc-timeout", "3S")))
        await settle()
        head, data, trailers = client.frames()
        assert client.writes == writes + 1  # headers, message and trailers together
        assert client.headers(head) == {":status": "200", "content-type": "application/grpc"}
        assert (data.type, data.stream, data.payload) == (FrameType.DATA, 1, message(b"cba"))
        assert trailers.flags & Flag.END_STREAM and client.headers(trailers) == {"grpc-status": "0"}
        ((payload, call),) = rec.calls
        assert payload == b"abc" and call.method == PATH
        assert ("authorization", "Bearer k") in call.metadata
        assert all(name not in ("te", "content-type", "grpc-timeout") for name, _ in call.metadata)
        remaining = call.time_remaining()
        assert remaining is not None and 2.0 < remaining <= 3.0

    run(scenario)


def test_padding_priority_continuation_and_ignored_frames() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec)
        block = client.block(extra=(("x-api-key", "abc"),))
        padded = bytes([3]) + b"\x00\x00\x00\x01\x10" + block[:10] + b"\x00" * 3  # pad length, priority
        client.send(
            frame(FrameType.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
            frame(0x42, 0, 0, b"an extension frame"),  # unknown type: ignored
            frame(FrameType.HEADERS, Flag.PADDED | Flag.PRIORITY, 1, padded),
            frame(FrameType.CONTINUATION, 0, 1, block[10:20]),
            frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[20:]),
            frame(FrameType.DATA, Flag.PADDED, 1, bytes([2]) + message(b"xy")[:3] + b"\x00\x00"),
            frame(FrameType.DATA, Flag.END_STREAM, 1, message(b"xy")[3:]),
        )
        await settle()
        assert [f.type for f in client.frames()] == [FrameType.HEADERS, FrameType.DATA, FrameType.HEADERS]
        ((payload, call),) = rec.calls
        assert payload == b"xy" and ("x-api-key", "abc") in call.metadata

    run(scenario)


def test_repeated_indexed_header_blocks_decode_to_the_same_headers() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec)
        for stream, key in ((1, "a"), (3, "a"), (5, "a"), (7, "b"), (9, "a")):
            client.call(stream, b"m", extra=(("x-api-key", key),))
        await settle()
        assert [dict(call.metadata)["x-api-key"] for _, call in rec.calls] == ["a", "a", "a", "b", "a"]

    run(scenario)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(FrameType.DATA, 0, 0, b"x")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.HEADERS, 0, 1, b"\x82"), frame(FrameType.DATA, 0, 1, b"")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, b"\x82")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.PING, 0, 0, b"short")], H2Error.FRAME_SIZE_ERROR),
        ([frame(FrameType.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00")], H2Error.FLOW_CONTROL_ERROR),
        ([frame(FrameType.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff")], H2Error.FLOW_CONTROL_ERROR),
        ([frame(FrameType.HEADERS, Flag.END_HEADERS, 2, b"\x82")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\xff\xff\xff\x0f")], H2Error.COMPRESSION_ERROR),
        ([frame(FrameType.RST_STREAM, 0, 9, b"\x00\x00\x00\x08")], H2Error.PROTOCOL_ERROR),
        ([frame(FrameType.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02")], H2Error.PROTOCOL_ERROR),
        ([b"\x10\x00\x01\x00\x00\x00\x00\x00\x00"], H2Error.FRAME_SIZE_ERROR),  # over our MAX_FRAME_SIZE
    ],
)
def test_protocol_errors_end_the_connection_with_goaway_and_their_code(
    frames: list[bytes], code: H2Error
) -> None:
    async def scenario() -> None:
        client = connected(Recorder())
        client.send(*frames)
        _, received, _ = client.goaway(client.frames())
        assert received == code and client.transport.closed

    run(scenario)


def test_a_bad_preface_or_a_first_frame_other_than_settings_closes() -> None:
    async def scenario() -> None:
        client = Client(Recorder().routes())
        client.frames()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.goaway(client.frames())[1] == H2Error.PROTOCOL_ERROR and client.transport.closed

        client = Client(Recorder().routes())
        client.send(PREFACE[:10])
        client.send(PREFACE[10:], frame(FrameType.PING, 0, 0, b"12345678"))
        assert client.goaway(client.frames())[1] == H2Error.PROTOCOL_ERROR

    run(scenario)


def test_not_grpc_requests_get_http_and_grpc_errors() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec)
        client.call(1, b"x", method="GET")
        head, reset = client.frames()
        assert client.headers(head) == {":status": "405"} and head.flags & Flag.END_STREAM
        assert reset.type == FrameType.RST_STREAM  # the client had not ended: its rest is not wanted
        client.call(3, b"x", content_type="application/json")
        assert client.headers(client.frames()[0]) == {":status": "415"}
        client.call(5, b"x", path="/pkg.Service/Nope")
        trailers = client.headers(client.frames()[0])
        assert trailers["grpc-status"] == str(GrpcStatus.UNIMPLEMENTED.value)
        assert "/pkg.Service/Nope" in trailers["grpc-message"]
        client.call(7, b"x", content_type="application/grpc+proto")
        await settle()
        assert len(rec.calls) == 1

    run(scenario)


def test_compression_limits_and_the_message_count() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec, limit=1000)
        gz = (("grpc-encoding", "gzip"),)

        def answer(stream: int, *frames: bytes) -> dict[str, str]:
            client.send(*frames)
            return client.headers(client.frames()[0])

        head = client.block(extra=gz)
        client.send(
            frame(FrameType.HEADERS, Flag.END_HEADERS, 1, head),
            frame(FrameType.DATA, Flag.END_STREAM, 1, message(gzip.compress(b"hello"), compressed=True)),
        )
        await settle()
        assert rec.calls[-1][0] == b"hello"
        client.frames()

        bomb = gzip.compress(b"\x00" * 100_000)
        assert len(bomb) < 1000
        trailers = answer(
            3,
            frame(FrameType.HEADERS, Flag.END_HEADERS, 3, client.block(extra=gz)),
            frame(FrameType.DATA, Flag.END_STREAM, 3, message(bomb, compressed=True)),
        )
        assert trailers["grpc-status"] == str(GrpcStatus.RESOURCE_EXHAUSTED.value)
        assert "max_body_bytes" in trailers["grpc-message"]

        trailers = answer(  # declared too large: answered before the rest arrives, and reset
            5,
            frame(FrameType.HEADERS, Flag.END_HEADERS, 5, client.block()),
            frame(FrameType.DATA, 0, 5, struct.pack(">BL", 0, 5000)),
        )
        assert trailers["grpc-status"] == str(GrpcStatus.RESOURCE_EXHAUSTED.value)
        client.send(frame(FrameType.DATA, Flag.END_STREAM, 5, b"late bytes are dropped"))
        assert client.frames() == [] and not client.transport.closed

        trailers = answer(
            7,
            frame(FrameType.HEADERS, Flag.END_HEADERS, 7, client.block(extra=(("grpc-encoding", "br"),))),
        )
        assert trailers["grpc-status"] == str(GrpcStatus.UNIMPLEMENTED.value)
        assert trailers["grpc-accept-encoding"] == "identity,gzip,deflate"

        for stream, body in (
            (9, message(b"a") + message(b"b")),
            (11, b""),
            (13, message(b"z", compressed=True)),
        ):
            trailers = answer(
                stream,
                frame(FrameType.HEADERS, Flag.END_HEADERS, stream, client.block()),
                frame(FrameType.DATA, Flag.END_STREAM, stream, body),
            )
            assert trailers["grpc-status"] == str(GrpcStatus.INTERNAL.value), stream
        assert len(rec.calls) == 1

    run(scenario)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2H", 7200.0), ("3M", 180.0), ("4S", 4.0), ("5m", 0.005), ("6u", 6e-6), ("7n", 7e-9)],
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "1s", "123456789S", "-1S", "1.5S"])
def test_malformed_grpc_timeouts(value: str) -> None:
    with pytest.raises(ValueError):
        parse_timeout(value)


def test_route_errors_become_trailers_and_no_traceback_reaches_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse(payload: bytes, call: Call) -> bytes:
        raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, "slow down: 100% ünïcode", (("retry-after", "2"),))

    async def crash(payload: bytes, call: Call) -> bytes:
        raise RuntimeError("secret internals")

    async def scenario() -> None:
        client = Client({"/s/Refuse": refuse, "/s/Crash": crash})
        client.open()
        client.call(1, b"", path="/s/Refuse")
        await settle()
        (trailers,) = client.frames()
        assert trailers.flags & Flag.END_STREAM
        fields = client.headers(trailers)
        assert fields["grpc-status"] == "8" and fields["retry-after"] == "2"
        assert fields["grpc-message"] == "slow down: 100%25 %C3%BCn%C3%AFcode"
        with caplog.at_level(logging.ERROR, logger="inferd.grpc"):
            client.call(3, b"", path="/s/Crash")
            await settle()
        fields = client.headers(client.frames()[0])
        assert fields["grpc-status"] == "13" and fields["grpc-message"] == "internal error: RuntimeError"
        assert "secret internals" in caplog.text

    run(scenario)


def test_answers_respect_the_peers_windows_and_frame_size() -> None:
    big = bytes(range(256)) * 400  # 102,400 bytes

    async def large(payload: bytes, call: Call) -> bytes:
        return big

    async def scenario() -> None:
        client = Client({PATH: large})
        client.open(INITIAL_WINDOW_SIZE=1000)
        client.call(1, b"")
        await settle()
        head, first = client.frames()
        assert head.type == FrameType.HEADERS and len(first.payload) == 1000  # the stream's window
        client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, U32.pack(200_000)))
        frames = client.frames()
        # The connection window (65,535) is spent next, in frames of at most 16,384 bytes.
        assert sum(len(f.payload) for f in frames) == 65_535 - 1000
        assert all(f.type == FrameType.DATA and len(f.payload) <= 16_384 for f in frames)
        client.send(frame(FrameType.SETTINGS, 0, 0, settings(MAX_FRAME_SIZE=1 << 17)))
        assert [f.type for f in client.frames()] == [FrameType.SETTINGS]  # the ACK; no window yet
        client.send(frame(FrameType.WINDOW_UPDATE, 0, 0, U32.pack(1 << 20)))
        last, trailers = client.frames()
        assert b"".join(f.payload for f in [first, *frames, last]) == message(big)
        assert trailers.flags & Flag.END_STREAM and client.headers(trailers) == {"grpc-status": "0"}

    run(scenario)


def test_a_smaller_initial_window_holds_the_next_answer() -> None:
    async def scenario() -> None:
        client = Client(Recorder().routes())
        client.open(INITIAL_WINDOW_SIZE=0)
        client.call(1, b"abc")
        await settle()
        assert [f.type for f in client.frames()] == [FrameType.HEADERS]
        client.send(frame(FrameType.SETTINGS, 0, 0, settings(INITIAL_WINDOW_SIZE=100)))
        ack, data, trailers = client.frames()
        assert ack.type == FrameType.SETTINGS and data.payload == message(b"cba")
        assert client.headers(trailers) == {"grpc-status": "0"}

    run(scenario)


def test_received_data_is_acknowledged_and_the_windows_enforced() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = Client(rec.routes(), limit=1 << 24)
        client.open()
        client.send(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, client.block()))
        chunk = b"\x00" * RECEIVE_FRAME_SIZE
        client.send(frame(FrameType.DATA, 0, 1, struct.pack(">BL", 0, 9 * len(chunk))))
        for _ in range(8):
            client.send(frame(FrameType.DATA, 0, 1, chunk))
        updates = [f for f in client.frames() if f.type == FrameType.WINDOW_UPDATE]
        assert {f.stream for f in updates} == {0, 1}
        assert all(U32.unpack(f.payload)[0] >= RECEIVE_WINDOW // 2 for f in updates)
        client.send(frame(FrameType.DATA, Flag.END_STREAM, 1, chunk))
        await settle()
        assert len(rec.calls[0][0]) == 9 * len(chunk)

        # A stream that sends past the window it was given is reset; the connection stays.
        other = Client(rec.routes(), limit=1 << 25)
        other.open()
        other.send(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, other.block()))
        other.connection._streams[1].recv_window = 10
        other.send(frame(FrameType.DATA, 0, 1, b"\x00" * 11))
        (reset,) = other.frames()
        assert (reset.type, U32.unpack(reset.payload)[0]) == (
            FrameType.RST_STREAM,
            H2Error.FLOW_CONTROL_ERROR,
        )
        assert not other.transport.closed

    run(scenario)


def test_rst_stream_cancels_the_call_and_refused_streams_past_the_limit() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec)
        client.call(1, b"x", path=BLOCKED)
        await settle()
        client.send(frame(FrameType.RST_STREAM, 0, 1, U32.pack(H2Error.CANCEL)))
        await settle()
        assert rec.cancelled == 1 and client.frames() == []

        for stream in range(3, 3 + 2 * MAX_CONCURRENT_STREAMS, 2):
            client.call(stream, b"x", path=BLOCKED)
        client.call(3 + 2 * MAX_CONCURRENT_STREAMS, b"x")
        (reset,) = client.frames()
        assert (reset.type, U32.unpack(reset.payload)[0]) == (FrameType.RST_STREAM, H2Error.REFUSED_STREAM)
        rec.release.set()
        await settle()
        assert len([f for f in client.frames() if f.type == FrameType.DATA]) == MAX_CONCURRENT_STREAMS

    run(scenario)


def test_a_client_goaway_lets_calls_finish_then_closes() -> None:
    async def scenario() -> None:
        rec = Recorder()
        client = connected(rec)
        client.call(1, b"x", path=BLOCKED)
        await settle()
        client.send(frame(FrameType.GOAWAY, 0, 0, U32.pack(0) + U32.pack(0)))
        assert not client.transport.closed
        rec.release.set()
        await settle()
        assert [f.type for f in client.frames()] == [FrameType.HEADERS, FrameType.DATA, FrameType.HEADERS]
        assert client.transport.closed

    run(scenario)


def test_pause_writing_stops_reading_and_holds_data() -> None:
    async def scenario() -> None:
        client = connected(Recorder())
        client.connection.pause_writing()
        assert not client.transport.reading
        client.call(1, b"abc")
        await settle()
        assert [f.type for f in client.frames()] == [FrameType.HEADERS]
        client.connection.resume_writing()
        assert client.transport.reading
        assert [f.type for f in client.frames()] == [FrameType.DATA, FrameType.HEADERS]

    run(scenario)


# -- real sockets ---------------------------------------------------------------------------------------


async def read_frames(reader: asyncio.StreamReader, until: Callable[[Frame], bool]) -> list[Frame]:
    frames: list[Frame] = []
    while not frames or not until(frames[-1]):
        header = await asyncio.wait_for(reader.readexactly(9), 10)
        length = int.from_bytes(header[:3], "big")
        payload = await reader.readexactly(length)
        frames.append(Frame(header[3], header[4], int.from_bytes(header[5:], "big"), payload))
    return frames


def test_over_a_socket_stop_sends_goaway_and_lets_calls_finish() -> None:
    async def scenario() -> None:
        rec = Recorder()
        server = GrpcServer(rec.routes(), limit=BodyLimit.server(1024))
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        encoder = hpack.Encoder()
        block = encoder.encode(
            [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Service/Blocked")]
            + [("content-type", "application/grpc")]
        )
        writer.write(
            PREFACE
            + frame(FrameType.SETTINGS, 0, 0)
            + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, block)
            + frame(FrameType.DATA, Flag.END_STREAM, 1, message(b"late"))
        )
        while not rec.calls:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.stop(10))
        frames = await read_frames(reader, lambda f: f.type == FrameType.GOAWAY)
        goaway = frames[-1]
        assert U32.unpack(goaway.payload[:4])[0] == 1 and U32.unpack(goaway.payload[4:8])[0] == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)  # no longer listening
        rec.release.set()
        frames = await read_frames(reader, lambda f: bool(f.type == FrameType.HEADERS and f.flags & 1))
        assert [f.type for f in frames] == [FrameType.HEADERS, FrameType.DATA, FrameType.HEADERS]
        assert frames[1].payload == message(b"late")
        assert await reader.read() == b""  # then the server closed the connection
        await stopping
        writer.close()

    run(scenario)


def test_a_taken_port_fails_unless_every_server_reuses_it() -> None:
    async def scenario() -> None:
        first = GrpcServer({}, limit=BodyLimit.server(10))
        port = await first.start("127.0.0.1", 0)
        with pytest.raises(OSError):
            await GrpcServer({}, limit=BodyLimit.server(10)).start("127.0.0.1", port)
        await first.stop(None)
        shared = [GrpcServer({}, limit=BodyLimit.server(10)) for _ in range(2)]
        port = await shared[0].start("127.0.0.1", 0, reuse_port=True)
        assert await shared[1].start("127.0.0.1", port, reuse_port=True) == port
        for server in shared:
            await server.stop(None)

    run(scenario)
