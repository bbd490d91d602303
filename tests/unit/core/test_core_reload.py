"""Reloading the model repository: new and changed versions load, removed ones go, unchanged ones keep
their pipeline, and nothing serving changes until the plan is applied."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from inferd.core.registry import ModelRegistry
from inferd.runtimes.factory import PipelineFactory


def registry_for(root: Path) -> ModelRegistry:
    seen: list[tuple[str, str, str]] = []
    registry = ModelRegistry(
        loader=PipelineFactory(),
        devices={"cpu"},
        on_state_change=lambda v: seen.append((v.name, v.version, v.state)),
    )
    registry.scan(root)
    registry.load_at_start()
    registry.state_changes = seen  # type: ignore[attr-defined]
    return registry


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_reload_adds_changes_removes_and_keeps(repo: Path, make_echo: Callable[..., Path]) -> None:
    write_echo = make_echo
    write_echo(repo, "keep", "1")
    write_echo(repo, "change", "1")
    write_echo(repo, "gone", "1")
    registry = registry_for(repo)
    kept_pipeline = registry.models["keep"].versions["1"].pipeline
    changed_before = registry.models["change"].versions["1"].pipeline
    assert kept_pipeline is not None and changed_before is not None

    write_echo(repo, "keep", "2")  # a new version of an existing model
    write_echo(repo, "fresh", "1")  # a new model
    touch_later(repo / "change" / "1" / "echo.py")
    shutil.rmtree(repo / "gone")

    plan = registry.plan_reload()
    assert "gone" in registry.models  # planning changes nothing that serves
    assert sorted(plan.added) == ["fresh:1", "keep:2"]
    assert plan.reloaded == ["change:1"]
    assert plan.removed == ["gone:1"]
    assert plan.unchanged == ["keep:1"]
    assert plan.failed == []

    registry.apply_reload(plan)
    assert set(registry.models) == {"change", "fresh", "keep"}
    assert registry.models["keep"].versions["1"].pipeline is kept_pipeline
    assert registry.models["change"].versions["1"].pipeline is not changed_before
    assert registry.models["keep"].highest == "2"
    assert ("gone", "1", "removed") in registry.state_changes  # type: ignore[attr-defined]


def test_reload_reports_broken_entries_and_retries_failed_versions(
    repo: Path, make_echo: Callable[..., Path], make_version: Callable[..., Path]
) -> None:
    write_echo, write_version = make_echo, make_version
    write_echo(repo, "ok", "1")
    broken = write_version(repo, "broken", "1", "runtime: python\nmodel: missing:Model\n")
    registry = registry_for(repo)
    assert registry.models["broken"].versions["1"].state == "failed"

    (repo / "typo" / "1").mkdir(parents=True)
    (repo / "typo" / "1" / "model.yaml").write_text("runtime: python\nmodel: m:M\nmax_bach_size: 2\n")
    plan = registry.plan_reload()
    registry.apply_reload(plan)
    assert plan.failed == ["broken:1"]  # failed versions are tried again even when unchanged
    problems = plan.summary()["problems"]
    assert any("max_bach_size" in problem for problem in problems)
    # The answer says why each failed version failed, not only that it did.
    assert any(
        problem.startswith(f"{broken}: model broken version 1 failed to load: ") and "missing" in problem
        for problem in problems
    ), problems
    assert any("max_bach_size" in reason for reason in registry.readiness()[1])

    (broken / "missing.py").write_text("class Model:\n    def predict(self, batch):\n        return batch\n")
    plan = registry.plan_reload()
    registry.apply_reload(plan)
    assert plan.failed == []
    assert registry.models["broken"].versions["1"].state == "loaded"


def test_a_loaded_version_whose_edit_goes_wrong_keeps_serving_its_previous_load(
    repo: Path, make_echo: Callable[..., Path]
) -> None:
    folder = make_echo(repo, "echo", "1")
    make_echo(repo, "lone", "1")
    registry = registry_for(repo)
    serving = registry.models["echo"].versions["1"]
    lone = registry.models["lone"].versions["1"]
    assert serving.state == lone.state == "loaded"

    (folder / "echo.py").write_text("raise RuntimeError('half-uploaded')\n")  # its new files do not load
    touch_later(folder / "echo.py")
    (repo / "lone" / "1" / "model.yaml").write_text("runtime: [\n")  # its model.yaml does not read
    plan = registry.plan_reload()
    registry.apply_reload(plan)
    assert sorted(plan.failed) == ["echo:1", "lone:1"]
    assert plan.reloaded == [] and plan.removed == []
    assert registry.models["echo"].versions["1"] is serving and serving.pipeline is not None
    assert registry.models["lone"].versions["1"] is lone and not lone.retired
    problems = "\n".join(plan.summary()["problems"])
    assert (
        "model echo version 1 keeps serving its previous load: its changed files did not load: " in problems
    )
    assert "half-uploaded" in problems
    assert "model lone version 1 keeps serving its previous load: its model.yaml does not read" in problems

    make_echo(repo, "echo", "1")  # fixed: the next reload loads it
    touch_later(folder / "echo.py")
    plan = registry.plan_reload()
    registry.apply_reload(plan)
    assert plan.reloaded == ["echo:1"] and plan.failed == ["lone:1"]
    assert registry.models["echo"].versions["1"] is not serving
    assert serving.retired and registry.models["echo"].versions["1"].state == "loaded"
