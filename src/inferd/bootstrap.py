"""The composition root: settings → registry → executors → services → ASGI app or worker."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import disable_created_metrics

from inferd.core.dataplane import DataPlane
from inferd.core.errors import ConfigError
from inferd.core.executor import DeviceExecutor, ShedReason, TenantShare
from inferd.core.prediction import PredictionService
from inferd.core.registry import ModelRegistry
from inferd.core.settings import Settings, TenantSettings, parse_rate
from inferd.core.tenancy import KeyRing, KeyScope, RateLimiter, RuntimeKeys, TenantLimit, TenantWeights
from inferd.grpc.server import InferenceServicer, start_grpc_server
from inferd.http.access_log import AccessLog
from inferd.http.admin_keys import KeyRoutes
from inferd.http.app import create_http_app
from inferd.http.asgi import InferdASGI
from inferd.http.gatekeeper import Gatekeeper
from inferd.http.jobs import JobRoutes
from inferd.http.native import NativeRoutes
from inferd.http.predict import PredictRoutes
from inferd.http.server import ConnectionLimits
from inferd.http.v2 import V2Routes
from inferd.jobs.repository_sync import RepositorySync
from inferd.jobs.runtime import JobRuntime
from inferd.jobs.service import JobService
from inferd.jobs.urls import open_store
from inferd.jobs.worker import JobWorker
from inferd.metrics import InferdMetrics, MetricsExposition, RestartReason, UnknownModelLabels
from inferd.runtimes.factory import PipelineFactory

if TYPE_CHECKING:
    from inferd.tracing import Tracing, TracingASGI

logger = logging.getLogger("inferd")


@dataclass(frozen=True)
class ProcessShare:
    """One server process of ``serve --workers N``: what it takes of limits the settings give for the
    whole server (job worker concurrency, rate limits, unknown-model labels), and where the processes'
    metrics meet."""

    index: int
    count: int
    metrics_dir: Path
    restart_reason: RestartReason | None = None  # set when it replaces a process that died

    def part(self, total: int) -> int:
        """This process's part of ``total`` split between ``count`` processes as evenly as possible."""
        return total // self.count + (1 if self.index < total % self.count else 0)


class DeviceMetrics:
    """Adapts the executor's accounting to the labelled Prometheus children of one device."""

    def __init__(self, metrics: InferdMetrics, device: str) -> None:
        self._inflight = metrics.executor_inflight.labels(device)
        self._queued = metrics.executor_queued.labels(device)
        self._timeouts = metrics.executor_timeouts.labels(device)
        self._shed = {reason: metrics.executor_shed.labels(device, reason.value) for reason in ShedReason}
        self._batch_items = metrics.batch_items
        self._batch_children: dict[Any, Any] = {}

    def inflight_add(self, amount: int) -> None:
        self._inflight.inc(amount)

    def queued_add(self, amount: int) -> None:
        self._queued.inc(amount)

    def timeout(self) -> None:
        self._timeouts.inc()

    def shed(self, reason: ShedReason) -> None:
        self._shed[reason].inc()

    def step(self, target: Any, items: int) -> None:
        # Keyed by labels, not by pipeline object: a reload replaces pipelines, the labels stay.
        labels = (getattr(target, "name", "unknown"), getattr(target, "version", "unknown"))
        child = self._batch_children.get(labels)
        if child is None:
            child = self._batch_children[labels] = self._batch_items.labels(*labels)
        child.observe(items)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_keyring(settings: Settings) -> KeyRing:
    keyring = KeyRing.parse(settings.api_keys)
    if settings.dev:
        if not is_loopback(settings.host):
            raise ConfigError(
                f"--dev serves with the well-known key 'dev' and binds loopback only, not {settings.host!r}"
            )
        keyring = keyring.merged(KeyRing.dev())
    return keyring


