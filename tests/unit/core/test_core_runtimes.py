"""Runtimes: sklearn and onnx load the iris artifacts and agree; missing extras name the pip extra."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest

from inferd.core.errors import ConfigError, MissingExtraError
from inferd.runtimes.loader import VersionModules
from inferd.runtimes.onnx import CUDA, load_onnx_model
from inferd.runtimes.sklearn import load_sklearn_model

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"
IRIS_ONNX = EXAMPLES / "iris" / "1" / "model.onnx"
IRIS_JOBLIB = EXAMPLES / "iris" / "2" / "model.joblib"

IRIS_ROWS = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([4.9, 3.0, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.4, 3.2, 4.5, 1.5], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
    ([5.8, 2.7, 5.1, 1.9], 2),
]


def test_sklearn_loads_iris_and_returns_plain_json_values() -> None:
    model = load_sklearn_model(artifact=IRIS_JOBLIB)
    outputs = model.predict([row for row, _ in IRIS_ROWS])
    assert outputs == [label for _, label in IRIS_ROWS]
    assert all(type(value) is int for value in outputs)


def test_onnx_loads_iris_on_cpu_and_returns_plain_json_values() -> None:
    model = load_onnx_model(artifact=IRIS_ONNX, device="cpu", cpu_fallback=False)
    assert model.providers == ["CPUExecutionProvider"]
    outputs = model.predict([row for row, _ in IRIS_ROWS])
    assert outputs == [label for _, label in IRIS_ROWS]
    assert all(type(value) is int for value in outputs)


def test_sklearn_and_onnx_agree() -> None:
    rows = [
        [4.0 + (i % 40) * 0.1, 2.0 + (i % 23) * 0.1, 1.0 + (i % 59) * 0.1, 0.1 + (i % 25) * 0.1]
        for i in range(200)
    ]
    sklearn_out = load_sklearn_model(artifact=IRIS_JOBLIB).predict(rows)
    onnx_out = load_onnx_model(artifact=IRIS_ONNX, device="cpu", cpu_fallback=False).predict(rows)
    assert len(sklearn_out) == len(onnx_out) == 200
    agreement = sum(a == b for a, b in zip(sklearn_out, onnx_out, strict=True))
    assert agreement >= 198  # float32 vs float64 may flip a point right on a decision boundary
    assert set(sklearn_out) == {0, 1, 2}


def test_missing_artifacts_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as sk:
        load_sklearn_model(artifact=tmp_path / "nope.joblib")
    assert "nope.joblib" in sk.value.message
    with pytest.raises(ConfigError) as ox:
        load_onnx_model(artifact=tmp_path / "nope.onnx", device="cpu", cpu_fallback=False)
    assert "nope.onnx" in ox.value.message


def test_onnx_gpu_without_cuda_needs_cpu_fallback() -> None:
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        model = load_onnx_model(artifact=IRIS_ONNX, device="gpu", cpu_fallback=False)
        assert model.providers[0] == CUDA
        return
    with pytest.raises(ConfigError) as info:
        load_onnx_model(artifact=IRIS_ONNX, device="gpu", cpu_fallback=False)
    assert CUDA in info.value.message
    assert "cpu_fallback" in info.value.message
    model = load_onnx_model(artifact=IRIS_ONNX, device="gpu", cpu_fallback=True)
    assert model.providers == ["CPUExecutionProvider"]
    assert model.predict([IRIS_ROWS[0][0]]) == [0]


@pytest.mark.parametrize("blocked", ["sklearn", "joblib"])
def test_sklearn_missing_extra_via_sys_modules(monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(MissingExtraError) as info:
        load_sklearn_model(artifact=IRIS_JOBLIB)
    assert "inferd[sklearn]" in info.value.message
    assert "scikit-learn" in info.value.message
    assert info.value.extra == "sklearn"
    assert info.value.code == "inference_error"


def test_onnx_missing_extra_via_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as info:
        load_onnx_model(artifact=IRIS_ONNX, device="cpu", cpu_fallback=False)
    assert "inferd[onnx]" in info.value.message
    assert "onnxruntime" in info.value.message


def block_imports(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_extras_via_import_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    block_imports(monkeypatch, "sklearn", "onnxruntime")
    with pytest.raises(MissingExtraError, match=r"inferd\[sklearn\]"):
        load_sklearn_model(artifact=IRIS_JOBLIB)
    with pytest.raises(MissingExtraError, match=r"inferd\[onnx\]"):
        load_onnx_model(artifact=IRIS_ONNX, device="cpu", cpu_fallback=False)


def test_missing_extra_is_reported_by_the_registry(
    monkeypatch: pytest.MonkeyPatch, repo: Path, make_version: Any
) -> None:
    from inferd.core.registry import ModelRegistry
    from inferd.runtimes.factory import build_pipeline

    make_version(repo, "iris", "1", "runtime: onnx\nartifact: model.onnx\n", copies={"model.onnx": IRIS_ONNX})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    registry = ModelRegistry(loader=build_pipeline, devices=["cpu"])
    registry.scan(repo)
    registry.load_at_start()
    version = registry.models["iris"].versions["1"]
    assert version.state == "failed"
    assert "inferd[onnx]" in (version.error or "")


def test_version_modules_import_once_and_resolve_attributes(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("COUNT = []\nCOUNT.append(1)\nclass A: ...\ndef f(): return 3\n")
    modules = VersionModules(tmp_path, "m_1")
    a = modules.resolve("mod:A", role="model")
    f = modules.resolve("mod:f", role="validator")
    assert a.__name__ == "A"
    assert f() == 3
    assert modules.resolve("mod:COUNT", role="model") == [1]  # imported once
    with pytest.raises(ConfigError, match="no attribute 'missing'"):
        modules.resolve("mod:missing", role="model")
