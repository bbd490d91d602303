"""inferd.client against a real `inferd serve` of the example models: the README's client example runs as
pasted (only the URL differs), and errors carry the request id the server logged."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from inferd_http_testkit import ServerProcess, running_server, server_env

from inferd.client import Client, ModelNotFound, Unauthenticated

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("client"), models=ROOT / "examples" / "models", args=["--dev"]
    ) as process:
        yield process


def readme_client_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python client", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the README's Python client section has a python example"
    return match.group(1)


def test_the_readme_example_runs_as_pasted(server: ServerProcess, tmp_path: Path) -> None:
    code = readme_client_example()
    assert README_URL in code
    result = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, server.base_url)],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0" and lines[1] == "[0, 2]"
    job_id, outputs = lines[2].split(" ", 1)
    assert outputs == "[0, 2]"
    assert any(line.startswith(f"{job_id} succeeded ") for line in lines[3:])
    error_line = next(line for line in lines if line.startswith("422 invalid_input "))
    assert re.search(r" \S+$", error_line)  # ends with the request id
    models = sorted(path.name for path in (ROOT / "examples" / "models").iterdir() if path.is_dir())
    assert lines[-1] == str(models)


def test_errors_from_a_real_server_are_typed_with_its_request_id(server: ServerProcess) -> None:
    with Client(server.base_url, api_key="dev") as client, pytest.raises(ModelNotFound) as caught:
        client.predict("nope", 1)
    assert caught.value.status == 404 and caught.value.request_id
    with Client(server.base_url, api_key="wrong") as client, pytest.raises(Unauthenticated):
        client.models()
    with Client(server.base_url) as client:
        assert client.ready() is True
