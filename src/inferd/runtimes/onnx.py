"""The onnx runtime: an onnxruntime session on the model's first input and first output;
the CUDA provider where present."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from inferd.core.errors import ConfigError, MissingExtraError
from inferd.core.runtime import ArtifactOptions, Batch, InputRejected, Runtime
from inferd.core.tensors import Datatype, TensorDeclarations, TensorSpec, datatype_of

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


class OnnxRuntime(Runtime):
    Options = ArtifactOptions

    def load(self) -> None:
        try:
            import numpy
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
        first = session.get_inputs()[0]
        self._np = numpy
        self._session = session
        self._input_name: str = first.name
        dtype = ONNX_DTYPES.get(first.type)
        self._dtype = numpy.dtype(dtype) if dtype is not None else None
        # Fixed sizes of the dimensions after the batch one (None where the graph leaves them open).
        self._row_shape = tuple(d if isinstance(d, int) else None for d in (first.shape or [])[1:])
        self.providers: list[str] = list(session.get_providers())

    def check_batch(self, batch: Batch) -> Batch:
        try:
            array = self._np.asarray(batch, dtype=self._dtype)
        except (ValueError, TypeError) as exc:
            raise InputRejected(f"does not fit the model's input {self._describe()}: {exc}") from None
        shape = array.shape[1:]
        if len(shape) != len(self._row_shape) or any(
            want is not None and got != want for got, want in zip(shape, self._row_shape, strict=True)
        ):
            raise InputRejected(
                f"rows of shape {list(shape)} do not fit the model's input {self._describe()}"
            )
        return array

    def _describe(self) -> str:
        dims = ", ".join("any" if d is None else str(d) for d in self._row_shape)
        kind = self._dtype.name if self._dtype is not None else "tensor"
        return f"{self._input_name!r} (rows of shape [{dims}], {kind})"

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        array = self._np.asarray(batch, dtype=self._dtype)
        first_output = self._session.run(None, {self._input_name: array})[0]
        return list(first_output.tolist())

    def tensor_declarations(self) -> TensorDeclarations:
        specs = (self._spec_of(self._session.get_inputs()[0]), self._spec_of(self._session.get_outputs()[0]))
        return TensorDeclarations(
            inputs=(specs[0],) if specs[0] else (), outputs=(specs[1],) if specs[1] else ()
        )

    def _spec_of(self, arg: Any) -> TensorSpec | None:
        """The session's first input or output as V2 declares it (None for non-tensor values)."""
        dtype = ONNX_DTYPES.get(arg.type)
        if dtype is None:
            return None
        datatype = Datatype.BYTES if dtype == "object" else datatype_of(self._np.empty(0, dtype=dtype))
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return TensorSpec(name=arg.name, datatype=datatype, shape=shape)

    def unload(self) -> None:
        del self._session
