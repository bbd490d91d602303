"""The composition root sets Python's switch interval from the settings (a GIL-holding model call lets
the event loop read requests after that long)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferd.bootstrap import build_engine
from inferd.core.settings import load_settings


@pytest.fixture
def restored_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize(
    ("environ", "seconds"), [({}, 0.001), ({"INFERD_GIL_SWITCH_INTERVAL_MS": "2.5"}, 0.0025)]
)
def test_building_the_engine_sets_the_switch_interval(
    repo: Path,
    make_echo: Callable[..., Path],
    restored_interval: None,
    environ: dict[str, str],
    seconds: float,
) -> None:
    make_echo(repo, "echo", "1")
    sys.setswitchinterval(0.005)
    settings = load_settings(flags={"models": repo, "access_log": "off"}, environ=environ)
    engine = build_engine(settings)
    try:
        assert sys.getswitchinterval() == pytest.approx(seconds)
    finally:
        engine.close()
