"""The seam between the V2 adapters and the core: what gRPC asks of the server, in V2 terms.

It calls PredictionService (every inference is counted and timed there, exactly like /v1) and reads
readiness and metadata from the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inferd.core.prediction import Prediction, PredictionService
from inferd.core.registry import ModelRegistry, ModelVersion
from inferd.core.routing import version_sort_key
from inferd.core.tensors import Tensor, TensorDeclarations, TensorRows, TensorSpec


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def declarations(version: ModelVersion) -> TensorDeclarations:
    """A loaded version's resolved declarations (model.yaml, else the runtime's); before loading, model.yaml's."""
    if version.pipeline is not None:
        return version.pipeline.tensors
    return TensorDeclarations(tuple(version.spec.inputs or ()), tuple(version.spec.outputs or ()))


class V2Plane:
    def __init__(
        self,
        *,
        prediction: PredictionService,
        registry: ModelRegistry,
        readiness_checks: Sequence[Callable[[], Awaitable[list[str]]]] = (),
    ) -> None:
        self._prediction = prediction
        self._registry = registry
        self._checks = tuple(readiness_checks)

    async def server_ready(self) -> bool:
        if self._registry.not_ready_reasons():
            return False
        for check in self._checks:
            if await check():
                return False
        return True

    def model_ready(self, name: str, version: str | None, *, tenant: str) -> bool:
        return self._registry.resolve(name, version, tenant=tenant).state == "loaded"

    def model_metadata(self, name: str, version: str | None, *, tenant: str) -> ModelMetadata:
        target = self._registry.resolve(name, version, tenant=tenant)
        entry = self._registry.models[target.name]
        declared = declarations(target)
        return ModelMetadata(
            name=target.name,
            versions=sorted(entry.versions, key=version_sort_key),
            platform=target.spec.runtime,
            inputs=declared.inputs,
            outputs=declared.outputs,
        )

    async def infer(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        tensors: list[Tensor],
        timeout_s: float | None,
        parameters: dict[str, Any] | None,
    ) -> Prediction:
        """``Prediction.outputs`` are the output tensors (see PipelineCall)."""
        return await self._prediction.predict(
            tenant=tenant,
            model=model,
            version=version,
            inputs=TensorRows(tensors),
            indexed=True,
            timeout_s=timeout_s,
            parameters=parameters,
        )
