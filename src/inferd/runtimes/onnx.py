"""The onnx runtime: an onnxruntime session fed every input by name, answering its first output;
the CUDA provider where present."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.core.errors import ConfigError, MissingExtraError
from inferd.core.runtime import ArtifactOptions, Batch, InputRejected, Runtime
from inferd.core.tensors import Columns, Datatype, TensorDeclarations, TensorSpec, datatype_of

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# onnxruntime's element type names → numpy dtypes (the input is converted once, per request).
ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def choose_providers(device: str, available: Sequence[str], *, cpu_fallback: bool) -> list[str]:
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if cpu_fallback:
        return [CPU]
    raise ConfigError(
        f"device {device!r}: onnxruntime offers no {CUDA} here (available: {', '.join(available)}); "
        "install onnxruntime-gpu on a machine with a GPU, or set 'cpu_fallback: true' in model.yaml "
        "to run this model on the CPU provider"
    )


@dataclass(frozen=True, slots=True)
class SessionInput:
    """One input of the session: its name, numpy dtype (None: not a tensor type we convert to) and
    the fixed sizes of the dimensions after the batch one (None where the graph leaves them open)."""

    name: str
    dtype: np.dtype[Any] | None
    row_shape: tuple[int | None, ...]

    @classmethod
    def of(cls, arg: Any) -> SessionInput:
        dtype = ONNX_DTYPES.get(arg.type)
        row_shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or [])[1:])
        return cls(arg.name, np.dtype(dtype) if dtype is not None else None, row_shape)

    def rows(self, values: Any) -> np.ndarray[Any, Any]:
        """``values`` (the batch's rows of this input) as one array of the input's element type."""
        try:
            array = np.asarray(values, dtype=self.dtype)
        except (ValueError, TypeError) as exc:
            raise InputRejected(f"does not fit the model's input {self.describe()}: {exc}") from None
        shape = array.shape[1:]
        if len(shape) != len(self.row_shape) or any(
            want is not None and got != want for got, want in zip(shape, self.row_shape, strict=True)
        ):
            raise InputRejected(f"rows of shape {list(shape)} do not fit the model's input {self.describe()}")
        return array

    def describe(self) -> str:
        dims = ", ".join("any" if d is None else str(d) for d in self.row_shape)
        kind = self.dtype.name if self.dtype is not None else "tensor"
        return f"{self.name!r} (rows of shape [{dims}], {kind})"


def _listed(names: Any) -> str:
    return ", ".join(repr(name) for name in names) or "none"


class OnnxRuntime(Runtime):
    Options = ArtifactOptions

    def load(self) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise MissingExtraError("onnx", "onnx", "onnxruntime") from exc
        options = self.context.options
        assert isinstance(options, ArtifactOptions)
        artifact = self.context.file(options.artifact)
        spec = self.context.spec
        providers = choose_providers(
            spec.device, onnxruntime.get_available_providers(), cpu_fallback=spec.cpu_fallback
        )
        session_options = onnxruntime.SessionOptions()
        # The executor already runs several calls in parallel; one intra-op thread each avoids oversubscription.
        session_options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(artifact), sess_options=session_options, providers=providers
        )
        self._session = session
        self._inputs = tuple(SessionInput.of(arg) for arg in session.get_inputs())
        self._first = self._inputs[0]
        # One input takes the batch itself as its rows; several take one mapping {name: row} per item.
        self._several = len(self._inputs) > 1
        self.providers: list[str] = list(session.get_providers())

    def check_batch(self, batch: Batch) -> Batch:
        if self._several:
            return self._columns(batch)
        return self._first.rows(batch)

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        if self._several:
            feeds = self._columns(batch).arrays
        else:
            feeds = {self._first.name: np.asarray(batch, dtype=self._first.dtype)}
        first_output = self._session.run(None, feeds)[0]
        return list(first_output.tolist())

    def _columns(self, batch: Batch) -> Columns:
        """Every input's rows as one array: from Columns (V2 tensors), or from /v1 items, each a mapping
        ``{input name: row}`` of exactly the model's inputs."""
        names = [spec.name for spec in self._inputs]
        given: Mapping[str, Any]
        if isinstance(batch, Columns):
            given = batch.arrays
            if set(given) != set(names):
                raise InputRejected(f"the inputs sent are {_listed(given)}; the model's are {_listed(names)}")
        else:
            columns: dict[str, list[Any]] = {name: [] for name in names}
            for index, item in enumerate(batch):
                if not isinstance(item, Mapping) or set(item) != set(names):
                    got = _listed(item) if isinstance(item, Mapping) else f"a {type(item).__name__}"
                    raise InputRejected(
                        f"an item must be a mapping of the model's inputs {_listed(names)} to their rows, "
                        f"got {got}",
                        index=index,
                    )
                for name, column in columns.items():
                    column.append(item[name])
            given = columns
        return Columns({spec.name: spec.rows(given[spec.name]) for spec in self._inputs})

    def tensor_declarations(self) -> TensorDeclarations:
        inputs = tuple(spec for spec in map(self._spec_of, self._session.get_inputs()) if spec)
        output = self._spec_of(self._session.get_outputs()[0])
        return TensorDeclarations(inputs=inputs, outputs=(output,) if output else ())

    def _spec_of(self, arg: Any) -> TensorSpec | None:
        """A session input or output as V2 declares it (None for non-tensor values)."""
        dtype = ONNX_DTYPES.get(arg.type)
        if dtype is None:
            return None
        datatype = Datatype.BYTES if dtype == "object" else datatype_of(np.empty(0, dtype=dtype))
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return TensorSpec(name=arg.name, datatype=datatype, shape=shape)

    def unload(self) -> None:
        del self._session
