"""The FastAPI application: health, metrics, models, the documented predict routes, jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferd.core.errors import InferdError, ModelNotFoundError
from inferd.core.registry import ModelRegistry
from inferd.core.tenancy import Principal
from inferd.http.asgi import request_info
from inferd.http.errors import error_headers, error_payload, error_status
from inferd.http.predict import Gatekeeper, PredictHandler
from inferd.metrics import MetricsExposition

logger = logging.getLogger("inferd.http")

ReadinessCheck = Callable[[], Awaitable[list[str]]]


class PredictRequest(BaseModel):
    input: Any = Field(description="One input item, as the model's input_schema describes it.")
    timeout_s: float | None = Field(default=None, gt=0, description="Shortens the model's timeout_s.")
    parameters: dict[str, Any] | None = None


class BatchPredictRequest(BaseModel):
    inputs: list[Any] = Field(min_length=1, description="Input items; answered in the same order.")
    timeout_s: float | None = Field(default=None, gt=0)
    parameters: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    model: str
    version: str
    output: Any
    request_id: str


class BatchPredictResponse(BaseModel):
    model: str
    version: str
    outputs: list[Any]
    request_id: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": code}
    for status, code in [
        (401, "unauthenticated"),
        (403, "forbidden"),
        (404, "model_not_found / job_not_found"),
        (409, "conflict"),
        (413, "payload_too_large"),
        (422, "invalid_input"),
        (429, "rate_limited"),
        (500, "inference_error"),
        (503, "overloaded"),
        (504, "timeout"),
    ]
}


def requires_scope(gatekeeper: Gatekeeper, scope_name: str) -> Any:
    """A FastAPI dependency: authenticate, check the scope, apply the tenant's rate limit."""

    async def admit(request: Request) -> Principal:
        return gatekeeper.admit(request.scope["headers"], scope_name, request_info(request.scope))

    return Depends(admit)


def _request_id(request: Request) -> str:
    state = request.scope.get("state") or {}
    return str(state.get("request_id", ""))


def create_fastapi_app(
    *,
    registry: ModelRegistry,
    exposition: MetricsExposition,
    gatekeeper: Gatekeeper,
    predict: PredictHandler,
    readiness_checks: list[ReadinessCheck],
    lifespan: Callable[[], Any] | None = None,
    routers: list[Any] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def app_lifespan(_: FastAPI) -> AsyncIterator[None]:
        if lifespan is None:
            yield
            return
        async with lifespan():
            yield

    app = FastAPI(
        title="inferd",
        version="0.1.0",
        description="Self-hosted multi-tenant ML inference server. Authenticate with `Authorization: Bearer <key>`.",
        lifespan=app_lifespan,
    )

    @app.exception_handler(InferdError)
    async def inferd_error(request: Request, exc: InferdError) -> JSONResponse:
        info = request_info(request.scope)
        info.error, info.cause = exc.code, exc.cause
        headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
        return JSONResponse(
            error_payload(exc, _request_id(request)), status_code=error_status(exc), headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The store or a bug, never the client's input: a safe message, the traceback in the server log.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        request_info(request.scope).error = "inference_error"
        body = {
            "error": {"code": "inference_error", "message": "internal error; the server log has the details"},
            "request_id": _request_id(request),
        }
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        body = {"error": {"code": "invalid_input", "message": problems}, "request_id": _request_id(request)}
        request_info(request.scope).error = "invalid_input"
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}, "request_id": _request_id(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def requires(scope_name: str) -> Any:
        return requires_scope(gatekeeper, scope_name)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        reasons = registry.not_ready_reasons()
        for check in readiness_checks:
            reasons.extend(await check())
        loaded = sorted(
            f"{entry.name}:{version.version}"
            for entry in registry.models.values()
            for version in entry.versions.values()
            if version.state == "loaded"
        )
        if reasons:
            return JSONResponse(
                {"status": "not_ready", "reasons": reasons, "loaded": loaded}, status_code=503
            )
        return JSONResponse({"status": "ready", "loaded": loaded})

    @app.get("/metrics", tags=["health"])
    async def metrics_endpoint(request: Request) -> Response:
        body, headers = exposition.render(
            request.headers.get("accept"), request.headers.get("accept-encoding")
        )
        return Response(body, headers=headers)

    @app.get("/v1/models", tags=["models"])
    async def list_models(_: Principal = requires("models")) -> dict[str, Any]:
        return {"models": [entry.describe() for entry in registry.models.values()]}

    @app.get("/v1/models/{name}", tags=["models"], responses=ERROR_RESPONSES)
    async def get_model(name: str, _: Principal = requires("models")) -> dict[str, Any]:
        entry = registry.models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"no model named {name!r}; GET /v1/models lists the models")
        return entry.describe()

    # The predict routes below are served by the pure-ASGI fast path in front of this app; they are
    # declared here for /docs and run the same handler when the fast path is switched off.
    async def _predict(
        request: Request, principal: Principal, name: str, version: str | None, batch: bool
    ) -> Response:
        info = request_info(request.scope)
        payload = await predict.execute(principal, name, version, batch, await request.body(), info)
        return Response(payload, media_type="application/json")

    reload_lock = asyncio.Lock()

    @app.post("/v1/admin/models/reload", tags=["admin"], responses=ERROR_RESPONSES)
    async def reload_models(_: Principal = requires("admin")) -> dict[str, Any]:
        """Rescan the model repository: load new and changed versions, drop removed ones, keep the rest
        serving untouched. Requests already running finish on the version they started with."""
        async with reload_lock:
            plan = await asyncio.to_thread(registry.plan_reload)
            registry.apply_reload(plan)
        return plan.summary()

    # The body is not a parameter: FastAPI would parse it before the auth dependency runs, and a client
    # without a key must get 401 before anything about its body (as on the fast path).
    def predict_doc(model: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        return {
            "tags": ["inference"],
            "responses": ERROR_RESPONSES,
            "response_model": response,
            "openapi_extra": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
            },
        }

    single_doc = predict_doc(PredictRequest, PredictResponse)
    batch_doc = predict_doc(BatchPredictRequest, BatchPredictResponse)

    @app.post("/v1/models/{name}/predict", **single_doc)
    async def predict_routed(
        request: Request, name: str, principal: Principal = requires("predict")
    ) -> Response:
        return await _predict(request, principal, name, None, False)

    @app.post("/v1/models/{name}/versions/{version}/predict", **single_doc)
    async def predict_pinned(
        request: Request, name: str, version: str, principal: Principal = requires("predict")
    ) -> Response:
        return await _predict(request, principal, name, version, False)

    @app.post("/v1/models/{name}/predict/batch", **batch_doc)
    async def batch_routed(
        request: Request, name: str, principal: Principal = requires("predict")
    ) -> Response:
        return await _predict(request, principal, name, None, True)

    @app.post("/v1/models/{name}/versions/{version}/predict/batch", **batch_doc)
    async def batch_pinned(
        request: Request, name: str, version: str, principal: Principal = requires("predict")
    ) -> Response:
        return await _predict(request, principal, name, version, True)

    for router in routers or []:
        app.include_router(router)
    return app
