"""The data plane: what every front end (native /v1, V2 REST, V2 gRPC, the job worker) may ask of the
server, with no transport in sight.

Adapters call this and nothing below it: inference goes through ``PredictionService`` (the one place
inference metrics are recorded); model listing, metadata and readiness read the registry here, so a
new front end cannot compute them differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferd.core.errors import InferdError, ModelNotFoundError, quote
from inferd.core.pipeline import PipelineCall
from inferd.core.prediction import Prediction, PredictionService
from inferd.core.registry import ModelEntry, ModelRegistry, ModelVersion
from inferd.core.routing import version_sort_key
from inferd.core.tensors import Tensor, TensorDeclarations, TensorRows, TensorSpec

ReadinessCheck = Callable[[], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class ServerReadiness:
    """``reasons`` (what keeps the server from serving) is empty when it is ready; ``problems`` lists what
    else is wrong without making it unready (``ModelRegistry.readiness``); ``loaded`` lists
    ``name:version`` pairs."""

    reasons: list[str]
    loaded: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.reasons


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A version as the Open Inference Protocol describes it."""

    name: str
    versions: list[str]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def declarations(version: ModelVersion) -> TensorDeclarations:
    """A loaded version's resolved declarations (model.yaml, else the runtime's); before loading,
    model.yaml's."""
    if version.pipeline is not None:
        return version.pipeline.tensors
    return TensorDeclarations(tuple(version.spec.inputs or ()), tuple(version.spec.outputs or ()))


class DataPlane:
    def __init__(
        self,
        *,
        registry: ModelRegistry,
        prediction: PredictionService,
        readiness_checks: Sequence[ReadinessCheck] = (),
    ) -> None:
        self._registry = registry
        self._prediction = prediction
        self._readiness_checks = tuple(readiness_checks)
        # One reload at a time; planes derived with with_readiness_checks share it.
        self._reload_lock = asyncio.Lock()

    def with_readiness_checks(self, checks: Sequence[ReadinessCheck]) -> DataPlane:
        """The same plane that also asks ``checks`` (e.g. the job store) whether the server is ready."""
        plane = DataPlane(
            registry=self._registry,
            prediction=self._prediction,
            readiness_checks=(*self._readiness_checks, *checks),
        )
        plane._reload_lock = self._reload_lock
        return plane

    # -- inference -------------------------------------------------------------------------------

    def infer(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        inputs: Sequence[Any],
        indexed: bool,
        timeout_s: float | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Awaitable[Prediction]:
        """Run ``inputs`` (one item per row) through the version chosen by routing (``version=None``)
        or the pinned one. One call is one request in the metrics, whatever the front end.
        (The prediction's own coroutine, not one wrapping it: one frame less per request.)"""
        return self._prediction.predict(
            tenant=tenant,
            model=model,
            version=version,
            inputs=inputs,
            indexed=indexed,
            timeout_s=timeout_s,
            parameters=parameters,
        )

    def infer_tensors(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        tensors: list[Tensor],
        timeout_s: float | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Awaitable[Prediction]:
        """V2 inference: the request's tensors are its rows (``TensorRows``); ``Prediction.outputs``
        are the output tensors (see PipelineCall)."""
        return self.infer(
            tenant=tenant,
            model=model,
            version=version,
            inputs=TensorRows(tensors),
            indexed=True,
            timeout_s=timeout_s,
            parameters=parameters,
        )

    async def check_inputs(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        inputs: Sequence[Any],
        indexed: bool,
        parameters: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Resolve the version and run schema, preprocessor, validator and the runtime's input check
        without the model (job submission: invalid jobs are never queued). Not an execution, so nothing
        is counted."""
        target = self._registry.resolve(model, version, tenant=tenant)
        try:
            pipeline = target.pipeline or await self._registry.ensure_loaded(target)
            pipeline.check_parameters(parameters)
            call = PipelineCall(inputs, indexed)
            if pipeline.preparation_blocks:
                await asyncio.to_thread(pipeline.prepare_call, call)
            else:
                pipeline.prepare_call(call)
        except InferdError as exc:
            exc.version = target.version
            raise
        return target

    # -- models ----------------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        return list(self._registry.models.values())

    def loaded_versions(self) -> list[tuple[str, str]]:
        """``(name, version)`` of every version that is loaded now."""
        return sorted(
            (entry.name, version.version)
            for entry in self._registry.models.values()
            for version in entry.versions.values()
            if version.state == "loaded"
        )

    def model(self, name: str) -> ModelEntry:
        entry = self._registry.models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"no model named {quote(name)}; GET /v1/models lists the models")
        return entry

    def model_version(self, name: str, version: str | None, *, tenant: str) -> ModelVersion:
        """The pinned version, or the one routing would choose for ``tenant`` (``version=None``)."""
        return self._registry.resolve(name, version, tenant=tenant)

    def versions(self, name: str) -> list[ModelVersion]:
        """The model's versions, lowest first."""
        entry = self.model(name)
        return sorted(entry.versions.values(), key=lambda v: version_sort_key(v.version))

    def model_ready(self, name: str, version: str | None, *, tenant: str) -> bool:
        """Whether a request for (name, version) would run now without loading anything."""
        return self.model_version(name, version, tenant=tenant).state == "loaded"

    def model_metadata(self, name: str, version: str | None, *, tenant: str) -> ModelMetadata:
        target = self.model_version(name, version, tenant=tenant)
        declared = declarations(target)
        return ModelMetadata(
            name=target.name,
            versions=[v.version for v in self.versions(target.name)],
            platform=target.spec.runtime,
            inputs=declared.inputs,
            outputs=declared.outputs,
        )

    async def reload_models(self) -> dict[str, Any]:
        """Rescan the model repository (off the event loop) and swap it in; one reload at a time."""
        async with self._reload_lock:
            plan = await asyncio.to_thread(self._registry.plan_reload)
            self._registry.apply_reload(plan)
        return plan.summary()

    # -- server ----------------------------------------------------------------------------------

    async def server_ready(self) -> bool:
        return (await self.server_readiness()).ready

    async def server_readiness(self) -> ServerReadiness:
        reasons, problems = self._registry.readiness()
        for check in self._readiness_checks:
            reasons.extend(await check())
        loaded = [f"{name}:{version}" for name, version in self.loaded_versions()]
        return ServerReadiness(reasons, loaded, problems)
