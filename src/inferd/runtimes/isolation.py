"""``isolation: process``: the model call of a version runs in child processes, one per executor slot.

Each child loads the model itself (the parent never does) and answers one call at a time over a pipe.
Pre- and postprocessor, validator and schema check stay in the server process. Arrays in a call's
inputs and outputs travel out of band (pickle protocol 5): buffers over ``SHM_MIN_BYTES`` go through one
shared-memory segment each instead of being copied through the pipe.

A child can be stopped while it runs: when every request of a running call has passed its deadline the
executor asks the pipeline to abandon it, and the child is sent SIGTERM, then SIGKILL after
``KILL_GRACE_S``. A child that dies (stopped, crashed, killed by the OOM killer) fails only the call it
was running and is replaced by a fresh one that loads the model again; the executor slot stays busy until
the dead child is gone. ``max_memory_mb`` caps a child's address space (RLIMIT_AS).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import pickle
import queue
import resource
import signal
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from inferd.core.errors import ConfigError, InferdError, InferenceError, InvalidInputError
from inferd.core.model_spec import Isolation
from inferd.core.runtime import Batch, InputRejected, ModelProcessRestart, Runtime, RuntimeContext
from inferd.core.tensors import TensorDeclarations

SHM_MIN_BYTES = 64 * 1024
KILL_GRACE_S = 1.0
LOAD_TIMEOUT_S = 300.0

RestartHook = Callable[[ModelProcessRestart], None]


# -- moving calls between processes ---------------------------------------------------------------


def pack(value: Any) -> tuple[bytes, list[tuple[str, int] | bytes]]:
    """Pickle ``value`` with its large buffers (numpy arrays) in shared memory, the rest inline."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    described: list[tuple[str, int] | bytes] = []
    for buffer in buffers:
        raw = buffer.raw()
        if raw.nbytes < SHM_MIN_BYTES:
            described.append(bytes(raw))
            continue
        segment = SharedMemory(create=True, size=raw.nbytes)
        # The reader unlinks it; the creator's resource tracker must not (it would warn at exit).
        resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
        try:
            view: memoryview = segment.buf  # type: ignore[assignment]
            view[: raw.nbytes] = raw
            described.append((segment.name, raw.nbytes))
        finally:
            segment.close()
    return data, described


def unpack(data: bytes, described: list[tuple[str, int] | bytes]) -> Any:
    """Inverse of :func:`pack`; removes the shared-memory segments it read."""
    buffers: list[Any] = []
    for item in described:
        if isinstance(item, bytes):
            buffers.append(item)
            continue
        name, size = item
        segment = SharedMemory(name=name)
        try:
            view: memoryview = segment.buf  # type: ignore[assignment]
            buffers.append(bytearray(view[:size]))
        finally:
            segment.close()
            segment.unlink()
    return pickle.loads(data, buffers=buffers)


def discard(described: list[tuple[str, int] | bytes]) -> None:
    """Remove the segments of a message nobody will read (its reader died)."""
    for item in described:
        if not isinstance(item, bytes):
            with contextlib.suppress(FileNotFoundError):
                segment = SharedMemory(name=item[0])
                segment.close()
                segment.unlink()


# -- the child ---------------------------------------------------------------------------------------


def _child_main(conn: Connection, context: RuntimeContext, max_memory_mb: int | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: go when the server goes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle
    if max_memory_mb is not None:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        from inferd.runtimes.factory import PipelineFactory

        # This process is the isolation: the runtime itself loads here, in-process.
        spec = context.spec.model_copy(update={"isolation": Isolation.THREAD, "max_memory_mb": None})
        runtime = PipelineFactory().runtime(context.name, context.version, context.path, spec)
        conn.send(("ready", runtime.takes_parameters, runtime.tensor_declarations()))
    except MemoryError:
        conn.send(("failed", f"loading the model needs more than max_memory_mb ({max_memory_mb} MiB)"))
        return
    except BaseException as exc:
        message = exc.message if isinstance(exc, InferdError) else f"{type(exc).__name__}: {exc}"
        conn.send(("failed", message))
        return
    while True:
        try:
            data, described = conn.recv()
        except EOFError:
            return
        try:
            batch, parameters = unpack(data, described)
            # The runtime's own per-request check runs here, over the merged call.
            outputs = runtime.predict(runtime.check_batch(batch), parameters)
            conn.send(("ok", *pack(list(outputs))))
        except MemoryError:
            conn.send(("memory", f"the model call needed more than max_memory_mb ({max_memory_mb} MiB)"))
            return  # the heap may be in pieces: a fresh process takes the next call
        except InputRejected as exc:
            conn.send(("rejected", str(exc)))
        except BaseException as exc:
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))


