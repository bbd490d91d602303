"""Model repository: every way an entry can be broken is reported, and the other models still load."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.core.errors import ConfigError, ModelNotReadyError
from inferd.core.pipeline import Pipeline, PipelineCall
from inferd.core.registry import ModelRegistry
from inferd.runtimes.factory import PipelineFactory


def registry_for(root: Path, devices: tuple[str, ...] = ("cpu",)) -> ModelRegistry:
    registry = ModelRegistry(loader=PipelineFactory(), devices=devices)
    registry.scan(root)
    registry.load_at_start()
    return registry


def problem_for(registry: ModelRegistry, path: Path) -> str:
    matches = [p.message for p in registry.problems if p.path == str(path)]
    assert matches, f"no problem recorded for {path}: {registry.problems}"
    return matches[0]


def failed_version_error(registry: ModelRegistry, name: str, version: str) -> str:
    found = registry.models[name].versions[version]
    assert found.state == "failed"
    assert found.pipeline is None
    assert found.error
    return found.error


def assert_good_loaded(registry: ModelRegistry) -> None:
    good = registry.models["good"].versions["1"]
    assert good.state == "loaded"
    assert good.pipeline is not None
    assert good.pipeline.run_group([PipelineCall([1, "two"], False)]) == [[1, "two"]]


@pytest.fixture
def with_good(repo: Path, make_echo: Callable[..., Path]) -> Path:
    make_echo(repo, "good", "1")
    return repo


def test_healthy_repository_has_no_problems(with_good: Path, make_echo: Callable[..., Path]) -> None:
    make_echo(with_good, "other", "3")
    registry = registry_for(with_good)
    assert registry.problems == []
    assert registry.readiness() == ([], [])
    assert sorted(registry.models) == ["good", "other"]
    assert_good_loaded(registry)


def test_malformed_yaml(with_good: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(with_good, "bad", "1", "runtime: python\nmodel: [unclosed\n")
    registry = registry_for(with_good)
    message = problem_for(registry, folder / "model.yaml")
    assert str(folder / "model.yaml") in message
    assert "YAML" in message
    assert "bad" not in registry.models
    assert_good_loaded(registry)
    assert any(str(folder / "model.yaml") in reason for reason in registry.readiness()[1])


def test_yaml_that_is_not_a_mapping(with_good: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(with_good, "bad", "1", "- runtime\n- python\n")
    message = problem_for(registry_for(with_good), folder / "model.yaml")
    assert "mapping" in message


def test_unknown_field_typo(
    with_good: Path, make_version: Callable[..., Path], make_echo: Callable[..., Path]
) -> None:
    folder = make_echo(with_good, "bad", "1", "max_bach_size: 8\n")
    registry = registry_for(with_good)
    message = problem_for(registry, folder / "model.yaml")
    assert str(folder / "model.yaml") in message
    assert "unknown key 'max_bach_size'; did you mean 'max_batch_size'?" in message
    assert_good_loaded(registry)


def test_missing_model_for_python_runtime(with_good: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(with_good, "bad", "1", "runtime: python\n")
    registry = registry_for(with_good)
    message = problem_for(registry, folder / "model.yaml")
    assert "needs 'model' (module:attr" in message
    assert_good_loaded(registry)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("runtime: tensorflow\nmodel: m:M\n", "runtime"),
        ("runtime: sklearn\n", "artifact"),
        ("runtime: python\nmodel: justamodule\n", "module:attr"),
        ("runtime: python\nmodel: m:M\ntimeout_s: 0\n", "timeout_s"),
        ("runtime: python\nmodel: m:M\nmax_batch_size: 0\n", "max_batch_size"),
        (
            "runtime: python\nmodel: m:M\nmax_batch_size: 4\npreferred_batch_sizes: [8]\n",
            "preferred_batch_sizes",
        ),
        ("runtime: python\nmodel: m:M\nweight: 0\n", "weight"),
        ("runtime: python\nmodel: m:M\nmax_delay_ms: -1\n", "max_delay_ms"),
        ("runtime: python\nmodel: m:M\nmax_concurrency: 0\n", "max_concurrency"),
    ],
)
def test_invalid_spec_values(
    with_good: Path, make_version: Callable[..., Path], spec: str, fragment: str
) -> None:
    folder = make_version(with_good, "bad", "1", spec)
    message = problem_for(registry_for(with_good), folder / "model.yaml")
    assert fragment in message
    # inferd's own sentence, once: not pydantic's "Value error, " nor the file named twice.
    assert "Value error" not in message and message.count("model.yaml") == 1


def test_scheduling_settings_reach_the_lane_policy(with_good: Path, make_echo: Callable[..., Path]) -> None:
    make_echo(
        with_good,
        "tuned",
        "1",
        "max_batch_size: 16\nweight: 2\nmax_concurrency: 3\nqueue_limit: 9\nmax_delay_ms: 5\n"
        "preferred_batch_sizes: [8, 16]\nservice_time_s: 0.2\ndeadline_admission: false\n",
    )
    registry = registry_for(with_good)
    policy = registry.resolve("tuned", None, tenant="t").lane_policy
    assert (policy.weight, policy.max_concurrency, policy.queue_limit) == (2.0, 3, 9)
    assert policy.max_delay_s == pytest.approx(0.005)
    assert policy.preferred_batch_sizes == (8, 16)
    assert (policy.service_time_s, policy.deadline_admission) == (0.2, False)


def test_device_not_configured(with_good: Path, make_echo: Callable[..., Path]) -> None:
    folder = make_echo(with_good, "bad", "1", "device: tpu\n")
    registry = registry_for(with_good, devices=("cpu", "gpu"))
    message = problem_for(registry, folder / "model.yaml")
    assert "'tpu'" in message
    assert "not configured" in message
    assert "cpu, gpu" in message
    assert_good_loaded(registry)


def test_missing_artifact(with_good: Path, make_version: Callable[..., Path]) -> None:
    make_version(with_good, "bad", "1", "runtime: sklearn\nartifact: model.joblib\n")
    registry = registry_for(with_good)
    error = failed_version_error(registry, "bad", "1")
    assert "model.joblib" in error
    assert "does not exist" in error
    assert_good_loaded(registry)
    assert any("model bad version 1" in r and "model.joblib" in r for r in registry.readiness()[1])


def test_missing_module_file(with_good: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(with_good, "bad", "1", "runtime: python\nmodel: nothere:Model\n")
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert str(folder / "nothere.py") in error


def test_missing_attribute(with_good: Path, make_version: Callable[..., Path]) -> None:
    make_version(with_good, "bad", "1", "runtime: python\nmodel: m:Nope\n", {"m.py": "class Model: ...\n"})
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert "'Nope'" in error
    assert "m.py" in error


def test_import_error_in_module(with_good: Path, make_version: Callable[..., Path]) -> None:
    folder = make_version(
        with_good, "bad", "1", "runtime: python\nmodel: m:Model\n", {"m.py": "import no_such_package_xyz\n"}
    )
    registry = registry_for(with_good)
    error = failed_version_error(registry, "bad", "1")
    assert str(folder / "m.py") in error
    assert "ModuleNotFoundError" in error
    assert "no_such_package_xyz" in error
    assert_good_loaded(registry)
    assert not any(name.endswith(".m") and "bad" in name for name in sys.modules)


def test_syntax_error_in_module(with_good: Path, make_version: Callable[..., Path]) -> None:
    make_version(with_good, "bad", "1", "runtime: python\nmodel: m:Model\n", {"m.py": "def broken(:\n"})
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert "SyntaxError" in error


def test_exception_in_load(with_good: Path, make_version: Callable[..., Path]) -> None:
    code = """
    class Model:
        def load(self, path):
            raise RuntimeError("weights are corrupt")

        def predict(self, batch):
            return batch
    """
    make_version(with_good, "bad", "1", "runtime: python\nmodel: m:Model\n", {"m.py": code})
    registry = registry_for(with_good)
    error = failed_version_error(registry, "bad", "1")
    assert "RuntimeError" in error
    assert "weights are corrupt" in error
    assert_good_loaded(registry)
    reasons = registry.readiness()[1]
    assert any("model bad version 1" in r and "weights are corrupt" in r for r in reasons)


def test_model_without_predict(with_good: Path, make_version: Callable[..., Path]) -> None:
    make_version(with_good, "bad", "1", "runtime: python\nmodel: m:Model\n", {"m.py": "class Model: ...\n"})
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert "predict" in error


def test_hook_that_is_not_callable(with_good: Path, make_version: Callable[..., Path]) -> None:
    code = "VALIDATE = 3\nclass Model:\n    def predict(self, batch):\n        return batch\n"
    make_version(
        with_good, "bad", "1", "runtime: python\nmodel: m:Model\nvalidator: m:VALIDATE\n", {"m.py": code}
    )
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert "validator" in error
    assert "not callable" in error


def test_invalid_input_schema(with_good: Path, make_echo: Callable[..., Path]) -> None:
    make_echo(with_good, "bad", "1", "input_schema: {type: 12}\n")
    error = failed_version_error(registry_for(with_good), "bad", "1")
    assert "input_schema" in error


def test_one_broken_version_keeps_the_other_versions(
    with_good: Path, make_version: Callable[..., Path], make_echo: Callable[..., Path]
) -> None:
    make_echo(with_good, "mixed", "1")
    make_version(
        with_good, "mixed", "2", "runtime: python\nmodel: m:Model\n", {"m.py": "raise RuntimeError('x')\n"}
    )
    registry = registry_for(with_good)
    assert registry.models["mixed"].versions["1"].state == "loaded"
    assert registry.models["mixed"].versions["2"].state == "failed"


def test_all_problems_are_listed_together(
    with_good: Path, make_version: Callable[..., Path], make_echo: Callable[..., Path]
) -> None:
    make_version(with_good, "yaml", "1", "runtime: [\n")
    make_echo(with_good, "typo", "1", "devcie: cpu\n")
    make_version(with_good, "artifact", "1", "runtime: onnx\nartifact: missing.onnx\n")
    registry = registry_for(with_good)
    reasons = "\n".join(registry.readiness()[1])
    assert "yaml" in reasons
    assert "devcie" in reasons
    assert "missing.onnx" in reasons
    assert len(registry.readiness()[1]) == 3


def test_folders_without_model_yaml_and_hidden_folders_are_ignored(with_good: Path) -> None:
    (with_good / "empty" / "1").mkdir(parents=True)
    (with_good / ".git" / "1").mkdir(parents=True)
    (with_good / ".git" / "1" / "model.yaml").write_text("not: [valid\n")
    registry = registry_for(with_good)
    assert registry.problems == []
    assert sorted(registry.models) == ["good"]


def test_repository_that_is_not_a_directory(tmp_path: Path) -> None:
    registry = ModelRegistry(loader=PipelineFactory(), devices=["cpu"])
    with pytest.raises(ConfigError) as info:
        registry.scan(tmp_path / "nowhere")
    assert "nowhere" in info.value.message


# -- lazy loading ------------------------------------------------------------------------------

LAZY_CODE = """
from pathlib import Path