def require_keys(settings: Settings, *, stored_keys: int) -> None:
    """A server nobody can call is a configuration mistake: refuse to start without any key."""
    if not settings.dev and len(KeyRing.parse(settings.api_keys)) == 0 and stored_keys == 0:
        raise ConfigError(
            "no API keys configured: set INFERD_API_KEYS='KEY:TENANT:SCOPE[,SCOPE...];...' "
            f"(scopes: {', '.join(KeyScope)}), make one in the store with "
            f"'inferd keys create --tenant T --scopes {KeyScope.ADMIN}', "
            "or pass --dev for a loopback-only development server"
        )


def _burst_of(rate_text: str, explicit: int | None) -> float:
    if explicit is not None:
        return float(explicit)
    match = re.match(r"\s*(\d+(?:\.\d+)?)", rate_text)
    return max(1.0, float(match.group(1))) if match else 1.0


def build_rate_limiter(
    settings: Settings, *, share: float = 1.0, clock: Callable[[], float] = time.monotonic
) -> RateLimiter:
    """``share``: the fraction of each limit this process enforces (1/N under ``--workers N``)."""

    def limits(rate: str, burst: int | None) -> tuple[float, float]:
        return parse_rate(rate) * share, max(1.0, _burst_of(rate, burst) * share)

    default = None
    if settings.rate_limit:
        default = limits(settings.rate_limit, settings.rate_burst)
    overrides: dict[str, tuple[float, float] | None] = {}
    for tenant, tenant_settings in settings.tenants.items():
        rate = tenant_settings.rate_limit
        if rate is None:
            continue
        if rate.strip().lower() in ("off", "none", "unlimited"):
            overrides[tenant] = None  # exempt from the default limit
        else:
            overrides[tenant] = limits(rate, tenant_settings.burst)
    return RateLimiter(default=default, overrides=overrides, clock=clock)


def build_tenant_limit(
    settings: Settings, metrics: InferdMetrics, *, share: ProcessShare | None = None
) -> tuple[TenantLimit, Callable[[], Awaitable[None]] | None]:
    """The rate limit the request path checks, and what closes it. Without ``redis_url`` each process
    enforces 1/N of every limit; with it the whole limit is shared through Redis, and the 1/N share is
    the fallback while Redis does not answer."""
    local = build_rate_limiter(settings, share=1 / share.count if share else 1.0)
    if not settings.redis_url or not local.enabled:
        return local, None
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from inferd.ratelimit_redis import RedisRateLimiter, redact_url

    # Short timeouts and no retries: a Redis that does not answer must cost a request little, and the
    # limiter then switches to the local limits until a probe finds Redis back.
    client = Redis.from_url(
        settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisRateLimiter(
        client=client,
        limits=build_rate_limiter(settings),
        fallback=local,
        on_shared=lambda shared: metrics.rate_limit_shared.set(1 if shared else 0),
        description=f"Redis at {redact_url(settings.redis_url)}",
    )
    return limiter, limiter.close


@dataclass
class Engine:
    """Everything an API process or a worker needs to run models."""

    settings: Settings
    metrics: InferdMetrics
    registry: ModelRegistry
    executors: dict[str, DeviceExecutor]
    prediction: PredictionService
    dataplane: DataPlane
    tracing: Tracing | None = None

    def close(self) -> None:
        for executor in self.executors.values():
            executor.close()
        self.registry.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def build_tracing(settings: Settings) -> Tracing | None:
    """OpenTelemetry when tracing is on (OTEL_* variables, or INFERD_TRACING=true); None otherwise."""
    if not settings.tracing:
        return None
    try:
        from inferd.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            f"tracing is on (OTEL_EXPORTER_OTLP_ENDPOINT or INFERD_TRACING) but OpenTelemetry is not installed "
            f"({exc.name}): pip install 'inferd[otel]', or set INFERD_TRACING=false"
        ) from exc
    return Tracing()


