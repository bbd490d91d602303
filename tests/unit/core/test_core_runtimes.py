"""Built-in runtimes: sklearn and onnx load the iris artifacts and agree; sklearn's methods; input of
the wrong width is invalid input of that request only; arrays in; missing extras name the pip extra."""

from __future__ import annotations

import asyncio
import builtins
import gc
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_helpers import GRID, IRIS_JOBLIB, IRIS_ONNX, LABELS, ROWS, scanned

from inferd.core.errors import ConfigError, InvalidInputError, MissingExtraError
from inferd.core.model_spec import read_model_spec
from inferd.core.pipeline import PipelineCall
from inferd.core.runtime import InputRejected, Runtime
from inferd.core.tensors import Datatype, TensorDeclarations, TensorSpec
from inferd.runtimes.factory import PipelineFactory
from inferd.runtimes.loader import VersionModules
from inferd.runtimes.onnx import CUDA, OnnxRuntime
from inferd.runtimes.python import takes_parameters
from inferd.runtimes.sklearn import SklearnRuntime

LoadRuntime = Callable[..., Runtime]


@pytest.fixture
def load_runtime(repo: Path, make_version: Callable[..., Path]) -> LoadRuntime:
    """Write ``repo/m/<n>/model.yaml`` (+ copied files) and load its runtime the way the server does."""
    count = iter(range(1, 1000))

    def load(
        model_yaml: str, copies: dict[str, Path] | None = None, files: dict[str, str] | None = None
    ) -> Any:
        version = str(next(count))
        folder = make_version(repo, "m", version, model_yaml, files=files, copies=copies)
        return PipelineFactory().runtime("m", version, folder, read_model_spec(folder / "model.yaml"))

    return load


def sklearn_iris(load_runtime: LoadRuntime, extra: str = "") -> Any:
    return load_runtime(f"runtime: sklearn\nartifact: model.joblib\n{extra}", {"model.joblib": IRIS_JOBLIB})


def onnx_iris(load_runtime: LoadRuntime, extra: str = "") -> Any:
    return load_runtime(f"runtime: onnx\nartifact: model.onnx\n{extra}", {"model.onnx": IRIS_ONNX})


def test_sklearn_loads_iris_and_returns_plain_json_values(load_runtime: LoadRuntime) -> None:
    model = sklearn_iris(load_runtime)
    assert isinstance(model, SklearnRuntime)
    outputs = model.predict(ROWS, None)
    assert outputs == LABELS
    assert all(type(value) is int for value in outputs)


def test_onnx_loads_iris_on_cpu_and_returns_plain_json_values(load_runtime: LoadRuntime) -> None:
    model = onnx_iris(load_runtime)
    assert isinstance(model, OnnxRuntime)
    assert model.providers == ["CPUExecutionProvider"]
    outputs = model.predict(ROWS, None)
    assert outputs == LABELS
    assert all(type(value) is int for value in outputs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_batches_need_no_per_row_conversion(load_runtime: LoadRuntime, dtype: Any) -> None:
    array = np.asarray(ROWS, dtype=dtype)
    for model in (sklearn_iris(load_runtime), onnx_iris(load_runtime)):
        checked = model.check_batch(array)
        assert isinstance(checked, np.ndarray) and checked.shape == (6, 4)
        assert model.predict(checked, None) == LABELS
        assert model.predict(array, None) == LABELS


def test_sklearn_skips_its_finiteness_check_only_for_finite_input(load_runtime: LoadRuntime) -> None:
    import sklearn

    model = sklearn_iris(load_runtime)
    seen: list[bool] = []
    method = model._method
    model._method = lambda array: seen.append(sklearn.get_config()["assume_finite"]) or method(array)
    assert model.predict(np.asarray(ROWS, dtype=np.float32), None) == LABELS
    assert model.predict(ROWS, None) == LABELS
    with pytest.raises(ValueError, match="NaN"):
        model.predict([[float("nan"), 1.0, 1.0, 1.0]], None)
    assert seen == [True, True, False]
    assert sklearn.get_config()["assume_finite"] is False  # the caller's config is left as it was


def test_sklearn_and_onnx_agree(load_runtime: LoadRuntime) -> None:
    rows = GRID
    sklearn_out = sklearn_iris(load_runtime).predict(rows, None)
    onnx_out = onnx_iris(load_runtime).predict(rows, None)
    assert len(sklearn_out) == len(onnx_out) == 200
    agreement = sum(a == b for a, b in zip(sklearn_out, onnx_out, strict=True))
    assert agreement >= 198  # float32 vs float64 may flip a point right on a decision boundary
    assert set(sklearn_out) == {0, 1, 2}


# -- sklearn methods -------------------------------------------------------------------------------


def test_sklearn_predict_proba_and_decision_function(load_runtime: LoadRuntime) -> None:
    proba = sklearn_iris(load_runtime, "method: predict_proba\n").predict(ROWS, None)
    assert len(proba) == 6 and all(len(row) == 3 for row in proba)
    assert all(abs(sum(row) - 1.0) < 1e-9 for row in proba)
    assert [max(range(3), key=row.__getitem__) for row in proba] == LABELS
    scores = sklearn_iris(load_runtime, "method: decision_function\n").predict(ROWS, None)
    assert [max(range(3), key=row.__getitem__) for row in scores] == LABELS
    assert all(type(value) is float for row in scores for value in row)


def test_sklearn_transform(load_runtime: LoadRuntime, tmp_path: Path) -> None:
    import joblib
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(ROWS))
    joblib.dump(scaler, tmp_path / "scaler.joblib")
    model = load_runtime(
        "runtime: sklearn\nartifact: scaler.joblib\nmethod: transform\n",
        {"scaler.joblib": tmp_path / "scaler.joblib"},
    )
    out = np.asarray(model.predict(ROWS, None))
    assert out.shape == (6, 4)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)


