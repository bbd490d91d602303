"""Running ``inferd serve``: one server process, or a supervisor of N (``--workers N``).

With N > 1 the supervisor binds N listening sockets to the same address (SO_REUSEPORT: the kernel spreads
new connections evenly over them, where one shared socket lets the least busy process take nearly all of
them) and starts one server process per socket. A socket outlives its process: connections that arrive
while a process is being replaced wait in its backlog for the replacement instead of being refused. The
supervisor writes no metrics and loads no model: it restarts a process that dies, passes SIGHUP (reload
the models) to one of them, and on SIGTERM or SIGINT stops every process the way a single server stops
(in-flight requests and jobs drain) and exits 0.

A server process learns its part from a JSON document on its standard input (the resolved settings and
its ``ProcessShare``), so no secret travels on a command line; ``PROMETHEUS_MULTIPROC_DIR`` in its
environment makes prometheus_client keep values in the shared metrics directory (chosen when the library
is first imported, which is why only the children get it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from inferd.bootstrap import ProcessShare
from inferd.core.settings import Settings
from inferd.metrics import RestartReason

logger = logging.getLogger("inferd.supervisor")

STARTUP_FAILED = 3  # uvicorn's own exit status when the app's start-up fails
_QUICK_DEATH_S = 5.0  # a process that dies sooner than this after starting is restarted with a back-off
_MAX_BACKOFF_S = 10.0


class CleanExitServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so a clean stop would exit with status
    -15; an orchestrator's stop (SIGTERM) that drained everything is a success and exits 0.

    ``ready_fd``: a pipe to the supervisor, written once the app's start-up completed."""

    def __init__(self, config: uvicorn.Config, *, ready_fd: int | None = None) -> None:
        super().__init__(config)
        self._ready_fd = ready_fd

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
            captured.remove(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._ready_fd is not None and self.started and not self.should_exit:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, b"1")
            os.close(self._ready_fd)
            self._ready_fd = None


def run_server(
    settings: Settings,
    *,
    share: ProcessShare | None = None,
    sockets: list[socket.socket] | None = None,
    ready_fd: int | None = None,
) -> int:
    """Serve until stopped; the process's exit status (0 after a clean stop)."""
    from inferd.bootstrap import build_app, connection_limits
    from inferd.http.server import server_options
    from inferd.metrics import use_multiprocess_values

    use_multiprocess_values()
    asgi = build_app(settings, share=share, serve_grpc=settings.grpc, reload_on_sighup=True)
    server_config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        access_log=False,
        log_config=None,  # its loggers propagate to the process's JSON handler (inferd.logs)
        log_level=settings.log_level.value,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 10,
        **server_options(connection_limits(settings)),
    )
    server = CleanExitServer(server_config, ready_fd=ready_fd)
    server.run(sockets=sockets)
    return 0 if server.started else STARTUP_FAILED


# -- the supervisor ---------------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    ready_r: int
    started_at: float
    ready: bool = False