def build_engine(
    settings: Settings, *, share: ProcessShare | None = None, tracing: Tracing | None = None
) -> Engine:
    """``tracing``: a tracer of the caller's (tests pass one with an in-memory exporter); by default the
    one the settings ask for."""
    if settings.models is None:
        raise ConfigError("no model repository given: pass --models DIR or set INFERD_MODELS")
    devices = settings.device_threads
    # The seed's metrics are exactly the series it names: no ``*_created`` samples (a process-wide switch
    # of prometheus_client, flipped only here in the composition root).
    disable_created_metrics()
    # A model call holding the GIL keeps the event loop from reading requests until it lets go: at
    # Python's default 5 ms a request arriving during a 5 ms call waits it out before its queueing (and
    # its max_delay_ms) even starts. A process-wide switch, set only here in the composition root.
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)
    tracing = tracing if tracing is not None else build_tracing(settings)
    metrics = InferdMetrics(devices=devices)
    if share is not None and share.restart_reason is not None:
        # The replacement counts the restart: the supervisor writes no metrics, and a dead process's
        # counts stay in the merged totals.
        metrics.server_restarts.labels(share.restart_reason.value).inc()
    registry = ModelRegistry(
        loader=PipelineFactory(
            expose_errors=settings.dev,
            # One model process per executor slot the version may use.
            process_slots=lambda spec: min(devices.get(spec.device, 1), spec.max_concurrency or 1 << 30),
            on_restart=lambda device, reason: metrics.executor_restarts.labels(device, reason.value).inc(),
        ),
        strict_readiness=settings.strict_readiness,
        devices=devices,
        on_state_change=lambda v: metrics.model_state.labels(v.name, v.version).set(
            1 if v.state == "loaded" else 0
        ),
    )
    registry.scan(settings.models)
    for entry in registry.models.values():
        for version in entry.versions.values():
            metrics.model_state.labels(entry.name, version.version).set(0)
    registry.load_at_start()

    def tenant_cap(cap: int | None) -> int | None:
        # Split between processes like the other limits, but never to 0: that would starve the tenant.
        return max(1, share.part(cap)) if share is not None and cap is not None else cap

    shares = {
        tenant: TenantShare(weight=entry.weight, max_concurrency=tenant_cap(entry.max_concurrency))
        for tenant, entry in settings.tenants.items()
    }
    executors = {
        device: DeviceExecutor(
            device=device,
            threads=threads,
            queue_limit=settings.queue_limit,
            metrics=DeviceMetrics(metrics, device),
            tenants=shares,
        )
        for device, threads in devices.items()
    }
    prediction = PredictionService(
        registry=registry,
        executors=executors,
        metrics=metrics,
        # The bound holds for the server: each process labels its part of the distinct unknown names.
        unknown_labels=UnknownModelLabels(
            share.part(settings.unknown_model_labels) if share else settings.unknown_model_labels
        ),
        tracer=tracing,
    )
    dataplane = DataPlane(registry=registry, prediction=prediction)
    return Engine(settings, metrics, registry, executors, prediction, dataplane, tracing)


def build_job_runtime(
    settings: Settings,
    engine: Engine,
    *,
    run_worker: bool,
    concurrency: int | None = None,
    keys: RuntimeKeys | None = None,
) -> JobRuntime:
    store = open_store(settings.store)
    repository = RepositorySync(registry=engine.registry, reload=engine.dataplane.reload_models, store=store)
    service = JobService(
        store=store,
        dataplane=engine.dataplane,
        metrics=engine.metrics,
        default_max_attempts=settings.job_max_attempts,
        retry_base_s=settings.job_retry_base_s,
        max_result_bytes=settings.job_max_result_bytes,
        repository=repository,
        tracer=engine.tracing,
        tenant_weights=TenantWeights(
            {tenant: entry.weight for tenant, entry in settings.tenants.items()},
            default=TenantSettings().weight,
        ),
    )
    worker = (
        JobWorker(
            service=service,
            concurrency=settings.worker_concurrency if concurrency is None else concurrency,
            lease_s=settings.job_lease_s,
            poll_interval_s=settings.worker_poll_s,
        )
        if run_worker
        else None
    )
    return JobRuntime(
        store=store,
        service=service,
        worker=worker,
        repository=repository,
        job_ttl_s=settings.job_ttl,
        janitor_interval_s=settings.janitor_interval_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        keys=keys,
    )


