"""The torch runtime on the CPU: TorchScript (.pt) and torch.export (.pt2) iris examples, arrays in,
devices (gpu without CUDA, cpu_fallback), unload, and a server without torch."""

from __future__ import annotations

import asyncio
import builtins
import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_helpers import (
    EXAMPLES,
    GRID,
    IRIS_EXPORTED,
    IRIS_JOBLIB,
    IRIS_TORCHSCRIPT,
    LABELS,
    ROWS,
    scanned,
)

from inferd.core.errors import ConfigError, MissingExtraError, ModelNotReadyError
from inferd.core.model_spec import read_model_spec
from inferd.core.pipeline import PipelineCall
from inferd.core.registry import ModelRegistry
from inferd.core.tensors import Datatype, TensorDeclarations, TensorSpec
from inferd.runtimes.factory import PipelineFactory

torch = pytest.importorskip("torch")

from inferd.runtimes.torch import TorchRuntime, rows_of  # noqa: E402  (after the importorskip)

ARTIFACTS = {"pt": IRIS_TORCHSCRIPT, "pt2": IRIS_EXPORTED}


def block_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import torch`` fails, as where the extra is not installed. (Not by ``sys.modules["torch"] = None``:
    other libraries, e.g. scikit-learn, look torch up there and would break on None.)"""
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.fixture
def load_torch(repo: Path, make_version: Callable[..., Path]) -> Callable[..., Any]:
    count = iter(range(1, 1000))

    def load(kind: str, extra: str = "") -> Any:
        version = str(next(count))
        artifact = ARTIFACTS[kind]
        folder = make_version(
            repo,
            "m",
            version,
            f"runtime: torch\nartifact: {artifact.name}\n{extra}",
            copies={artifact.name: artifact},
        )
        return PipelineFactory().runtime("m", version, folder, read_model_spec(folder / "model.yaml"))

    return load


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_iris_examples_predict_known_rows(load_torch: Callable[..., Any], kind: str) -> None:
    model = load_torch(kind)
    assert isinstance(model, TorchRuntime) and model.device == "cpu"
    outputs = model.predict(ROWS, None)
    assert outputs == LABELS
    assert all(type(value) is int for value in outputs)
    assert model.predict([ROWS[0]], None) == [0]  # a batch of one (the dynamic batch dimension)


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_array_batches_including_read_only_ones(load_torch: Callable[..., Any], kind: str) -> None:
    model = load_torch(kind)
    array = np.asarray(ROWS, dtype=np.float64)  # converted to the configured dtype (float32)
    assert model.predict(array, None) == LABELS
    frozen = np.asarray(ROWS, dtype=np.float32)
    frozen.setflags(write=False)  # like a view of a request buffer
    assert model.predict(frozen, None) == LABELS


def test_torch_agrees_with_sklearn(load_torch: Callable[..., Any]) -> None:
    import joblib

    rows = np.asarray(GRID)
    expected = joblib.load(IRIS_JOBLIB).predict(rows).tolist()
    assert set(expected) == {0, 1, 2}
    for kind in ("pt", "pt2"):
        labels = load_torch(kind).predict(rows, None)
        assert sum(a == b for a, b in zip(labels, expected, strict=True)) >= 198  # float32 vs float64


def test_runs_under_inference_mode(load_torch: Callable[..., Any]) -> None:
    model = load_torch("pt2")
    seen: list[bool] = []
    real = model.module
    model.module = lambda x: (seen.append(torch.is_inference_mode_enabled()), real(x))[1]
    assert model.predict([ROWS[0]], None) == [0]
    assert seen == [True]


def test_gpu_without_cuda_fails_to_load_unless_cpu_fallback(load_torch: Callable[..., Any]) -> None:
    if torch.cuda.is_available():
        assert load_torch("pt2", "device: gpu\n").device == "cuda"
        return
    for kind in ("pt", "pt2"):
        with pytest.raises(ConfigError) as info:
            load_torch(kind, "device: gpu\n")
        message = info.value.message
        assert "runtime 'torch'" in message and "device 'gpu'" in message
        assert "no CUDA device" in message and "cpu_fallback: true" in message
        fallback = load_torch(kind, "device: gpu\ncpu_fallback: true\n")
        assert fallback.device == "cpu"
        assert fallback.predict(ROWS, None) == LABELS


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_unload_releases_the_module(load_torch: Callable[..., Any], kind: str) -> None:
    model = load_torch(kind)
    module = weakref.ref(model.module)
    model.unload()
    if module() is not None:  # released by reference counting, unless a cycle holds it
        gc.collect()
    assert module() is None


def test_artifact_of_another_kind_is_a_load_error(
    repo: Path, make_version: Callable[..., Path], load_torch: Callable[..., Any]
) -> None:
    folder = make_version(repo, "m", "9", "runtime: torch\nartifact: model.onnx\n", files={"model.onnx": "x"})
    with pytest.raises(ConfigError, match=r"must end in \.pt \(a TorchScript archive.*or \.pt2"):
        PipelineFactory().runtime("m", "9", folder, read_model_spec(folder / "model.yaml"))


def test_dtype_option_is_checked_at_scan(repo: Path, make_version: Callable[..., Path]) -> None:
    make_version(
        repo,
        "m",
        "1",
        "runtime: torch\nartifact: model.pt2\ndtype: complex\n",
        copies={"model.pt2": IRIS_EXPORTED},
    )
    registry = scanned(repo, load=False)
    [problem] = registry.problems
    assert "dtype" in problem.message and "'float32'" in problem.message


def test_outputs_become_one_json_value_per_row() -> None:
    labels = torch.tensor([1, 0])
    scores = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    assert rows_of(torch, labels) == [1, 0]
    assert rows_of(torch, (labels, scores)) == [[1, [0.25, 0.75]], [0, [0.5, 0.5]]]
    assert rows_of(torch, {"label": labels, "scores": scores}) == [
        {"label": 1, "scores": [0.25, 0.75]},
        {"label": 0, "scores": [0.5, 0.5]},
    ]
    with pytest.raises(TypeError, match="returned str"):
        rows_of(torch, "nope")


def test_missing_torch_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, load_torch: Callable[..., Any]
) -> None:
    block_torch(monkeypatch)
    with pytest.raises(MissingExtraError) as info:
        load_torch("pt2")
    assert "pip install 'inferd[torch]'" in info.value.message


def test_examples_without_torch_keep_the_server_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example repository on an install without the torch extra: every other model loads, readiness
    holds, and a request to the torch example says what to install."""
    block_torch(monkeypatch)
    registry = ModelRegistry(loader=PipelineFactory(), devices=["cpu", "gpu"])
    registry.scan(EXAMPLES)
    registry.load_at_start()
    assert registry.problems == [] and registry.readiness() == ([], [])
    assert registry.models["iris"].versions["2"].state == "loaded"
    version = registry.models["iris_torch"].versions["2"]
    assert version.state == "unloaded"
    with pytest.raises(ModelNotReadyError) as info:
        asyncio.run(registry.ensure_loaded(version))
    assert "/readyz says why" in info.value.message
    assert version.state == "failed"
    blocking, other = registry.readiness()
    assert blocking == []  # still ready
    assert [reason for reason in other if "iris_torch version 2" in reason and "inferd[torch]" in reason]
    registry.close()


def test_examples_load_on_first_use_with_torch() -> None:
    registry = ModelRegistry(loader=PipelineFactory(), devices=["cpu", "gpu"])
    registry.scan(EXAMPLES)
    for name in ("1", "2"):
        pipeline = asyncio.run(registry.ensure_loaded(registry.models["iris_torch"].versions[name]))
        [outputs] = pipeline.run_group([PipelineCall(ROWS, True)])
        assert outputs == LABELS
    registry.close()


def test_an_exported_program_declares_its_tensors(load_torch: Callable[..., Any]) -> None:
    assert load_torch("pt2").tensor_declarations() == TensorDeclarations(
        inputs=(TensorSpec(name="x", datatype=Datatype.FP32, shape=(-1, 4)),),
        outputs=(TensorSpec(name="output", datatype=Datatype.INT64, shape=(-1,)),),
    )
    assert load_torch("pt").tensor_declarations() is None  # TorchScript does not record them