@dataclass
class _Slot:
    """One of the N places; a dead process's slot gets a replacement, after a back-off if it keeps dying."""

    index: int
    child: _Child | None = None
    restart_at: float | None = None
    reason: RestartReason | None = None
    quick_deaths: int = 0


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._count = settings.workers
        self._slots = [_Slot(index) for index in range(self._count)]
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="inferd-metrics-", dir=_memory_backed_dir()))
        self._listeners: list[socket.socket] = []

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        # The Python handlers do nothing: the C-level handler writes each signal's number to wake_w,
        # and the loop below acts on it outside any handler.
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, _ignore) for signum in handled}
        try:
            port = _check_free(self._settings.host, self._settings.port)
            for _ in self._slots:
                self._listeners.append(_bind(self._settings.host, port))
                port = self._listeners[0].getsockname()[1]  # port 0: every socket on the port the first got
            for slot in self._slots:
                self._start(slot)
            return self._loop(wake_r)
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in (wake_r, wake_w):
                os.close(fd)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _loop(self, wake_r: int) -> int:
        all_ready_once = False
        while True:
            children = [slot.child for slot in self._slots if slot.child is not None]
            readable, _, _ = select.select(
                [wake_r, *(c.ready_r for c in children if not c.ready)], [], [], 0.5
            )
            if wake_r in readable:
                for signum in os.read(wake_r, 512):
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        logger.info(
                            "stopping %d server processes (%s)", self._count, signal.Signals(signum).name
                        )
                        return 0
                    if signum == signal.SIGHUP:
                        self._reload()
            for child in children:
                if not child.ready and child.ready_r in readable:
                    child.ready = os.read(child.ready_r, 1) == b"1"
            if not all_ready_once and all(slot.child and slot.child.ready for slot in self._slots):
                all_ready_once = True
                logger.info(
                    "%d server processes serving on %s:%d",
                    self._count,
                    self._settings.host,
                    self._settings.port,
                )
            now = time.monotonic()
            for slot in self._slots:
                dead = slot.child
                if dead is not None and dead.process.poll() is not None:
                    self._reap(slot, dead)
                    if not all_ready_once:
                        # A process that cannot start now will not start on a retry either (settings,
                        # models, store): stop with its message on stderr instead of restarting forever.
                        logger.error(
                            "server process %d exited with status %s during start-up; stopping",
                            slot.index,
                            dead.process.returncode,
                        )
                        return 1
                    self._schedule_restart(slot, dead, now)
                if slot.child is None and slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)

    def _start(self, slot: _Slot) -> None:
        listener = self._listeners[slot.index]
        ready_r, ready_w = os.pipe()
        share = {
            "index": slot.index,
            "count": self._count,
            "metrics_dir": str(self._metrics_dir),
            "restart_reason": slot.reason.value if slot.reason else None,
        }
        document = {
            "settings": self._settings.model_dump(mode="json") | {"workers": 1},
            "share": share,
            "listen_fd": listener.fileno(),
            "ready_fd": ready_w,
        }
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        process = subprocess.Popen(
            [sys.executable, "-m", "inferd.serving"],
            stdin=subprocess.PIPE,
            env=env,
            pass_fds=(listener.fileno(), ready_w),
            # Its own session: a terminal's Ctrl-C reaches the supervisor alone, which stops the
            # processes once (a second SIGINT would make uvicorn skip the drain).
            start_new_session=True,
        )
        os.close(ready_w)
        assert process.stdin is not None
        process.stdin.write(json.dumps(document).encode())
        process.stdin.close()
        slot.child = _Child(slot.index, process, ready_r, time.monotonic())
        slot.restart_at = None

    def _reap(self, slot: _Slot, child: _Child) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        # Its live gauges (executor_inflight, queue depth, model state) leave the merged view; its
        # counters and histograms stay.
        mark_process_dead(child.process.pid, str(self._metrics_dir))
        os.close(child.ready_r)
        slot.child = None

    def _schedule_restart(self, slot: _Slot, child: _Child, now: float) -> None:
        status = child.process.returncode
        slot.reason = RestartReason.KILLED if status < 0 else RestartReason.EXITED
        how = (
            f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
        )
        slot.quick_deaths = slot.quick_deaths + 1 if now - child.started_at < _QUICK_DEATH_S else 0
        delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** (slot.quick_deaths - 1)) if slot.quick_deaths else 0.0
        logger.warning(
            "server process %d (pid %d) %s; starting a replacement%s",
            slot.index,
            child.process.pid,
            how,
            f" in {delay:.1f}s" if delay else "",
        )
        slot.restart_at = now + delay

    def _reload(self) -> None:
        """One process reloads and bumps the store's repository generation; the others (and every other
        server and worker on the store) follow it, so N processes do not each rescan and bump."""
        for slot in self._slots:
            if slot.child is not None and slot.child.ready and slot.child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.child.process.send_signal(signal.SIGHUP)
                    return
        logger.warning("SIGHUP: no server process is ready to reload; ignored")

    def _forward(self, signum: int) -> None:
        for slot in self._slots:
            if slot.child is not None and slot.child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.child.process.send_signal(signum)

    def _stop_all(self) -> None:
        """SIGTERM every process, wait for their drain, SIGKILL what outlives it."""
        # New connections are refused now rather than queued for processes that are stopping.
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace_s + 15
        for slot in self._slots:
            child = slot.child
            if child is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("server process %d did not stop in time; killing it", slot.index)
                child.process.kill()
                child.process.wait()
            self._reap(slot, child)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _memory_backed_dir() -> str | None:
    """/dev/shm where it is a writable directory, else the default temporary directory. The metrics
    files are memory-mapped and written on every request: on a disk-backed /tmp the kernel writes their
    dirty pages back every few seconds, for values nobody needs after the server stops."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _check_free(host: str, port: int) -> int:
    """Fail as a single server would when the address is taken: SO_REUSEPORT would otherwise let a second
    supervisor (same user) join the first one's port silently."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        bound: int = probe.getsockname()[1]
        return bound


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# -- a server process under the supervisor ------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the supervisor dies, even by SIGKILL (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() == 1:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _batch_scheduling() -> None:
    """Linux's SCHED_BATCH for this process's threads (those started later inherit it): a thread that
    wakes another one is not preempted by it. N processes are meant to keep every core busy; the
    event loop wakes an executor thread for each step, and under the default policy the woken thread
    took the core from the loop at once, only to wait for the GIL the loop still held (two context
    switches per hand-off). Same priority and share of the CPU; no privilege needed."""
    with contextlib.suppress(OSError, AttributeError):
        for thread in os.listdir("/proc/self/task"):  # a library's threads started at import included
            os.sched_setscheduler(int(thread), os.SCHED_BATCH, os.sched_param(0))


def child_main() -> None:
    from inferd.cli_common import configure_process
    from inferd.core.errors import InferdError

    document: dict[str, Any] = json.loads(sys.stdin.read())
    _die_with_parent()
    _batch_scheduling()
    settings = Settings.model_validate(document["settings"])
    raw = document["share"]
    share = ProcessShare(
        index=raw["index"],
        count=raw["count"],
        metrics_dir=Path(raw["metrics_dir"]),
        restart_reason=RestartReason(raw["restart_reason"]) if raw["restart_reason"] else None,
    )
    configure_process(settings.log_level, tracing=settings.tracing)
    listener = socket.socket(fileno=document["listen_fd"])
    try:
        status = run_server(settings, share=share, sockets=[listener], ready_fd=document["ready_fd"])
    except InferdError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    child_main()
