"""The model repository: ``DIR/<name>/<version>/model.yaml`` plus optional ``DIR/<name>/routing.yaml``.

A malformed entry or a model that fails to load is recorded with the file and the reason; the other
models keep serving and ``/readyz`` lists the problems.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inferd.core.errors import ConfigError, InferdError, ModelNotFoundError, ModelNotReadyError, quote
from inferd.core.executor import LanePolicy
from inferd.core.model_spec import ModelSpec, read_model_spec
from inferd.core.pipeline import Pipeline
from inferd.core.routing import RoutingPolicy, highest_version, read_routing, version_sort_key

logger = logging.getLogger("inferd.registry")


class PipelineLoader(Protocol):
    """Builds versions' pipelines (implemented outside the core, where the runtimes live)."""

    def check(self, spec: ModelSpec, spec_file: Path) -> None:
        """While scanning, without loading: raise ConfigError if the spec names an unknown runtime or
        keys the runtime does not take."""

    def __call__(self, name: str, version: str, version_dir: Path, spec: ModelSpec) -> Pipeline:
        """Blocking: load the version's runtime and hooks."""


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    path: Path
    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loaded | failed | removed (by a reload)
    error: str | None = None
    pipeline: Pipeline | None = None
    load_lock: asyncio.Lock | None = None
    fingerprint: tuple[int, int] = (0, 0)  # (newest mtime, file count) of the folder: changed → reload
    # Replaced or removed by a reload, or the server stopping: a load still running then (a lazy first
    # use) unloads what it loaded instead of keeping it for good.
    retired: bool = False

    @functools.cached_property
    def lane_policy(self) -> LanePolicy:
        return self.spec.lane_policy()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "version": self.version,
            "state": self.state,
            "runtime": self.spec.runtime,
            "device": self.spec.device,
            "max_batch_size": self.spec.max_batch_size,
            "timeout_s": self.spec.timeout_s,
        }
        if self.spec.description:
            info["description"] = self.spec.description
        if self.spec.input_schema is not None:
            info["input_schema"] = self.spec.input_schema
        if self.error:
            info["error"] = self.error
        return info


@dataclass(eq=False)
class ModelEntry:
    name: str
    versions: dict[str, ModelVersion]
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)

    @functools.cached_property
    def highest(self) -> str:
        # An entry's versions never change (a reload builds new entries), and routing asks per request.
        return highest_version(self.versions)

    @property
    def default_version(self) -> str:
        if self.routing.default is not None:
            return self.routing.default
        if self.routing.weights:
            return max(self.routing.weights.items(), key=lambda kv: (kv[1], version_sort_key(kv[0])))[0]
        return self.highest

    def describe(self) -> dict[str, Any]:
        ordered = sorted(self.versions.values(), key=lambda v: version_sort_key(v.version))
        return {
            "name": self.name,
            "default_version": self.default_version,
            "routing": self.routing.describe(self.highest),
            "versions": [version.describe() for version in ordered],
        }


@dataclass(slots=True)
class RepositoryProblem:
    path: str
    message: str

    def __str__(self) -> str:
        # The messages of read_model_spec and read_routing already start with the file's path.
        return self.message if self.message.startswith(self.path) else f"{self.path}: {self.message}"


@dataclass
class ReloadPlan:
    models: dict[str, ModelEntry]
    problems: list[RepositoryProblem]
    added: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Why each new or changed version in ``failed`` did not load: the answer's, not the repository's
    # problems (readiness names a failed version from its state already).
    load_failures: list[RepositoryProblem] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "reloaded": self.reloaded,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "problems": [str(p) for p in [*self.problems, *self.load_failures]],
        }


def folder_fingerprint(folder: Path) -> tuple[int, int]:
    """Cheap change detection for a version folder: newest modification time and number of files."""
    # Files only: the folder's own mtime changes when Python writes __pycache__ on the first import.
    newest, count = 0, 0
    for path in folder.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        stat = path.stat()
        newest, count = max(newest, stat.st_mtime_ns), count + 1
    return newest, count


