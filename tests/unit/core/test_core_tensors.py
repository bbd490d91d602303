"""V2 tensors: every datatype in both encodings, nested and flat data, BYTES, declared shapes, the
mapping to pipeline items and back, and the errors a client gets for bad tensors."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from runtime_helpers import FakeRuntime

from inferd.core.errors import InferdError, InferenceError, InvalidInputError
from inferd.core.pipeline import Pipeline, PipelineCall
from inferd.core.tensors import (
    NUMPY_DTYPES,
    Columns,
    Datatype,
    Tensor,
    TensorDeclarations,
    TensorRows,
    TensorSpec,
    check_declared,
    datatype_of,
    decode_json,
    decode_raw,
    encode_json,
    encode_raw,
    outputs_to_tensors,
    parse_datatype,
    parse_shape,
    resolve_declarations,
    select_outputs,
)

NUMERIC = [dt for dt in Datatype if dt is not Datatype.BYTES]
SAMPLE: dict[Datatype, list[Any]] = {
    Datatype.BOOL: [True, False, True, True, False, False],
    Datatype.UINT8: [0, 1, 2, 127, 255, 9],
    Datatype.UINT16: [0, 1, 2, 65535, 4, 5],
    Datatype.UINT32: [0, 1, 2, 2**32 - 1, 4, 5],
    Datatype.UINT64: [0, 1, 2, 2**63, 4, 5],
    Datatype.INT8: [-128, -1, 0, 1, 127, 3],
    Datatype.INT16: [-32768, -1, 0, 1, 32767, 3],
    Datatype.INT32: [-(2**31), -1, 0, 1, 2**31 - 1, 3],
    Datatype.INT64: [-(2**63), -1, 0, 1, 2**63 - 1, 3],
    Datatype.FP16: [0.5, -1.0, 2.25, 0.0, 1024.0, -0.125],
    Datatype.FP32: [0.5, -1.0, 2.25, 0.0, 2.0**40, -0.125],
    Datatype.FP64: [0.1, -1.0, 2.25, 0.0, 1e300, -0.125],
}


def tensor(name: str, values: Any, datatype: Datatype) -> Tensor:
    return Tensor(name, datatype, np.asarray(values, dtype=NUMPY_DTYPES[datatype]))


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips_json_flat_and_nested(datatype: Datatype) -> None:
    values = SAMPLE[datatype]
    flat = decode_json("x", datatype, (2, 3), values)
    nested = decode_json("x", datatype, (2, 3), [values[:3], values[3:]])
    assert flat.dtype == NUMPY_DTYPES[datatype] and flat.shape == (2, 3)
    assert np.array_equal(flat, nested)
    assert encode_json(Tensor("x", datatype, flat)) == values
    assert datatype_of(flat) is datatype


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips_raw_little_endian(datatype: Datatype) -> None:
    array = decode_json("x", datatype, (3, 2), SAMPLE[datatype])
    raw = encode_raw(Tensor("x", datatype, array))
    assert raw == array.astype(NUMPY_DTYPES[datatype].newbyteorder("<")).tobytes()
    assert len(raw) == 6 * NUMPY_DTYPES[datatype].itemsize
    back = decode_raw("x", datatype, (3, 2), raw)
    assert back.shape == (3, 2) and np.array_equal(back, array)


def test_raw_is_little_endian_on_the_wire() -> None:
    assert encode_raw(tensor("x", [1], Datatype.INT32)) == b"\x01\x00\x00\x00"
    assert decode_raw("x", Datatype.UINT16, (1,), b"\x01\x02").tolist() == [0x0201]
    # A big-endian array from a model is converted, not sent as-is.
    big = Tensor("x", Datatype.INT32, np.array([1], dtype=">i4"))
    assert encode_raw(big) == b"\x01\x00\x00\x00"


def test_bytes_json_and_raw() -> None:
    texts = ["héllo", "", "world", "a b"]
    array = decode_json("t", Datatype.BYTES, (2, 2), [texts[:2], texts[2:]])
    assert array.dtype == object and array.shape == (2, 2)
    assert array.ravel().tolist() == texts
    raw = encode_raw(Tensor("t", Datatype.BYTES, array))
    encoded = [t.encode() for t in texts]
    assert raw == b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    back = decode_raw("t", Datatype.BYTES, (2, 2), raw)
    assert back.tolist() == [texts[:2], texts[2:]]
    assert encode_json(Tensor("t", Datatype.BYTES, back)) == texts


def test_bytes_elements_that_are_not_utf8_stay_bytes() -> None:
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    (value,) = decode_raw("t", Datatype.BYTES, (1,), raw).tolist()
    assert value == b"\xff\xfe"
    assert encode_raw(Tensor("t", Datatype.BYTES, decode_raw("t", Datatype.BYTES, (1,), raw))) == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (struct.pack("<I", 5) + b"abc", "declares 5 bytes, only 3 remain"),
        (struct.pack("<I", 1) + b"a", "ends after 1"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"zz", "2 bytes left over"),
        (b"\x01\x00", "ends after 0"),
    ],
)
def test_bad_raw_bytes_name_the_tensor_and_the_problem(raw: bytes, problem: str) -> None:
    shape = (1,) if problem.startswith("declares") else (2,)
    with pytest.raises(InvalidInputError) as info:
        decode_raw("words", Datatype.BYTES, shape, raw)
    assert "'words'" in info.value.message and problem in info.value.message


def test_raw_size_mismatch_names_expected_bytes() -> None:
    with pytest.raises(
        InvalidInputError, match=r"'x': shape \[2, 4\] of FP32 needs 32 bytes \(8 x 4\), got 30"
    ):
        decode_raw("x", Datatype.FP32, (2, 4), b"\0" * 30)


def test_raw_numeric_tensors_are_views_without_copy() -> None:
    raw = np.arange(8, dtype="<f4").tobytes()
    array = decode_raw("x", Datatype.FP32, (2, 4), raw)
    assert not array.flags.writeable and array.base is not None


@pytest.mark.parametrize(
    ("datatype", "data", "problem"),
    [
        (Datatype.INT32, [1.5, 2], "holds numbers, which datatype INT32 cannot carry"),
        (Datatype.FP32, ["a", "b"], "which datatype FP32 cannot carry"),
        (Datatype.INT64, [True, False], "holds booleans"),
        (Datatype.BOOL, [1, 0], "holds integers, which datatype BOOL cannot carry"),
        (Datatype.UINT8, [1, 256], "out of range for UINT8 (0..255)"),
        (Datatype.INT8, [-129, 0], "out of range for INT8"),
        (Datatype.UINT32, [-1, 0], "out of range for UINT32"),
        (Datatype.FP32, [[1, 2], [3]], "nested with equal lengths"),
        (Datatype.BYTES, ["a", 1], "BYTES data must be strings, got int"),
    ],
)
def test_bad_json_data_is_invalid_input(datatype: Datatype, data: Any, problem: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_json("feat", datatype, (2,), data)
    assert "input 'feat'" in info.value.message and problem in info.value.message


def test_json_element_count_must_match_shape() -> None:
    with pytest.raises(InvalidInputError, match=r"input 'x': shape \[2, 4\] needs 8 elements, data has 6"):
        decode_json("x", Datatype.FP32, (2, 4), [1.0] * 6)
    # A scalar data value is one element.
    assert decode_json("x", Datatype.INT64, (1,), 7).tolist() == [7]


def test_integers_in_float_data_are_accepted() -> None:
    assert decode_json("x", Datatype.FP32, (2,), [1, 2.5]).tolist() == [1.0, 2.5]


def test_datatype_and_shape_parsing() -> None:
    assert parse_datatype("x", "FP16") is Datatype.FP16
    with pytest.raises(
        InvalidInputError, match=r"input 'x': datatype 'FLOAT' is not a V2 datatype \(one of BOOL"
    ):
        parse_datatype("x", "FLOAT")
    assert parse_shape("x", [2, 0, 3]) == (2, 0, 3)
    for bad in ([-1], [1.5], "3", [True], None):
        with pytest.raises(InvalidInputError, match="input 'x': shape must be a list of non-negative"):
            parse_shape("x", bad)


IRIS = (TensorSpec(name="input", datatype=Datatype.FP32, shape=(-1, 4)),)


def test_declared_shape_and_datatype() -> None:
    ok = tensor("input", [[1, 2, 3, 4]] * 3, Datatype.FP32)
    check_declared([ok], IRIS, model="model iris version 1")
    check_declared([tensor("anything", [1], Datatype.INT8)], (), model="m")  # nothing declared
    cases = [
        (
            tensor("input", [[1, 2, 3]], Datatype.FP32),
            "shape [1, 3] does not match model iris version 1's declared shape [-1, 4]",
        ),
        (tensor("input", [1, 2, 3, 4], Datatype.FP32), "shape [4] does not match"),
        (tensor("input", [[1, 2, 3, 4]], Datatype.FP64), "datatype FP64, model iris version 1 expects FP32"),
        (tensor("petals", [[1, 2, 3, 4]], Datatype.FP32), "has no input 'petals'; its inputs are: input"),
    ]
    for bad, problem in cases:
        with pytest.raises(InvalidInputError) as info:
            check_declared([bad], IRIS, model="model iris version 1")
        assert problem in info.value.message
    two = (IRIS[0], TensorSpec(name="mask", datatype=Datatype.BOOL, shape=(-1,)))
    with pytest.raises(InvalidInputError, match="needs input\\(s\\) 'mask'"):
        check_declared([tensor("input", [[1, 2, 3, 4]], Datatype.FP32)], two, model="m")


def test_tensor_spec_validation() -> None:
    spec = TensorSpec.model_validate({"name": "x", "datatype": "INT64", "shape": [-1, 3]})
    assert spec.shape == (-1, 3) and spec.datatype is Datatype.INT64
    for bad in (
        {"name": "x", "datatype": "INT", "shape": [1]},
        {"name": "x", "datatype": "FP32", "shape": [-2]},
        {"name": "", "datatype": "FP32", "shape": [1]},
        {"name": "x", "datatype": "FP32", "shape": [1], "dims": [1]},
    ):
        with pytest.raises(ValidationError):
            TensorSpec.model_validate(bad)


class Declaring:
    def __init__(self, declarations: TensorDeclarations | None) -> None:
        self._declarations = declarations

    def tensor_declarations(self) -> TensorDeclarations | None:
        return self._declarations

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


def test_model_yaml_declarations_win_over_the_runtime_list_by_list() -> None:
    out = (TensorSpec(name="y", datatype=Datatype.INT64, shape=(-1,)),)
    runtime = Declaring(TensorDeclarations(inputs=IRIS, outputs=out))
    assert resolve_declarations(None, None, runtime) == TensorDeclarations(IRIS, out)
    mine = [TensorSpec(name="z", datatype=Datatype.FP64, shape=(-1,))]
    assert resolve_declarations(None, mine, runtime) == TensorDeclarations(IRIS, tuple(mine))
    assert resolve_declarations(None, None, Declaring(None)) == TensorDeclarations()
    assert resolve_declarations(mine, None, object()) == TensorDeclarations(tuple(mine), ())


def test_rows_single_input_gives_the_row_itself() -> None:
    rows = TensorRows([tensor("input", [[1, 2, 3, 4], [5, 6, 7, 8]], Datatype.FP32)])
    assert len(rows) == 2
    assert rows[1].tolist() == [5, 6, 7, 8]
    batch = rows.batch()
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 4)
    assert rows.items() == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    assert TensorRows([tensor("t", ["a", "b"], Datatype.BYTES)]).items() == ["a", "b"]
    assert len(rows[1:]) == 1


def test_rows_several_inputs_give_one_mapping_per_item() -> None:
    rows = TensorRows([tensor("a", [1, 2], Datatype.INT64), tensor("b", [[0.5], [1.5]], Datatype.FP64)])
    assert rows.items() == [{"a": 1, "b": [0.5]}, {"a": 2, "b": [1.5]}]
    assert rows[0]["b"].tolist() == [0.5]
    batch = rows.batch()
    assert isinstance(batch, Columns) and len(batch) == 2
    assert batch.arrays["a"] is rows.tensors[0].array and batch.arrays["b"] is rows.tensors[1].array
    assert [sorted(item) for item in batch] == [["a", "b"], ["a", "b"]]
    assert batch[1]["b"].tolist() == [1.5]
    assert batch[1:].arrays["a"].tolist() == [2]


@pytest.mark.parametrize(
    ("tensors", "problem"),
    [
        ([], "no inputs"),
        ([Tensor("a", Datatype.INT64, np.array(3))], "shape [] has no rows"),
        ([tensor("a", [1, 2], Datatype.INT64), tensor("b", [1], Datatype.INT64)], "'a': 2, 'b': 1"),
        ([tensor("a", [1], Datatype.INT64), tensor("a", [1], Datatype.INT64)], "'a' is sent twice"),
    ],
)
def test_bad_row_layouts(tensors: list[Tensor], problem: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        TensorRows(tensors)
    assert problem in info.value.message


def test_outputs_stack_into_one_tensor_named_after_the_declaration() -> None:
    (plain,) = outputs_to_tensors([0, 2, 1], ())
    assert plain.name == "output" and plain.datatype is Datatype.INT64 and plain.shape == [3]
    declared = (TensorSpec(name="probs", datatype=Datatype.FP32, shape=(-1, 2)),)
    (probs,) = outputs_to_tensors([[0.25, 0.75], [1.0, 0.0]], declared)
    assert probs.name == "probs" and probs.datatype is Datatype.FP32 and probs.array.dtype == np.float32
    assert probs.shape == [2, 2]
    (texts,) = outputs_to_tensors(["yes", "no"], ())
    assert texts.datatype is Datatype.BYTES and texts.array.dtype == object and texts.shape == [2]
    (rows,) = outputs_to_tensors([np.zeros(3, dtype=np.float16), np.ones(3, dtype=np.float16)], ())
    assert rows.datatype is Datatype.FP16 and rows.shape == [2, 3]


def test_mapping_outputs_become_named_tensors_and_odd_values_json_text() -> None:
    outputs = [
        {"label": "positive", "scores": {"positive": 0.9, "negative": 0.1}},
        {"label": "negative", "scores": {"positive": 0.2, "negative": 0.8}},
    ]
    label, scores = outputs_to_tensors(outputs, ())
    assert (label.name, label.datatype, encode_json(label)) == (
        "label",
        Datatype.BYTES,
        ["positive", "negative"],
    )
    assert scores.datatype is Datatype.BYTES
    assert encode_json(scores) == ['{"positive":0.9,"negative":0.1}', '{"positive":0.2,"negative":0.8}']
    (ragged,) = outputs_to_tensors([[1, 2], [3]], ())
    assert encode_json(ragged) == ["[1,2]", "[3]"]
    with pytest.raises(InferenceError, match="output 1 has keys \\['b'\\], output 0 has \\['a'\\]"):
        outputs_to_tensors([{"a": 1}, {"b": 2}], ())


def test_output_that_cannot_take_the_declared_datatype_is_an_inference_error() -> None:
    declared = (TensorSpec(name="y", datatype=Datatype.INT64, shape=(-1,)),)
    with pytest.raises(InferenceError, match="output 'y' cannot be sent as a V2 tensor"):
        outputs_to_tensors(["not a number"], declared)


def test_select_outputs() -> None:
    a, b = tensor("a", [1], Datatype.INT8), tensor("b", [1], Datatype.INT8)
    assert select_outputs([a, b], None) == [a, b]
    assert select_outputs([a, b], ["b"]) == [b]
    with pytest.raises(
        InvalidInputError, match="requested output\\(s\\) 'c' do not exist; the outputs are: a, b"
    ):
        select_outputs([a, b], ["c"])


class ArrayRecorder(FakeRuntime):
    """Records what each model call receives."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def predict(self, batch: Any, parameters: Any = None) -> list[Any]:
        self.batches.append(batch)
        return [float(np.sum(row)) for row in batch]


