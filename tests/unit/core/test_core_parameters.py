"""Request parameters: passed to models that take them, refused for models that do not, and never
mixed within one model call."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from runtime_helpers import FakeRuntime

from inferd.core.errors import InvalidInputError
from inferd.core.executor import DeviceExecutor
from inferd.core.pipeline import Pipeline, PipelineCall


class Tuned(FakeRuntime):
    """Records (batch, parameters) per call; output says which parameters it was run with."""

    takes_parameters = True

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], dict[str, Any] | None]] = []
        self._lock = threading.Lock()

    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        with self._lock:
            self.calls.append((list(batch), parameters))
        return [{"item": item, "scale": (parameters or {}).get("scale", 1)} for item in batch]


class Plain(FakeRuntime):
    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        return batch


class FakeMetrics:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def pipeline(model: Any, max_batch_size: int = 8) -> Pipeline:
    return Pipeline(name="m", version="1", model=model, max_batch_size=max_batch_size)


def test_parameters_reach_the_model_and_absent_ones_are_none() -> None:
    model = Tuned()
    target = pipeline(model)
    [with_parameters] = target.run_group([PipelineCall([1, 2], True, {"scale": 3})])
    [without] = target.run_group([PipelineCall([4], False)])
    assert with_parameters == [{"item": 1, "scale": 3}, {"item": 2, "scale": 3}]
    assert without == [{"item": 4, "scale": 1}]
    assert model.calls == [([1, 2], {"scale": 3}), ([4], None)]


def test_a_model_without_parameters_refuses_them_as_invalid_input() -> None:
    target = pipeline(Plain())
    target.check_parameters(None)
    target.check_parameters({})
    with pytest.raises(InvalidInputError, match="takes no parameters"):
        target.check_parameters({"scale": 2})


def test_requests_with_different_parameters_never_share_a_model_call() -> None:
    model = Tuned()
    target = pipeline(model, max_batch_size=16)

    async def main() -> list[Any]:
        executor = DeviceExecutor(device="cpu", threads=1, queue_limit=64, metrics=FakeMetrics())
        try:
            futures = []
            for index in range(12):
                parameters = {"scale": index % 3} if index % 3 else None
                group = None if parameters is None else str(parameters)
                futures.append(
                    executor.submit(
                        target, PipelineCall([index], False, parameters), size=1, timeout_s=5, group=group
                    )
                )
            return list(await asyncio.gather(*futures))
        finally:
            executor.close()

    results = asyncio.run(main())
    for index, [output] in enumerate(results):
        assert output == {"item": index, "scale": index % 3 if index % 3 else 1}
    for batch, parameters in model.calls:
        expected = None if parameters is None else parameters["scale"]
        assert all((item % 3 or None) == expected for item in batch), (batch, parameters)
    assert len(model.calls) < 12  # equal parameters were still merged