def test_sklearn_method_the_estimator_lacks_is_a_load_error(load_runtime: LoadRuntime) -> None:
    with pytest.raises(ConfigError) as info:
        sklearn_iris(load_runtime, "method: transform\n")
    message = info.value.message
    assert "runtime 'sklearn'" in message and "no transform()" in message
    assert "predict, predict_proba, decision_function" in message  # what it offers instead


def test_sklearn_unknown_method_is_reported_at_scan(repo: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(
        repo,
        "m",
        "1",
        "runtime: sklearn\nartifact: model.joblib\nmethod: predict_log\n",
        copies={"model.joblib": IRIS_JOBLIB},
    )
    registry = scanned(repo, load=False)
    [problem] = registry.problems
    assert problem.path == str(folder / "model.yaml")
    assert "method" in problem.message and "'predict_proba'" in problem.message


# -- input width -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "index", "fragment"),
    [
        ([[5.1, 3.5, 1.4]], 0, "has 3 features; the model takes 4"),
        ([[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4, 5]], 1, "has 5 features"),
        ([[5.1, 3.5, 1.4, 0.2], "text"], 1, "is a str; the model takes a row of 4 features"),
        ([5.1], 0, "is a float"),
    ],
)
def test_sklearn_rows_of_the_wrong_width_are_rejected(
    load_runtime: LoadRuntime, batch: list[Any], index: int, fragment: str
) -> None:
    model = sklearn_iris(load_runtime)
    assert model.n_features == 4
    with pytest.raises(InputRejected) as info:
        model.check_batch(batch)
    assert info.value.index == index
    assert fragment in str(info.value)
    with pytest.raises(InputRejected, match="shape"):
        onnx_iris(load_runtime).check_batch(np.zeros((2, 3), dtype=np.float32))


def test_wrong_width_fails_only_its_own_request_with_invalid_input(
    repo: Path, make_version: Callable[..., Path]
) -> None:
    make_version(
        repo,
        "iris",
        "2",
        "runtime: sklearn\nartifact: model.joblib\nmax_batch_size: 8\n",
        copies={"model.joblib": IRIS_JOBLIB},
    )
    make_version(
        repo,
        "iris",
        "1",
        "runtime: onnx\nartifact: model.onnx\nmax_batch_size: 8\n",
        copies={"model.onnx": IRIS_ONNX},
    )
    registry = scanned(repo)
    for version, expected in (
        ("2", "4 (the estimator's n_features_in_)"),
        ("1", "(rows of shape [4], float32)"),
    ):
        pipeline = registry.models["iris"].versions[version].pipeline
        assert pipeline is not None
        good, bad_single, bad_batch = pipeline.run_group(
            [
                PipelineCall([ROWS[0], ROWS[2]], True),
                PipelineCall([[1.0, 2.0, 3.0]], False),
                PipelineCall([ROWS[0], [1.0, 2.0]], True),
            ]
        )
        assert good == [0, 1]  # merged with the bad requests, still served
        assert isinstance(bad_single, InvalidInputError) and bad_single.code == "invalid_input"
        assert bad_single.message.startswith("input: ") and expected in bad_single.message
        assert isinstance(bad_batch, InvalidInputError)
        assert bad_batch.message.startswith("inputs[1]: " if version == "2" else "inputs: ")


