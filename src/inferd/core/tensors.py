"""V2 (Open Inference Protocol) tensors, transport-free: datatypes, decoding, checks, encoding, and
the mapping between request tensors and pipeline items.

How tensors reach a pipeline: a request whose inputs have N rows (their first dimension) is N items.
A single input gives each item its row itself (a scalar for shape [N], an array for [N, ...]); several
inputs give each item a mapping ``{input name: row}``. A model without preprocessor and validator gets
the whole single input as one numpy array ``[N, ...]`` (a sequence of its rows), and several inputs as
:class:`Columns` (one array per input), with no Python loop per row; hooks get plain JSON-like values
(``tolist()``), exactly as /v1 items. Outputs go the other
way: per-item outputs are stacked into one tensor, mapping outputs into one tensor per key.

Both the V2 REST adapter (JSON ``data`` or the binary extension) and the gRPC adapter
(``raw_input_contents``) use this module, so both check and convert tensors the same way.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, cast, overload, runtime_checkable

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferd.core.errors import InferenceError, InvalidInputError


class Datatype(StrEnum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


# Little-endian, as the binary extension and gRPC raw contents are defined.
NUMPY_DTYPES: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype("?"),
    Datatype.UINT8: np.dtype("<u1"),
    Datatype.UINT16: np.dtype("<u2"),
    Datatype.UINT32: np.dtype("<u4"),
    Datatype.UINT64: np.dtype("<u8"),
    Datatype.INT8: np.dtype("<i1"),
    Datatype.INT16: np.dtype("<i2"),
    Datatype.INT32: np.dtype("<i4"),
    Datatype.INT64: np.dtype("<i8"),
    Datatype.FP16: np.dtype("<f2"),
    Datatype.FP32: np.dtype("<f4"),
    Datatype.FP64: np.dtype("<f8"),
    Datatype.BYTES: np.dtype(object),
}
_BY_KIND_SIZE = {
    (dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items() if name is not Datatype.BYTES
}
_DATATYPE_NAMES = ", ".join(Datatype)
# JSON value kinds (numpy's kind of np.asarray(data)) each datatype accepts: no silent truncation of
# 1.5 into an integer, no booleans as numbers.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
_LENGTH = struct.Struct("<I")


class TensorSpec(BaseModel):
    """A declared input or output: ``{name, datatype, shape}``; -1 in ``shape`` means any size. The
    shape includes the first (batch) dimension, usually -1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    datatype: Datatype
    shape: tuple[int, ...]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < -1 for dim in shape):
            raise ValueError("shape dimensions must be -1 (any size) or >= 0")
        return shape


@dataclass(frozen=True, slots=True)
class TensorDeclarations:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@runtime_checkable
class DeclaresTensors(Protocol):
    """Implemented by runtimes that can tell their tensors from the artifact (an onnx session's inputs,
    an estimator's ``n_features_in_``). ``model.yaml`` declarations win over these, list by list."""

    def tensor_declarations(self) -> TensorDeclarations | None: ...


def resolve_declarations(
    inputs: Sequence[TensorSpec] | None, outputs: Sequence[TensorSpec] | None, runtime: object
) -> TensorDeclarations:
    defaults = runtime.tensor_declarations() if isinstance(runtime, DeclaresTensors) else None
    defaults = defaults or TensorDeclarations()
    return TensorDeclarations(
        inputs=tuple(inputs) if inputs is not None else defaults.inputs,
        outputs=tuple(outputs) if outputs is not None else defaults.outputs,
    )


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: Datatype
    array: np.ndarray[Any, Any]
    parameters: dict[str, Any] | None = field(default=None)

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


# -- request side ----------------------------------------------------------------------------------


def parse_datatype(name: str, value: Any) -> Datatype:
    try:
        return Datatype(value)
    except ValueError:
        raise InvalidInputError(
            f"input {name!r}: datatype {value!r} is not a V2 datatype (one of {_DATATYPE_NAMES})"
        ) from None


