"""Slow and idle clients against a real ``inferd serve``, with raw sockets: incomplete headers or bodies
get 408 and a closed connection, trickling bytes does not extend the deadline, connections past the
cap are refused at once, and keep-alive connections are closed after their request budget or idle
time. Each socket read is bounded, so a server that never closes fails the test instead of hanging."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from inferd_http_testkit import PREDICT_KEY, ServerProcess, running_server

pytestmark = pytest.mark.slow

READ_BOUND_S = 20.0  # far above every limit below: only a server that never answers reaches it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "INFERD_HEADER_TIMEOUT_S": "1",
        "INFERD_BODY_TIMEOUT_S": "1",
        "INFERD_KEEPALIVE_TIMEOUT_S": "1",
        "INFERD_KEEPALIVE_MAX_REQUESTS": "3",
    }
    with running_server(tmp_path_factory.mktemp("slow"), env=env) as process:
        yield process


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"INFERD_MAX_CONNECTIONS": "4", "INFERD_HEADER_TIMEOUT_S": "60"}
    with running_server(tmp_path_factory.mktemp("capped"), env=env) as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=READ_BOUND_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_and_body(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def predict_head(length: int) -> bytes:
    return (
        b"POST /v1/models/ok/predict HTTP/1.1\r\nHost: test\r\n"
        b"Authorization: Bearer " + PREDICT_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
    )


def test_incomplete_headers_get_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/models/ok/predict HTTP/1.1\r\nHost: test\r\n")
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408
    assert body["error"] == {"code": "request_timeout", "message": body["error"]["message"]}  # type: ignore[index]
    assert "header_timeout_s" in str(body)


def test_a_silent_connection_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        status, _ = status_and_body(read_until_closed(sock))
    assert status == 408


def test_trickled_headers_do_not_extend_the_deadline(server: ServerProcess) -> None:
    header = b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 200
    sent = 0
    with connect(server) as sock:
        try:
            # One byte every 0.1 s would take 20 s for the padding; the 1 s deadline ends it first.
            for byte in header:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_until_closed(sock)
    assert sent < len(header)
    assert status_and_body(response)[0] == 408


def test_an_incomplete_body_gets_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(predict_head(100) + b'{"input": ')
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408 and "body_timeout_s" in str(body)


def test_keepalive_connection_closes_after_its_request_budget(server: ServerProcess) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(request)
        data = read_until_closed(sock)  # the third response says close, then the server closes
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.lower().count(b"connection: close") == 1


def test_an_idle_keepalive_connection_is_closed(server: ServerProcess) -> None:
    body = b'{"input": 1}'
    with connect(server) as sock:
        sock.sendall(predict_head(len(body)) + body)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1") == 1


def test_connections_past_the_cap_are_refused(capped: ServerProcess) -> None:
    held = [connect(capped) for _ in range(4)]
    try:
        with connect(capped) as extra:
            status, body = status_and_body(read_until_closed(extra))
        assert status == 503 and body["error"]["code"] == "overloaded"  # type: ignore[index]
    finally:
        for sock in held:
            sock.close()
    # Once the held connections are gone, a new one is served.
    deadline = time.monotonic() + READ_BOUND_S
    while True:
        with connect(capped) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            response = read_until_closed(sock)
        if response.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
    assert response.startswith(b"HTTP/1.1 200"), response
