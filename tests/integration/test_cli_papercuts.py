"""What a new user of the CLI tripped on: a missing key explained in CLI terms, error lines that do not
break mid-sentence at the terminal's width, job ids shown whole in an 80-column terminal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from inferd_http_testkit import JOBS_KEY, ServerProcess, run_inferd, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cli-papercuts"), env={"INFERD_WORKER": "false"}) as process:
        yield process


def test_no_key_names_the_flag_and_the_variable(server: ServerProcess, tmp_path: Path) -> None:
    result = run_inferd(["models", "list", "--url", server.base_url], cwd=tmp_path)
    assert result.returncode != 0
    assert "--key" in result.stderr and "INFERD_API_KEY" in result.stderr, result.stderr
    assert "Authorization" not in result.stderr and "header" not in result.stderr.lower(), result.stderr


def test_errors_do_not_wrap_mid_sentence(server: ServerProcess, tmp_path: Path) -> None:
    result = run_inferd(
        ["predict", "nope", "--input", "1", "--url", server.base_url, "--key", JOBS_KEY],
        cwd=tmp_path,
        env={"COLUMNS": "40"},
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr


def test_jobs_list_shows_whole_ids_in_80_columns(server: ServerProcess, tmp_path: Path) -> None:
    client = server.client(JOBS_KEY)
    job_id = client.post("/v1/models/ok/jobs", json={"input": 1}).json()["id"]
    result = run_inferd(
        ["jobs", "list", "--url", server.base_url, "--key", JOBS_KEY], cwd=tmp_path, env={"COLUMNS": "80"}
    )
    assert result.returncode == 0, result.stderr
    assert job_id in result.stdout, result.stdout
