"""``isolation: process``: the model call of a version runs in child processes, one per executor slot.

Each version has a *template* process: a fresh interpreter (never a fork of the threaded server) that
imports inferd and the version's runtime once, then forks every model process of the version; a fork
loads the model itself (the server never does) and answers one call at a time over a pipe. The version
keeps one loaded *spare* besides its slots. Pre- and postprocessor, validator and schema check stay in
the server process. Arrays in a call's inputs and outputs travel out of band (pickle protocol 5): buffers
of ``SHM_MIN_BYTES`` and more go through a shared-memory area per child and direction, reused call after
call (:class:`Outbox`), instead of being copied through the pipe.

A child can be stopped while it runs: when every request of a running call has passed its deadline the
executor asks the pipeline to abandon it, and the child is sent SIGTERM, then SIGKILL after
``KILL_GRACE_S``. A child that dies (stopped, crashed, killed by the OOM killer) fails only the call it
was running; once it is gone (the executor slot stays busy until then) the spare takes its slot at once
and a new spare is forked and loaded in the background, so the next call does not wait for an interpreter
to start or a model to load. ``max_memory_mb`` caps a child's address space (RLIMIT_AS).
"""

from __future__ import annotations

import _posixshmem
import contextlib
import ctypes
import importlib
import mmap
import multiprocessing
import os
import pickle
import queue
import resource
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.errors import DEADLINE_CAUSE, ConfigError, InferdError, InferenceError, InvalidInputError
from inferd.core.model_spec import Isolation
from inferd.core.runtime import Batch, InputRejected, ModelProcessRestart, Runtime, RuntimeContext
from inferd.core.tensors import TensorDeclarations

SHM_MIN_BYTES = 64 * 1024
KILL_GRACE_S = 1.0
LOAD_TIMEOUT_S = 300.0
# How often the template looks whether the server that started it is still there.
TEMPLATE_POLL_S = 1.0

RestartHook = Callable[[ModelProcessRestart], None]


# -- moving calls between processes ---------------------------------------------------------------


# A call's pickle, its buffers (inline bytes, or (offset, size) in the writer's area), and the area's
# (name, size) when the writer moved to a new, larger one.
Packed = tuple[bytes, list[tuple[int, int] | bytes], tuple[str, int] | None]


class Outbox:
    """One direction of a model process's pipe: arrays of ``SHM_MIN_BYTES`` and more go into one
    shared-memory area that this side writes call after call (so after the first call no segment is
    created and no page faulted in), grown to the largest call so far. Calls alternate strictly with
    replies, so the reader has copied a call's arrays out before the next call is written."""

    def __init__(self) -> None:
        self._area: mmap.mmap | None = None
        self._size = 0

    def pack(self, value: Any) -> Packed:
        """Pickle ``value`` with its large buffers in the area, the rest inline."""
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        needed = sum(raw.nbytes for raw in raws if raw.nbytes >= SHM_MIN_BYTES)
        moved: tuple[str, int] | None = None
        if needed > self._size:
            size = -(-max(needed, 2 * self._size) // mmap.PAGESIZE) * mmap.PAGESIZE
            name = f"/inferd-{os.getpid()}-{secrets.token_hex(8)}"
            fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, size)
                area = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            if self._area is not None:
                self._area.close()
            self._area, self._size, moved = area, size, (name, size)
        described: list[tuple[int, int] | bytes] = []
        offset = 0
        for raw in raws:
            if raw.nbytes < SHM_MIN_BYTES:
                described.append(bytes(raw))
                continue
            assert self._area is not None
            self._area[offset : offset + raw.nbytes] = raw
            described.append((offset, raw.nbytes))
            offset += raw.nbytes
        return data, described, moved

    def close(self) -> None:
        if self._area is not None:
            self._area.close()
            self._area = None


