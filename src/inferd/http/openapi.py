"""The OpenAPI document, generated from the route table, and the /docs page that renders it offline.

OpenAPI 3.0.3 rather than 3.1: the Swagger UI shipped locally (the ``swagger-ui-bundle`` package, 4.x)
renders 3.0, so pydantic's JSON Schema (2020-12) is translated (``null`` in ``anyOf`` → ``nullable``,
numeric ``exclusiveMinimum`` → ``minimum`` + flag, ``const`` → ``enum``).
"""

from __future__ import annotations

import functools
import mimetypes
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from inferd.core.errors import RouteNotFoundError
from inferd.core.tenancy import KeyScope
from inferd.http.errors import STATUS_BY_CODE
from inferd.http.routes import Call, ErrorStyle, Reply, Route
from inferd.http.schemas import ErrorResponse, V2ErrorResponse

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: <key>"},
}
PATH_EXAMPLES = {"name": "iris", "version": "1", "model_name": "iris", "model_version": "1"}
AUTH_ERRORS = (401, 403, 429)
DESCRIPTION = (
    "Self-hosted multi-tenant ML inference server. Press **Authorize** and enter an API key (with "
    "`inferd serve --dev` the key is `dev`) as the bearer token or as X-API-Key; the examples work "
    "against the bundled example models."
)


def _codes_for(status: int) -> str:
    return " / ".join(code for code, value in STATUS_BY_CODE.items() if value == status) or str(status)


def to_openapi_30(node: Any) -> Any:
    """Translate pydantic's JSON Schema into the OpenAPI 3.0 dialect."""
    if isinstance(node, list):
        return [to_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_openapi_30(value) for key, value in node.items()}
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [option for option in any_of if option != {"type": "null"}]
        del out["anyOf"]
        out["nullable"] = True
        if len(rest) == 1 and "$ref" not in rest[0]:
            out.update(rest[0])
        elif len(rest) == 1:
            out["allOf"] = rest
        elif rest:
            out["anyOf"] = rest
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = value
            out[bound] = True
    if isinstance(out.get("examples"), list) and out["examples"]:
        out["example"] = out.pop("examples")[0]
    return out


def _collect_models(routes: list[Route]) -> list[type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for route in routes:
        for model in (
            route.body.model if route.body else None,
            route.response,
            ErrorResponse if route.error_style is ErrorStyle.NATIVE else V2ErrorResponse,
        ):
            if model is not None:
                models[model.__name__] = model
    return list(models.values())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for segment in route.path.split("/"):
        if segment.startswith("{"):
            name = segment[1:-1]
            parameter = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            if name in PATH_EXAMPLES:
                parameter["example"] = PATH_EXAMPLES[name]
            parameters.append(parameter)
    if route.query is not None:
        schema = to_openapi_30(route.query.model_json_schema(ref_template="#/components/schemas/{model}"))
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)
    for name, header in route.headers.items():
        parameters.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "schema": {"type": "string", **header.schema},
                "description": header.description,
            }
        )
    return parameters


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        operation["description"] = route.description
    if route.scope is not None:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
        operation["description"] = (
            operation.get("description", "") + f"\n\nNeeds the `{route.scope}` scope (or `{KeyScope.ADMIN}`)."
        ).strip()
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema: dict[str, Any] = _ref(route.body.model) if route.body.model else {}
        content: dict[str, Any] = {}
        for content_type in route.body.content_types:
            media: dict[str, Any] = {"schema": schema}
            if route.body.examples and content_type == "application/json":
                media["examples"] = {key: {"value": value} for key, value in route.body.examples.items()}
            content[content_type] = media
        operation["requestBody"] = {"required": True, "content": content}
    if route.response is not None:
        success: dict[str, Any] = {route.response_content_type: {"schema": _ref(route.response)}}
    else:
        success = {route.response_content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(route.status): {"description": "OK", "content": success}}
    for status in route.response_statuses:
        responses[str(status)] = {"description": "false", "content": success}
    error_model = ErrorResponse if route.error_style is ErrorStyle.NATIVE else V2ErrorResponse
    statuses = set(route.errors) | (set(AUTH_ERRORS) if route.scope is not None else set())
    if not route.ignores_unknown_query:
        statuses.add(422)  # a query parameter the route does not take
    for status in sorted(statuses):
        if str(status) in responses:
            continue
        responses[str(status)] = {
            "description": _codes_for(status),
            "content": {"application/json": {"schema": _ref(error_model)}},
        }
    operation["responses"] = responses
    return operation


def build_openapi(routes: list[Route], *, title: str, version: str) -> dict[str, Any]:
    documented = [route for route in routes if route.in_schema]
    _, definitions = models_json_schema(
        [(model, "validation") for model in _collect_models(documented)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": to_openapi_30(definitions.get("$defs", {})),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  displayRequestDuration: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")


def swagger_assets_dir() -> Path:
    import swagger_ui_bundle  # the assets ship with the package: the page renders with no internet

    return Path(swagger_ui_bundle.swagger_ui_path)


class DocsRoutes:
    """``/openapi.json``, ``/docs`` and its assets; public and served from this process only."""

    def __init__(self, *, routes: list[Route], title: str, version: str) -> None:
        self._routes = routes
        self._title = title
        self._version = version

    @functools.cached_property
    def _document(self) -> bytes:
        return orjson.dumps(build_openapi(self._routes, title=self._title, version=self._version))

    async def openapi(self, call: Call) -> Reply:
        return Reply(200, self._document)

    async def docs(self, call: Call) -> Reply:
        page = SWAGGER_PAGE.format(title=self._title).encode()
        return Reply(200, page, content_type=b"text/html; charset=utf-8")

    async def asset(self, call: Call) -> Reply:
        name = call.params["asset"]
        if name not in ASSETS:
            raise RouteNotFoundError(f"no docs asset {name!r}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body = _read_asset(name)
        headers = [(b"cache-control", b"public, max-age=86400")]
        return Reply(200, body, headers, content_type.encode())

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/openapi.json", self.openapi, None, "This document", "docs", in_schema=False),
            Route("GET", "/docs", self.docs, None, "Interactive docs", "docs", in_schema=False),
            Route("GET", "/docs/assets/{asset}", self.asset, None, "Docs assets", "docs", in_schema=False),
        ]


@functools.cache
def _read_asset(name: str) -> bytes:
    return (swagger_assets_dir() / name).read_bytes()
