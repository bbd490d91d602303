"""Starting and stopping the servers a benchmark measures, shared by the bench scripts: free loopback
ports, this environment's ``inferd`` command, server processes that take their children with them when
stopped, and waiting until a server answers."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STOP_GRACE_S = 5.0


class BenchError(SystemExit):
    """A fatal benchmark error: a script that does not catch it exits with status 1 and the message."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def inferd_command() -> list[str]:
    """The ``inferd`` script of this interpreter's environment, else the module through this interpreter."""
    script = Path(sys.executable).with_name("inferd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "inferd.cli"]


def wait_ready(
    url: str,
    timeout_s: float = 60.0,
    *,
    name: str | None = None,
    check_alive: Callable[[], None] | None = None,
    log_tail: Callable[[], str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200; ``check_alive`` raises if the server has exited meanwhile, and
    ``log_tail`` says what its log ends with when it times out."""
    deadline = time.monotonic() + timeout_s
    last = "no response"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if check_alive is not None:
                check_alive()
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:500]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    tail = f"\n{log_tail()}" if log_tail is not None else ""
    raise BenchError(f"{name or url} not ready after {timeout_s:.0f}s (GET {url} -> {last}).{tail}")


class Server:
    """A server subprocess in its own process group (so children die with it), logging to a file."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.port = port
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        print(f"starting {self.name}: {shlex.join(self.cmd)}  (log: {self.log_path})", flush=True)
        with self.log_path.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    self.cmd,
                    cwd=REPO_ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchError(f"cannot start {self.name} ({self.cmd[0]}): {exc}") from exc

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} exited (status {code}).\n{self.log_tail()}")

    def wait_ready(self, path: str, timeout_s: float) -> None:
        url = self.base_url + path
        wait_ready(url, timeout_s, name=self.name, check_alive=self.check_alive, log_tail=self.log_tail)
        print(f"{self.name} ready at {self.base_url}", flush=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_GRACE_S."""
        proc = self.proc
        if proc is None:
            return
        self._signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {STOP_GRACE_S:.0f}s, killing it", file=sys.stderr)
            self._signal_group(proc, signal.SIGKILL)
            proc.wait()
        # Reap anything left in the group (e.g. worker children) even if the leader exited.
        self._signal_group(proc, signal.SIGKILL)
        self.proc = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # start_new_session=True makes the child a process-group leader: pgid == pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


class Processes:
    """Several inferd processes (API servers, workers) run from one working directory, each logging to a
    file there; ``stop`` ends them all (SIGTERM, SIGKILL after 30 s)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], log_name: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "INFERD_ACCESS_LOG": "off", "INFERD_LOG_LEVEL": "warning", **(extra_env or {})}
        log = open(self.workdir / log_name, "wb")  # noqa: SIM115 (lives as long as the process)
        proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
