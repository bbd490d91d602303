"""``inferd worker``, ``inferd migrate`` and the ``inferd jobs`` client commands."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, TypeGuard

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from inferd.cli_common import (
    DEFAULT_URL,
    ConfigOption,
    KeyOption,
    LogLevelOption,
    UrlOption,
    api_errors,
    call_api,
    configure_process,
    fail,
    out_console,
    print_table,
    require_key,
    settings_from,
)
from inferd.client import APIError, AsyncClient, Job
from inferd.core.errors import ConfigError, InferdError
from inferd.jobs.models import JobStatus

logger = logging.getLogger("inferd.worker")
jobs_app = typer.Typer(help="Submit and inspect durable async jobs.", no_args_is_help=True)
BULK_LINES = 1000  # jobs per bulk request: large enough to amortize a request, small enough to retry

# What became of one submitted chunk: its job, the API's refusal of it, or None (not submitted).
Outcome = Job | APIError | None


def _succeeded(outcome: Outcome) -> TypeGuard[Job]:
    return isinstance(outcome, Job) and outcome.status == JobStatus.SUCCEEDED


def _error_of(outcome: Outcome) -> dict[str, str]:
    """Why a chunk did not succeed, as the output file's ``{"error": ...}`` line says it."""
    if isinstance(outcome, APIError):
        return {"code": outcome.code, "message": outcome.message}
    if isinstance(outcome, Job):
        return outcome.error or {"code": outcome.status, "message": outcome.status}
    return {"code": "unknown", "message": "not submitted"}