def test_input_of_the_wrong_width_fails_at_job_submission(
    repo: Path, make_version: Callable[..., Path]
) -> None:
    """DataPlane.check_inputs (what JobService runs before storing a job) runs the runtime's check."""
    from inferd.bootstrap import build_engine
    from inferd.core.settings import load_settings

    make_version(
        repo, "iris", "2", "runtime: sklearn\nartifact: model.joblib\n", copies={"model.joblib": IRIS_JOBLIB}
    )
    settings = load_settings(flags={"models": repo, "access_log": "off", "devices": "cpu=1"}, environ={})
    engine = build_engine(settings)

    async def main() -> None:
        with pytest.raises(InvalidInputError, match="has 3 features; the model takes 4"):
            await engine.dataplane.check_inputs(
                tenant="t", model="iris", version=None, inputs=[[1.0, 2.0, 3.0]], indexed=False
            )
        checked = await engine.dataplane.check_inputs(
            tenant="t", model="iris", version=None, inputs=[ROWS[0]], indexed=False
        )
        assert checked.version == "2"

    try:
        asyncio.run(main())
    finally:
        engine.close()


# -- files, devices, extras ------------------------------------------------------------------------


def test_missing_artifacts_are_config_errors_naming_the_runtime(load_runtime: LoadRuntime) -> None:
    for runtime, file_name in (("sklearn", "nope.joblib"), ("onnx", "nope.onnx")):
        with pytest.raises(ConfigError) as info:
            load_runtime(f"runtime: {runtime}\nartifact: {file_name}\n")
        assert f"runtime '{runtime}'" in info.value.message
        assert file_name in info.value.message and "does not exist" in info.value.message


def test_artifact_outside_the_version_folder_is_refused(load_runtime: LoadRuntime) -> None:
    with pytest.raises(ConfigError, match="inside the version folder"):
        load_runtime("runtime: sklearn\nartifact: ../../model.joblib\n")


def test_onnx_gpu_without_cuda_needs_cpu_fallback(load_runtime: LoadRuntime) -> None:
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        model = onnx_iris(load_runtime, "device: gpu\n")
        assert model.providers[0] == CUDA
        return
    with pytest.raises(ConfigError) as info:
        onnx_iris(load_runtime, "device: gpu\n")
    assert CUDA in info.value.message
    assert "cpu_fallback" in info.value.message
    model = onnx_iris(load_runtime, "device: gpu\ncpu_fallback: true\n")
    assert model.providers == ["CPUExecutionProvider"]
    assert model.predict([ROWS[0]], None) == [0]


def test_unload_releases_the_onnx_session_and_the_estimator(load_runtime: LoadRuntime) -> None:
    onnx_model = onnx_iris(load_runtime)
    sklearn_model = sklearn_iris(load_runtime)
    session = weakref.ref(onnx_model._session)
    estimator = weakref.ref(sklearn_model.estimator)
    onnx_model.unload()
    sklearn_model.unload()
    gc.collect()
    assert session() is None
    assert estimator() is None


