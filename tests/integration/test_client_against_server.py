"""The README's examples against a real `inferd serve --dev` of the example models, run as pasted (only the
addresses differ): the "Try it" curl and CLI commands, the Python client, the V2 REST and gRPC
tritonclient examples; and inferd.client errors carry the request id the server logged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from inferd_http_testkit import ServerProcess, free_port, running_server, server_env

from inferd.client import Client, ModelNotFound, Unauthenticated

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "127.0.0.1:8000"
README_URL = f"http://{README_ADDRESS}"
README_GRPC_ADDRESS = "127.0.0.1:8001"
GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("client"),
        models=ROOT / "examples" / "models",
        args=["--dev"],
        env={"INFERD_GRPC_PORT": str(GRPC_PORT)},
    ) as process:
        yield process


def readme_blocks(heading: str, language: str) -> list[str]:
    """The ``language`` code blocks of the README section under ``heading`` (up to the next section)."""
    section = (ROOT / "README.md").read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"the README's {heading!r} section has a {language} example"
    return blocks


def readme_client_example() -> str:
    return readme_blocks("## Python client", "python")[0]


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a README bash block as a user pastes it; this interpreter's environment provides ``inferd``,
    ``python3`` and tritonclient (the dev extra)."""
    env = server_env({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def pointed_at(server: ServerProcess, script: str) -> str:
    """``script`` with the README's addresses replaced by ``server``'s."""
    assert README_ADDRESS in script or README_GRPC_ADDRESS in script
    address = server.base_url.removeprefix("http://")
    return script.replace(README_ADDRESS, address).replace(README_GRPC_ADDRESS, f"127.0.0.1:{GRPC_PORT}")


def without_setup_lines(script: str) -> str:
    """The block without what the test's environment already did (activating a venv, pip install)."""
    setup = (". .venv/bin/activate", "pip install")
    return "".join(line for line in script.splitlines(keepends=True) if not line.startswith(setup))


def test_the_readme_try_it_curl_commands_answer_as_described(server: ServerProcess, tmp_path: Path) -> None:
    script = readme_blocks("## Try it", "bash")[0]
    result = run_bash(pointed_at(server, script), tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    # What the README shows them print, exactly; and every answer on a line of its own (the server's
    # JSON ends without a newline: without curl's -w the answers would run together on one line).
    shown = readme_blocks("## Try it", "text")[0].splitlines()
    assert lines[: len(shown)] == shown, out
    answers = [orjson.loads(line) for line in lines if line.startswith("{")]
    assert len(answers) == script.count("curl -s -w '\\n' "), out
    for expected in (
        '{"status":"ok"}',
        '"model":"iris","version":"2","output":0,',
        '"model":"iris","version":"1","output":0,',
        '"output":{"label":"positive",',
        '"outputs":[0,2]',
        '{"error":{"code":"invalid_input","message":"input rejected by the validator: text contains no words"}',
        '{"error":{"code":"timeout",',
        "HTTP/1.1 202 Accepted",
        '"status":"succeeded"',
        '{"error":{"code":"conflict",',
        'inference_requests_total{model="iris",tenant="dev",version="2"}',
        'inference_errors_total{error_type="timeout",model="slow",tenant="dev",version="1"} 1.0',
        'job_queue_depth{model="iris",version="2"} 0.0',
    ):
        assert expected in out, f"{expected!r} not in the output:\n{out}"


def test_the_readme_try_it_cli_commands_answer_as_described(server: ServerProcess, tmp_path: Path) -> None:
    script = readme_blocks("## Try it", "bash")[1]
    assert "--url" not in script  # the README's commands use the default URL: point it here
    script = f"export INFERD_URL={server.base_url}\n" + without_setup_lines(script)
    result = run_bash(script, tmp_path)
    # The last command is the documented 409: cancelling a finished job.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: 409 conflict: job " in result.stderr
    assert "submitted 2 job(s) to iris; 0 rejected" in result.stderr
    assert "wrote 2 line(s) to " in result.stderr
    lines = result.stdout.splitlines()
    assert "0" in lines  # inferd predict
    assert '  "status": "succeeded",' in lines  # inferd jobs get
    assert list(tmp_path.iterdir()) == []  # the example keeps its files out of the working directory


def test_the_readme_v2_rest_example_runs_as_pasted(server: ServerProcess, tmp_path: Path) -> None:
    script = without_setup_lines(readme_blocks("## V2 REST (Open Inference Protocol)", "bash")[0])
    result = run_bash(pointed_at(server, script), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True True [{'name': 'input', 'datatype': 'FP32', 'shape': [-1, 4]}]"
    assert lines[1:3] == ["[0 2]", "['positive' 'negative']"]
    assert '"outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]' in lines[3]


def test_the_readme_v2_grpc_example_runs_as_pasted(server: ServerProcess, tmp_path: Path) -> None:
    script = without_setup_lines(readme_blocks("## V2 gRPC", "bash")[0])
    result = run_bash(pointed_at(server, script), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True [{'name': 'input', 'datatype': 'FP32', 'shape': ['-1', '4']}]",
        "[0 2]",
        "[b'positive' b'negative']",
    ]


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
