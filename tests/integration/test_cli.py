"""The client-side CLI commands: `inferd models list` and `inferd predict`, against a real server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from inferd_http_testkit import (
    ADMIN_KEY,
    BROKEN_MODELS,
    MODELS,
    ServerProcess,
    run_inferd,
    running_server,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cli")) as process:
        yield process


def test_models_list_of_a_local_repository_loads_nothing(tmp_path: Path) -> None:
    result = run_inferd(["models", "list", "--models", str(MODELS), "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    models = {entry["name"]: entry for entry in json.loads(result.stdout)["models"]}
    assert {"ok", "canary", "boom"} <= set(models)
    assert models["canary"]["routing"]["policy"] == "weighted"
    assert {v["state"] for entry in models.values() for v in entry["versions"]} == {"unloaded"}


def test_models_list_of_a_local_repository_reports_broken_entries(tmp_path: Path) -> None:
    result = run_inferd(["models", "list", "--models", str(BROKEN_MODELS), "--json"], cwd=tmp_path)
    assert result.returncode == 0
    assert "max_bach_size" in result.stderr
    assert [entry["name"] for entry in json.loads(result.stdout)["models"]] == ["ok"]


def test_models_list_and_predict_against_a_server(server: ServerProcess, tmp_path: Path) -> None:
    common = ["--url", server.base_url, "--key", ADMIN_KEY]
    listed = run_inferd(["models", "list", "--json", *common], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "ok" in {entry["name"] for entry in json.loads(listed.stdout)["models"]}

    predicted = run_inferd(
        ["predict", "ok", "--input", '{"a": [1, 2]}', "--version", "1", *common], cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == {"a": [1, 2]}
    assert "model ok version 1" in predicted.stderr


def test_predict_reports_api_errors_and_exits_non_zero(server: ServerProcess, tmp_path: Path) -> None:
    missing = run_inferd(
        ["predict", "nope", "--input", "1", "--url", server.base_url, "--key", ADMIN_KEY], cwd=tmp_path
    )
    assert missing.returncode == 1
    assert "404 model_not_found" in missing.stderr

    bad_key = run_inferd(
        ["predict", "ok", "--input", "1", "--url", server.base_url, "--key", "wrong"], cwd=tmp_path
    )
    assert bad_key.returncode == 1
    assert "401 unauthenticated" in bad_key.stderr
    assert "wrong" not in bad_key.stderr.replace("--key", "")

    bad_json = run_inferd(["predict", "ok", "--input", "{oops", "--url", server.base_url], cwd=tmp_path)
    assert bad_json.returncode == 2
    assert "--input is not valid JSON" in bad_json.stderr


def test_models_reload_needs_an_admin_key(server: ServerProcess, tmp_path: Path) -> None:
    reloaded = run_inferd(["models", "reload", "--url", server.base_url, "--key", ADMIN_KEY], cwd=tmp_path)
    assert reloaded.returncode == 0, reloaded.stderr
    assert "unchanged:" in reloaded.stdout
    refused = run_inferd(["models", "reload", "--url", server.base_url, "--key", "k1"], cwd=tmp_path)
    assert refused.returncode == 1
    assert "403 forbidden" in refused.stderr


def test_models_reload_exits_3_and_prints_what_failed(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(BROKEN_MODELS, repo)  # ok/1 loads; broken/1 has a model.yaml typo
    with running_server(tmp_path / "server", models=repo) as server:
        common = ["models", "reload", "--url", server.base_url, "--key", ADMIN_KEY]
        (repo / "fresh" / "1").mkdir(parents=True)
        (repo / "fresh" / "1" / "model.yaml").write_text("runtime: python\nmodel: missing:Model\n")
        result = run_inferd(common, cwd=tmp_path)
        assert result.returncode == 3, result.stdout + result.stderr
        assert result.stdout.splitlines() == ["added: fresh:1", "failed: fresh:1", "unchanged: 1 version(s)"]
        problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
        assert len(problems) == 2, result.stderr
        assert any("max_bach_size" in line for line in problems), problems
        assert any(
            "model fresh version 1 failed to load: " in line and "missing" in line for line in problems
        )
        assert result.stderr.splitlines()[-1] == (
            "error: the reload reported 1 failed version(s) and 2 problem(s), listed above; "
            "fix the files and reload again"
        )

        shutil.rmtree(repo / "fresh")
        shutil.rmtree(repo / "broken")
        fixed = run_inferd(common, cwd=tmp_path)
        assert fixed.returncode == 0, fixed.stderr
        assert fixed.stdout.splitlines() == ["removed: fresh:1", "unchanged: 1 version(s)"]
