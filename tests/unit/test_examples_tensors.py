"""The bundled example models served from V2 tensors give the same outputs as from /v1 items: the
declared tensors in their model.yaml, rows as items, outputs stacked back into tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.core.errors import InferdError
from inferd.core.model_spec import read_model_spec
from inferd.core.pipeline import Pipeline, PipelineCall
from inferd.core.tensors import (
    Datatype,
    Tensor,
    TensorRows,
    decode_json,
    decode_raw,
    encode_json,
)
from inferd.runtimes.factory import PipelineFactory

MODELS_DIR = Path(__file__).resolve().parents[2] / "examples" / "models"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
TEXTS = ["I love it, the food was delicious.", "Awful, a complete waste of money. I hate it."]


def pipeline(model: str, version: str) -> Pipeline:
    version_dir = MODELS_DIR / model / version
    return PipelineFactory()(model, version, version_dir, read_model_spec(version_dir / "model.yaml"))


def run(target: Pipeline, items: Any) -> list[Any]:
    (outcome,) = target.run_group([PipelineCall(items, True)])
    if isinstance(outcome, InferdError):
        raise outcome
    return outcome


@pytest.mark.parametrize("version", ["1", "2"])
def test_iris_tensor_request_matches_v1(version: str) -> None:
    pytest.importorskip("onnxruntime" if version == "1" else "sklearn")
    target = pipeline("iris", version)
    (spec,) = target.tensors.inputs
    assert (spec.name, spec.datatype, spec.shape) == ("input", Datatype.FP32, (-1, 4))
    raw = np.asarray(IRIS_ROWS, dtype="<f4").tobytes()
    array = decode_raw("input", Datatype.FP32, (3, 4), raw)
    rows = TensorRows([Tensor("input", Datatype.FP32, array)])
    (label,) = run(target, rows)
    assert (label.name, label.datatype, label.shape) == ("label", Datatype.INT64, [3])
    assert encode_json(label) == run(target, IRIS_ROWS) == [0, 1, 2]


def test_sentiment_bytes_tensor_matches_v1() -> None:
    target = pipeline("sentiment", "1")
    array = decode_json("text", Datatype.BYTES, (2,), TEXTS)
    rows = TensorRows([Tensor("text", Datatype.BYTES, array)])
    v1 = run(target, [{"text": text} for text in TEXTS])
    label, scores = run(target, rows)
    assert encode_json(label) == [output["label"] for output in v1] == ["positive", "negative"]
    assert [json.loads(s) for s in encode_json(scores)] == [output["scores"] for output in v1]