class Inbox:
    """The reading side of an :class:`Outbox`: maps the writer's area (and removes its name at once, so
    nothing is left behind when either process dies) and copies each call's arrays out of it."""

    def __init__(self) -> None:
        self._area: mmap.mmap | None = None

    def unpack(self, packed: Packed) -> Any:
        data, described, moved = packed
        if moved is not None:
            name, size = moved
            fd = _posixshmem.shm_open(name, os.O_RDWR, 0o600)
            try:
                area = mmap.mmap(fd, size)
            finally:
                os.close(fd)
                _posixshmem.shm_unlink(name)
            self.close()
            self._area = area
        buffers: list[Any] = []
        for item in described:
            if isinstance(item, bytes):
                buffers.append(item)
                continue
            offset, size = item
            assert self._area is not None
            with memoryview(self._area) as view:
                buffers.append(bytearray(view[offset : offset + size]))
        return pickle.loads(data, buffers=buffers)

    def close(self) -> None:
        if self._area is not None:
            self._area.close()
            self._area = None


def discard(packed: Packed) -> None:
    """Remove the new area of a message nobody will read (its reader died before mapping it)."""
    if packed[2] is not None:
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink(packed[2][0])


# -- the model process ------------------------------------------------------------------------------


def _child_main(conn: Connection, context: RuntimeContext, max_memory_mb: int | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: go when the template goes
    if max_memory_mb is not None:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        from inferd.runtimes.factory import PipelineFactory

        before = set(sys.modules)
        # This process is the isolation: the runtime itself loads here, in-process.
        spec = context.spec.model_copy(update={"isolation": Isolation.THREAD, "max_memory_mb": None})
        runtime = PipelineFactory().runtime(context.name, context.version, context.path, spec)
        imported = _library_modules(set(sys.modules) - before, context.path)
        conn.send(("ready", runtime.takes_parameters, runtime.tensor_declarations(), imported))
    except MemoryError:
        conn.send(("failed", f"loading the model needs more than max_memory_mb ({max_memory_mb} MiB)"))
        return
    except BaseException as exc:
        message = exc.message if isinstance(exc, InferdError) else f"{type(exc).__name__}: {exc}"
        conn.send(("failed", message))
        return
    inbox, outbox = Inbox(), Outbox()
    while True:
        try:
            packed = conn.recv()
        except EOFError:
            return
        try:
            batch, parameters = inbox.unpack(packed)
            # The runtime's own per-request check runs here, over the merged call.
            outputs = runtime.predict(runtime.check_batch(batch), parameters)
            conn.send(("ok", outbox.pack(list(outputs))))
        except MemoryError:
            conn.send(("memory", f"the model call needed more than max_memory_mb ({max_memory_mb} MiB)"))
            return  # the heap may be in pieces: a fresh process takes the next call
        except InputRejected as exc:
            conn.send(("rejected", str(exc)))
        except BaseException as exc:
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))


def _library_modules(names: set[str], version_dir: Path) -> list[str]:
    """The installed modules among ``names``: those the template may import ahead of the next load
    (the version folder's own modules are left to each load)."""
    found = []
    for name in sorted(names):
        origin = getattr(sys.modules.get(name), "__file__", None)
        if origin is not None and not Path(origin).is_relative_to(version_dir):
            found.append(name)
    return found


# -- the template: forks model processes ------------------------------------------------------------


