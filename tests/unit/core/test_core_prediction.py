"""PredictionService through build_engine: request/error counting, latency, label bounds, devices."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from inferd.bootstrap import Engine, build_engine
from inferd.core.errors import (
    InferenceError,
    InferenceTimeoutError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
)
from inferd.core.settings import Settings
from inferd.metrics import OTHER

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"
IRIS_ONNX = EXAMPLES / "iris" / "1" / "model.onnx"
TENANT = "acme"

MODELS_PY = """
import threading
import time


class Echo:
    def predict(self, batch):
        return list(batch)


class Strict:
    def predict(self, batch):
        return [item["x"] * 2 for item in batch]


def validate(item):
    if item.get("x", 0) < 0:
        raise ValueError("x must be non-negative")


class Broken:
    def predict(self, batch):
        raise RuntimeError("model exploded")


class Sleepy:
    def predict(self, batch):
        for item in batch:
            time.sleep(item)
        return list(batch)


class Gated:
    # The test opens the gate through the loaded pipeline: pipeline.model.instance.gate.set().
    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, batch):
        self.entered.set()
        self.gate.wait(5)
        return list(batch)


class WhereAmI:
    def predict(self, batch):
        return [threading.current_thread().name for _ in batch]
"""


def python_model(
    root: Path, make_version: Callable[..., Path], name: str, attr: str, extra: str = ""
) -> None:
    make_version(root, name, "1", f"runtime: python\nmodel: models:{attr}\n{extra}", {"models.py": MODELS_PY})


@pytest.fixture
def engine(repo: Path, make_version: Callable[..., Path]) -> Iterator[Engine]:
    python_model(repo, make_version, "echo", "Echo", "max_batch_size: 8\n")
    python_model(repo, make_version, "strict", "Strict", "validator: models:validate\n")
    python_model(repo, make_version, "broken", "Broken")
    python_model(repo, make_version, "sleepy", "Sleepy", "timeout_s: 0.2\n")
    python_model(repo, make_version, "gated", "Gated", "device: gpu\ntimeout_s: 2\n")
    python_model(repo, make_version, "where", "WhereAmI", "device: gpu\n")
    make_version(
        repo,
        "iris_gpu",
        "1",
        "runtime: onnx\nartifact: model.onnx\ndevice: gpu\n",
        copies={"model.onnx": IRIS_ONNX},
    )
    make_version(
        repo,
        "iris_fallback",
        "1",
        "runtime: onnx\nartifact: model.onnx\ndevice: gpu\ncpu_fallback: true\n",
        copies={"model.onnx": IRIS_ONNX},
    )
    settings = Settings(models=repo, devices="cpu=2,gpu=1", unknown_model_labels=3, queue_limit=1)
    built = build_engine(settings)
    try:
        yield built
    finally:
        built.close()


def sample(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def requests(engine: Engine, model: str, version: str = "1") -> float:
    return sample(engine, "inference_requests_total", model=model, version=version, tenant=TENANT)


def errors(engine: Engine, model: str, error_type: str, version: str = "1") -> float:
    return sample(
        engine, "inference_errors_total", model=model, version=version, error_type=error_type, tenant=TENANT
    )


def latency_count(engine: Engine, model: str, version: str = "1") -> float:
    return sample(engine, "inference_latency_seconds_count", model=model, version=version, tenant=TENANT)


async def predict(
    engine: Engine, model: str, inputs: list[Any], version: str | None = None, **kw: Any
) -> Any:
    return await engine.prediction.predict(
        tenant=TENANT, model=model, version=version, inputs=inputs, indexed=kw.pop("indexed", False), **kw
    )


def test_success_counts_one_request_and_observes_latency(engine: Engine) -> None:
    async def main() -> Any:
        first = await predict(engine, "echo", [1, 2, 3], indexed=True)
        second = await predict(engine, "echo", [{"a": 1}], version="1")
        return first, second

    first, second = asyncio.run(main())
    assert (first.model, first.version, first.outputs) == ("echo", "1", [1, 2, 3])
    assert second.outputs == [{"a": 1}]
    assert requests(engine, "echo") == 2  # a batch call is one request
    assert latency_count(engine, "echo") == 2
    assert (
        sample(
            engine,
            "inference_errors_total",
            model="echo",
            version="1",
            error_type="inference_error",
            tenant=TENANT,
        )
        == 0
    )


def test_request_is_counted_before_execution(engine: Engine) -> None:
    gated = engine.registry.models["gated"].versions["1"].pipeline
    assert gated is not None

    async def main() -> None:
        task = asyncio.create_task(predict(engine, "gated", ["x"]))
        assert await asyncio.to_thread(gated.model.instance.entered.wait, 2.0)
        assert requests(engine, "gated") == 1  # counted while the model is still running
        assert latency_count(engine, "gated") == 0
        gated.model.instance.gate.set()
        await task

    asyncio.run(main())
    assert requests(engine, "gated") == 1
    assert latency_count(engine, "gated") == 1


def test_unknown_model_and_version_are_model_not_found(engine: Engine) -> None:
    async def main() -> None:
        with pytest.raises(ModelNotFoundError):
            await predict(engine, "nope", [1])
        with pytest.raises(ModelNotFoundError):
            await predict(engine, "echo", [1], version="9")

    asyncio.run(main())
    assert sample(engine, "inference_requests_total", model="nope", version="", tenant=TENANT) == 1
    assert (
        sample(
            engine,
            "inference_errors_total",
            model="nope",
            version="",
            error_type="model_not_found",
            tenant=TENANT,
        )
        == 1
    )
    assert requests(engine, "echo", version="9") == 1
    assert errors(engine, "echo", "model_not_found", version="9") == 1
    assert requests(engine, "echo") == 0


def test_unknown_label_cardinality_is_bounded(engine: Engine) -> None:
    async def main() -> None:
        for name in ("a", "b", "c", "d", "e", "a"):
            with pytest.raises(ModelNotFoundError):
                await predict(engine, name, [1], version="1")

    asyncio.run(main())
    for name in ("a", "b", "c"):
        assert sample(engine, "inference_requests_total", model=name, version="1", tenant=TENANT) == (
            2 if name == "a" else 1
        )
    for name in ("d", "e"):
        assert (
            engine.metrics.registry.get_sample_value(
                "inference_requests_total", {"model": name, "version": "1", "tenant": TENANT}
            )
            is None
        )
    assert sample(engine, "inference_requests_total", model=OTHER, version=OTHER, tenant=TENANT) == 2
    assert (
        sample(
            engine,
            "inference_errors_total",
            model=OTHER,
            version=OTHER,
            error_type="model_not_found",
            tenant=TENANT,
        )
        == 2
    )


def test_invalid_input_is_counted(engine: Engine) -> None:
    async def main() -> None:
        with pytest.raises(InvalidInputError) as info:
            await predict(engine, "strict", [{"x": 1}, {"x": -1}], indexed=True)
        assert "inputs[1]" in info.value.message
        ok = await predict(engine, "strict", [{"x": 2}])
        assert ok.outputs == [4]

    asyncio.run(main())
    assert requests(engine, "strict") == 2
    assert errors(engine, "strict", "invalid_input") == 1
    assert errors(engine, "strict", "inference_error") == 0


def test_inference_error_is_counted(engine: Engine) -> None:
    async def main() -> None:
        with pytest.raises(InferenceError) as info:
            await predict(engine, "broken", [1])
        assert "model exploded" in str(info.value.detail)

    asyncio.run(main())
    assert requests(engine, "broken") == 1
    assert errors(engine, "broken", "inference_error") == 1
    assert latency_count(engine, "broken") == 1


def test_timeout_is_counted(engine: Engine) -> None:
    async def main() -> None:
        with pytest.raises(InferenceTimeoutError):
            await predict(engine, "sleepy", [0.6])

    asyncio.run(main())
    assert requests(engine, "sleepy") == 1
    assert errors(engine, "sleepy", "timeout") == 1
    assert latency_count(engine, "sleepy") == 1
    assert sample(engine, "executor_timeouts_total", device="cpu") == 1
    assert sample(engine, "executor_timeouts_total", device="gpu") == 0
    assert sample(engine, "executor_inflight", device="cpu") == 1  # the sleeping call still holds its thread


def test_client_timeout_is_capped_by_the_spec(engine: Engine) -> None:
    async def main() -> None:
        with pytest.raises(InferenceTimeoutError):
            await predict(engine, "sleepy", [0.6], timeout_s=30)  # spec timeout_s 0.2 still applies

    asyncio.run(main())


def test_overloaded_is_counted(engine: Engine) -> None:
    gated = engine.registry.models["gated"].versions["1"].pipeline
    assert gated is not None

    async def main() -> None:
        running = asyncio.create_task(predict(engine, "gated", ["running"]))
        # The gpu executor's only thread takes it and blocks.
        assert await asyncio.to_thread(gated.model.instance.entered.wait, 2.0)
        queued = asyncio.create_task(predict(engine, "gated", ["queued"]))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await predict(engine, "gated", ["rejected"])  # queue_limit 1 is full
        gated.model.instance.gate.set()
        assert (await running).outputs == ["running"]
        assert (await queued).outputs == ["queued"]

    asyncio.run(main())
    assert requests(engine, "gated") == 3
    assert errors(engine, "gated", "overloaded") == 1
    assert latency_count(engine, "gated") == 2  # the rejected request never executed


def test_executor_metrics_exist_for_every_device_at_zero(engine: Engine) -> None:
    for device in ("cpu", "gpu"):
        assert engine.metrics.registry.get_sample_value("executor_inflight", {"device": device}) == 0
        assert engine.metrics.registry.get_sample_value("executor_timeouts_total", {"device": device}) == 0


def test_gpu_python_model_runs_on_the_gpu_executor(engine: Engine) -> None:
    result = asyncio.run(predict(engine, "where", ["a", "b"]))
    assert all(name.startswith("inferd-gpu-") for name in result.outputs), result.outputs
    assert threading.current_thread().name not in result.outputs


def test_onnx_gpu_model_needs_cuda_or_cpu_fallback(engine: Engine) -> None:
    version = engine.registry.models["iris_gpu"].versions["1"]
    fallback = engine.registry.models["iris_fallback"].versions["1"]
    assert fallback.state == "loaded"
    result = asyncio.run(predict(engine, "iris_fallback", [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]))
    assert result.outputs == [0, 2]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert version.state == "loaded"
        return
    assert version.state == "failed"
    assert "CUDAExecutionProvider" in (version.error or "")
    assert "cpu_fallback" in (version.error or "")
    assert any("iris_gpu" in reason and "cpu_fallback" in reason for reason in engine.registry.readiness()[1])

    async def main() -> None:
        with pytest.raises(ModelNotReadyError) as info:
            await predict(engine, "iris_gpu", [[5.1, 3.5, 1.4, 0.2]])
        assert info.value.code == "inference_error"
        assert "failed to load" in info.value.message

    asyncio.run(main())
    assert requests(engine, "iris_gpu") == 1
    assert errors(engine, "iris_gpu", "inference_error") == 1
