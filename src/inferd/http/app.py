"""The HTTP front: the route groups of every adapter, one table, the docs generated from it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from inferd import __version__
from inferd.core.json_limits import DEFAULT_MAX_DEPTH
from inferd.http.access_log import AccessLog
from inferd.http.asgi import InferdASGI, Lifespan
from inferd.http.gatekeeper import Gatekeeper
from inferd.http.openapi import DocsRoutes
from inferd.http.routes import Route, RouteTable


def build_route_table(groups: Iterable[Sequence[Route]]) -> RouteTable:
    routes = [route for group in groups for route in group]
    docs = DocsRoutes(routes=routes, title="inferd", version=__version__)
    return RouteTable([*routes, *docs.routes()])


def create_http_app(
    *,
    groups: Iterable[Sequence[Route]],
    gatekeeper: Gatekeeper,
    access_log: AccessLog,
    max_body_bytes: int,
    max_json_depth: int = DEFAULT_MAX_DEPTH,
    lifespan: Lifespan | None = None,
) -> InferdASGI:
    return InferdASGI(
        table=build_route_table(groups),
        gatekeeper=gatekeeper,
        access_log=access_log,
        max_body_bytes=max_body_bytes,
        max_json_depth=max_json_depth,
        lifespan=lifespan,
    )
