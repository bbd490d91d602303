"""The sklearn runtime: a joblib-pickled estimator; one method call per batch, outputs as JSON values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from inferd.core.errors import ConfigError, MissingExtraError
from inferd.core.runtime import ArtifactOptions, Batch, InputRejected, Runtime
from inferd.core.tensors import Datatype, TensorDeclarations, TensorSpec, datatype_of


class SklearnMethod(StrEnum):
    PREDICT = "predict"
    PREDICT_PROBA = "predict_proba"
    DECISION_FUNCTION = "decision_function"
    TRANSFORM = "transform"


class SklearnOptions(ArtifactOptions):
    method: SklearnMethod = SklearnMethod.PREDICT


def _row_problem(row: Any, expected: int) -> str | None:
    """Why one item is not a row of ``expected`` features (None: it is one)."""
    if isinstance(row, str | bytes | Mapping) or not hasattr(row, "__len__"):
        return f"is a {type(row).__name__}; the model takes a row of {expected} features"
    if len(row) != expected:
        return f"has {len(row)} features; the model takes {expected} (the estimator's n_features_in_)"
    return None


class SklearnRuntime(Runtime):
    Options = SklearnOptions

    def load(self) -> None:
        try:
            import joblib
            import numpy
            import sklearn  # unpickling needs it; fail with the extra's name, not a pickle error
        except ImportError as exc:
            raise MissingExtraError("sklearn", "sklearn", "scikit-learn") from exc
        options = self.context.options
        assert isinstance(options, SklearnOptions)
        estimator = joblib.load(self.context.file(options.artifact))
        method = getattr(estimator, options.method, None)  # sklearn hides what the final step lacks
        if not callable(method):
            offered = [m.value for m in SklearnMethod if callable(getattr(estimator, m, None))]
            raise ConfigError(
                f"method: the estimator ({type(estimator).__name__}) has no {options.method}(); "
                f"it offers: {', '.join(offered) or 'none of ' + ', '.join(SklearnMethod)}"
            )
        self._np = numpy
        self._config_context = sklearn.config_context
        self._method = method
        self.estimator = estimator
        # Estimators fitted on arrays know their width; those fitted on other input (text) do not.
        self.n_features: int | None = getattr(estimator, "n_features_in_", None)

    def check_batch(self, batch: Batch) -> Batch:
        expected = self.n_features
        if expected is None:
            return batch
        try:
            array = self._np.asarray(batch)
        except ValueError:  # rows of different lengths
            array = None
        if array is not None and array.ndim == 2 and array.shape[1] == expected:
            return array
        for index, row in enumerate(batch):  # only on the error path: find the row to name
            problem = _row_problem(row, expected)
            if problem is not None:
                raise InputRejected(problem, index=index)
        raise InputRejected(f"is not rows of {expected} features (the estimator's n_features_in_)")

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        np = self._np
        array = np.asarray(batch)
        if array.dtype.kind in "iub" or (array.dtype.kind == "f" and np.isfinite(array).all()):
            # A finite numeric array needs none of scikit-learn's per-call finiteness and parameter checks
            # (~9 % of CPU time of a one-row call to the bundled iris pipeline). The config is
            # thread-local, so other threads' calls keep their own.
            with self._config_context(assume_finite=True, skip_parameter_validation=True):
                result = self._method(array)
        else:  # NaN/inf or objects: scikit-learn's own checks say what is wrong
            result = self._method(array)
        if hasattr(result, "toarray"):  # sparse output (e.g. a one-hot transform)
            result = result.toarray()
        return list(result.tolist())

    def tensor_declarations(self) -> TensorDeclarations:
        """Rows of ``n_features_in_`` FP64 values in (when the estimator knows it); out, per method:
        ``predict`` a label (its classes' type) or value, the others a row of numbers."""
        options = self.context.options
        assert isinstance(options, SklearnOptions)
        inputs = (
            ()
            if self.n_features is None
            else (TensorSpec(name="input", datatype=Datatype.FP64, shape=(-1, self.n_features)),)
        )
        classes = getattr(self.estimator, "classes_", None)
        if options.method is SklearnMethod.PREDICT:
            datatype = Datatype.FP64 if classes is None else datatype_of(self._np.asarray(classes))
            shape: tuple[int, ...] = (-1,)
        else:
            datatype = Datatype.FP64
            binary_scores = (
                options.method is SklearnMethod.DECISION_FUNCTION
                and classes is not None
                and len(classes) == 2
            )
            width = -1 if classes is None or options.method is SklearnMethod.TRANSFORM else len(classes)
            shape = (-1,) if binary_scores else (-1, width)
        return TensorDeclarations(
            inputs=inputs, outputs=(TensorSpec(name=options.method.value, datatype=datatype, shape=shape),)
        )

    def unload(self) -> None:
        del self._method, self.estimator
