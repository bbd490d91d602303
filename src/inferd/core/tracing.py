"""What the data plane tells a tracer, without depending on one.

When tracing is on, each request's :class:`PipelineCall` carries a :class:`StageTimings`; the executor's
thread stamps it (``time.perf_counter_ns``) as the call goes through the pipeline, and the
PredictionService hands it to the :class:`RequestTracer` once the request is answered. With tracing off
no timings object exists and nothing is stamped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class StageTimings:
    """Monotonic nanosecond stamps (``time.perf_counter_ns``); 0 where a stage was not reached."""

    submitted: int = 0  # handed to the executor
    started: int = 0  # a thread took the call: the end of the queue wait
    preprocessed: int = 0  # input_schema and preprocessor done for every item
    validated: int = 0  # validator done for every item
    predicted: int = 0  # the model calls done
    finished: int = 0  # postprocessor done: the outputs are ready


class RequestTracer(Protocol):
    def record(
        self, *, model: str, version: str, tenant: str, items: int, timings: StageTimings, error: str | None
    ) -> None:
        """Called on the event loop, in the request's own context, when the request is answered."""
