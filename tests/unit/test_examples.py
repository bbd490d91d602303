"""The bundled example model repository (examples/models), exercised directly, without the server.

Each python-runtime module is imported by path, instantiated, loaded and called; the sklearn artifact
is loaded with joblib and the ONNX one run with onnxruntime, the way the runtimes use them.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

MODELS_DIR = Path(__file__).resolve().parents[2] / "examples" / "models"
ECHO_DIR = MODELS_DIR / "echo" / "1"
IRIS_ONNX_DIR = MODELS_DIR / "iris" / "1"
IRIS_SKLEARN_DIR = MODELS_DIR / "iris" / "2"
SENTIMENT_DIR = MODELS_DIR / "sentiment" / "1"
SLOW_DIR = MODELS_DIR / "slow" / "1"

VERSION_DIRS = sorted(path.parent for path in MODELS_DIR.glob("*/*/model.yaml"))
RUNTIMES = {"python", "sklearn", "onnx", "torch"}
STAGES = ("model", "preprocessor", "validator", "postprocessor")
MAX_ARTIFACT_BYTES = 100 * 1024

# First row of each class in sklearn's iris data (rows 0, 50, 100) plus a few more, with their species.
IRIS_ROWS: list[tuple[list[float], int]] = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([4.9, 3.0, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.4, 3.2, 4.5, 1.5], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
    ([5.8, 2.7, 5.1, 1.9], 2),
]

POSITIVE_TEXTS = [
    "I love it, the food was delicious and the staff were friendly.",
    "Great product, works perfectly. Highly recommend!",
    "Excellent service, I am very happy.",
]
NEGATIVE_TEXTS = [
    "This is terrible, it broke after a day and support was rude.",
    "Awful, a complete waste of money. I hate it.",
    "The worst hotel ever: dirty and horrible.",
]


def read_config(version_dir: Path) -> dict[str, Any]:
    config = yaml.safe_load((version_dir / "model.yaml").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def import_by_path(path: Path) -> ModuleType:
    """Import a module file the way the server does: by path, under a name no other test uses."""
    name = "example_" + "_".join(path.relative_to(MODELS_DIR).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(version_dir: Path, ref: str) -> Any:
    """``module:attr`` in ``version_dir`` -> the attribute."""
    module_name, _, attr = ref.partition(":")
    assert module_name and attr, f"{ref!r} is not module:attr"
    return getattr(import_by_path(version_dir / f"{module_name}.py"), attr)


def schema_validator(version_dir: Path) -> jsonschema.protocols.Validator:
    schema = read_config(version_dir).get("input_schema") or {}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# --- every model.yaml -----------------------------------------------------------------------------


def test_repository_has_every_example() -> None:
    found = {str(path.relative_to(MODELS_DIR)) for path in VERSION_DIRS}
    assert found == {"echo/1", "iris/1", "iris/2", "iris_torch/1", "iris_torch/2", "sentiment/1", "slow/1"}


@pytest.mark.parametrize("version_dir", VERSION_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_model_yaml_is_consistent(version_dir: Path) -> None:
    config = read_config(version_dir)
    assert config["runtime"] in RUNTIMES
    assert config["device"] == "cpu"
    assert isinstance(config["timeout_s"], int | float) and config["timeout_s"] > 0
    assert isinstance(config["max_batch_size"], int) and config["max_batch_size"] >= 1
    assert isinstance(config.get("description"), str) and config["description"]
    schema_validator(version_dir)  # the schema itself is valid JSON Schema
    if config["runtime"] == "python":
        assert "artifact" not in config
        assert callable(resolve(version_dir, config["model"]))
    else:
        assert "model" not in config
        artifact = version_dir / config["artifact"]
        assert artifact.is_file()
        assert artifact.stat().st_size < MAX_ARTIFACT_BYTES
    for stage in STAGES[1:]:
        if stage in config:
            assert callable(resolve(version_dir, config[stage]))


# --- echo -----------------------------------------------------------------------------------------


def test_echo_returns_inputs_unchanged() -> None:
    config = read_config(ECHO_DIR)
    assert config["max_batch_size"] == 64 and "input_schema" not in config
    model = resolve(ECHO_DIR, config["model"])()
    model.load(str(ECHO_DIR))
    batch: list[Any] = [{"a": 1}, [1, 2, 3], "text", 4.5, None, True]
    assert model.predict(batch) == batch
    assert model.predict([]) == []


# --- iris -----------------------------------------------------------------------------------------


def iris_sklearn_predict(batch: list[list[float]]) -> list[int]:
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    estimator = joblib.load(IRIS_SKLEARN_DIR / read_config(IRIS_SKLEARN_DIR)["artifact"])
    # the sklearn runtime: estimator.predict(np.asarray(batch)), one output per item
    return [int(label) for label in estimator.predict(np.asarray(batch))]


def iris_onnx_predict(batch: list[list[float]]) -> list[int]:
    ort = pytest.importorskip("onnxruntime")
    path = IRIS_ONNX_DIR / read_config(IRIS_ONNX_DIR)["artifact"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the onnx runtime: float32 batch fed to the first input, first output per item
    first_input = session.get_inputs()[0].name
    outputs = session.run(None, {first_input: np.asarray(batch, dtype=np.float32)})
    labels = outputs[0]
    assert labels.dtype == np.int64 and labels.shape == (len(batch),)
    return [int(label) for label in labels]


def test_iris_onnx_first_output_is_the_int64_label() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(IRIS_ONNX_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_inputs()[0].shape[1] == 4
    assert session.get_outputs()[0].name == "label"
    assert session.get_outputs()[0].type == "tensor(int64)"


@pytest.mark.parametrize("predict", [iris_onnx_predict, iris_sklearn_predict], ids=["onnx", "sklearn"])
def test_iris_predicts_known_rows(predict: Any) -> None:
    rows = [row for row, _ in IRIS_ROWS]
    assert predict(rows) == [label for _, label in IRIS_ROWS]
    assert predict([rows[0]]) == [0]


def test_iris_versions_agree_on_the_whole_data_set() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_iris()
    rows = np.asarray(data.data).tolist()
    onnx_labels = iris_onnx_predict(rows)
    assert onnx_labels == iris_sklearn_predict(rows)
    accuracy = float(np.mean(np.asarray(onnx_labels) == np.asarray(data.target)))
    assert accuracy > 0.95


@pytest.mark.parametrize("version_dir", [IRIS_ONNX_DIR, IRIS_SKLEARN_DIR], ids=["onnx", "sklearn"])
def test_iris_input_schema(version_dir: Path) -> None:
    validator = schema_validator(version_dir)
    assert validator.is_valid([5.1, 3.5, 1.4, 0.2])
    assert validator.is_valid([5, 3, 1, 0])
    for bad in ([5.1, 3.5, 1.4], [5.1, 3.5, 1.4, 0.2, 1.0], ["5.1", 3.5, 1.4, 0.2], {"x": 1}, []):
        assert not validator.is_valid(bad), bad


# --- sentiment ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentiment() -> ModuleType:
    return import_by_path(SENTIMENT_DIR / "sentiment.py")


@pytest.fixture(scope="module")
def sentiment_model(sentiment: ModuleType) -> Any:
    model = sentiment.SentimentModel()
    model.load(str(SENTIMENT_DIR))
    return model


def classify(sentiment: ModuleType, model: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The whole pipeline on raw texts: validate -> preprocess -> predict -> postprocess."""
    items = [{"text": text} for text in texts]
    for item in items:
        sentiment.validate(item)
    return [sentiment.postprocess(out) for out in model.predict([sentiment.preprocess(i) for i in items])]


