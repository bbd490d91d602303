"""The error-code vocabulary is declared once (``ErrorCode``) and every adapter table maps it."""

from __future__ import annotations

from inferd.core import errors
from inferd.core.errors import ErrorCode
from inferd.grpc.server import STATUS_BY_CODE as GRPC_STATUS
from inferd.grpc.transport import GrpcStatus
from inferd.http.errors import STATUS_BY_CODE as HTTP_STATUS

# Start-up only: a bad setting stops the process before any request is served.
NEVER_ANSWERED_OVER_HTTP = {ErrorCode.CONFIG_ERROR}


def error_classes() -> list[type[errors.InferdError]]:
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.InferdError)
    ]


def test_every_error_class_carries_a_declared_code() -> None:
    for cls in error_classes():
        assert isinstance(cls.code, ErrorCode), cls


def test_every_code_is_raised_by_some_error_class() -> None:
    assert {cls.code for cls in error_classes()} == set(ErrorCode)


def test_http_maps_every_code_a_request_can_meet() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode) - NEVER_ANSWERED_OVER_HTTP
    assert HTTP_STATUS[ErrorCode.STORE_UNAVAILABLE] == 503


def test_grpc_maps_every_code() -> None:
    assert set(GRPC_STATUS) == set(ErrorCode)
    assert GRPC_STATUS[ErrorCode.STORE_UNAVAILABLE] is GrpcStatus.UNAVAILABLE


def test_codes_are_the_strings_clients_see() -> None:
    assert errors.InvalidInputError("x").code == "invalid_input"
    assert f"{ErrorCode.MODEL_NOT_FOUND}" == "model_not_found"