def run(pipeline: Pipeline, calls: list[PipelineCall]) -> list[Any]:
    outcomes = pipeline.run_group(calls)
    for outcome in outcomes:
        if isinstance(outcome, InferdError):
            raise outcome
    return list(outcomes)


def test_tensor_batch_reaches_a_hookless_model_as_one_array_even_when_merged() -> None:
    model = ArrayRecorder()
    pipeline = Pipeline(
        name="m", version="1", model=model, max_batch_size=64, schema_check=lambda item: "never for tensors"
    )
    first = TensorRows([tensor("input", np.ones((3, 4)), Datatype.FP32)])
    second = TensorRows([tensor("input", np.full((2, 4), 2.0), Datatype.FP32)])
    outcomes = run(pipeline, [PipelineCall(first, True), PipelineCall(second, True)])
    assert [[encode_json(t) for t in tensors] for tensors in outcomes] == [[[4.0, 4.0, 4.0]], [[8.0, 8.0]]]
    (batch,) = model.batches
    assert isinstance(batch, np.ndarray) and batch.shape == (5, 4) and batch.dtype == np.float32


class ItemRecorder(ArrayRecorder):
    def predict(self, batch: Any, parameters: Any = None) -> list[Any]:
        self.batches.append(batch)
        return [len(item) for item in batch]