def reload_on(signum: int, repository: RepositorySync) -> None:
    """Reload the models of every process sharing the store when this process gets ``signum``."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()

    async def reload() -> None:
        try:
            summary = await repository.reload_everywhere()
        except Exception:
            logger.exception("reload on signal %d failed", signum)
            return
        logger.info("models reloaded on signal %d: %s", signum, summary)

    def start() -> None:
        task = loop.create_task(reload())
        pending.add(task)  # a reference, so the task cannot be collected while it runs
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signum, start)


async def _flush_periodically(access_log: AccessLog, interval_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(interval_s)
        access_log.flush()


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        keepalive_max_requests=settings.keepalive_max_requests,
    )


def build_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    share: ProcessShare | None = None,
    serve_grpc: bool = False,
    reload_on_sighup: bool = False,
) -> InferdASGI | TracingASGI:
    """The ASGI app for ``inferd serve`` (one of N processes with ``share``); tests build one per test
    with their own settings. ``serve_grpc``: its lifespan also serves V2 gRPC on ``settings.grpc_port``,
    on the same event loop (with ``share``, every process on the same port: SO_REUSEPORT)."""
    runtime_keys = RuntimeKeys()
    keyring = build_keyring(settings).with_runtime(runtime_keys)
    engine = engine or build_engine(settings, share=share)
    access_log = AccessLog(settings.access_log)
    tenant_limit, close_tenant_limit = build_tenant_limit(settings, engine.metrics, share=share)
    gatekeeper = Gatekeeper(keyring=keyring, rate_limiter=tenant_limit)
    # The configured worker concurrency is the server's total, split between its processes.
    concurrency = share.part(settings.worker_concurrency) if share else settings.worker_concurrency
    jobs = build_job_runtime(
        settings,
        engine,
        run_worker=settings.worker and concurrency > 0,
        concurrency=concurrency,
        keys=runtime_keys,
    )
    dataplane = engine.dataplane.with_readiness_checks([jobs.readiness])

    servicer = InferenceServicer(
        plane=dataplane,
        admit=gatekeeper.admit_key,
    )

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        flusher = asyncio.create_task(_flush_periodically(access_log))
        await jobs.start()
        grpc_server = None
        if reload_on_sighup:
            reload_on(signal.SIGHUP, jobs.repository)
        try:
            if serve_grpc:
                grpc_server, port = await start_grpc_server(
                    servicer=servicer,
                    host=settings.host,
                    port=settings.grpc_port,
                    max_message_bytes=settings.max_body_bytes,
                    reuse_port=share is not None,
                )
                logger.info("serving V2 gRPC on %s:%d", settings.host, port)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_s)
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await jobs.stop()
            if close_tenant_limit is not None:
                await close_tenant_limit()
            flusher.cancel()
            engine.close()
            access_log.close()

    exposition = MetricsExposition(
        metrics=engine.metrics, multiprocess_dir=share.metrics_dir if share else None
    )
    groups = [
        NativeRoutes(
            dataplane=dataplane,
            render_metrics=exposition.render,
            reload_models=jobs.repository.reload_everywhere,
        ).routes(),
        PredictRoutes(dataplane=dataplane, max_batch_inputs=settings.max_batch_inputs).routes(),
        JobRoutes(service=jobs.service, max_inputs=settings.max_batch_inputs).routes(),
        V2Routes(dataplane=dataplane).routes(),
        KeyRoutes(store=jobs.store).routes(),
    ]
    asgi = create_http_app(
        groups=groups,
        gatekeeper=gatekeeper,
        access_log=access_log,
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
        max_json_depth=settings.max_json_depth,
    )
    return engine.tracing.asgi(asgi) if engine.tracing is not None else asgi