# -- the server side ---------------------------------------------------------------------------------


class ModelProcessError(Exception):
    """The model raised in its process; carries its type name so the pipeline can report it."""

    def __init__(self, type_name: str, message: str, detail: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.detail = detail


class _Child:
    def __init__(self, context: Any, args: tuple[Any, ...]) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child_conn, *args), daemon=True)
        self.process.start()
        child_conn.close()
        self.ready: tuple[bool, TensorDeclarations | None] | None = None
        self.stopping = False

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
                self.process.join(timeout=5)
                raise ConfigError(f"the model process could not load the model: {message[1]}")
            self.ready = (message[1], message[2])
        return self.ready

    def exit_description(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def stop(self) -> None:
        """SIGTERM now, SIGKILL after the grace period if it is still there."""
        self.stopping = True
        with contextlib.suppress(Exception):
            self.process.terminate()
        timer = threading.Timer(KILL_GRACE_S, self._kill_if_alive)
        timer.daemon = True
        timer.start()

    def _kill_if_alive(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.process.kill()


class ProcessRuntime(Runtime):
    """The version's runtime, loaded in each of ``slots`` child processes; ``predict`` runs in one of
    them (the one this executor thread takes from the idle ones)."""

    def __init__(self, context: RuntimeContext, *, slots: int, on_restart: RestartHook | None = None) -> None:
        super().__init__(context)
        # A fresh interpreter per child: forking the server is not safe (it runs threads), and a fork
        # server did not start replacements faster here (each child still imports the main module).
        self._mp = multiprocessing.get_context("spawn")
        self._args = (context, context.spec.max_memory_mb)
        self._slots = slots
        self._on_restart = on_restart
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._busy: dict[int, _Child] = {}  # executor thread id -> the child running its call
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self.declarations: TensorDeclarations | None = None
        # Set by the pipeline: whether a request of the calling thread's call still waits.
        self.still_wanted: Callable[[], bool] = lambda: True

    def load(self) -> None:
        self._children = [_Child(self._mp, self._args) for _ in range(self._slots)]
        try:
            readies = [child.wait_ready() for child in self._children]
        except BaseException:
            self.unload()
            raise
        self.takes_parameters, self.declarations = readies[0]
        for child in self._children:
            self._idle.put(child)

    def tensor_declarations(self) -> TensorDeclarations | None:
        return self.declarations

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
                    "the call passed its deadline while it waited for a model process", cause="deadline"
                )
            data, described = pack((batch if isinstance(batch, np.ndarray) else list(batch), parameters))
            with self._lock:
                self._busy[ident] = child
            try:
                child.conn.send((data, described))
                reply = child.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                discard(described)
                replacement = self._replace(
                    child, ModelProcessRestart.TIMEOUT if child.stopping else ModelProcessRestart.EXITED
                )
                if child.stopping:
                    raise InferenceError(
                        "the model process was stopped: the call passed its deadline", cause="deadline"
                    ) from None
                raise InferenceError(
                    f"the model process {child.exit_description()} during the call; a new one is loading the "
                    "model",
                    cause="model process exited",
                ) from None
            finally:
                with self._lock:
                    self._busy.pop(ident, None)
            if child.stopping:  # stopped just after it answered: the answer stands, the child goes
                replacement = self._replace(child, ModelProcessRestart.TIMEOUT)
            kind = reply[0]
            if kind == "ok":
                outputs: list[Any] = unpack(reply[1], reply[2])
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
                self._when_ready(replacement)

    def _when_ready(self, fresh: _Child) -> None:
        """Offer a replacement to the executor threads once it has loaded the model, so calls go to
        the children that are ready meanwhile instead of waiting behind the load."""

        def wait() -> None:
            with contextlib.suppress(ConfigError):  # a failed load fails its next call, which replaces it
                fresh.wait_ready()
            self._idle.put(fresh)

        threading.Thread(target=wait, name="inferd-model-process-load", daemon=True).start()

    def _replace(self, child: _Child, reason: ModelProcessRestart) -> _Child:
        """A fresh child (loading now) for the dead one's slot; the dead one is reaped first."""
        child.process.join(timeout=KILL_GRACE_S + 5)
        with contextlib.suppress(Exception):
            child.conn.close()
        fresh = _Child(self._mp, self._args)
        with self._lock:
            self._children = [fresh if c is child else c for c in self._children]
        if self._on_restart is not None:
            self._on_restart(reason)
        return fresh

    def cancel(self, ident: int) -> None:
        """Stop the child running the call of executor thread ``ident`` (every request of it timed out)."""
        with self._lock:
            child = self._busy.get(ident)
        if child is not None:
            child.stop()

    def unload(self) -> None:
        for child in self._children:
            child.stop()