def test_several_input_batches_reach_a_hookless_model_as_columns_joined_input_by_input() -> None:
    model = ItemRecorder()
    pipeline = Pipeline(name="m", version="1", model=model, max_batch_size=4)
    calls = [
        PipelineCall(
            TensorRows([tensor("a", [1, 2, 3], Datatype.INT64), tensor("b", [[1.0]] * 3, Datatype.FP32)]),
            True,
        ),
        PipelineCall(
            TensorRows([tensor("b", [[2.0]] * 2, Datatype.FP32), tensor("a", [4, 5], Datatype.INT64)]), True
        ),
    ]
    run(pipeline, calls)
    assert [type(b) for b in model.batches] == [Columns, Columns]  # split at max_batch_size: 4 + 1
    assert [b.arrays["a"].tolist() for b in model.batches] == [[1, 2, 3, 4], [5]]
    assert [b.arrays["b"].ravel().tolist() for b in model.batches] == [[1.0, 1.0, 1.0, 2.0], [2.0]]


def test_columns_of_other_inputs_or_row_shapes_join_as_a_list_of_items() -> None:
    ints = Columns({"a": np.array([1, 2])})
    assert Columns.join([ints, Columns({"a": np.array([1.5])})]) is None  # another dtype
    assert Columns.join([ints, Columns({"a": np.array([[1, 2]])})]) is None  # another row shape
    assert Columns.join([ints, Columns({"b": np.array([3])})]) is None  # another input
    assert Columns.join([ints, [{"a": 3}]]) is None
    model = ItemRecorder()
    pipeline = Pipeline(name="m", version="1", model=model, max_batch_size=8)
    run(
        pipeline,
        [
            PipelineCall(
                TensorRows([tensor("a", [1], Datatype.INT64), tensor("b", [1], Datatype.INT64)]), True
            ),
            PipelineCall(
                TensorRows([tensor("a", [2], Datatype.INT64), tensor("b", [2.5], Datatype.FP64)]), True
            ),
        ],
    )
    (batch,) = model.batches
    assert [{k: v.tolist() for k, v in item.items()} for item in batch] == [
        {"a": 1, "b": 1},
        {"a": 2, "b": 2.5},
    ]


