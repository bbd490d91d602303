"""The sklearn runtime: a joblib-pickled estimator; output items are plain JSON values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferd.core.errors import ConfigError, MissingExtraError


class SklearnModel:
    def __init__(self, estimator: Any) -> None:
        import numpy as np

        self._np = np
        self._estimator = estimator

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        result = self._estimator.predict(self._np.asarray(batch))
        return list(result.tolist())


def load_sklearn_model(*, artifact: Path) -> SklearnModel:
    try:
        import joblib
        import sklearn  # noqa: F401  (unpickling needs it; fail with the extra's name, not a pickle error)
    except ImportError as exc:
        raise MissingExtraError("sklearn", "sklearn", "scikit-learn") from exc
    if not artifact.is_file():
        raise ConfigError(f"artifact {artifact} does not exist")
    return SklearnModel(joblib.load(artifact))