def test_sentiment_config_wires_the_pipeline() -> None:
    config = read_config(SENTIMENT_DIR)
    assert config["model"] == "sentiment:SentimentModel"
    assert config["preprocessor"] == "sentiment:preprocess"
    assert config["validator"] == "sentiment:validate"
    assert config["postprocessor"] == "sentiment:postprocess"
    assert config["max_batch_size"] == 32


def test_sentiment_classifies_clear_sentences(sentiment: ModuleType, sentiment_model: Any) -> None:
    results = classify(sentiment, sentiment_model, POSITIVE_TEXTS + NEGATIVE_TEXTS)
    labels = [result["label"] for result in results]
    assert labels == ["positive"] * len(POSITIVE_TEXTS) + ["negative"] * len(NEGATIVE_TEXTS)
    positive_scores = [result["scores"]["positive"] for result in results]
    assert min(positive_scores[: len(POSITIVE_TEXTS)]) > 0.75  # confidently, not by a hair
    assert max(positive_scores[len(POSITIVE_TEXTS) :]) < 0.25


def test_sentiment_batch_matches_single_items(sentiment: ModuleType, sentiment_model: Any) -> None:
    texts = POSITIVE_TEXTS + NEGATIVE_TEXTS
    batched = sentiment_model.predict([sentiment.preprocess({"text": t}) for t in texts])
    singles = [sentiment_model.predict([sentiment.preprocess({"text": t})])[0] for t in texts]
    assert batched == pytest.approx(singles, abs=1e-12)
    assert all(isinstance(p, float) and 0.0 < p < 1.0 for p in batched)
    assert sentiment_model.predict([]) == []


