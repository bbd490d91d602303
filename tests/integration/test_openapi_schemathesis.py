"""Schemathesis against a real ``inferd serve``: every operation of /openapi.json, with every check
schemathesis has (status codes, content types, headers, response schemas, positive data accepted and
negative data refused, auth not ignored, ...), not only "no 5xx". Bounded examples and a fixed seed keep
it deterministic and short."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from inferd_http_testkit import ADMIN_KEY, ServerProcess, bearer, make_settings, running_server
from schemathesis.checks import CHECKS, load_all_checks

from inferd.bootstrap import build_app, build_engine
from inferd.core.json_limits import INT_MAX, INT_MIN

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 10
# Every check schemathesis registers, named here so that none is dropped by a default.
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
assert {"negative_data_rejection", "positive_data_acceptance", "ignored_auth"} <= set(CHECKS.get_all_names())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("schemathesis"), env={"INFERD_WORKER": "true"}) as process:
        yield process


@pytest.fixture(scope="module")
def base_url(server: ServerProcess) -> str:
    return server.base_url


def served_document() -> dict[str, Any]:
    """The /openapi.json the server serves, from an app built here (schemathesis needs the schema when
    pytest collects, before any server runs); the module's server serves the same settings."""
    with tempfile.TemporaryDirectory() as workdir:
        settings = make_settings(Path(workdir))
        engine = build_engine(settings)
        try:
            app = build_app(settings, engine=engine)

            async def fetch() -> dict[str, Any]:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                    document: dict[str, Any] = (await client.get("/openapi.json")).json()
                    return document

            return asyncio.run(fetch())
        finally:
            engine.close()


# Documented exceptions; every other operation keeps schemathesis's expectations:
# - a V2 infer body is valid for a model only when its tensors match the model's declared inputs (names,
#   datatypes, shapes), which the route's one schema cannot say: a schema-valid body the model refuses is
#   a 400/422, as the protocol says (5xx is not accepted there either);
# - a JSON Lines bulk body answers each line alone (README, Jobs): a malformed line gets its own error
#   line in a 200, so a schema-violating line is not a refused request. (A bulk body sent as
#   application/json, one object, is refused as a whole: test_http_hostile_input.py.)
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-path-regex": "^/v2/models/.*/infer$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429"]
                    }
                },
            },
            {
                # expires_at must be in the future, which a schema cannot state: a past one is a 422.
                "include-path-regex": "^/v1/admin/keys$",
                "include-method": "POST",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
                    }
                },
            },
            {
                "include-path-regex": "/jobs/bulk$",
                "checks": {
                    "negative_data_rejection": {
                        "expected-statuses": ["200", "400", "401", "403", "404", "409", "413", "422", "429"]
                    }
                },
            },
        ]
    }
)
schema = schemathesis.openapi.from_dict(served_document(), config=CONFIG)


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> bytes:
    # The bulk route's JSON Lines body: its schema is one line's; a generated value is a one-line body.
    return json.dumps(value).encode() + b"\n"


def _holds_a_huge_integer(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT_MIN <= value <= INT_MAX
    if isinstance(value, dict):
        return any(_holds_a_huge_integer(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_a_huge_integer(item) for item in value)
    return False


@schema.hook
def filter_body(context: Any, body: Any) -> bool:
    # inferd refuses integers outside 64 bits anywhere in a body (422, "send it as a string"; README,
    # "Hostile input"); free-form JSON values cannot carry that bound in a JSON Schema, so bodies holding
    # one are not generated as valid data. Their refusal is tested in test_http_hostile_input.py.
    return not _holds_a_huge_integer(body)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_conforms(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers=bearer(ADMIN_KEY), checks=ALL_CHECKS)
