"""/readyz says whether this server can serve: the job store answers and every version marked
``required: true`` is loaded. Other problems (a broken upload) are reported in the body without pulling
the replica out of the load balancer, unless ``strict_readiness`` is set."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from inferd_http_testkit import BROKEN_MODELS, MODELS, PREDICT_KEY, InProcessAPI


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The broken repository plus a model that fails to load and a required model that loads."""
    root = tmp_path / "models"
    shutil.copytree(BROKEN_MODELS, root)
    shutil.copytree(MODELS / "ok", root / "vital")
    spec = root / "vital" / "1" / "model.yaml"
    spec.write_text(spec.read_text() + "required: true\n")
    (root / "fails" / "1").mkdir(parents=True)
    (root / "fails" / "1" / "model.yaml").write_text("runtime: python\nmodel: missing:Model\n")
    return root


def test_a_broken_upload_is_reported_but_the_server_stays_ready(
    make_api: Callable[..., InProcessAPI], repo: Path
) -> None:
    api = make_api(models=repo)
    response = api.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    problems = body["problems"]
    broken_file = str(repo / "broken" / "1" / "model.yaml")
    (typo,) = [p for p in problems if broken_file in p]
    assert typo.count(broken_file) == 1, typo  # the path is not repeated
    assert any("model fails version 1" in p for p in problems), problems
    assert "vital:1" in body["loaded"]
    assert api.post("/v1/models/vital/predict", key=PREDICT_KEY, json={"input": 1}).status_code == 200


def test_strict_readiness_is_503_on_any_problem(make_api: Callable[..., InProcessAPI], repo: Path) -> None:
    response = make_api(models=repo, strict_readiness=True).get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready"
    assert any("model fails version 1" in r for r in body["reasons"]), body
    assert any("max_bach_size" in r for r in body["reasons"]), body


def test_a_required_model_that_fails_to_load_makes_the_server_not_ready(
    make_api: Callable[..., InProcessAPI], repo: Path
) -> None:
    spec = repo / "fails" / "1" / "model.yaml"
    spec.write_text(spec.read_text() + "required: true\n")
    response = make_api(models=repo).get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert [r for r in body["reasons"] if "model fails version 1" in r], body
    assert any("max_bach_size" in p for p in body["problems"]), body
