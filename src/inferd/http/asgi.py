"""The server's ASGI callable, in pure ASGI: it serves the route table.

Per request it assigns the ``X-Request-ID``, matches the route, authenticates and checks the route's
scope before anything about the body is looked at, parses the declared query (refusing parameters the
route does not declare), runs the handler and writes the access log line. FastAPI's routing, dependency
injection and encoders cost more than a small model's call, so no framework sits on this path; the
OpenAPI document is generated from the same table (``http/openapi.py``).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from inferd.core.errors import (
    InferdError,
    InferenceError,
    MethodNotAllowedError,
    RouteNotFoundError,
    quote,
)
from inferd.core.json_limits import DEFAULT_MAX_DEPTH
from inferd.http.access_log import AccessLog
from inferd.http.errors import error_body, error_headers, error_status, v2_error_body
from inferd.http.gatekeeper import Gatekeeper
from inferd.http.routes import Call, ErrorStyle, Route, RouteTable, parse_query
from inferd.http.wire import (
    BodyLimit,
    Receive,
    RequestInfo,
    Scope,
    Send,
    api_key_from_headers,
    header,
    send_response,
)
from inferd.logs import REQUEST_ID

logger = logging.getLogger("inferd.http")

# Used with fullmatch: with match() and "$", a value ending in "\n" passed and was echoed back.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

Lifespan = Callable[[], AbstractAsyncContextManager[None]]


async def send_error(send: Send, error: InferdError, info: RequestInfo, style: ErrorStyle) -> None:
    info.status = error_status(error)
    info.error = error.code
    info.cause = error.cause
    if info.version is None:
        info.version = error.version
    message = error.for_client(info.request_id)
    if style is ErrorStyle.V2:
        body = v2_error_body(message)
    else:
        body = error_body(error.code, message, info.request_id)
    await send_response(send, info.status, body, info.request_id, error_headers(error))


def style_for_path(path: str) -> ErrorStyle:
    return ErrorStyle.V2 if path.startswith("/v2") else ErrorStyle.NATIVE


class InferdASGI:
    def __init__(
        self,
        *,
        table: RouteTable,
        gatekeeper: Gatekeeper,
        access_log: AccessLog,
        max_body_bytes: int,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
        lifespan: Lifespan | None = None,
    ) -> None:
        self.table = table
        self._gatekeeper = gatekeeper
        self._access_log = access_log
        self._body_limit = BodyLimit.server(max_body_bytes)
        self._max_json_depth = max_json_depth
        self._lifespan = lifespan
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        sent_id = header(scope, b"x-request-id")
        if sent_id and _SANE_REQUEST_ID.fullmatch(sent_id):
            request_id = sent_id.decode()
        else:
            # A random per-process prefix and a counter: unique across replicas without a syscall
            # (and a GIL release) per request, which os.urandom would cost.
            request_id = f"{self._id_prefix}{next(self._id_counter):012x}"
        info = RequestInfo(request_id)
        REQUEST_ID.set(request_id)  # for log lines written while serving it (inferd.logs)
        path: str = scope["path"]
        method: str = scope["method"]
        route, params, allowed = self.table.match(method, path)
        try:
            if route is None:
                if allowed:
                    raise MethodNotAllowedError.on(method, path, allowed)
                raise RouteNotFoundError(self._not_found_message(method, path))
            call = Call(scope, receive, info, route, params, self._body_limit, self._max_json_depth)
            if route.scope is not None:
                call.principal = await self._gatekeeper.admit_key(
                    api_key_from_headers(scope["headers"]), route.scope, info
                )
            # Most requests (predict) have neither a query model nor a query string: nothing to parse.
            query_string = scope.get("query_string")
            if route.query is not None or (query_string and not route.ignores_unknown_query):
                call.query = parse_query(route, query_string or b"")
            reply = await route.handler(call)
            info.status = reply.status
            await send_response(send, reply.status, reply.body, request_id, reply.headers, reply.content_type)
        except InferdError as exc:
            await send_error(send, exc, info, self._error_style(route, path))
        except Exception:
            # A bug or an unreachable dependency, never the client's input: a safe message for the
            # client, the traceback in the server log.
            logger.exception("unhandled error on %s %s", method, path)
            if info.status == 0:
                error = InferenceError(
                    f"internal error; the server log has the details under request id {request_id}"
                )
                await send_error(send, error, info, self._error_style(route, path))
            info.error = "inference_error"
        finally:
            if self._access_log.enabled:
                # Whole microseconds in milliseconds: round(x, 3) formats through decimal digits.
                latency_ms = round((time.perf_counter() - started) * 1_000_000) / 1000
                self._access_log.request(info, method, path, latency_ms)

    @staticmethod
    def _error_style(route: Route | None, path: str) -> ErrorStyle:
        return route.error_style if route is not None else style_for_path(path)

    def _not_found_message(self, method: str, path: str) -> str:
        # Never a redirect: one built from the Host header would send clients wherever a request's
        # Host pointed. A path that exists without its trailing slash is named instead.
        message = f"no route {method} {quote(path)}; GET /docs lists the routes"
        if len(path) > 1 and path.endswith("/") and self.table.match(method, path.rstrip("/"))[0] is not None:
            message += f" (without the trailing slash, {quote(path.rstrip('/'))} exists)"
        return message

    def lifespan(self) -> AbstractAsyncContextManager[Any]:
        """Start-up and shutdown of what the routes need (job runtime, log flusher); tests that drive
        the app without a server enter it themselves."""
        return self._lifespan() if self._lifespan is not None else nullcontext()

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        context = self.lifespan()
        try:
            await context.__aenter__()
        except Exception as exc:
            logger.exception("start-up failed")
            await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            await context.__aexit__(None, None, None)
        except Exception as exc:
            logger.exception("shutdown failed")
            await send({"type": "lifespan.shutdown.failed", "message": f"{type(exc).__name__}: {exc}"})
            return
        await send({"type": "lifespan.shutdown.complete"})