Path(__file__).with_name("imported").write_text("yes")


class Model:
    loads = 0

    def load(self, path):
        type(self).loads += 1

    def predict(self, batch):
        return [item * 2 for item in batch]
"""


def test_load_at_start_false_loads_lazily_on_first_use(
    with_good: Path, make_version: Callable[..., Path]
) -> None:
    folder = make_version(
        with_good,
        "lazy",
        "1",
        "runtime: python\nmodel: lazy:Model\nload_at_start: false\n",
        {"lazy.py": LAZY_CODE},
    )
    registry = registry_for(with_good)
    version = registry.models["lazy"].versions["1"]
    assert version.state == "unloaded"
    assert not (folder / "imported").exists()  # not even imported yet
    assert registry.readiness() == ([], [])  # not required at start-up

    async def main() -> list[Pipeline]:
        pipelines = await asyncio.gather(*(registry.ensure_loaded(version) for _ in range(5)))
        return list(pipelines)

    pipelines = asyncio.run(main())
    assert version.state == "loaded"
    assert all(p is pipelines[0] for p in pipelines)  # concurrent first uses load once
    assert version.pipeline is pipelines[0]
    assert (folder / "imported").read_text() == "yes"
    pipeline = pipelines[0]
    assert pipeline.model.instance.loads == 1
    assert pipeline.run_group([PipelineCall([2], False)]) == [[4]]
    assert asyncio.run(registry.ensure_loaded(version)) is version.pipeline


def test_lazy_load_failure_is_model_not_ready(with_good: Path, make_version: Callable[..., Path]) -> None:
    code = "class Model:\n    def load(self, path):\n        raise OSError('disk')\n    def predict(self, b):\n        return b\n"
    make_version(
        with_good, "lazy", "1", "runtime: python\nmodel: m:Model\nload_at_start: false\n", {"m.py": code}
    )
    registry = registry_for(with_good)
    version = registry.models["lazy"].versions["1"]
    with pytest.raises(ModelNotReadyError) as info:
        asyncio.run(registry.ensure_loaded(version))
    assert "disk" in str(info.value.detail)
    assert info.value.code == "inference_error"
    assert version.state == "failed"


def test_versions_are_isolated_modules(repo: Path, make_version: Callable[..., Path]) -> None:
    # Two versions ship a module with the same name; each must get its own.
    for version, value in (("1", "one"), ("2", "two")):
        code = f"class Model:\n    def predict(self, batch):\n        return ['{value}' for _ in batch]\n"
        make_version(repo, "m", version, "runtime: python\nmodel: model:Model\n", {"model.py": code})
    registry = registry_for(repo)
    outputs = {
        v: registry.models["m"].versions[v].pipeline.run_group([PipelineCall([0], False)]) for v in ("1", "2")
    }
    assert outputs == {"1": [["one"]], "2": [["two"]]}


def test_describe(with_good: Path, make_echo: Callable[..., Path]) -> None:
    make_echo(
        with_good, "described", "1", "description: hello\nmax_batch_size: 7\ninput_schema: {type: number}\n"
    )
    info = registry_for(with_good).models["described"].describe()
    assert info["name"] == "described"
    assert info["default_version"] == "1"
    (version,) = info["versions"]
    assert version["state"] == "loaded"
    assert version["runtime"] == "python"
    assert version["device"] == "cpu"
    assert version["max_batch_size"] == 7
    assert version["description"] == "hello"
    assert version["input_schema"] == {"type": "number"}
