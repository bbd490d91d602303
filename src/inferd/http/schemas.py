"""Documented shapes of the native API's bodies, responses and query strings.

Bodies of the hot routes are parsed by hand (``http/predict.py``, ``http/jobs.py``) for speed; these
models describe them in the OpenAPI document, and a test checks that both accept the same requests.
Query models are the parsers themselves (validated per request off the hot path).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic.json_schema import SkipJsonSchema

from inferd.jobs.migrations import PRIORITY_MAX, PRIORITY_MIN
from inferd.jobs.models import JobStatus
from inferd.jobs.service import MAX_WAIT_S
from inferd.jobs.store import CURSOR_PATTERN

# A client's deadline shorter than this cannot be met by any model behind an HTTP server; refusing it
# keeps a silly deadline (1e-9) from reaching the executor at all.
MIN_CLIENT_TIMEOUT_S = 0.01

IRIS_ROW: list[JsonValue] = [5.1, 3.5, 1.4, 0.2]
IRIS_ROW_2: list[JsonValue] = [6.7, 3.0, 5.2, 2.3]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"input": IRIS_ROW}})

    input: Any = Field(description="One input item, as the model's input_schema describes it.")
    timeout_s: float | None = Field(
        default=None, ge=MIN_CLIENT_TIMEOUT_S, description="Shortens the model's timeout_s."
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Passed to the model's predict(batch, parameters); refused (422) by models without.",
    )


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"inputs": [IRIS_ROW, IRIS_ROW_2]}}
    )

    inputs: list[Any] = Field(min_length=1, description="Input items; answered in the same order.")
    timeout_s: float | None = Field(
        default=None, ge=MIN_CLIENT_TIMEOUT_S, description="Shortens the model's timeout_s."
    )
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


class JobSubmitRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"inputs": [IRIS_ROW, IRIS_ROW_2]},
            # Exactly one of input / inputs.
            "oneOf": [{"required": ["input"]}, {"required": ["inputs"]}],
        },
    )

    input: Any = Field(default=None, description="One input item (the job answers with `output`).")
    # The length bound on the list itself: on the optional field it came out as `minLength` of an array.
    inputs: Annotated[list[Any], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        default=None, description="Input items (the job answers with `outputs`, in order)."
    )
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    timeout_s: float | None = Field(default=None, ge=MIN_CLIENT_TIMEOUT_S)
    parameters: dict[str, Any] | None = None
    priority: int | None = Field(
        default=None,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="Higher runs first among this tenant's pending jobs (default 0).",
    )


class JobBulkLine(JobSubmitRequest):
    """One line of a bulk submission (JSON Lines: one such object per line)."""

    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="Overrides the request's Idempotency-Key."
    )


class JobErrorBody(BaseModel):
    code: str
    message: str


class JobDocument(BaseModel):
    id: str
    status: JobStatus
    model: str
    version: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    max_attempts: int
    priority: int
    output: Any = None
    outputs: list[Any] | None = None
    error: JobErrorBody | None


class JobList(BaseModel):
    jobs: list[JobDocument]
    next_cursor: str | None


class JobWaitQuery(BaseModel):
    wait: float = Field(
        default=0, ge=0, le=MAX_WAIT_S, description="Seconds to hold the request until the job is terminal."
    )


class JobListQuery(BaseModel):
    status: JobStatus | None = None
    model: str | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: str | None = Field(
        default=None,
        pattern=f"^$|{CURSOR_PATTERN}",  # empty: the first page, as no cursor is
        description="`next_cursor` of the previous page.",
    )

    @field_validator("cursor", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # `cursor=` (a client filling the template with nothing) is the first page, as no cursor is.
        return None if value == "" else value


class ModelVersionInfo(BaseModel):
    version: str
    state: str
    runtime: str
    device: str
    max_batch_size: int
    timeout_s: float
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    error: str | None = None


class ModelInfo(BaseModel):
    name: str
    default_version: str
    routing: dict[str, Any]
    versions: list[ModelVersionInfo]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Status(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `not_ready`.")
    reasons: list[str] | None = Field(default=None, description="What keeps the server from serving.")
    problems: list[str] = Field(description="What else is wrong, without making the server unready.")
    loaded: list[str]


class ReloadSummary(BaseModel):
    added: list[str]
    reloaded: list[str]
    removed: list[str]
    unchanged: list[str]
    failed: list[str]
    problems: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error of the native API."""

    error: ErrorDetail
    request_id: str


class V2ErrorResponse(BaseModel):
    """Every error of the Open Inference Protocol routes."""

    error: str
