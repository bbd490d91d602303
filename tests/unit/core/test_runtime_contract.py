"""The runtime contract: runtimes by entry point or import string, their own model.yaml keys, clear
load errors, and unload() on reload, removal and shutdown (after the calls running then)."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import FakeRuntime, scanned

from inferd.core.errors import ConfigError, ModelNotReadyError
from inferd.core.model_spec import read_model_spec
from inferd.core.pipeline import Pipeline, PipelineCall
from inferd.core.runtime import Runtime, RuntimeContext
from inferd.runtimes.catalog import ENTRY_POINT_GROUP, RuntimeCatalog
from inferd.runtimes.factory import PipelineFactory

# A third-party runtime package, importable as ``plugin_rt`` (the test puts it on sys.path). Its
# runtime records each load and unload in a list of its module, keyed by the version folder.
PLUGIN = """
from pydantic import Field

from inferd.core.runtime import Runtime, RuntimeOptions

EVENTS = []


class ScaleOptions(RuntimeOptions):
    factor: float = Field(default=1.0, description="what each number is multiplied by")
    label: str


class ScaleRuntime(Runtime):
    Options = ScaleOptions
    takes_parameters = True

    def load(self):
        self.factor = self.context.options.factor
        EVENTS.append(("load", self.context.name, self.context.version))

    def predict(self, batch, parameters):
        extra = (parameters or {}).get("add", 0)
        return [{"value": item * self.factor + extra, "label": self.context.options.label} for item in batch]

    def unload(self):
        EVENTS.append(("unload", self.context.name, self.context.version))


class Broken(Runtime):
    def load(self):
        raise RuntimeError("weights are corrupt")

    def predict(self, batch, parameters):
        return batch


