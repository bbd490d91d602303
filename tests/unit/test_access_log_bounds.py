"""The access log never writes a client's huge path or model name whole; its times are UTC milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

from inferd.http.access_log import MAX_FIELD_CHARS, AccessLog


def test_client_fields_are_cut(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    log = AccessLog(str(target))
    name = "m" * 60_000
    log.write({"path": f"/v1/models/{name}/predict", "model": name, "version": None, "status": 404})
    log.close()
    record = json.loads(target.read_text())
    assert len(record["path"]) == MAX_FIELD_CHARS + 3
    assert record["model"] == "m" * MAX_FIELD_CHARS + "..."
    assert record["version"] is None and record["status"] == 404


def test_time_is_utc_to_the_millisecond_across_seconds(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    stamps = iter([1_700_000_000.9996, 1_700_000_001.0004, 1_700_000_001.25])
    log = AccessLog(str(target), clock=lambda: next(stamps))
    for status in (200, 201, 202):
        log.write({"status": status})
    log.close()
    times = [json.loads(line)["time"] for line in target.read_text().splitlines()]
    assert times == ["2023-11-14T22:13:20.999Z", "2023-11-14T22:13:21.000Z", "2023-11-14T22:13:21.250Z"]
