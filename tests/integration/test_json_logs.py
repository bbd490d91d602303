"""Everything a real `inferd serve` and `inferd worker` write is JSON lines: uvicorn's start and stop
lines, inferd's own, a model's traceback, the access log; `--log-level` filters them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferd_http_testkit import PREDICT_KEY, bearer, running_server, running_worker

pytestmark = pytest.mark.slow


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\nwhole output:\n{text}")
    for entry in parsed:
        assert {"time", "level", "logger"} <= set(entry), entry
    return parsed


def test_serve_writes_only_json_lines(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"INFERD_ACCESS_LOG": "-"}, args=["--log-level", "info"]) as server:
        with httpx.Client(base_url=server.base_url, headers=bearer(PREDICT_KEY), timeout=10) as client:
            assert (
                client.post(
                    "/v1/models/ok/predict", json={"input": 1}, headers={"x-request-id": "req-ok"}
                ).status_code
                == 200
            )
            assert (
                client.post(
                    "/v1/models/boom/predict", json={"input": 1}, headers={"x-request-id": "req-boom"}
                ).status_code
                == 500
            )
        process = server.process
    assert process.returncode == 0
    lines = json_lines(server.output())
    loggers = {entry["logger"] for entry in lines}
    assert {"uvicorn.error", "inferd.access"} <= loggers, loggers
    access = {entry["request_id"]: entry for entry in lines if entry["logger"] == "inferd.access"}
    assert access["req-ok"]["status"] == 200 and access["req-boom"]["error"] == "inference_error"
    (traceback,) = [entry for entry in lines if "exception" in entry]
    assert "RuntimeError: kaboom" in traceback["exception"] and traceback["level"] == "error"


def test_log_level_warning_drops_info_lines(tmp_path: Path) -> None:
    with running_server(tmp_path, args=["--log-level", "warning"]) as server:
        httpx.get(f"{server.base_url}/livez", timeout=5)
    lines = json_lines(server.output()) if server.output().strip() else []
    assert all(entry["level"] in ("warning", "error", "critical") for entry in lines), lines


def test_worker_writes_only_json_lines(tmp_path: Path) -> None:
    with running_worker(tmp_path) as worker:
        pass  # stopped gracefully once ready: it has said it is running, and that it stopped
    assert worker.process.returncode == 0, worker.output()
    lines = json_lines(worker.output())
    assert any(entry["logger"] == "inferd.worker" and "running" in entry["message"] for entry in lines), lines
