"""What an error says is what to do: a body of the other predict route's form names the right route, a
413 names the setting behind the limit, and a body that is not UTF-8 says so (orjson's own words were
'str is not valid UTF-8: surrogates not allowed' at line 1 column 1)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import orjson
import pytest
from inferd_http_testkit import ADMIN_KEY, JOBS_KEY, PREDICT_KEY, InProcessAPI, assert_error

from inferd.http.jobs import MAX_BULK_BYTES

SETTING = "the limit is the server setting max_body_bytes (INFERD_MAX_BODY_BYTES, or max_body_bytes: in the config file)"
V2_TENSOR = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}


def message(
    api: InProcessAPI,
    path: str,
    body: bytes | AsyncIterator[bytes],
    status: int = 422,
    *,
    key: str = PREDICT_KEY,
    headers: dict[str, str] | None = None,
) -> str:
    """The error message of the answer, which must have ``status`` and the route's error shape."""
    response = api.post(path, key=key, content=body, headers=headers)
    if path.startswith("/v2"):
        assert response.status_code == status, response.text
        text: str = response.json()["error"]
        return text
    code = {413: "payload_too_large", 422: "invalid_input"}[status]
    text = assert_error(response, status, code)["error"]["message"]
    return text


@pytest.mark.parametrize("pinned", ["", "/versions/1"])
def test_a_body_of_the_other_form_names_the_route_it_belongs_to(api: InProcessAPI, pinned: str) -> None:
    predict = f"/v1/models/ok{pinned}/predict"
    several = message(api, predict, orjson.dumps({"inputs": [1, 2]}))
    assert several.endswith(
        '; several items go to .../predict/batch (this path + /batch) as {"inputs": [...]}, '
        'one item here as {"input": ...}'
    ), several
    tensors = message(api, predict, orjson.dumps({"inputs": [V2_TENSOR]}))
    assert '"inputs" holds V2 tensors: POST them to /v2/models/{name}/infer' in tensors, tensors
    one = message(api, predict + "/batch", orjson.dumps({"input": 1}))
    assert '; one item goes to .../predict (this path without /batch) as {"input": ...}' in one, one
    # Each hint names a route that takes the body as sent.
    assert api.post(predict + "/batch", key=PREDICT_KEY, json={"inputs": [1, 2]}).status_code == 200
    assert api.post(predict, key=PREDICT_KEY, json={"input": 1}).status_code == 200


def test_413_names_the_setting_behind_the_limit(api: InProcessAPI) -> None:
    big = orjson.dumps({"input": "x" * 5000})  # the api fixture's max_body_bytes is 4096
    declared = message(api, "/v1/models/ok/predict", big, 413)
    assert declared == f"request body of {len(big)} bytes exceeds the 4096-byte limit; {SETTING}"

    async def chunks() -> AsyncIterator[bytes]:
        yield big

    streamed = message(api, "/v1/models/ok/predict", chunks(), 413)
    assert streamed == f"request body exceeds the 4096-byte limit; {SETTING}"
    bomb = gzip.compress(orjson.dumps({"inputs": [{**V2_TENSOR, "data": [0.0] * 4000, "shape": [1000, 4]}]}))
    assert len(bomb) < 4096
    decompressed = message(api, "/v2/models/ok/infer", bomb, 413, headers={"content-encoding": "gzip"})
    assert decompressed == f"decompressed request body exceeds the 4096-byte limit; {SETTING}"


def test_413_of_a_bulk_request_says_to_split_it(api: InProcessAPI) -> None:
    lines = b'{"input": 1}\n' * (MAX_BULK_BYTES // 13 + 1)
    text = message(api, "/v1/models/ok/jobs/bulk", lines, 413, key=JOBS_KEY)
    assert text.endswith(
        f"exceeds the {MAX_BULK_BYTES}-byte limit; split the lines over several requests (at most 10000 each)"
    ), text


def test_a_body_that_is_not_utf8_says_it_must_be_utf8_json(api: InProcessAPI) -> None:
    latin1 = '{"input": "café"}'.encode("latin-1")
    expected = "request body must be UTF-8 JSON: byte 0xe9 at offset 14 is not UTF-8; send "
    assert message(api, "/v1/models/ok/predict", latin1) == expected + '{"input": ...}'
    assert message(api, "/v1/models/ok/jobs", latin1, key=JOBS_KEY).startswith(expected)
    tensor = b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["caf\xe9"]}]}'
    assert message(api, "/v2/models/ok/infer", tensor) == (
        f"request body must be UTF-8 JSON: byte 0xe9 at offset {tensor.index(0xE9)} is not UTF-8; "
        "send a V2 inference request"
    )
    key_body = '{"tenant": "café", "scopes": ["predict"]}'.encode("latin-1")
    assert message(api, "/v1/admin/keys", key_body, key=ADMIN_KEY).startswith(
        "request body must be UTF-8 JSON: byte 0xe9 at offset 15 is not UTF-8"
    )
    bulk = api.post("/v1/models/ok/jobs/bulk", key=JOBS_KEY, content=b'{"input": 1}\n' + latin1)
    assert bulk.status_code == 200, bulk.text
    second = orjson.loads(bulk.content.splitlines()[1])
    assert second["error"]["message"].startswith("line 2 must be UTF-8 JSON: byte 0xe9 at offset 14"), second