def test_sentiment_model_works_without_the_preprocessor(sentiment: ModuleType, sentiment_model: Any) -> None:
    text = POSITIVE_TEXTS[0]
    raw = sentiment_model.predict([{"text": text}])
    assert raw == pytest.approx(sentiment_model.predict([sentiment.preprocess({"text": text})]))


def test_sentiment_predict_before_load_fails(sentiment: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="before load"):
        sentiment.SentimentModel().predict([{"text": "good"}])


def test_sentiment_load_rejects_foreign_weights(sentiment: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "weights.json").write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(ValueError, match="format"):
        sentiment.SentimentModel().load(str(tmp_path))


def test_sentiment_preprocessor_builds_normalised_features(sentiment: ModuleType) -> None:
    item = sentiment.preprocess({"text": "Great food, GREAT staff!"})
    assert item["text"] == "Great food, GREAT staff!"
    assert item["tokens"] == ["great", "food", "great", "staff"]
    features = item["features"]
    assert isinstance(features, np.ndarray) and features.shape == (sentiment.N_FEATURES,)
    assert float(np.linalg.norm(features)) == pytest.approx(1.0)
    again = sentiment.preprocess({"text": "great food great staff"})["features"]
    np.testing.assert_array_equal(features, again)  # case and punctuation do not matter
    assert sentiment.tokenize("Don't stop") == ["don't", "stop"]


@pytest.mark.parametrize("text", ["1234 !!!", "   ", "...", "42", "--- 3.14 ---", "_"])
def test_sentiment_validator_rejects_texts_without_words(sentiment: ModuleType, text: str) -> None:
    with pytest.raises(ValueError, match="^text contains no words$"):
        sentiment.validate({"text": text})
    with pytest.raises(ValueError, match="^text contains no words$"):  # after the preprocessor too
        sentiment.validate(sentiment.preprocess({"text": text}))


@pytest.mark.parametrize("text", ["ok", "42 is fine", "Été génial", "a"])
def test_sentiment_validator_accepts_texts_with_words(sentiment: ModuleType, text: str) -> None:
    assert sentiment.validate({"text": text}) is None
    assert sentiment.validate(sentiment.preprocess({"text": text})) is None


def test_sentiment_postprocessor_shapes_the_output(sentiment: ModuleType) -> None:
    assert sentiment.postprocess(0.87654321) == {
        "label": "positive",
        "scores": {"positive": 0.8765, "negative": 0.1235},
    }
    low = sentiment.postprocess(0.12)
    assert low == {"label": "negative", "scores": {"positive": 0.12, "negative": 0.88}}
    assert sentiment.postprocess(np.float64(0.5))["label"] == "positive"
    for p in (0.0, 1e-9, 0.33333, 0.49999, 0.999999, 1.0):
        scores = sentiment.postprocess(p)["scores"]
        assert scores["positive"] + scores["negative"] == pytest.approx(1.0)
        assert all(type(v) is float and round(v, 4) == v for v in scores.values())


def test_sentiment_input_schema() -> None:
    validator = schema_validator(SENTIMENT_DIR)
    assert validator.is_valid({"text": "hello"})
    assert validator.is_valid({"text": "x" * 5000})
    for bad in ({}, {"text": ""}, {"text": "x" * 5001}, {"text": 3}, {"text": "hi", "lang": "en"}, "hi"):
        assert not validator.is_valid(bad), bad


# --- slow -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sleepy() -> ModuleType:
    return import_by_path(SLOW_DIR / "sleepy.py")


def test_slow_config_demonstrates_timeouts() -> None:
    config = read_config(SLOW_DIR)
    assert config["model"] == "sleepy:Sleepy"
    assert config["timeout_s"] == 1 and config["max_batch_size"] == 1


def test_slow_sleeps_and_reports(sleepy: ModuleType) -> None:
    model = sleepy.Sleepy()
    assert model.predict([{}]) == [{"slept": 0.0}]
    started = time.monotonic()
    assert model.predict([{"sleep_s": 0.05}]) == [{"slept": 0.05}]
    assert time.monotonic() - started >= 0.045


def test_slow_caps_the_sleep(sleepy: ModuleType) -> None:
    assert sleepy.sleep_seconds({"sleep_s": 1000}) == 30.0
    assert sleepy.sleep_seconds({"sleep_s": -5}) == 0.0
    assert sleepy.sleep_seconds({"sleep_s": 2}) == 2.0
    assert sleepy.sleep_seconds({}) == 0.0


def test_slow_input_schema() -> None:
    validator = schema_validator(SLOW_DIR)
    assert validator.is_valid({})
    assert validator.is_valid({"sleep_s": 0.5})
    for bad in ({"sleep_s": "1"}, {"sleep_s": -1}, {"other": 1}, [1]):
        assert not validator.is_valid(bad), bad
