"""The protocol's message classes, built from the committed descriptor in a private descriptor pool.

A private pool, not protobuf's default one: a process that also imports tritonclient (whose
``grpc_service.proto`` defines the same ``inference.*`` names) would otherwise fail with duplicate symbols.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from inferd.grpc._descriptor import SERIALIZED

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(SERIALIZED)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


def service_methods() -> dict[str, tuple[Any, Any]]:
    """RPC name → (request class, response class), from the service declared in the .proto."""
    service = _pool.FindServiceByName(SERVICE)
    return {
        method.name: (
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )
        for method in service.methods
    }


ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")
