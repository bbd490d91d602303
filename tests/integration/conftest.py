"""Shared fixtures for the HTTP integration tests.

Two ways to reach the server:

- in process: ``build_engine`` + ``build_app`` behind ``httpx.ASGITransport``. Each ``InProcessAPI`` owns
  one event loop for its whole life, because a ``DeviceExecutor`` binds to the loop of its first call;
  tests call it synchronously (``api.post(...)``) or run coroutines on it (``api.run(...)``).
- a real ``inferd serve`` subprocess on a free loopback port (``running_server``), for what only a real
  HTTP stack shows: chunked bodies, the access log file, start-up failures, the /metrics text; and an
  ``inferd worker`` beside it on the same store (``running_worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from inferd.bootstrap import Engine, build_app, build_engine
from inferd.core.settings import Settings, load_settings

T = TypeVar("T")

# The test modules import their helpers from here. Under the name "conftest" they could get another
# directory's conftest (pytest re-imports each rootless conftest.py as "conftest"), so this module also
# registers itself under a name of its own; pytest always imports it before this directory's tests.
sys.modules.setdefault("inferd_http_testkit", sys.modules[__name__])

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = FIXTURES / "models"
BROKEN_MODELS = FIXTURES / "broken_models"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
# Inputs of the bundled iris and sentiment models, shared by the V2 tests of every transport.
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
TEXTS = ["I love it, the food was delicious.", "Awful, a complete waste of money. I hate it."]

# key:tenant:scopes, as in the brief: one key per scope, two tenants.
API_KEYS = "k1:acme:predict;k2:acme:models;k3:beta:admin;k4:acme:jobs"
PREDICT_KEY = "k1"  # acme, predict
MODELS_KEY = "k2"  # acme, models
ADMIN_KEY = "k3"  # beta, admin
JOBS_KEY = "k4"  # acme, jobs

# A safety net, not an expectation: waits end when the process answers. On a loaded 2-core machine
# a process importing onnxruntime, scikit-learn and grpc was measured taking over 30 s to answer.
SERVER_START_TIMEOUT_S = 120.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(workdir: Path, **overrides: Any) -> Settings:
    flags: dict[str, Any] = {
        "models": MODELS,
        "api_keys": API_KEYS,
        "access_log": "off",
        "log_level": "warning",
        "store": f"sqlite:///{workdir / 'jobs.db'}",  # never the default store under the cwd
        "worker": False,
    }
    flags.update(overrides)
    return load_settings(flags=flags, environ={})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The native error shape, exactly: {"error": {"code", "message"}, "request_id"}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"], (body, dict(response.headers))
    return body


class InProcessAPI:
    """One engine, its apps (fast path on, and optionally off) and one event loop."""

    def __init__(self, **overrides: Any) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="inferd-test-"))
        self.settings = make_settings(self._workdir, **overrides)
        self.loop = asyncio.new_event_loop()
        self.engine: Engine = build_engine(self.settings)
        self.app = build_app(self.settings, engine=self.engine)
        self.client = self._client_for(self.app)
        # ASGITransport does not run the lifespan; the app's (job store, log flusher) must run.
        self._lifespan = Lifespan(self.app)
        try:
            self.run(self._lifespan.startup())
        except BaseException:
            self.engine.close()
            self.loop.close()
            shutil.rmtree(self._workdir, ignore_errors=True)
            raise

    @staticmethod
    def _client_for(app: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def gather(self, *awaitables: Awaitable[Any]) -> list[Any]:
        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*awaitables))

        return self.run(all_of())

    def arequest(
        self, method: str, url: str, *, key: str | None = None, **kwargs: Any
    ) -> Awaitable[httpx.Response]:
        headers = dict(kwargs.pop("headers", None) or {})
        if key is not None:
            headers.update(bearer(key))
        return self.client.request(method, url, headers=headers, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.arequest(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        try:
            self.run(self.client.aclose())
            self.run(self._lifespan.shutdown())
        finally:
            self.engine.close()
            self.loop.close()
            shutil.rmtree(self._workdir, ignore_errors=True)


class Lifespan:
    """Drives the ASGI lifespan protocol of an app, as a server would."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _exchange(self, message: str, expected: str) -> None:
        await self._to_app.put({"type": message})
        reply = await asyncio.wait_for(self._from_app.get(), timeout=30)
        if reply["type"] != expected:
            raise RuntimeError(f"lifespan: {reply}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.create_task(self._app(scope, self._to_app.get, self._from_app.put))
        await self._exchange("lifespan.startup", "lifespan.startup.complete")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._exchange("lifespan.shutdown", "lifespan.shutdown.complete")
        await asyncio.wait_for(self._task, timeout=30)


@contextlib.contextmanager
def in_process_api(**overrides: Any) -> Iterator[InProcessAPI]:
    api = InProcessAPI(**overrides)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessAPI]:
    """The default in-process server: tests/fixtures/models, the four keys, 4 KiB body limit."""
    with in_process_api(max_body_bytes=4096) as instance:
        yield instance