class NotARuntime:
    pass
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    package = tmp_path / "site"
    package.mkdir()
    (package / "plugin_rt.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(package))
    sys.modules.pop("plugin_rt", None)  # a fresh module (and EVENTS list) per test
    import plugin_rt

    yield plugin_rt
    sys.modules.pop("plugin_rt", None)


def scale_spec(extra: str = "") -> str:
    return f"runtime: plugin_rt:ScaleRuntime\nlabel: scaled\nfactor: 2\nmax_batch_size: 8\n{extra}"


def run(pipeline: Pipeline | None, items: list[Any], parameters: dict[str, Any] | None = None) -> Any:
    assert pipeline is not None
    [outcome] = pipeline.run_group([PipelineCall(items, False, parameters)])
    return outcome


# -- finding runtimes ------------------------------------------------------------------------------


def test_builtins_are_registered_as_entry_points_of_inferd() -> None:
    catalog = RuntimeCatalog()
    assert {"python", "sklearn", "onnx", "torch"} <= set(catalog.names)
    for name in ("python", "sklearn", "onnx", "torch"):
        cls = catalog.resolve(name)
        assert issubclass(cls, Runtime)
        assert cls.__module__ == f"inferd.runtimes.{name}"


def test_runtime_by_import_string_with_its_own_keys(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    make_version(repo, "scaled", "1", scale_spec())
    registry = scanned(repo)
    assert registry.problems == []
    pipeline = registry.models["scaled"].versions["1"].pipeline
    assert run(pipeline, [1, 2]) == [{"value": 2.0, "label": "scaled"}, {"value": 4.0, "label": "scaled"}]
    assert run(pipeline, [1], {"add": 1}) == [{"value": 3.0, "label": "scaled"}]
    assert plugin.EVENTS == [("load", "scaled", "1")]


def test_runtime_by_a_third_party_entry_point(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    registered = {
        "scale": EntryPoint(name="scale", value="plugin_rt:ScaleRuntime", group=ENTRY_POINT_GROUP),
        **{point.name: point for point in RuntimeCatalog()._registered.values()},
    }
    make_version(repo, "scaled", "1", "runtime: scale\nlabel: ep\n")
    registry = scanned(repo, factory=PipelineFactory(catalog=RuntimeCatalog(registered)))
    assert run(registry.models["scaled"].versions["1"].pipeline, [5]) == [{"value": 5.0, "label": "ep"}]


@pytest.mark.parametrize(
    ("runtime", "fragments"),
    [
        (
            "tensorflow",
            [
                "runtime 'tensorflow' is not registered",
                "onnx, python, sklearn, torch",
                "package.module:Class",
            ],
        ),
        ("no_such_pkg.mod:Runtime", ["importing no_such_pkg.mod failed", "ModuleNotFoundError", "installed"]),
        ("plugin_rt:Missing", ["module plugin_rt has no attribute 'Missing'"]),
        ("plugin_rt:NotARuntime", ["not a subclass of inferd.core.runtime.Runtime"]),
        ("not a reference", ["must be a runtime's name"]),
    ],
)
def test_unknown_runtimes_are_repository_problems(
    plugin: Any,
    repo: Path,
    make_version: Callable[..., Path],
    make_echo: Callable[..., Path],
    runtime: str,
    fragments: list[str],
) -> None:
    make_echo(repo, "good", "1")
    folder = make_version(repo, "bad", "1", f"runtime: {runtime}\n")
    registry = scanned(repo)
    [problem] = registry.problems
    assert problem.path == str(folder / "model.yaml")
    for fragment in fragments:
        assert fragment in problem.message
    assert "bad" not in registry.models
    assert registry.models["good"].versions["1"].state == "loaded"


def test_stale_package_metadata_says_to_reinstall() -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeCatalog({}).resolve("sklearn")
    assert "registered: none" in info.value.message
    assert "reinstall" in info.value.message


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ("colour: red\n", ["unknown key 'colour'", "takes: factor, label", "inferd's keys: runtime, device"]),
        ("factor: lots\n", ["factor:", "valid number"]),
    ],
)
def test_runtime_keys_are_validated_at_scan(
    plugin: Any, repo: Path, make_version: Callable[..., Path], extra: str, fragments: list[str]
) -> None:
    make_version(repo, "scaled", "1", scale_spec(extra))
    [problem] = scanned(repo).problems
    for fragment in fragments:
        assert fragment in problem.message
    assert plugin.EVENTS == []


def test_a_required_runtime_key_is_named_with_its_meaning(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    make_version(repo, "scaled", "1", "runtime: plugin_rt:ScaleRuntime\n")
    make_version(repo, "file", "1", "runtime: onnx\n")
    messages = sorted(p.message for p in scanned(repo).problems)
    assert "the 'onnx' runtime needs 'artifact' (a file in the version folder)" in messages[0]
    assert "the 'plugin_rt:ScaleRuntime' runtime needs 'label'" in messages[1]


def test_a_failing_load_names_the_runtime_and_the_cause(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    make_version(repo, "broken", "1", "runtime: plugin_rt:Broken\n")
    version = scanned(repo).models["broken"].versions["1"]
    assert version.state == "failed"
    assert "runtime 'plugin_rt:Broken'" in (version.error or "")
    assert "RuntimeError: weights are corrupt" in (version.error or "")


def test_context_pickles_without_the_in_process_importer(
    repo: Path, make_version: Callable[..., Path]
) -> None:
    folder = make_version(repo, "m", "1", "runtime: onnx\nartifact: model.onnx\n")
    spec = read_model_spec(folder / "model.yaml")
    catalog = RuntimeCatalog()
    options = catalog.resolve("onnx").Options.model_validate(spec.runtime_keys)
    context = RuntimeContext("m", "1", folder, spec, options, modules=object())  # type: ignore[arg-type]
    copy = pickle.loads(pickle.dumps(context))
    assert (copy.name, copy.version, copy.path, copy.spec, copy.options) == ("m", "1", folder, spec, options)
    assert copy.modules is None


# -- unload ----------------------------------------------------------------------------------------


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_reload_unloads_changed_and_removed_versions_and_shutdown_the_rest(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    for version in ("1", "2", "3"):
        make_version(repo, "scaled", version, scale_spec())
    registry = scanned(repo)
    old_two = registry.models["scaled"].versions["2"].pipeline
    assert sorted(plugin.EVENTS) == [("load", "scaled", v) for v in ("1", "2", "3")]
    plugin.EVENTS.clear()

    touch_later(repo / "scaled" / "2" / "model.yaml")  # changed
    (repo / "scaled" / "3" / "model.yaml").unlink()  # removed
    plan = registry.plan_reload()
    assert plan.reloaded == ["scaled:2"] and plan.removed == ["scaled:3"]
    assert plugin.EVENTS == [("load", "scaled", "2")]  # nothing unloaded until the plan is applied
    registry.apply_reload(plan)
    assert sorted(plugin.EVENTS[1:]) == [("unload", "scaled", "2"), ("unload", "scaled", "3")]
    assert isinstance(run(old_two, [1]), ModelNotReadyError)  # a request that still held the old one
    assert run(registry.models["scaled"].versions["2"].pipeline, [1]) == [{"value": 2.0, "label": "scaled"}]
    plugin.EVENTS.clear()

    registry.close()
    assert sorted(plugin.EVENTS) == [("unload", "scaled", "1"), ("unload", "scaled", "2")]
    registry.close()  # once only
    assert len(plugin.EVENTS) == 2


def test_a_lazy_load_that_finishes_after_its_version_was_replaced_unloads_again(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    make_version(repo, "lazy", "1", scale_spec("load_at_start: false\n"))
    registry = scanned(repo)
    old = registry.models["lazy"].versions["1"]  # a request resolved it; its first load is under way
    touch_later(repo / "lazy" / "1" / "model.yaml")
    registry.apply_reload(registry.plan_reload())
    registry.load_version(old)  # the load that was running finishes now
    assert plugin.EVENTS == [("load", "lazy", "1"), ("unload", "lazy", "1")]
    assert isinstance(run(old.pipeline, [1]), ModelNotReadyError)
    assert registry.models["lazy"].versions["1"] is not old


def test_engine_close_unloads_every_loaded_version(
    plugin: Any, repo: Path, make_version: Callable[..., Path]
) -> None:
    from inferd.bootstrap import build_engine
    from inferd.core.settings import load_settings

    make_version(repo, "scaled", "1", scale_spec())
    make_version(repo, "lazy", "1", scale_spec("load_at_start: false\n"))
    engine = build_engine(
        load_settings(flags={"models": repo, "access_log": "off", "devices": "cpu=1"}, environ={})
    )
    assert plugin.EVENTS == [("load", "scaled", "1")]
    engine.close()
    assert plugin.EVENTS == [("load", "scaled", "1"), ("unload", "scaled", "1")]


class Gate(FakeRuntime):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.unloaded = threading.Event()
        self.calls_after_unload = 0

    def predict(self, batch: Any, parameters: Any = None) -> list[Any]:
        if self.unloaded.is_set():
            self.calls_after_unload += 1
        self.entered.set()
        assert self.opened.wait(5.0)
        return list(batch)

    def unload(self) -> None:
        self.unloaded.set()


def test_unload_waits_for_the_calls_running_at_retirement() -> None:
    model = Gate()
    pipeline = Pipeline(name="m", version="1", model=model, max_batch_size=1)
    outcome: list[Any] = []
    running = threading.Thread(target=lambda: outcome.extend(pipeline.run_group([PipelineCall([1], False)])))
    running.start()
    assert model.entered.wait(5.0)
    pipeline.retire()
    assert not model.unloaded.is_set()  # a call is still running on it
    model.opened.set()
    running.join(5.0)
    assert outcome == [[1]]
    assert model.unloaded.is_set()  # the last call out unloaded it
    [late] = pipeline.run_group([PipelineCall([2], False)])
    assert isinstance(late, ModelNotReadyError) and "retry" in late.message
    assert model.calls_after_unload == 0


def test_an_idle_pipeline_unloads_at_once_and_a_failing_unload_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fails(FakeRuntime):
        def predict(self, batch: Any, parameters: Any = None) -> list[Any]:
            return list(batch)

        def unload(self) -> None:
            raise RuntimeError("device lost")

    pipeline = Pipeline(name="m", version="1", model=Fails(), max_batch_size=1)
    pipeline.retire()
    assert "unloading m:1 failed" in caplog.text
    assert isinstance(pipeline.run_group([PipelineCall([1], False)])[0], ModelNotReadyError)
