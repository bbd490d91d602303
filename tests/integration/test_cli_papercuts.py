"""What a new user of the CLI tripped on: a missing key explained in CLI terms, error and message lines
that do not break mid-sentence at the terminal's width, job ids shown whole in an 80-column terminal."""

from __future__ import annotations

import json
import re
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


def test_message_lines_do_not_wrap_in_a_narrow_terminal(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    narrow = {"COLUMNS": "40"}
    migrated = run_inferd(["migrate", "--store", store], cwd=tmp_path, env=narrow)
    assert migrated.returncode == 0, migrated.stderr
    assert len(migrated.stdout.splitlines()) == 1, migrated.stdout
    created = run_inferd(
        ["keys", "create", "--tenant", "acme", "--scopes", "predict", "--expires", "30d", "--store", store],
        cwd=tmp_path,
        env=narrow,
    )
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.splitlines()) == len(created.stderr.splitlines()) == 1, created.stderr


def test_jobs_list_cuts_no_cell_and_fits_80_columns(server: ServerProcess, tmp_path: Path) -> None:
    client = server.client(JOBS_KEY)
    job_id = client.post("/v1/models/ok/jobs", json={"input": 1}).json()["id"]  # no worker: pending
    for columns in ("80", "40"):  # 40: narrower than a row, which the terminal wraps
        result = run_inferd(
            ["jobs", "list", "--url", server.base_url, "--key", JOBS_KEY],
            cwd=tmp_path,
            env={"COLUMNS": columns},
        )
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout, result.stdout  # rich cut every column but the id to 'sta…'
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["id", "status", "model", "attempts", "age", "error"], result.stdout
        row = next(line for line in lines if line.startswith(job_id))
        assert row.split()[1:4] == ["pending", "ok:1", "0"], row
        assert re.fullmatch(r"\d+[smhd]", row.split()[4]), row
        assert len(row.rstrip()) <= 80, row


def test_jobs_list_filters_by_status_and_names_the_statuses_it_takes(
    server: ServerProcess, tmp_path: Path
) -> None:
    client = server.client(JOBS_KEY)
    job_id = client.post("/v1/models/ok/jobs", json={"input": 2}).json()["id"]  # no worker: stays pending
    listed = {
        status: run_inferd(
            ["jobs", "list", "--json", "--status", status, "--url", server.base_url, "--key", JOBS_KEY],
            cwd=tmp_path,
        )
        for status in ("pending", "succeeded")
    }
    assert job_id in listed["pending"].stdout and job_id not in listed["succeeded"].stdout, listed
    wrong = run_inferd(["jobs", "list", "--status", "done", "--key", JOBS_KEY], cwd=tmp_path)
    assert wrong.returncode == 2 and "cancelled" in wrong.stderr, wrong.stderr


def test_jobs_submit_writes_the_refusal_of_each_line(server: ServerProcess, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("1\n2\n")
    result = run_inferd(
        [
            "jobs",
            "submit",
            "nope",
            str(source),
            "--output",
            str(out),
            "--url",
            server.base_url,
            "--key",
            JOBS_KEY,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["error"]["code"] for line in lines] == ["model_not_found", "model_not_found"], lines
