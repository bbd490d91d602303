"""The model runtime contract: what every runtime (built-in or third-party) implements.

A runtime class is named by ``runtime:`` in ``model.yaml``: a registered name (the entry-point group
``inferd.runtimes``, where the built-ins register too) or an import string ``package.module:Class``.
For each model version the server

1. validates the version's runtime-specific ``model.yaml`` keys with the class's ``Options`` model
   (unknown keys are errors),
2. builds ``Class(context)`` and calls :meth:`Runtime.load` once, off the event loop,
3. calls :meth:`Runtime.check_batch` once per request (its own items only, before requests are merged)
   and :meth:`Runtime.predict` once per model call (items of several requests, at most
   ``max_batch_size``), both on executor threads, possibly several at once,
4. calls :meth:`Runtime.unload` once when a reload replaces or removes the version or the server stops,
   after the calls running at that moment have returned.

The core owns this contract; runtimes implement it and are wired in by the composition root.
Everything a runtime needs to load travels in :class:`RuntimeContext`, which pickles (no open handles),
so a runtime can be loaded in another process from the same context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from inferd.core.errors import ConfigError
from inferd.core.model_spec import ModelSpec
from inferd.core.tensors import TensorDeclarations

# A batch of items: a list, an array whose first dimension is the items, or (several named V2 inputs
# and no hooks) a tensors.Columns, one array per input.
Batch: TypeAlias = Sequence[Any] | np.ndarray[Any, Any]


class ModelProcessRestart(StrEnum):
    """Why a model process (``isolation: process``) was replaced: what a process-isolated runtime tells
    the composition root, which counts it (``executor_restarts_total``)."""

    TIMEOUT = "timeout"  # stopped: every request of its call passed its deadline
    EXITED = "exited"  # it exited or was killed on its own (crash, os._exit, the OOM killer)
    MEMORY = "memory"  # its call went over max_memory_mb


class RuntimeOptions(BaseModel):
    """The ``model.yaml`` keys a runtime takes besides inferd's own. Subclass it with your fields;
    a key that no field names is reported as an error, like a typo in inferd's own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactOptions(RuntimeOptions):
    """For runtimes that load one file from the version folder."""

    artifact: str = Field(description="a file in the version folder")


class ModuleResolver(Protocol):
    """Imports ``module:attr`` from the version folder (shared with the pipeline's hooks)."""

    def resolve(self, ref: str, *, role: str) -> Any: ...


@dataclass(frozen=True)
class RuntimeContext:
    name: str
    version: str
    path: Path  # the version folder
    spec: ModelSpec
    options: RuntimeOptions
    # In-process only: the importer the pipeline's hooks use, so a module that holds both the model
    # and its hooks is imported once. None where the runtime loads in another process.
    modules: ModuleResolver | None = field(default=None, compare=False)

    @property
    def runtime(self) -> str:
        return self.spec.runtime

    def file(self, relative: str, *, key: str = "artifact") -> Path:
        """A file inside the version folder, or ConfigError naming the key and the file."""
        given = Path(relative)
        if given.is_absolute() or ".." in given.parts:
            raise ConfigError(f"{key}: {relative!r} must be a path inside the version folder {self.path}")
        path = self.path / given
        if not path.is_file():
            raise ConfigError(f"{key}: {path} does not exist")
        return path

    def __reduce__(self) -> tuple[Any, ...]:
        # The importer holds live modules; another process builds its own.
        return (RuntimeContext, (self.name, self.version, self.path, self.spec, self.options, None))


class InputRejected(ValueError):
    """Raised by :meth:`Runtime.check_batch`: the request's input cannot go to this model
    (answered 422 ``invalid_input`` with this message). ``index``: the offending item, when known."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class Runtime(ABC):
    """Base of every runtime. Subclasses set ``Options`` when they take ``model.yaml`` keys."""

    Options: ClassVar[type[RuntimeOptions]] = RuntimeOptions
    # Whether predict() uses request parameters; a request with parameters for a model that takes
    # none is refused (422) rather than silently ignored. load() may set it per instance.
    takes_parameters: bool = False

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context

    @abstractmethod
    def load(self) -> None:
        """Read the artifacts (blocking is fine). Raise ConfigError (or MissingExtraError) with what
        is missing and how to fix it; the version is then reported as failed, the others keep serving."""

    def check_batch(self, batch: Batch) -> Batch:
        """One request's items before they are merged with others': raise :class:`InputRejected` for
        input this model cannot take, so only that request fails (and a job fails at submission).
        May return the items converted (e.g. to one array) so that predict() need not convert again."""
        return batch

    @abstractmethod
    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        """One output per item of ``batch``, same order. ``batch`` is a list of items, an array whose
        first dimension is the items, or a :class:`~inferd.core.tensors.Columns` (item i is
        ``{input name: row i}``; ``.arrays`` holds each input whole). ``parameters``: the requests'
        shared parameters, or None."""

    def tensor_declarations(self) -> TensorDeclarations | None:
        """V2 inputs and outputs the loaded artifact tells (called after load()); ``inputs:`` and
        ``outputs:`` in model.yaml win over these, list by list. None: it cannot tell."""
        return None

    def unload(self) -> None:  # noqa: B027  (optional hook: nothing to release by default)
        """Release what load() acquired (sessions, modules, device memory). Called once; no call to
        predict() runs at the same time or afterwards."""
