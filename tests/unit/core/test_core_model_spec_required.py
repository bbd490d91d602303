"""``required: true`` in model.yaml: readiness waits for the version, so it must load at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferd.core.model_spec import ModelSpec


def test_required_needs_load_at_start() -> None:
    assert ModelSpec(runtime="python", model="m:M", required=True).required
    with pytest.raises(ValidationError, match="load_at_start"):
        ModelSpec(runtime="python", model="m:M", required=True, load_at_start=False)
