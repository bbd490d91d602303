"""The HTTP route table: every route declared once.

A :class:`Route` says everything about one route: method, path template, the scope a key needs (None:
public), the handler, the request body (its documented schema and the parser that enforces it), the
query parameters it takes (its query model; none without one), the response schema, the statuses it
answers and its error shape. The ASGI dispatcher (``http/asgi.py``) serves the table and the OpenAPI
document (``http/openapi.py``) is generated from it, so what is documented is what is served: a query
parameter the route does not declare is refused, not ignored.

Adding a route: write ``async def handler(call: Call) -> Reply`` and append a ``Route`` to the list
its module returns; ``bootstrap.build_app`` concatenates the lists.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ValidationError

from inferd.core import json_limits
from inferd.core.errors import InvalidInputError, unknown_query_parameters, validation_problems
from inferd.core.json_limits import DEFAULT_MAX_DEPTH
from inferd.core.tenancy import KeyScope, Principal
from inferd.http.wire import BodyLimit, Receive, RequestInfo, Scope, header, read_body


class ErrorStyle(enum.Enum):
    """How a route's errors look: the native ``{"error": {"code", "message"}, "request_id"}`` or the
    Open Inference Protocol's ``{"error": "<message>"}``."""

    NATIVE = "native"
    V2 = "v2"


class Call:
    """One request as a handler sees it: path parameters, the authenticated principal (None on public
    routes), the parsed query, and the body read on demand under the size limit."""

    __slots__ = (
        "scope",
        "receive",
        "info",
        "route",
        "params",
        "principal",
        "query",
        "body_limit",
        "_max_json_depth",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        info: RequestInfo,
        route: Route,
        params: dict[str, str],
        body_limit: BodyLimit,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.info = info
        self.route = route
        self.params = params
        self.principal: Principal | None = None
        self.query: Any = None
        self.body_limit = body_limit  # the server's max_body_bytes
        self._max_json_depth = max_json_depth

    @property
    def tenant(self) -> str:
        assert self.principal is not None, "public routes have no tenant"
        return self.principal.tenant

    def header(self, name: bytes) -> bytes | None:
        return header(self.scope, name)

    async def body(self, limit: BodyLimit | None = None) -> bytes:
        """The body under the size limit; on a route taking JSON, also within the nesting and integer
        limits of ``core.json_limits``, before any parser or pipeline stage sees it."""
        body = await read_body(self.scope, self.receive, limit or self.body_limit)
        declared = self.route.body
        if declared is not None and "application/json" in declared.content_types:
            self.check_json(body)
        return body

    def check_json(self, body: bytes) -> None:
        """``core.json_limits`` on JSON a handler unwrapped itself (a decompressed body, the JSON part of
        a binary-extension body)."""
        json_limits.check_body(body, max_depth=self._max_json_depth)

    async def parsed_body(self) -> Any:
        """The body through the route's declared parser (the one the OpenAPI schema describes)."""
        body = self.route.body
        assert body is not None and body.parse is not None, f"{self.route.path} declares no body parser"
        return body.parse(await self.body())


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] | None = None
    content_type: bytes = b"application/json"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, orjson.dumps(value))


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: ``model`` documents it, ``parse`` (bytes → value) enforces it. With no
    ``parse`` the handler reads the raw body itself (e.g. binary tensor data)."""

    model: type[BaseModel] | None
    parse: Callable[[bytes], Any] | None = None
    content_types: tuple[str, ...] = ("application/json",)
    examples: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeaderParam:
    """A request header a route reads: its description and JSON Schema constraints beyond ``string``."""

    description: str
    schema: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: KeyScope | None  # None: public
    summary: str
    tag: str
    body: Body | None = None
    # The query parameters the route takes, each a field of the model; None: it takes none.
    query: type[BaseModel] | None = None
    # Open Inference Protocol routes ignore query parameters they do not declare, as Triton and MLServer
    # do: tritonclient passes its callers' query_params= through (e.g. for a proxy in front).
    ignores_unknown_query: bool = False
    response: type[BaseModel] | None = None
    response_content_type: str = "application/json"
    status: int = 200
    response_statuses: tuple[int, ...] = ()  # further statuses answered with the response schema
    errors: tuple[int, ...] = ()
    error_style: ErrorStyle = ErrorStyle.NATIVE
    description: str = ""
    headers: Mapping[str, HeaderParam] = field(default_factory=dict)  # request header name → its doc
    in_schema: bool = True

    @property
    def operation_id(self) -> str:
        return (
            self.handler.__name__
            + "_"
            + self.method.lower()
            + self.path.replace("/", "_").replace("{", "").replace("}", "")
        )


def parse_query(route: Route, query_string: bytes) -> Any:
    """The route's query model validated from the query string (None for a route without one); 422
    naming a parameter the route does not take, with those it takes, or a bad value."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    fields = route.query.model_fields if route.query is not None else {}
    if not route.ignores_unknown_query:
        unknown = list(dict.fromkeys(name for name, _ in pairs if name not in fields))
        if unknown:
            raise unknown_query_parameters(route.method, route.path, unknown, list(fields))
    if route.query is None:
        return None
    try:
        return route.query.model_validate(dict(pairs))
    except ValidationError as exc:
        raise InvalidInputError(validation_problems(exc, whole="?", prefix="query parameter ")) from None


class _Node:
    __slots__ = ("literal", "param", "param_name", "routes")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.param_name = ""
        self.routes: dict[str, Route] = {}


class RouteTable:
    """Matches a request to a route by path segments (a trie: cost grows with the path's length, not
    with the number of routes). Literal segments win over parameters."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: list[Route] = list(routes)
        self._root = _Node()
        for route in self.routes:
            self._add(route)

    def _add(self, route: Route) -> None:
        node = self._root
        for segment in route.path[1:].split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if node.param is None:
                    node.param = _Node()
                    node.param_name = name
                elif node.param_name != name:
                    raise ValueError(
                        f"{route.path}: parameter {{{name}}} where another route has {{{node.param_name}}}"
                    )
                node = node.param
            else:
                node = node.literal.setdefault(segment, _Node())
        if route.method in node.routes:
            raise ValueError(f"{route.method} {route.path} is declared twice")
        node.routes[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], Sequence[str]]:
        """``(route, params, allowed)``: the route, or None with the methods the path allows (empty
        when no route has this path)."""
        params: dict[str, str] = {}
        node = self._root
        for segment in path[1:].split("/"):
            child = node.literal.get(segment)
            if child is None:
                if node.param is None or not segment:
                    return None, params, ()
                params[node.param_name] = segment
                child = node.param
            node = child
        route = node.routes.get(method)
        if route is None and method == "HEAD":
            route = node.routes.get("GET")  # the server sends the headers only
        if route is None:
            return None, params, sorted(node.routes)
        return route, params, ()