class ModelRegistry:
    def __init__(
        self,
        *,
        loader: PipelineLoader,
        devices: Iterable[str],
        on_state_change: Callable[[ModelVersion], None] | None = None,
        strict_readiness: bool = False,
    ) -> None:
        self._loader = loader
        self._strict_readiness = strict_readiness
        self._on_state_change = on_state_change
        self._devices = set(devices)
        self.root: Path | None = None
        self.models: dict[str, ModelEntry] = {}
        self.problems: list[RepositoryProblem] = []

    # -- discovery and loading -------------------------------------------------------------------

    def scan(self, root: Path) -> None:
        self.root = root
        self.models, self.problems, _ = self._discover(root)

    def _discover(
        self, root: Path
    ) -> tuple[dict[str, ModelEntry], list[RepositoryProblem], set[tuple[str, str]]]:
        """Read every model.yaml and routing.yaml under ``root``; loads nothing. Also returns the
        (model, version) folders whose model.yaml is there but not usable."""
        if not root.is_dir():
            raise ConfigError(f"model repository {root} is not a directory")
        models: dict[str, ModelEntry] = {}
        problems: list[RepositoryProblem] = []
        unusable: set[tuple[str, str]] = set()
        for model_dir in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
        ):
            versions: dict[str, ModelVersion] = {}
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                spec_file = version_dir / "model.yaml"
                if not spec_file.is_file():
                    continue
                try:
                    spec = read_model_spec(spec_file)
                    if spec.device not in self._devices:
                        raise ConfigError(
                            f"{spec_file}: device {spec.device!r} is not configured "
                            f"(configured: {', '.join(sorted(self._devices))}; see INFERD_DEVICES)"
                        )
                    self._loader.check(spec, spec_file)
                except ConfigError as exc:
                    problems.append(self._problem(str(spec_file), exc.message))
                    unusable.add((model_dir.name, version_dir.name))
                    continue
                versions[version_dir.name] = ModelVersion(
                    model_dir.name,
                    version_dir.name,
                    version_dir,
                    spec,
                    fingerprint=folder_fingerprint(version_dir),
                )
            if not versions:
                continue
            entry = ModelEntry(model_dir.name, versions)
            routing_file = model_dir / "routing.yaml"
            if routing_file.is_file():
                try:
                    entry.routing = read_routing(routing_file, versions)
                except ConfigError as exc:
                    message = exc.message + " (falling back to the highest version)"
                    problems.append(self._problem(str(routing_file), message))
            models[entry.name] = entry
        return models, problems, unusable

    def plan_reload(self) -> ReloadPlan:
        """Blocking (run it off the event loop): rescan the repository and load what is new or changed.
        Versions whose folder did not change keep their loaded pipeline, and so do loaded versions whose
        changed files do not load or whose model.yaml no longer reads (an edit gone wrong must not take a
        serving model down). Nothing serving changes until :meth:`apply_reload`."""
        if self.root is None:
            raise ConfigError("the registry was not built from a repository; nothing to reload")
        models, problems, unusable = self._discover(self.root)
        plan = ReloadPlan(models, problems)
        for entry in models.values():
            for name_version, version in list(entry.versions.items()):
                label = f"{entry.name}:{name_version}"
                old_entry = self.models.get(entry.name)
                old = old_entry.versions.get(name_version) if old_entry else None
                if old is not None and old.fingerprint == version.fingerprint and old.state != "failed":
                    entry.versions[name_version] = old  # unchanged: keep its pipeline and state
                    plan.unchanged.append(label)
                    continue
                if version.spec.load_at_start:
                    self.load_version(version)
                if version.state == "failed" and old is not None and old.state == "loaded":
                    entry.versions[name_version] = old
                    self._keep_previous(plan, old, f"its changed files did not load: {version.error}")
                    continue
                (plan.added if old is None else plan.reloaded).append(label)
                if version.state == "failed":
                    plan.failed.append(label)
                    message = f"model {entry.name} version {name_version} failed to load: {version.error}"
                    plan.load_failures.append(RepositoryProblem(str(version.path), message))
        for old_entry in self.models.values():
            for old in old_entry.versions.values():
                new_entry = models.get(old_entry.name)
                if new_entry is not None and old.version in new_entry.versions:
                    continue
                if (old.name, old.version) in unusable and old.state == "loaded":
                    if new_entry is None:
                        new_entry = models[old.name] = ModelEntry(old.name, {})
                    new_entry.versions[old.version] = old
                    self._keep_previous(plan, old, "its model.yaml does not read (see the problem above)")
                    continue
                plan.removed.append(f"{old_entry.name}:{old.version}")
        return plan

    def _keep_previous(self, plan: ReloadPlan, old: ModelVersion, why: str) -> None:
        plan.failed.append(f"{old.name}:{old.version}")
        message = f"model {old.name} version {old.version} keeps serving its previous load: {why}"
        plan.problems.append(self._problem(str(old.path), message))

    def apply_reload(self, plan: ReloadPlan) -> None:
        """Swap in a planned repository (on the event loop). Requests already running keep the pipeline
        they started with; new requests see the new versions and routing."""
        kept = {id(version) for entry in plan.models.values() for version in entry.versions.values()}
        removed = set(plan.removed)
        replaced = [
            version
            for entry in self.models.values()
            for version in entry.versions.values()
            if id(version) not in kept
        ]
        self.models, self.problems = plan.models, plan.problems
        for version in replaced:
            self._retire(version)
            if f"{version.name}:{version.version}" in removed:
                version.state = "removed"
                if self._on_state_change is not None:
                    self._on_state_change(version)

    def close(self) -> None:
        """Shutdown: unload every loaded version (each once the calls running on it have returned)."""
        for entry in self.models.values():
            for version in entry.versions.values():
                self._retire(version)

    @staticmethod
    def _retire(version: ModelVersion) -> None:
        version.retired = True
        if version.pipeline is not None:
            version.pipeline.retire()

    @staticmethod
    def _problem(path: str, message: str) -> RepositoryProblem:
        logger.error("model repository: %s", message)
        return RepositoryProblem(path, message)

    def load_version(self, version: ModelVersion) -> None:
        """Blocking: import code and artifacts. Records failures instead of raising."""
        try:
            pipeline = self._loader(version.name, version.version, version.path, version.spec)
            version.pipeline = pipeline
            if version.retired:
                # Retired while it loaded: the request that asked for it gets a "retry" answer.
                pipeline.retire()
                return
        except InferdError as exc:
            version.state, version.error = "failed", exc.message
        except Exception as exc:  # user code at import or load(): report, keep serving the others
            version.state, version.error = "failed", f"loading failed: {type(exc).__name__}: {exc}"
        else:
            version.state, version.error = "loaded", None
            logger.info("loaded model %s version %s", version.name, version.version)
        if version.state == "failed":
            logger.error(
                "model %s version %s failed to load: %s", version.name, version.version, version.error
            )
        if self._on_state_change is not None:
            self._on_state_change(version)

    def load_at_start(self) -> None:
        for entry in self.models.values():
            for version in entry.versions.values():
                if version.spec.load_at_start:
                    self.load_version(version)

    async def ensure_loaded(self, version: ModelVersion) -> Pipeline:
        """The pipeline, loading it off the event loop on first use for ``load_at_start: false``."""
        if version.pipeline is not None:
            return version.pipeline
        if version.state == "unloaded":
            if version.load_lock is None:
                version.load_lock = asyncio.Lock()
            async with version.load_lock:
                if version.state == "unloaded":
                    await asyncio.to_thread(self.load_version, version)
        if version.pipeline is None:
            raise ModelNotReadyError(
                f"model {version.name} version {version.version} failed to load; /readyz says why",
                detail=f"model {version.name} version {version.version} failed to load: {version.error}",
            )
        return version.pipeline

    # -- lookup ----------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None, *, tenant: str) -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"no model named {quote(name)}; GET /v1/models lists the models")
        if version is None:
            version = entry.routing.choose(tenant=tenant, fallback_version=entry.highest)
        found = entry.versions.get(version)
        if found is None:
            have = ", ".join(sorted(entry.versions, key=version_sort_key))
            raise ModelNotFoundError(f"model {name!r} has no version {quote(version)} (versions: {have})")
        return found

    def readiness(self) -> tuple[list[str], list[str]]:
        """``(blocking, other)``: what keeps this server from serving, and what else is wrong.

        One broken upload must not pull every replica out of the load balancer: only versions marked
        ``required: true`` that are not loaded block. With ``strict_readiness`` every repository problem
        and every ``load_at_start`` version that is not loaded blocks too."""
        blocking: list[str] = []
        other = [str(p) for p in self.problems]
        lazy: list[str] = []  # load_at_start: false versions whose first use failed: listed, never blocking
        for entry in self.models.values():
            for version in entry.versions.values():
                spec = version.spec
                if version.state == "loaded":
                    continue
                reason = f"model {entry.name} version {version.version}: {version.state}: {version.error}"
                if spec.load_at_start or spec.required:
                    (blocking if spec.required else other).append(reason)
                elif version.state == "failed":
                    lazy.append(reason)
        if self._strict_readiness:
            return blocking + other, lazy
        return blocking, other + lazy
