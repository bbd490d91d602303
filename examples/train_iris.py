"""Train the iris example model and write both of its versions.

    python examples/train_iris.py

writes ``examples/models/iris/1/model.onnx`` (onnx runtime) and ``examples/models/iris/2/model.joblib``
(sklearn runtime). Both hold the same StandardScaler + LogisticRegression pipeline trained on the iris
data set that ships with scikit-learn, and both output the predicted class index (0 setosa,
1 versicolor, 2 virginica) as an integer: the ONNX graph is converted without a ZipMap, so its first
output is the int64 ``label``. Training is deterministic: rerunning rewrites identical files for a
given set of library versions.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from onnx import TensorProto
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODELS_DIR = Path(__file__).resolve().parent / "models" / "iris"
ONNX_PATH = MODELS_DIR / "1" / "model.onnx"
JOBLIB_PATH = MODELS_DIR / "2" / "model.joblib"
RANDOM_STATE = 0
TARGET_OPSET = 17


def train() -> Pipeline:
    data = load_iris()
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=1000, random_state=RANDOM_STATE)),
        ]
    )
    pipeline.fit(x, y)
    return pipeline


def to_onnx_bytes(pipeline: Pipeline) -> bytes:
    classifier = pipeline.named_steps["classify"]
    model = convert_sklearn(
        pipeline,
        name="iris_logreg",
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    first_output = model.graph.output[0]
    if first_output.name != "label" or first_output.type.tensor_type.elem_type != TensorProto.INT64:
        raise RuntimeError(f"unexpected first ONNX output: {first_output}")
    return bytes(model.SerializeToString())


def main() -> None:
    pipeline = train()
    data = load_iris()
    accuracy = float(pipeline.score(data.data, data.target))

    ONNX_PATH.parent.mkdir(parents=True, exist_ok=True)
    ONNX_PATH.write_bytes(to_onnx_bytes(pipeline))
    JOBLIB_PATH.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, JOBLIB_PATH)

    print(f"training accuracy: {accuracy:.4f}")
    for path in (ONNX_PATH, JOBLIB_PATH):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