def parse_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise InvalidInputError(
            f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    return tuple(shape)


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _to_text(value: bytes) -> str | bytes:
    """BYTES elements reach pipelines as str (as in /v1 JSON) where they are UTF-8, else as bytes."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def decode_json(name: str, datatype: Datatype, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from JSON ``data``: flat row-major or nested, element count equal to ``shape``'s."""
    expected = _count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype is Datatype.BYTES:
        array = _json_bytes(name, data)
    else:
        try:
            raw = np.asarray(data)
        except (ValueError, OverflowError):
            raise InvalidInputError(
                f"input {name!r}: data must be numbers (flat, or nested with equal lengths) for {datatype}"
            ) from None
        if raw.dtype.kind in "fO" and NUMPY_DTYPES[datatype].kind in "iu":
            raw = _big_integers(name, data, datatype, raw)
        if raw.size and raw.dtype.kind not in _JSON_KINDS[NUMPY_DTYPES[datatype].kind]:
            what = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}.get(
                raw.dtype.kind, "values of mixed types or nested lists of unequal lengths"
            )
            raise InvalidInputError(
                f"input {name!r}: data holds {what}, which datatype {datatype} cannot carry"
            )
        array = _cast(name, raw, datatype)
    if array.size != expected:
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {array.size}"
        )
    return array.reshape(shape)


def _json_bytes(name: str, data: list[Any]) -> np.ndarray[Any, Any]:
    flat: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if isinstance(value, bytes):  # typed gRPC contents
                value = _to_text(value)
            elif not isinstance(value, str):
                raise InvalidInputError(
                    f"input {name!r}: BYTES data must be strings, got {type(value).__name__}"
                )
            flat.append(value)
        else:
            stack.pop()
    return _objects(flat)