@pytest.mark.parametrize("blocked", ["sklearn", "joblib"])
def test_sklearn_missing_extra_via_sys_modules(
    monkeypatch: pytest.MonkeyPatch, load_runtime: LoadRuntime, blocked: str
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(MissingExtraError) as info:
        sklearn_iris(load_runtime)
    assert "inferd[sklearn]" in info.value.message
    assert "scikit-learn" in info.value.message
    assert info.value.extra == "sklearn"
    assert info.value.code == "inference_error"


def test_onnx_missing_extra_via_sys_modules(
    monkeypatch: pytest.MonkeyPatch, load_runtime: LoadRuntime
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as info:
        onnx_iris(load_runtime)
    assert "inferd[onnx]" in info.value.message
    assert "onnxruntime" in info.value.message


def block_imports(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_extras_via_import_hook(monkeypatch: pytest.MonkeyPatch, load_runtime: LoadRuntime) -> None:
    block_imports(monkeypatch, "sklearn", "onnxruntime")
    with pytest.raises(MissingExtraError, match=r"inferd\[sklearn\]"):
        sklearn_iris(load_runtime)
    with pytest.raises(MissingExtraError, match=r"inferd\[onnx\]"):
        onnx_iris(load_runtime)


def test_missing_extra_is_reported_by_the_registry(
    monkeypatch: pytest.MonkeyPatch, repo: Path, make_version: Any
) -> None:
    make_version(repo, "iris", "1", "runtime: onnx\nartifact: model.onnx\n", copies={"model.onnx": IRIS_ONNX})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    registry = scanned(repo)
    version = registry.models["iris"].versions["1"]
    assert version.state == "failed"
    assert "inferd[onnx]" in (version.error or "")


# -- python runtime --------------------------------------------------------------------------------


class Tuned:
    def predict(self, batch: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        return batch


class Plain:
    def predict(self, batch: list[Any]) -> list[Any]:
        return batch


class KeywordsOnly:
    def predict(self, batch: list[Any], **options: Any) -> list[Any]:
        return [options for _ in batch]


def test_which_predict_signatures_take_parameters() -> None:
    assert takes_parameters(Tuned().predict)
    assert takes_parameters(KeywordsOnly().predict)
    assert not takes_parameters(Plain().predict)


def test_python_runtime_passes_parameters_only_when_given(load_runtime: LoadRuntime) -> None:
    code = """
    class Model:
        def __init__(self):
            self.seen = []
            self.unloaded = 0

        def predict(self, batch, parameters=None):
            self.seen.append(parameters)
            return batch

        def unload(self):
            self.unloaded += 1
    """
    runtime = load_runtime("runtime: python\nmodel: mod:Model\n", files={"mod.py": code})
    assert runtime.takes_parameters
    instance = runtime.instance
    runtime.predict([1], None)
    runtime.predict([1], {})
    runtime.predict([1], {"scale": 2})
    assert instance.seen == [None, None, {"scale": 2}]
    runtime.unload()
    assert instance.unloaded == 1
    assert runtime.instance is None
    plain = load_runtime(
        "runtime: python\nmodel: mod:Plain\n",
        files={"mod.py": "class Plain:\n    def predict(self, batch):\n        return batch\n"},
    )
    assert not plain.takes_parameters
    plain.unload()  # a class without unload() needs none


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


def test_sklearn_and_onnx_declare_their_tensors(load_runtime: LoadRuntime) -> None:
    rows_of_4 = (-1, 4)
    assert onnx_iris(load_runtime).tensor_declarations() == TensorDeclarations(
        inputs=(TensorSpec(name="input", datatype=Datatype.FP32, shape=rows_of_4),),
        outputs=(TensorSpec(name="label", datatype=Datatype.INT64, shape=(-1,)),),
    )
    assert sklearn_iris(load_runtime).tensor_declarations() == TensorDeclarations(
        inputs=(TensorSpec(name="input", datatype=Datatype.FP64, shape=rows_of_4),),
        outputs=(TensorSpec(name="predict", datatype=Datatype.INT64, shape=(-1,)),),
    )
    proba = sklearn_iris(load_runtime, "method: predict_proba\n").tensor_declarations()
    assert proba.outputs == (TensorSpec(name="predict_proba", datatype=Datatype.FP64, shape=(-1, 3)),)


def test_model_yaml_declarations_win_over_the_runtime(repo: Path, make_version: Callable[..., Path]) -> None:
    make_version(
        repo,
        "iris",
        "2",
        "runtime: sklearn\nartifact: model.joblib\ninputs:\n  - {name: features, datatype: FP32, shape: [-1, 4]}\n",
        copies={"model.joblib": IRIS_JOBLIB},
    )
    pipeline = scanned(repo).models["iris"].versions["2"].pipeline
    assert pipeline is not None
    assert pipeline.tensors.inputs == (TensorSpec(name="features", datatype=Datatype.FP32, shape=(-1, 4)),)
    assert pipeline.tensors.outputs[0].name == "predict"  # not declared: the runtime's