def test_columns_cross_to_a_model_process_with_their_arrays_out_of_band() -> None:
    from inferd.runtimes.isolation import SHM_MIN_BYTES, Inbox, Outbox

    big = np.arange(SHM_MIN_BYTES // 8 + 1, dtype=np.int64)
    outbox, inbox = Outbox(), Inbox()
    packed = outbox.pack(Columns({"a": big, "b": big[:, None] * 0.5}))
    assert sum(not isinstance(part, bytes) for part in packed[1]) == 2  # both arrays in shared memory
    back = inbox.unpack(packed)
    outbox.close()
    inbox.close()
    assert isinstance(back, Columns) and len(back) == len(big)
    assert np.array_equal(back.arrays["a"], big) and back.arrays["b"].shape == (len(big), 1)


def test_tensor_batches_split_at_max_batch_size_as_array_slices() -> None:
    model = ArrayRecorder()
    pipeline = Pipeline(name="m", version="1", model=model, max_batch_size=4)
    rows = TensorRows([tensor("input", np.ones((6, 2)), Datatype.FP64)])
    ((output,),) = run(pipeline, [PipelineCall(rows, True)])
    assert (output.name, output.datatype, encode_json(output)) == ("output", Datatype.FP64, [2.0] * 6)
    assert [b.shape for b in model.batches] == [(4, 2), (2, 2)]


class Echo(FakeRuntime):
    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        return list(batch)


def test_hooks_get_plain_items_and_skip_the_json_schema() -> None:
    seen: list[Any] = []

    def pre(item: Any) -> Any:
        seen.append(item)
        return item

    pipeline = Pipeline(
        name="m", version="1", model=Echo(), max_batch_size=8, schema_check=lambda _: "bad", preprocessor=pre
    )
    rows = TensorRows([tensor("a", [1, 2], Datatype.INT64), tensor("b", [[0.5], [1.5]], Datatype.FP64)])
    run(pipeline, [PipelineCall(rows, True)])
    assert seen == [{"a": 1, "b": [0.5]}, {"a": 2, "b": [1.5]}]
    # /v1 items still get the schema check.
    (outcome,) = pipeline.run_group([PipelineCall([[1.0]], True)])
    assert isinstance(outcome, InvalidInputError) and "input_schema: bad" in outcome.message


def test_tensor_calls_are_checked_against_the_declared_inputs_per_call() -> None:
    declared = TensorDeclarations(
        inputs=IRIS, outputs=(TensorSpec(name="s", datatype=Datatype.FP32, shape=(-1,)),)
    )
    pipeline = Pipeline(name="iris", version="1", model=ArrayRecorder(), max_batch_size=8, tensors=declared)
    good = TensorRows([tensor("input", [[1, 1, 1, 1]], Datatype.FP32)])
    bad = TensorRows([tensor("input", [[1, 1, 1]], Datatype.FP32)])
    ok, error = pipeline.run_group([PipelineCall(good, True), PipelineCall(bad, True)])
    assert (
        isinstance(error, InvalidInputError)
        and "model iris version 1's declared shape [-1, 4]" in error.message
    )
    assert isinstance(ok, list) and ok[0].name == "s" and ok[0].array.dtype == np.float32


def test_mixed_v1_and_tensor_calls_merge_into_one_list() -> None:
    model = ArrayRecorder()
    pipeline = Pipeline(name="m", version="1", model=model, max_batch_size=8)
    rows = TensorRows([tensor("input", [[1.0, 1.0]], Datatype.FP32)])
    v1, (v2,) = run(pipeline, [PipelineCall([[2.0, 2.0]], True), PipelineCall(rows, True)])
    assert v1 == [4.0] and encode_json(v2) == [2.0]
    (batch,) = model.batches
    assert isinstance(batch, list) and len(batch) == 2


def test_model_yaml_declares_tensors(tmp_path: Any) -> None:
    from inferd.core.errors import ConfigError
    from inferd.core.model_spec import read_model_spec

    path = tmp_path / "model.yaml"
    path.write_text(
        "runtime: python\nmodel: m:M\ninputs:\n  - {name: x, datatype: FP32, shape: [-1, 4]}\n"
        "outputs:\n  - {name: y, datatype: INT64, shape: [-1]}\n"
    )
    spec = read_model_spec(path)
    assert spec.inputs == [TensorSpec(name="x", datatype=Datatype.FP32, shape=(-1, 4))]
    assert spec.outputs is not None and spec.outputs[0].name == "y"
    path.write_text("runtime: python\nmodel: m:M\ninputs:\n  - {name: x, datatype: FLOAT, shape: [1]}\n")
    with pytest.raises(ConfigError, match="inputs.0.datatype"):
        read_model_spec(path)
    path.write_text(
        "runtime: python\nmodel: m:M\ninputs:\n  - {name: x, datatype: FP32, shape: [1]}\n"
        "  - {name: x, datatype: FP32, shape: [1]}\n"
    )
    with pytest.raises(ConfigError, match="tensor names must be unique"):
        read_model_spec(path)