def worker(
    models: Annotated[Path | None, typer.Option("--models", help="Model repository directory.")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Job store URL.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Jobs run at once.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve /metrics, /livez and /readyz on this port.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Bind address of the metrics port.")
    ] = "127.0.0.1",
    config: ConfigOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a standalone job worker (any number of them, on any machines sharing the store)."""
    settings = settings_from(
        {
            "models": models,
            "store": store,
            "worker_concurrency": concurrency,
            "metrics_port": metrics_port,
            "log_level": log_level,
        },
        config,
    )
    configure_process(settings.log_level, tracing=settings.tracing)
    try:
        asyncio.run(_run_worker(settings, metrics_host))
    except InferdError as exc:
        fail(exc.message)


async def _run_worker(settings: Any, metrics_host: str) -> None:
    from inferd.bootstrap import build_engine, build_job_runtime, reload_on
    from inferd.jobs.urls import redact
    from inferd.metrics import MetricsExposition
    from inferd.worker_http import WorkerEndpoints

    engine = build_engine(settings)
    runtime = build_job_runtime(settings, engine, run_worker=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The models the worker needs and its job store, as serve's /readyz checks them.
    plane = engine.dataplane.with_readiness_checks([runtime.readiness])

    async def readiness() -> list[str]:
        if stop.is_set():
            return ["draining: stopped claiming jobs after a stop signal"]
        return (await plane.server_readiness()).reasons

    endpoints = None
    if settings.metrics_port is not None:
        exposition = MetricsExposition(metrics=engine.metrics)
        endpoints = WorkerEndpoints(exposition=exposition, readiness=readiness)
        await endpoints.start(metrics_host, settings.metrics_port)
    try:
        await runtime.start()
    except Exception as exc:  # unreachable or misconfigured store: say so without a traceback
        engine.close()
        if endpoints is not None:
            await endpoints.close()
        if isinstance(exc, InferdError):
            raise
        raise ConfigError(
            f"cannot open the job store {redact(settings.store)}: {type(exc).__name__}: {exc}"
        ) from exc
    reload_on(signal.SIGHUP, runtime.repository)
    logger.info(
        "inferd worker %s running (concurrency %d)",
        runtime.worker.worker_id if runtime.worker else "",
        settings.worker_concurrency,
    )
    try:
        await stop.wait()
    finally:
        await runtime.stop()
        engine.close()
        if endpoints is not None:
            await endpoints.close()


def migrate(
    store: Annotated[str | None, typer.Option("--store", help="Job store URL.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create or upgrade the job store's schema (also done at every start-up)."""
    from inferd.jobs.urls import prepare_store, redact

    settings = settings_from({"store": store}, config)
    try:
        applied = asyncio.run(prepare_store(settings.store)).applied
    except InferdError as exc:
        fail(exc.message)
    where = f"job store {redact(settings.store)}"
    if applied:
        numbers = ", ".join(str(version) for version in applied)
        out_console.print(f"{where}: applied migration(s) {numbers}; the schema is current", highlight=False)
    else:
        out_console.print(f"{where} was already up to date; nothing to apply", highlight=False)


def _read_jsonl(path: Path) -> list[Any]:
    items = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                fail(f"{path}:{number}: not valid JSON ({exc})")
    if not items:
        fail(f"{path} has no input lines")
    return items


@jobs_app.command("submit")
def jobs_submit(
    name: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[Path, typer.Argument(help="JSON Lines file: one input item per line.", exists=True)],
    version: Annotated[str | None, typer.Option("--version", help="Pin a version.")] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Inputs per job (1: one job per line).")
    ] = 1,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for every job, with a progress bar.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write outputs here in input order (implies --wait).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight.")] = 16,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Submit one job per input line (or batches of --batch-size), optionally wait and collect outputs."""
    items = _read_jsonl(file)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with api_errors():
        asyncio.run(
            _submit_and_wait(
                AsyncClient(url, api_key=require_key(key), max_connections=concurrency),
                name,
                version,
                chunks,
                batch_size > 1,
                wait or output is not None,
                output,
            )
        )


async def _submit_and_wait(
    client: AsyncClient,
    name: str,
    version: str | None,
    chunks: list[list[Any]],
    batch: bool,
    wait: bool,
    output: Path | None,
) -> None:
    console = Console(stderr=True)
    outcomes: list[Outcome] = [None] * len(chunks)
    run_id = uuid.uuid4().hex  # one Idempotency-Key per request and run: a retried POST never duplicates
    async with client:

        async def submit(first: int) -> None:
            indexes = range(first, min(first + BULK_LINES, len(chunks)))
            bodies = [{"inputs": chunks[i]} if batch else {"input": chunks[i][0]} for i in indexes]
            try:
                results: list[Job | APIError] = await client.submit_jobs(
                    name, bodies, version=version, idempotency_key=f"cli-{run_id}-{first}"
                )
            except APIError as exc:  # the whole request was refused: every line of it
                results = [exc] * len(indexes)
            for index, result in zip(indexes, results, strict=True):
                outcomes[index] = result

        await asyncio.gather(*(submit(first) for first in range(0, len(chunks), BULK_LINES)))
        submitted = sum(1 for outcome in outcomes if isinstance(outcome, Job))
        console.print(
            f"submitted {submitted} job(s) to {name}; {len(chunks) - submitted} rejected", highlight=False
        )
        if not wait:
            for outcome in outcomes:
                print(outcome.id if isinstance(outcome, Job) else f"rejected: {outcome}")
            return

        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done {task.fields[done]}  failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("jobs", total=len(chunks), done=0, failed=0)
            counts = {"done": 0, "failed": 0}

            def finished(succeeded: bool) -> None:
                counts["done" if succeeded else "failed"] += 1
                progress.update(
                    task, completed=sum(counts.values()), done=counts["done"], failed=counts["failed"]
                )

            async def follow(index: int) -> None:
                outcome = outcomes[index]
                if isinstance(outcome, Job):
                    outcome = outcomes[index] = await client.wait_job(outcome.id)
                finished(_succeeded(outcome))

            await asyncio.gather(*(follow(i) for i in range(len(chunks))))

    failed = 0
    lines: list[str] = []
    for index, outcome in enumerate(outcomes):
        for position in range(len(chunks[index])):
            if _succeeded(outcome):
                value = outcome.outputs[position] if batch and outcome.outputs is not None else outcome.output
                lines.append(json.dumps({"output": value}))
            else:
                failed += 1
                lines.append(json.dumps({"error": _error_of(outcome)}))
    if output is not None:
        output.write_text("\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} line(s) to {output}", highlight=False)
    else:
        print("\n".join(lines))
    if failed:
        console.print(f"[red]{failed} input(s) did not succeed[/]", highlight=False)
        raise typer.Exit(1)


@jobs_app.command("get")
def jobs_get(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for a terminal state (<= 60).")] = 0,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Print one job as JSON."""
    job = call_api(url, key, lambda client: client.get_job(job_id, wait_s=wait))
    print(json.dumps(job.raw, indent=2))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Cancel a pending or running job."""
    print(json.dumps(call_api(url, key, lambda client: client.cancel_job(job_id)).raw, indent=2))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only jobs in this status.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List your tenant's jobs, newest first: id, status, model:version, attempts, age and error code
    (--json: the whole job objects)."""
    jobs = call_api(
        url,
        key,
        lambda client: list(islice(client.list_jobs(status=status, model=model, page_size=limit), limit)),
    )
    if as_json:
        print(json.dumps({"jobs": [job.raw for job in jobs]}, indent=2))
        return
    # Compact (no borders, model:version, age) so that a row fits 80 columns; print_table never cuts a
    # cell where it does not (ids are what users copy into `jobs get` and `jobs cancel`).
    table = Table("id", "status", "model", "attempts", "age", "error", box=None, pad_edge=False)
    now = datetime.now(UTC)
    for job in jobs:
        table.add_row(
            job.id,
            job.status,
            f"{job.model}:{job.version}",
            str(job.attempts),
            _age(job.created_at, now),
            (job.error or {}).get("code", ""),
        )
    print_table(table)


def _age(created_at: str | None, now: datetime) -> str:
    """How long ago, as kubectl shows it: 45s, 12m, 5h, 3d."""
    if created_at is None:
        return ""
    seconds = max(0, int((now - datetime.fromisoformat(created_at)).total_seconds()))
    for unit, size, up_to in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < up_to:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"
