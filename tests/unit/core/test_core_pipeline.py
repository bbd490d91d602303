"""Pipeline stage semantics: which failure becomes which error code, batching, isolation, order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import FakeRuntime

from inferd.core.errors import DEADLINE_CAUSE, InferdError, InferenceError, InvalidInputError
from inferd.core.pipeline import Pipeline, PipelineCall
from inferd.runtimes.factory import schema_checker


class Recorder(FakeRuntime):
    """A model that records each batch it is called with and returns ``f(item)`` per item."""

    def __init__(self, fn: Any = lambda item: item) -> None:
        self.batches: list[list[Any]] = []
        self._fn = fn

    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        self.batches.append(list(batch))
        return [self._fn(item) for item in batch]


def make(model: Any = None, *, max_batch_size: int = 8, **hooks: Any) -> Pipeline:
    return Pipeline(name="m", version="1", model=model or Recorder(), max_batch_size=max_batch_size, **hooks)


def run_one(pipeline: Pipeline, items: list[Any], indexed: bool = False) -> list[Any]:
    (outcome,) = pipeline.run_group([PipelineCall(items, indexed)])
    if isinstance(outcome, InferdError):
        raise outcome
    return outcome


def raiser(exc: BaseException) -> Any:
    def hook(item: Any) -> Any:
        raise exc

    return hook


HERE = Path(__file__)
NUMBER_SCHEMA = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}


def test_success_runs_every_stage_in_order() -> None:
    seen: list[str] = []

    def pre(item: Any) -> Any:
        seen.append("pre")
        return item * 10

    def val(item: Any) -> None:
        seen.append(f"val {item}")

    def post(output: Any) -> Any:
        seen.append("post")
        return {"y": output}

    model = Recorder(lambda item: item + 1)
    pipeline = make(model, preprocessor=pre, validator=val, postprocessor=post)
    assert run_one(pipeline, [1, 2]) == [{"y": 11}, {"y": 21}]
    assert model.batches == [[10, 20]]  # the model sees preprocessed items; the validator too
    assert seen == ["pre", "val 10", "pre", "val 20", "post", "post"]


def test_input_schema_failure_is_invalid_input() -> None:
    model = Recorder()
    pipeline = make(model, schema_check=schema_checker(NUMBER_SCHEMA, HERE))
    with pytest.raises(InvalidInputError) as info:
        run_one(pipeline, [{"x": "not a number"}])
    assert info.value.code == "invalid_input"
    assert "input_schema" in info.value.message
    assert model.batches == []  # the model never ran


def test_input_schema_checks_the_raw_item_before_the_preprocessor() -> None:
    # The preprocessor turns the item into something the schema would reject; it must not matter.
    pipeline = make(
        schema_check=schema_checker(NUMBER_SCHEMA, HERE),
        preprocessor=lambda item: "preprocessed",
    )
    assert run_one(pipeline, [{"x": 1}]) == ["preprocessed"]


@pytest.mark.parametrize("stage", ["preprocessor", "validator"])
def test_value_error_in_preprocessor_or_validator_is_invalid_input(stage: str) -> None:
    model = Recorder()
    pipeline = make(model, **{stage: raiser(ValueError("text contains no words"))})
    with pytest.raises(InvalidInputError) as info:
        run_one(pipeline, ["x"])
    assert info.value.code == "invalid_input"
    assert "text contains no words" in info.value.message
    assert stage in info.value.message
    assert model.batches == []


@pytest.mark.parametrize("stage", ["preprocessor", "validator", "postprocessor"])
@pytest.mark.parametrize("exc", [KeyError("k"), RuntimeError("boom"), TypeError("bad")])
def test_other_exceptions_in_hooks_are_inference_error(stage: str, exc: Exception) -> None:
    pipeline = make(**{stage: raiser(exc)})
    with pytest.raises(InferenceError) as info:
        run_one(pipeline, ["x"])
    assert not isinstance(info.value, InvalidInputError)
    assert info.value.code == "inference_error"
    assert type(exc).__name__ in info.value.message
    assert stage in info.value.message


def test_value_error_in_postprocessor_is_not_invalid_input() -> None:
    # Only the stages before the model judge the input; after it, any exception is the server's fault.
    pipeline = make(postprocessor=raiser(ValueError("bad output")))
    with pytest.raises(InferenceError) as info:
        run_one(pipeline, ["x"])
    assert info.value.code == "inference_error"


@pytest.mark.parametrize("exc", [ValueError("v"), RuntimeError("r"), ZeroDivisionError("z")])
def test_exception_in_model_is_inference_error(exc: Exception) -> None:
    class Broken(FakeRuntime):
        def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
            raise exc

    with pytest.raises(InferenceError) as info:
        run_one(make(Broken()), ["x"])
    assert info.value.code == "inference_error"
    assert type(exc).__name__ in info.value.message
    assert "m:1" in info.value.message


@pytest.mark.parametrize("returned", [[1], [1, 2, 3], "not a list", None, {"a": 1}])
def test_model_returning_wrong_length_or_type_is_inference_error(returned: Any) -> None:
    class Wrong(FakeRuntime):
        def predict(self, batch: list[Any], parameters: Any = None) -> Any:
            return returned

    with pytest.raises(InferenceError) as info:
        run_one(make(Wrong()), ["a", "b"])
    assert info.value.code == "inference_error"
    assert "2 outputs" in info.value.message


def test_model_may_return_a_tuple() -> None:
    class TupleModel(FakeRuntime):
        def predict(self, batch: list[Any], parameters: Any = None) -> Any:
            return tuple(batch)

    assert run_one(make(TupleModel()), [1, 2]) == [1, 2]


def test_long_exception_messages_are_truncated() -> None:
    with pytest.raises(InferenceError) as info:
        run_one(make(preprocessor=raiser(RuntimeError("x" * 5000))), ["a"])
    detail = info.value.detail
    assert detail is not None and len(detail) < 500 and detail.endswith("...")


def test_batch_call_names_the_rejected_index() -> None:
    def validator(item: Any) -> None:
        if item < 0:
            raise ValueError("must be non-negative")

    pipeline = make(validator=validator)
    with pytest.raises(InvalidInputError) as info:
        run_one(pipeline, [0, 1, 2, -3, 4], indexed=True)
    assert "inputs[3]" in info.value.message
    assert "must be non-negative" in info.value.message


def test_batch_call_names_the_index_for_schema_and_preprocessor_failures() -> None:
    pipeline = make(schema_check=schema_checker(NUMBER_SCHEMA, HERE))
    with pytest.raises(InvalidInputError) as info:
        run_one(pipeline, [{"x": 1}, {"x": 2}, {"y": 3}], indexed=True)
    assert "inputs[2]" in info.value.message

    def crash_on_five(item: Any) -> Any:
        if item == 5:
            raise RuntimeError("five")
        return item

    with pytest.raises(InferenceError) as crash:
        run_one(make(preprocessor=crash_on_five), [1, 5], indexed=True)
    assert "inputs[1]" in crash.value.message


def test_single_call_does_not_name_an_index() -> None:
    with pytest.raises(InvalidInputError) as info:
        run_one(make(validator=raiser(ValueError("no"))), ["x"], indexed=False)
    assert "inputs[" not in info.value.message
    assert info.value.message.startswith("input ")


def test_run_group_isolates_a_rejected_request() -> None:
    def validator(item: Any) -> None:
        if item == "bad":
            raise ValueError("bad item")

    model = Recorder(lambda item: item.upper())
    pipeline = make(model, validator=validator, max_batch_size=16)
    outcomes = pipeline.run_group(
        [
            PipelineCall(["a", "b"], indexed=True),
            PipelineCall(["c", "bad", "d"], indexed=True),
            PipelineCall(["e"], indexed=False),
        ]
    )
    assert outcomes[0] == ["A", "B"]
    assert isinstance(outcomes[1], InvalidInputError)
    assert "inputs[1]" in outcomes[1].message
    assert outcomes[2] == ["E"]
    # The rejected request's items never reached the model, the others shared one call.
    assert model.batches == [["a", "b", "e"]]


def test_run_group_isolates_a_postprocessor_failure_to_its_request() -> None:
    def post(output: Any) -> Any:
        if output == "boom":
            raise RuntimeError("post failed")
        return output

    outcomes = make(postprocessor=post).run_group(
        [PipelineCall(["ok"], False), PipelineCall(["boom"], False)]
    )
    assert outcomes[0] == ["ok"]
    assert isinstance(outcomes[1], InferenceError)


def test_failing_model_call_fails_only_the_requests_it_carried() -> None:
    class FailsOnX(FakeRuntime):
        def __init__(self) -> None:
            self.batches: list[list[Any]] = []

        def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
            self.batches.append(list(batch))
            if "x" in batch:
                raise RuntimeError("x in batch")
            return list(batch)

    model = FailsOnX()
    pipeline = make(model, max_batch_size=2)
    outcomes = pipeline.run_group(
        [PipelineCall(["a", "b"], False), PipelineCall(["x"], False), PipelineCall(["c", "d"], False)]
    )
    assert outcomes[0] == ["a", "b"]
    assert isinstance(outcomes[1], InferenceError)
    assert isinstance(outcomes[2], InferenceError)  # "c" shared the failing call with "x"
    assert model.batches == [["a", "b"], ["x", "c"], ["d"]]


def test_max_batch_size_chunks_and_preserves_order() -> None:
    model = Recorder(lambda item: item * 2)
    pipeline = make(model, max_batch_size=3)
    items = list(range(10))
    assert run_one(pipeline, items, indexed=True) == [i * 2 for i in items]
    assert all(len(batch) <= 3 for batch in model.batches)
    assert [len(batch) for batch in model.batches] == [3, 3, 3, 1]
    assert [item for batch in model.batches for item in batch] == items


def test_group_preserves_order_across_requests_and_chunks() -> None:
    model = Recorder(lambda item: -item)
    pipeline = make(model, max_batch_size=4)
    calls = [PipelineCall(list(range(start, start + n)), True) for start, n in [(0, 3), (100, 5), (200, 1)]]
    outcomes = pipeline.run_group(calls)
    assert outcomes == [[0, -1, -2], [-100, -101, -102, -103, -104], [-200]]
    assert all(len(batch) <= 4 for batch in model.batches)
    assert len(model.batches) == 3  # 9 items in calls of at most 4


def test_max_batch_size_one_calls_the_model_per_item() -> None:
    model = Recorder()
    assert run_one(make(model, max_batch_size=1), ["a", "b", "c"]) == ["a", "b", "c"]
    assert model.batches == [["a"], ["b"], ["c"]]


def test_empty_call_gives_empty_outputs_without_calling_the_model() -> None:
    model = Recorder()
    assert run_one(make(model), []) == []
    assert model.batches == []


def test_prepare_call_runs_hooks_without_the_model() -> None:
    model = Recorder()
    pipeline = make(model, preprocessor=lambda item: item + 1)
    assert pipeline.prepare_call(PipelineCall([1, 2], True)) == [2, 3]
    assert model.batches == []


def test_a_crashing_schema_check_fails_only_its_request_as_inference_error() -> None:
    # An unresolvable $ref only fails when an item is checked; it must not take the merged group down.
    def crashing_check(item: Any) -> str | None:
        if item == "crash":
            raise RuntimeError("Unresolvable: http://example.invalid/schema.json")
        return None

    pipeline = make(schema_check=crashing_check)
    outcomes = pipeline.run_group([PipelineCall(["ok"], False), PipelineCall(["crash"], True)])
    assert outcomes[0] == ["ok"]
    assert isinstance(outcomes[1], InferenceError)
    assert not isinstance(outcomes[1], InvalidInputError)
    assert "inputs[0]" in outcomes[1].message
    assert "input_schema" in outcomes[1].message


def test_unresolvable_ref_in_input_schema_is_an_inference_error() -> None:
    check = schema_checker({"$ref": "http://example.invalid/schema.json"}, HERE)
    with pytest.raises(InferenceError) as info:
        run_one(make(schema_check=check), ["x"])
    assert info.value.code == "inference_error"


def test_exception_text_is_detail_unless_the_model_exposes_it() -> None:
    quiet = make(preprocessor=raiser(RuntimeError("SELECT secret FROM tenants")))
    with pytest.raises(InferenceError) as info:
        run_one(quiet, ["a"])
    assert "secret" not in info.value.message and "RuntimeError" in info.value.message
    assert "SELECT secret FROM tenants" in str(info.value.detail)
    loud = make(preprocessor=raiser(RuntimeError("SELECT secret FROM tenants")), expose_errors=True)
    with pytest.raises(InferenceError) as info:
        run_one(loud, ["a"])
    assert "SELECT secret FROM tenants" in info.value.message and info.value.detail is None


@pytest.mark.parametrize(
    ("cause", "level"), [(DEADLINE_CAUSE, logging.WARNING), ("model process exited", logging.ERROR)]
)
def test_a_call_stopped_at_its_deadline_is_logged_as_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture, cause: str, level: int
) -> None:
    error = InferenceError("the model process was stopped", cause=cause)
    with caplog.at_level(logging.DEBUG, logger="inferd"), pytest.raises(InferenceError):
        run_one(make(Recorder(raiser(error))), [1])
    (record,) = [r for r in caplog.records if "model m:1 failed" in r.getMessage()]
    assert record.levelno == level
