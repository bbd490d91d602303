"""The access log never writes a client's huge path or model name whole."""

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
