"""Shared helpers for the core tests: model repositories written into ``tmp_path``, fake metrics."""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ECHO_PY = """
class Echo:
    def predict(self, batch):
        return list(batch)
"""


def write_version(
    root: Path,
    name: str,
    version: str,
    model_yaml: str,
    files: dict[str, str] | None = None,
    copies: dict[str, Path] | None = None,
) -> Path:
    """``root/name/version/model.yaml`` plus small source files and copied artifacts."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(textwrap.dedent(model_yaml))
    for file_name, text in (files or {}).items():
        (folder / file_name).write_text(textwrap.dedent(text))
    for file_name, source in (copies or {}).items():
        shutil.copyfile(source, folder / file_name)
    return folder


def write_echo(root: Path, name: str, version: str, extra_yaml: str = "") -> Path:
    spec = "runtime: python\nmodel: echo:Echo\n" + textwrap.dedent(extra_yaml)
    return write_version(root, name, version, spec, {"echo.py": ECHO_PY})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


class FakeExecutorMetrics:
    """Records the executor's accounting calls (thread-safe: workers call it from their threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.queued = 0
        self.timeouts = 0
        self.calls: list[tuple[str, int]] = []
        self.steps: list[int] = []
        self.sheds: list[str] = []

    def inflight_add(self, amount: int) -> None:
        with self._lock:
            self.inflight += amount
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.calls.append(("inflight", amount))

    def queued_add(self, amount: int) -> None:
        with self._lock:
            self.queued += amount
            self.calls.append(("queued", amount))

    def timeout(self) -> None:
        with self._lock:
            self.timeouts += 1
            self.calls.append(("timeout", 1))

    def shed(self, reason: object) -> None:
        with self._lock:
            self.sheds.append(str(reason))
            self.calls.append(("shed", 1))

    def step(self, target: object, items: int) -> None:
        """One model-call group handed to the pipeline (items after merging)."""
        with self._lock:
            self.steps.append(items)
            self.calls.append(("step", items))

    def __getattr__(self, name: str) -> Callable[..., None]:
        # Accounting hooks added to the ExecutorMetrics protocol later are recorded, not fatal.
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: object, **kwargs: object) -> None:
            with self._lock:
                self.calls.append((name, 0))

        return record


@pytest.fixture
def fake_metrics() -> FakeExecutorMetrics:
    return FakeExecutorMetrics()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# Test modules get the helpers through fixtures: importing ``conftest`` by name is ambiguous when
# several test folders each have one.
@pytest.fixture
def make_version() -> Callable[..., Path]:
    return write_version


@pytest.fixture
def make_echo() -> Callable[..., Path]:
    return write_echo


@pytest.fixture
def waiter() -> Callable[..., bool]:
    return wait_until