@pytest.fixture
def make_api() -> Iterator[Callable[..., InProcessAPI]]:
    """A factory for in-process servers with other settings; all are closed at teardown."""
    created: list[InProcessAPI] = []

    def factory(**overrides: Any) -> InProcessAPI:
        instance = InProcessAPI(**overrides)
        created.append(instance)
        return instance

    yield factory
    for instance in created:
        instance.close()


# -- real server processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any INFERD_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERD_")}
    env["COLUMNS"] = "250"  # rich wraps error messages at the terminal width
    env["PYTHONUNBUFFERED"] = "1"
    env["INFERD_GRPC_PORT"] = str(free_port())  # never the shared default 8001
    env.update(extra or {})
    return env


def inferd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "inferd.cli", *args]


def run_inferd(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run an ``inferd`` command to completion (for start-up failures)."""
    return subprocess.run(
        inferd_command(*args),
        env=server_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Proc:
    """One ``inferd`` process started by a test, its stdout and stderr in one file."""

    name: str
    process: subprocess.Popen[bytes]
    output_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def wait_http(self, path: str, *, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Until ``path`` answers 200 (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
                try:
                    response = client.get(path)
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:300]}"
                time.sleep(0.05)
        pytest.fail(f"{self.name} did not answer {path} with 200 in {timeout_s}s ({last}):\n{self.output()}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout_s}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process)


def start_inferd(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, output_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``inferd ARGS`` with exactly ``env``, its stdout and stderr into ``output_path``."""
    with open(output_path, "wb") as output:
        return subprocess.Popen(
            inferd_command(*args), env=dict(env), cwd=cwd, stdout=output, stderr=subprocess.STDOUT
        )


@dataclass
class ServerProcess(Proc):
    """An ``inferd serve`` from :func:`running_server`, with its access log and HTTP clients."""

    access_log: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = bearer(key) if key else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0, **kwargs)
        self.clients.append(client)
        return client


def v1_batch_outputs(
    server: ServerProcess, key: str, model: str, version: str, inputs: list[Any]
) -> list[Any]:
    """The /v1 batch outputs of a pinned version (what every V2 transport must match)."""
    with server.client(key) as http:
        response = http.post(f"/v1/models/{model}/versions/{version}/predict/batch", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        outputs: list[Any] = response.json()["outputs"]
        return outputs


def workdir_store(workdir: Path) -> str:
    """The job store of the processes started in ``workdir`` (never the default store under the cwd)."""
    return f"sqlite:///{workdir / 'jobs.db'}"


@contextlib.contextmanager
def running_server(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    models: Path = MODELS,
    wait_ready: bool = True,
) -> Iterator[ServerProcess]:
    """Start ``inferd serve`` on a free 127.0.0.1 port; wait for /readyz 200 (or /livez 200 with
    ``wait_ready=False``); terminate it (kill if it hangs) at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    access_log = workdir / "access.log"
    output_path = workdir / "server.out"
    full_env = {
        "INFERD_API_KEYS": API_KEYS,
        "INFERD_ACCESS_LOG": str(access_log),
        "INFERD_STORE": workdir_store(workdir),
        **(env or {}),
    }
    command = ["serve", "--models", str(models), "--host", "127.0.0.1", "--port", str(port), *args]
    process = start_inferd(command, env=server_env(full_env), cwd=workdir, output_path=output_path)
    server = ServerProcess("inferd serve", process, output_path, port, access_log)
    try:
        server.wait_http("/readyz" if wait_ready else "/livez")
        yield server
    finally:
        for client in server.clients:
            client.close()
        server.stop()


@contextlib.contextmanager
def running_worker(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    models: Path = MODELS,
) -> Iterator[Proc]:
    """Start ``inferd worker`` on the job store of :func:`running_server` in the same ``workdir``, its
    metrics port free on 127.0.0.1; wait for its /readyz 200; terminate it (kill if it hangs) at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        "worker",
        "--models",
        str(models),
        "--store",
        workdir_store(workdir),
        "--metrics-port",
        str(port),
        *args,
    ]
    output_path = workdir / "worker.out"
    full_env = server_env({"INFERD_API_KEYS": API_KEYS, **(env or {})})
    worker = Proc(
        "inferd worker",
        start_inferd(command, env=full_env, cwd=workdir, output_path=output_path),
        output_path,
        port,
    )
    try:
        worker.wait_http("/readyz")
        yield worker
    finally:
        worker.stop()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