def _objects(values: list[Any]) -> np.ndarray[Any, Any]:
    """A 1-D object array (np.array would build a 2-D array of equal-length strings' characters)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _big_integers(
    name: str, data: list[Any], datatype: Datatype, raw: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """numpy turns integers beyond int64 (UINT64's upper half) into floats or objects: read them
    exactly, as Python ints, where every element is an integer."""
    try:
        exact = np.array(data, dtype=object)
    except ValueError:
        return raw
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in exact.flat):
        return raw
    try:
        return np.array(data, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        info = np.iinfo(NUMPY_DTYPES[datatype])
        raise InvalidInputError(
            f"input {name!r}: values out of range for {datatype} ({info.min}..{info.max})"
        ) from None


def _cast(name: str, raw: np.ndarray[Any, Any], datatype: Datatype) -> np.ndarray[Any, Any]:
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise InvalidInputError(
                f"input {name!r}: values out of range for {datatype} ({info.min}..{info.max})"
            )
    return raw.astype(dtype, copy=False)


def decode_raw(
    name: str, datatype: Datatype, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray[Any, Any]:
    """A tensor from raw bytes (binary extension, gRPC ``raw_input_contents``): little-endian,
    row-major; BYTES elements each as a 4-byte little-endian length and the bytes. Numeric tensors
    are read-only views of ``raw`` (no copy)."""
    expected = _count(shape)
    if datatype is Datatype.BYTES:
        array = np.empty(expected, dtype=object)
        view = memoryview(raw)
        offset = 0
        for index in range(expected):
            if offset + 4 > len(view):
                raise InvalidInputError(
                    f"input {name!r}: shape {list(shape)} needs {expected} BYTES elements, "
                    f"the raw data ends after {index}"
                )
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            if offset + length > len(view):
                raise InvalidInputError(
                    f"input {name!r}: BYTES element {index} declares {length} bytes, only {len(view) - offset} remain"
                )
            array[index] = _to_text(bytes(view[offset : offset + length]))
            offset += length
        if offset != len(view):
            raise InvalidInputError(
                f"input {name!r}: {len(view) - offset} bytes left over after the {expected} BYTES elements "
                f"of shape {list(shape)}"
            )
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    size = expected * dtype.itemsize
    if len(raw) != size:
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {size} bytes "
            f"({expected} x {dtype.itemsize}), got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def check_declared(tensors: Sequence[Tensor], declared: Sequence[TensorSpec], *, model: str) -> None:
    """Names, datatypes and shapes against the model's declared inputs (nothing to check if none)."""
    if not declared:
        return
    by_name = {spec.name: spec for spec in declared}
    names = ", ".join(spec.name for spec in declared)
    sent = {tensor.name for tensor in tensors}
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidInputError(f"{model} has no input {tensor.name!r}; its inputs are: {names}")
        if tensor.datatype is not spec.datatype:
            raise InvalidInputError(
                f"input {tensor.name!r}: datatype {tensor.datatype}, {model} expects {spec.datatype}"
            )
        shape = tensor.array.shape
        if len(shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidInputError(
                f"input {tensor.name!r}: shape {list(shape)} does not match {model}'s "
                f"declared shape {list(spec.shape)} (-1 = any size)"
            )
    missing = [spec.name for spec in declared if spec.name not in sent]
    if missing:
        raise InvalidInputError(
            f"{model} needs input(s) {', '.join(map(repr, missing))}; its inputs are: {names}"
        )


class TensorRows(Sequence[Any]):
    """A request's input tensors as pipeline items: item i is row i (one input) or ``{name: row i}``."""

    __slots__ = ("tensors", "_rows")

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        if not tensors:
            raise InvalidInputError("the request has no inputs; send at least one tensor in 'inputs'")
        seen: set[str] = set()
        for tensor in tensors:
            if tensor.name in seen:
                raise InvalidInputError(f"input {tensor.name!r} is sent twice")
            seen.add(tensor.name)
            if tensor.array.ndim == 0:
                raise InvalidInputError(
                    f"input {tensor.name!r}: shape [] has no rows; the first dimension is the number of items"
                )
        rows = {tensor.array.shape[0] for tensor in tensors}
        if len(rows) != 1:
            sizes = ", ".join(f"{t.name!r}: {t.array.shape[0]}" for t in tensors)
            raise InvalidInputError(
                f"inputs must have the same first dimension (number of items), got {sizes}"
            )
        self.tensors = tuple(tensors)
        self._rows = rows.pop()

    def __len__(self) -> int:
        return self._rows

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return TensorRows([Tensor(t.name, t.datatype, t.array[index]) for t in self.tensors])
        if len(self.tensors) == 1:
            return self.tensors[0].array[index]
        return {t.name: t.array[index] for t in self.tensors}

    def batch(self) -> Sequence[Any]:
        """For models without hooks: the single input as one array (rows), several as :class:`Columns`."""
        if len(self.tensors) == 1:
            return cast(Sequence[Any], self.tensors[0].array)
        return Columns({t.name: t.array for t in self.tensors})

    def items(self) -> list[Any]:
        """Plain JSON-like items for preprocessors and validators, as /v1 would give them."""
        if len(self.tensors) == 1:
            return _plain_rows(self.tensors[0].array)
        columns = [(t.name, _plain_rows(t.array)) for t in self.tensors]
        return [{name: rows[i] for name, rows in columns} for i in range(self._rows)]


def _plain_rows(array: np.ndarray[Any, Any]) -> list[Any]:
    return list(array.tolist())


class Columns(Sequence[dict[str, Any]]):
    """A batch of items with several named inputs, held as one array per input (first dimension: the
    items): item i is ``{name: row i}``, so a runtime that feeds inputs by name (onnx) passes each
    array whole. Merged calls of such batches are joined input by input (:meth:`join`)."""

    __slots__ = ("arrays", "_rows")

    def __init__(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
        self.arrays = dict(arrays)
        self._rows = len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __reduce__(self) -> tuple[Any, ...]:
        return (Columns, (self.arrays,))

    def __len__(self) -> int:
        return self._rows

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Columns: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | Columns:
        if isinstance(index, slice):
            return Columns({name: array[index] for name, array in self.arrays.items()})
        return {name: array[index] for name, array in self.arrays.items()}

    @staticmethod
    def join(parts: Sequence[Any]) -> Columns | None:
        """Parts that are all Columns of the same inputs, datatypes and row shapes as one Columns;
        None where they differ (the caller falls back to a list of items)."""
        first = parts[0] if parts else None
        if not isinstance(first, Columns):
            return None
        for part in parts:
            if not isinstance(part, Columns) or part.arrays.keys() != first.arrays.keys():
                return None
            for name, array in part.arrays.items():
                want = first.arrays[name]
                if array.dtype != want.dtype or array.shape[1:] != want.shape[1:]:
                    return None
        return Columns({name: np.concatenate([part.arrays[name] for part in parts]) for name in first.arrays})


# -- response side ---------------------------------------------------------------------------------


def datatype_of(array: np.ndarray[Any, Any]) -> Datatype:
    if array.dtype.kind in "OUS":
        return Datatype.BYTES
    found = _BY_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if found is None:
        raise TypeError(f"numpy dtype {array.dtype} has no V2 datatype")
    return found


def _stack(name: str, values: Sequence[Any], spec: TensorSpec | None) -> Tensor:
    try:
        array = np.asarray(values)
        plain = array.dtype.kind != "O" or all(isinstance(v, str | bytes) for v in array.flat)
    except ValueError:  # ragged
        plain = False
    if not plain:
        # Values with no tensor form (mappings, ragged lists, None) travel as their JSON text.
        array = _objects([_json_text(value) for value in values])
    elif array.dtype.kind in "US":
        array = array.astype(object)
    try:
        datatype = datatype_of(array)
        if spec is not None and spec.datatype is not datatype:
            datatype = spec.datatype
            if datatype is Datatype.BYTES:
                array = array.astype(str).astype(object)
            else:
                array = array.astype(NUMPY_DTYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise InferenceError(
            f"output {name!r} cannot be sent as a V2 tensor: {exc}", cause=type(exc).__name__
        ) from None
    return Tensor(name, datatype, array)


def _json_text(value: Any) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def outputs_to_tensors(outputs: Sequence[Any], declared: Sequence[TensorSpec]) -> list[Tensor]:
    """Stack per-item outputs into tensors: mapping outputs give one tensor per key, anything else
    one tensor named after the first declared output (``output`` when none is declared)."""
    by_name = {spec.name: spec for spec in declared}
    if outputs and all(isinstance(output, Mapping) for output in outputs):
        keys = list(outputs[0])
        for index, output in enumerate(outputs):
            if list(output) != keys:
                raise InferenceError(
                    f"output {index} has keys {sorted(output)}, output 0 has {sorted(keys)}: "
                    "mapping outputs must have the same keys to be sent as V2 tensors"
                )
        return [_stack(key, [output[key] for output in outputs], by_name.get(key)) for key in keys]
    spec = declared[0] if declared else None
    return [_stack(spec.name if spec else "output", outputs, spec)]


def select_outputs(tensors: list[Tensor], names: Sequence[str] | None) -> list[Tensor]:
    """The request's ``outputs`` list: those tensors, in that order; None or empty: all."""
    if not names:
        return tensors
    by_name = {tensor.name: tensor for tensor in tensors}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise InvalidInputError(
            f"requested output(s) {', '.join(map(repr, missing))} do not exist; "
            f"the outputs are: {', '.join(by_name)}"
        )
    return [by_name[name] for name in names]


def encode_json(tensor: Tensor) -> list[Any]:
    """Row-major flattened ``data``; BYTES elements as strings (non-UTF-8 bytes are replaced: use
    binary data for arbitrary bytes)."""
    flat = tensor.array.ravel()
    if tensor.datatype is Datatype.BYTES:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return list(flat.tolist())


def encode_raw(tensor: Tensor) -> bytes:
    """Little-endian row-major bytes; BYTES elements each as a 4-byte length and the bytes."""
    if tensor.datatype is Datatype.BYTES:
        parts: list[bytes] = []
        for value in tensor.array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    array = tensor.array
    dtype = NUMPY_DTYPES[tensor.datatype]
    if array.dtype != dtype:
        array = array.astype(dtype)
    return np.ascontiguousarray(array).tobytes()
