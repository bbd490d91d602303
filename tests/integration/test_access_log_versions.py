"""The access log names the version a request resolved to on error lines as on success lines."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from inferd_http_testkit import JOBS_KEY, PREDICT_KEY, in_process_api


def _logged_versions(log: Path) -> dict[str, tuple[int, str | None]]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {record["request_id"]: (record["status"], record["version"]) for record in records}


def test_error_and_bulk_lines_name_the_resolved_version(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    responses: dict[str, httpx.Response] = {}
    with in_process_api(access_log=str(log)) as api:
        responses["invalid"] = api.post(
            "/v1/models/schema/predict", key=PREDICT_KEY, json={"input": {"x": -1}}
        )
        responses["failed"] = api.post("/v1/models/boom/predict", key=PREDICT_KEY, json={"input": 1})
        responses["invalid job"] = api.post("/v1/models/schema/jobs", key=JOBS_KEY, json={"input": {"x": -1}})
        responses["bulk"] = api.post(
            "/v1/models/ok/jobs/bulk",
            key=JOBS_KEY,
            content=b'{"input": 1}\n{"input": 2}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
        responses["unknown"] = api.post("/v1/models/nope/predict", key=PREDICT_KEY, json={"input": 1})
    logged = _logged_versions(log)
    expected = {
        "invalid": (422, "1"),
        "failed": (500, "1"),
        "invalid job": (422, "1"),
        "bulk": (200, "1"),
        "unknown": (404, None),  # nothing was resolved
    }
    for name, (status, version) in expected.items():
        response = responses[name]
        assert response.status_code == status, (name, response.text)
        assert logged[response.headers["x-request-id"]] == (status, version), name
