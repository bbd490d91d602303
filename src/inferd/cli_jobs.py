"""``inferd worker``, ``inferd migrate`` and the ``inferd jobs`` client commands."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
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
    UrlOption,
    configure_process,
    fail,
    request,
    settings_from,
)
from inferd.core.errors import ConfigError, InferdError

jobs_app = typer.Typer(help="Submit and inspect durable async jobs.", no_args_is_help=True)
TERMINAL = {"succeeded", "failed", "cancelled"}
SUBMIT_ATTEMPTS = 6
BULK_LINES = 1000  # jobs per bulk request: large enough to amortize a request, small enough to retry


def worker(
    models: Annotated[Path | None, typer.Option("--models", help="Model repository directory.")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Job store URL.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Jobs run at once.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve /metrics on this port.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Bind address for /metrics.")
    ] = "127.0.0.1",
    config: ConfigOption = None,
) -> None:
    """Run a standalone job worker (any number of them, on any machines sharing the store)."""
    settings = settings_from(
        {"models": models, "store": store, "worker_concurrency": concurrency, "metrics_port": metrics_port},
        config,
    )
    configure_process(settings.log_level)
    try:
        asyncio.run(_run_worker(settings, metrics_host))
    except InferdError as exc:
        fail(exc.message)


async def _run_worker(settings: Any, metrics_host: str) -> None:
    from prometheus_client import start_http_server

    from inferd.bootstrap import build_engine, build_job_runtime, reload_on
    from inferd.jobs.urls import redact

    engine = build_engine(settings)
    runtime = build_job_runtime(settings, engine, run_worker=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = None
    if settings.metrics_port is not None:
        server, _ = start_http_server(
            settings.metrics_port, addr=metrics_host, registry=engine.metrics.registry
        )
    try:
        await runtime.start()
    except Exception as exc:  # unreachable or misconfigured store: say so without a traceback
        engine.close()
        if isinstance(exc, InferdError):
            raise
        raise ConfigError(
            f"cannot open the job store {redact(settings.store)}: {type(exc).__name__}: {exc}"
        ) from exc
    reload_on(signal.SIGHUP, runtime.repository)
    Console(stderr=True).print(
        f"inferd worker {runtime.worker.worker_id if runtime.worker else ''} running "
        f"(concurrency {settings.worker_concurrency})",
        highlight=False,
    )
    try:
        await stop.wait()
    finally:
        await runtime.stop()
        engine.close()
        if server is not None:
            server.shutdown()


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
        Console().print(f"{where}: applied migration(s) {numbers}; the schema is current", highlight=False)
    else:
        Console().print(f"{where} was already up to date; nothing to apply", highlight=False)


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
    try:
        asyncio.run(
            _submit_and_wait(
                name,
                version,
                chunks,
                batch_size > 1,
                wait or output is not None,
                output,
                concurrency,
                url,
                key,
            )
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", 1)


async def _submit_and_wait(
    name: str,
    version: str | None,
    chunks: list[list[Any]],
    batch: bool,
    wait: bool,
    output: Path | None,
    concurrency: int,
    url: str,
    key: str | None,
) -> None:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/jobs/bulk"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency)
    console = Console(stderr=True)
    job_ids: list[str | None] = [None] * len(chunks)
    jobs: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=90, limits=limits) as client:
        run_id = uuid.uuid4().hex  # one Idempotency-Key per request and run: a retried POST never duplicates

        def reject(index: int, error: dict[str, Any]) -> None:
            jobs[f"rejected-{index}"] = {"status": "failed", "error": error}
            job_ids[index] = f"rejected-{index}"

        async def submit(first: int) -> None:
            indexes = range(first, min(first + BULK_LINES, len(chunks)))
            lines = b"".join(
                orjson.dumps({"inputs": chunks[i]} if batch else {"input": chunks[i][0]}) + b"\n"
                for i in indexes
            )
            request_headers = {
                "Idempotency-Key": f"cli-{run_id}-{first}",
                "Content-Type": "application/x-ndjson",
            }
            response: httpx.Response | None = None
            for attempt in range(SUBMIT_ATTEMPTS):
                try:
                    async with gate:
                        response = await client.post(path, content=lines, headers=request_headers)
                except httpx.TransportError:
                    if attempt == SUBMIT_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(min(2**attempt, 10))
                    continue
                if response.status_code not in (429, 503) or attempt == SUBMIT_ATTEMPTS - 1:
                    break
                # Rate limited or overloaded: wait as the server asks, then send the same request again.
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            assert response is not None
            if response.status_code != 200:
                error = (
                    response.json().get("error", {})
                    if response.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                for index in indexes:
                    reject(
                        index, error or {"code": str(response.status_code), "message": response.text[:200]}
                    )
                return
            for index, line in zip(indexes, response.content.splitlines(), strict=True):
                outcome = orjson.loads(line)
                if "error" in outcome and "id" not in outcome:
                    reject(index, outcome["error"])
                else:
                    job_ids[index] = outcome["id"]
                    jobs[outcome["id"]] = outcome

        await asyncio.gather(*(submit(first) for first in range(0, len(chunks), BULK_LINES)))
        submitted = sum(1 for j in job_ids if j and not j.startswith("rejected-"))
        console.print(
            f"submitted {submitted} job(s) to {name}; {len(chunks) - submitted} rejected", highlight=False
        )
        if not wait:
            for job_id in job_ids:
                print(job_id)
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

            async def follow(job_id: str) -> None:
                while jobs[job_id]["status"] not in TERMINAL:
                    async with gate:
                        response = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
                    if response.status_code == 200:
                        jobs[job_id] = response.json()
                    else:
                        await asyncio.sleep(1)
                finished = [j for j in jobs.values() if j["status"] in TERMINAL]
                progress.update(
                    task,
                    completed=len(finished),
                    done=sum(1 for j in finished if j["status"] == "succeeded"),
                    failed=sum(1 for j in finished if j["status"] != "succeeded"),
                )

            await asyncio.gather(*(follow(job_id) for job_id in job_ids if job_id))

    failed = 0
    lines: list[str] = []
    for index, job_id in enumerate(job_ids):
        job: dict[str, Any] = (
            jobs[job_id]
            if job_id
            else {"status": "failed", "error": {"code": "unknown", "message": "not submitted"}}
        )
        for position in range(len(chunks[index])):
            if job["status"] == "succeeded":
                value = job["outputs"][position] if batch else job["output"]
                lines.append(json.dumps({"output": value}))
            else:
                failed += 1
                lines.append(
                    json.dumps(
                        {"error": job.get("error") or {"code": job["status"], "message": job["status"]}}
                    )
                )
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
    print(json.dumps(request("GET", url, key, f"/v1/jobs/{job_id}", params={"wait": wait}), indent=2))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Cancel a pending or running job."""
    print(json.dumps(request("POST", url, key, f"/v1/jobs/{job_id}/cancel"), indent=2))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option("--status", help="pending|running|succeeded|failed|cancelled")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List your tenant's jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if model:
        params["model"] = model
    data = request("GET", url, key, "/v1/jobs", params=params)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("id", "status", "model", "version", "attempts", "created_at", "error")
    for job in data["jobs"]:
        error = job.get("error") or {}
        table.add_row(
            job["id"],
            job["status"],
            job["model"],
            job["version"],
            str(job["attempts"]),
            job["created_at"],
            error.get("code", ""),
        )
    Console().print(table)