def _template_main(control: Connection, context: RuntimeContext, max_memory_mb: int | None) -> None:
    """Import what loading the version needs, then fork a model process for each end of a pipe the
    server sends; report each one's pid, and its exit status once it is reaped. The libraries the first
    load imported (the server passes their names on) are imported here too, so later forks load the
    model without importing them again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle
    server = os.getppid()
    from inferd.runtimes.factory import PipelineFactory

    PipelineFactory().catalog.resolve(context.spec.runtime)  # imports the runtime's module once, here
    # SIGCHLD wakes the loop below through this pipe, so exits are reported as they happen.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while os.getppid() == server:
        readable = wait([control, wake_read], timeout=TEMPLATE_POLL_S)
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
        _report_exits(control)
        if control not in readable:
            continue
        try:
            request = control.recv()
            if request != "fork":
                _preload(request)
                continue
            fd = reduction.recv_handle(control)
        except (EOFError, OSError):
            return  # the server closed the pipe: the model processes go with this one (PDEATHSIG)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_read)
            os.close(wake_write)
            control.close()
            code = 0
            try:
                _child_main(Connection(fd), context, max_memory_mb)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)  # never the template's own exit handlers
        os.close(fd)
        control.send(("forked", pid))


def _preload(modules: list[str]) -> None:
    for name in modules:
        # One that cannot be imported on its own (it needs its importer's state) is left to each load.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _report_exits(control: Connection) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(("exited", pid, os.waitstatus_to_exitcode(status)))


# -- the server side ---------------------------------------------------------------------------------


class ModelProcessError(Exception):
    """The model raised in its process; carries its type name so the pipeline can report it."""

    def __init__(self, type_name: str, message: str, detail: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.detail = detail


class TemplateGone(Exception):
    """The template process exited; a new one is needed to fork model processes."""


class _Template:
    """The server's handle on a template process: fork requests out, pids and exit statuses back."""

    def __init__(self, context: Any, args: tuple[Any, ...]) -> None:
        self._mp = context
        self.control, theirs = context.Pipe()
        # A fresh interpreter: forking the server itself is not safe (it runs threads).
        self.process = context.Process(
            target=_template_main, args=(theirs, *args), daemon=True, name="inferd-model-template"
        )
        self.process.start()
        theirs.close()
        self._fork_lock = threading.Lock()  # one fork request at a time: replies come in order
        self._forked: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._exits: dict[int, int] = {}  # pid -> exit status (negative: the signal), until taken
        self.alive = True
        threading.Thread(target=self._read, name="inferd-model-template-reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.control.recv()
            except (EOFError, OSError):
                break
            if message[0] == "forked":
                self._forked.put(message[1])
            else:
                with self._changed:
                    self._exits[message[1]] = message[2]
                    self._changed.notify_all()
        with self._changed:
            self.alive = False
            self._changed.notify_all()
        self._forked.put(None)
        with self._fork_lock:
            self.control.close()

    def fork(self) -> tuple[int, Connection]:
        """A new model process (loading the model now) and the server's end of its pipe."""
        ours, theirs = self._mp.Pipe()
        try:
            with self._fork_lock:
                if not self.alive:
                    raise TemplateGone
                try:
                    self.control.send("fork")
                    reduction.send_handle(self.control, theirs.fileno(), self.process.pid)
                except OSError:
                    raise TemplateGone from None
                try:
                    pid = self._forked.get(timeout=LOAD_TIMEOUT_S)
                except queue.Empty:
                    raise ConfigError(
                        f"the model template process did not fork within {LOAD_TIMEOUT_S:g}s"
                    ) from None
            if pid is None:
                raise TemplateGone
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return pid, ours

    def preload(self, modules: list[str]) -> None:
        """Have the template import ``modules`` before its next fork."""
        with self._fork_lock, contextlib.suppress(OSError):
            self.control.send(modules)

    def exit_status(self, pid: int, timeout: float) -> int | None:
        """The exit status of model process ``pid`` once reaped (waiting up to ``timeout``); None if it
        is still running, or its template went first (the process then got SIGTERM: PDEATHSIG)."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self.alive, timeout)
            return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        with self._changed:
            self._exits.pop(pid, None)

    def close(self) -> None:
        """Stop the template; the reader sees the pipe close and closes the server's end."""
        with contextlib.suppress(Exception):
            self.process.terminate()


class _Child:
    def __init__(self, template: _Template) -> None:
        self.template = template
        self.pid, self.conn = template.fork()
        self.ready: tuple[bool, TensorDeclarations | None] | None = None
        self.stopping = False
        self.reaped = False
        self.exit_code: int | None = None
        self.imported: list[str] = []  # the libraries its load imported
        self.outbox, self.inbox = Outbox(), Inbox()  # calls' arrays to it, its outputs' arrays back

    def wait_ready(self) -> tuple[bool, TensorDeclarations | None]:
        if self.ready is None:
            if not self.conn.poll(LOAD_TIMEOUT_S):
                self.stop()
                raise ConfigError(f"the model process did not load the model within {LOAD_TIMEOUT_S:g}s")
            try:
                message = self.conn.recv()
            except EOFError:
                raise ConfigError(f"the model process {self.exit_description()} while loading") from None
            if message[0] != "ready":
                self.template.exit_status(self.pid, 5)
                raise ConfigError(f"the model process could not load the model: {message[1]}")
            self.ready = (message[1], message[2])
            self.imported = message[3]
        return self.ready

    def gone(self) -> bool:
        return self.template.exit_status(self.pid, 0) is not None or not self.template.alive

    def exit_description(self) -> str:
        code = self.exit_code if self.reaped else self.template.exit_status(self.pid, 5)
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def signal(self, signum: signal.Signals) -> None:
        if not self.gone():  # once reaped, the pid may be another process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self) -> None:
        """SIGTERM now, SIGKILL after the grace period if it is still there."""
        self.stopping = True
        self.signal(signal.SIGTERM)
        timer = threading.Timer(KILL_GRACE_S, self.signal, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def reap(self) -> None:
        """Wait until the process is gone (SIGKILL if it outlives the grace period), then forget it."""
        self.exit_code = self.template.exit_status(self.pid, KILL_GRACE_S + 5)
        if self.exit_code is None and self.template.alive:
            self.signal(signal.SIGKILL)
            self.exit_code = self.template.exit_status(self.pid, 5)
        with contextlib.suppress(Exception):
            self.conn.close()
        self.outbox.close()
        self.inbox.close()
        self.template.forget(self.pid)
        self.reaped = True


class ProcessRuntime(Runtime):
    """The version's runtime, loaded in each of ``slots`` model processes plus a spare; ``predict`` runs
    in one of them (the one this executor thread takes from the idle ones)."""

    def __init__(self, context: RuntimeContext, *, slots: int, on_restart: RestartHook | None = None) -> None:
        super().__init__(context)
        self._mp = multiprocessing.get_context("spawn")
        self._args = (context, context.spec.max_memory_mb)
        self._slots = slots
        self._on_restart = on_restart
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._busy: dict[int, _Child] = {}  # executor thread id -> the child running its call
        self._lock = threading.Lock()
        self._template: _Template | None = None
        self._children: list[_Child] = []  # those in the slots, idle, busy or loading
        self._spare: _Child | None = None  # loaded and ready, in no slot
        self._refilling = False
        self._closed = False
        self.declarations: TensorDeclarations | None = None
        # Set by the pipeline: whether a request of the calling thread's call still waits.
        self.still_wanted: Callable[[], bool] = lambda: True

    def load(self) -> None:
        try:
            self._template = _Template(self._mp, self._args)
            self._children = [_Child(self._template) for _ in range(self._slots)]
            spare = _Child(self._template)
            readies = [child.wait_ready() for child in self._children]
            spare.wait_ready()
            self._template.preload(self._children[0].imported)
        except BaseException:
            self.unload()
            raise
        self._spare = spare
        self.takes_parameters, self.declarations = readies[0]
        for child in self._children:
            self._idle.put(child)

    def tensor_declarations(self) -> TensorDeclarations | None:
        return self.declarations

    @property
    def spare_pid(self) -> int | None:
        """The pid of the loaded spare, None while it is being replaced."""
        spare = self._spare
        return spare.pid if spare is not None else None

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        child = self._idle.get()
        ident = threading.get_ident()
        replacement: _Child | None = None
        try:
            try:
                child.wait_ready()
            except ConfigError as exc:
                replacement = self._replace(child, ModelProcessRestart.EXITED)
                raise InferenceError(exc.message, cause="model process failed to load") from None
            if not self.still_wanted():
                # Every request timed out while this call waited for a ready process: do not run it.
                raise InferenceError(
                    "the call passed its deadline while it waited for a model process", cause=DEADLINE_CAUSE
                )
            packed = child.outbox.pack((batch if isinstance(batch, np.ndarray) else list(batch), parameters))
            with self._lock:
                self._busy[ident] = child
            try:
                child.conn.send(packed)
                reply = child.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                discard(packed)
                replacement = self._replace(
                    child, ModelProcessRestart.TIMEOUT if child.stopping else ModelProcessRestart.EXITED
                )
                if child.stopping:
                    raise InferenceError(
                        "the model process was stopped: the call passed its deadline", cause=DEADLINE_CAUSE
                    ) from None
                raise InferenceError(
                    f"the model process {child.exit_description()} during the call; another one takes its "
                    "place",
                    cause="model process exited",
                ) from None
            finally:
                with self._lock:
                    self._busy.pop(ident, None)
            if child.stopping:  # stopped just after it answered: the answer stands, the child goes
                replacement = self._replace(child, ModelProcessRestart.TIMEOUT)
            kind = reply[0]
            if kind == "ok":
                outputs: list[Any] = child.inbox.unpack(reply[1])
                return outputs
            if kind == "memory":
                replacement = self._replace(child, ModelProcessRestart.MEMORY)
                raise InferenceError(reply[1], cause="max_memory_mb")
            if kind == "rejected":
                raise InvalidInputError(reply[1])
            raise ModelProcessError(reply[1], reply[2], reply[3])
        finally:
            if replacement is None:
                self._idle.put(child)
            else:
                self._offer(replacement)

    def _offer(self, fresh: _Child) -> None:
        """Offer a replacement to the executor threads once it has loaded the model (the spare at
        once), so calls go to the children that are ready meanwhile instead of waiting behind a load."""
        if fresh.ready is not None:
            self._idle.put(fresh)
            return

        def wait() -> None:
            with contextlib.suppress(ConfigError):  # a failed load fails its next call, which replaces it
                fresh.wait_ready()
            self._idle.put(fresh)

        threading.Thread(target=wait, name="inferd-model-process-load", daemon=True).start()

    def _replace(self, child: _Child, reason: ModelProcessRestart) -> _Child:
        """The spare (or, if none is ready, a fresh fork) for the dead child's slot, once the dead one
        is gone; a new spare is forked and loaded in the background."""
        child.reap()
        with self._lock:
            fresh, self._spare = self._spare, None
        if fresh is not None and fresh.conn.poll(0):  # the idle spare died (its pipe is closed): skip it
            fresh.reap()
            fresh = None
        if fresh is None:
            fresh = self._fork()
        with self._lock:
            self._children = [fresh if c is child else c for c in self._children]
        if self._on_restart is not None:
            self._on_restart(reason)
        self._refill_spare()
        return fresh

    def _fork(self) -> _Child:
        """A new model process from the template; a template that went is started again first."""
        with self._lock:
            template = self._template
        if template is not None:
            with contextlib.suppress(TemplateGone):
                return _Child(template)
        preload = next((child.imported for child in self._children if child.imported), [])
        with self._lock:
            if self._closed:
                raise InferenceError("the model version was unloaded", cause="unloaded")
            current = self._template
            if current is template:
                if current is not None:
                    current.close()
                current = self._template = _Template(self._mp, self._args)
                current.preload(preload)
        assert current is not None
        return _Child(current)

    def _refill_spare(self) -> None:
        with self._lock:
            if self._refilling or self._closed:
                return
            self._refilling = True

        def refill() -> None:
            try:
                while True:
                    with self._lock:
                        if self._spare is not None or self._closed:
                            return
                    spare = self._fork()
                    try:
                        spare.wait_ready()
                    except ConfigError:
                        return  # the next replacement forks for its slot and tries again
                    with self._lock:
                        kept = not self._closed
                        if kept:
                            self._spare = spare
                    if not kept:
                        spare.stop()
            except (TemplateGone, InferenceError):
                return
            finally:
                with self._lock:
                    self._refilling = False

        threading.Thread(target=refill, name="inferd-model-process-spare", daemon=True).start()

    def cancel(self, ident: int) -> bool:
        """Stop the child running the call of executor thread ``ident`` (every request of it timed out);
        False when that thread runs no call here."""
        with self._lock:
            child = self._busy.get(ident)
        if child is not None:
            child.stop()
        return child is not None

    def unload(self) -> None:
        with self._lock:
            self._closed = True
            children = [*self._children, *([self._spare] if self._spare is not None else [])]
            self._spare = None
            template = self._template
        for child in children:
            child.stop()
        if template is not None:
            template.close()  # model processes still loading go with it (PDEATHSIG)
