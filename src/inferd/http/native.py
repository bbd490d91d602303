"""Health, metrics, model listing and the admin reload: the native API's routes off the hot path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from inferd.core.dataplane import DataPlane
from inferd.core.tenancy import KeyScope
from inferd.http.routes import Call, Reply, Route
from inferd.http.schemas import ModelInfo, ModelList, Readiness, ReloadSummary, Status

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class NativeRoutes:
    def __init__(
        self,
        *,
        dataplane: DataPlane,
        render_metrics: Callable[[str | None, str | None], tuple[bytes, dict[str, str]]],
        reload_models: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._render_metrics = render_metrics
        # Reloads every process sharing the job store where one is wired in; this process only otherwise.
        self._reload_models = reload_models or dataplane.reload_models

    async def livez(self, call: Call) -> Reply:
        return Reply(200, b'{"status":"ok"}')

    async def readyz(self, call: Call) -> Reply:
        readiness = await self._dataplane.server_readiness()
        if readiness.ready:
            body = {"status": "ready", "problems": readiness.problems, "loaded": readiness.loaded}
            return Reply.json(body)
        body = {
            "status": "not_ready",
            "reasons": readiness.reasons,
            "problems": readiness.problems,
            "loaded": readiness.loaded,
        }
        return Reply.json(body, 503)

    async def metrics(self, call: Call) -> Reply:
        accept, encoding = call.header(b"accept"), call.header(b"accept-encoding")
        body, headers = self._render_metrics(
            accept.decode("latin-1") if accept is not None else None,
            encoding.decode("latin-1") if encoding is not None else None,
        )
        content_type = headers.pop("Content-Type", PROMETHEUS_TEXT)
        extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        return Reply(200, body, extra, content_type.encode())

    async def list_models(self, call: Call) -> Reply:
        models = [entry.describe() for entry in self._dataplane.models()]
        return Reply.json({"models": models})

    async def get_model(self, call: Call) -> Reply:
        return Reply.json(self._dataplane.model(call.params["name"]).describe())

    async def reload_models(self, call: Call) -> Reply:
        return Reply.json(await self._reload_models())

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/livez",
                self.livez,
                None,
                "Liveness: 200 while the process serves",
                "health",
                response=Status,
            ),
            Route(
                "GET",
                "/readyz",
                self.readyz,
                None,
                "Readiness: 200 when every load_at_start model is loaded and the job store answers, else 503",
                "health",
                response=Readiness,
                errors=(503,),
            ),
            Route(
                "GET",
                "/metrics",
                self.metrics,
                None,
                "Prometheus metrics (text format)",
                "health",
                response_content_type=PROMETHEUS_TEXT,
            ),
            Route(
                "GET",
                "/v1/models",
                self.list_models,
                KeyScope.MODELS,
                "The models, their versions and routing",
                "models",
                response=ModelList,
                errors=(401, 403, 429),
            ),
            Route(
                "GET",
                "/v1/models/{name}",
                self.get_model,
                KeyScope.MODELS,
                "One model",
                "models",
                response=ModelInfo,
                errors=(401, 403, 404, 429),
            ),
            Route(
                "POST",
                "/v1/admin/models/reload",
                self.reload_models,
                KeyScope.ADMIN,
                "Rescan the model repository: load new and changed versions, drop removed ones, keep the "
                "rest serving; requests already running finish on the version they started with",
                "admin",
                response=ReloadSummary,
                errors=(401, 403, 429, 500),
            ),
        ]
