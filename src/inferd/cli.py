"""``inferd`` command line: serve, models, predict (and jobs, worker, migrate)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from inferd.cli_common import (
    DEFAULT_URL,
    ConfigOption,
    KeyOption,
    LogLevelOption,
    UrlOption,
    call_api,
    configure_process,
    err_console,
    fail,
    out_console,
    print_table,
    settings_from,
)
from inferd.cli_jobs import jobs_app, migrate, worker
from inferd.cli_keys import keys_app
from inferd.core.errors import ConfigError, InferdError

logger = logging.getLogger("inferd")
app = typer.Typer(help="inferd: a self-hosted, multi-tenant ML inference server.", no_args_is_help=True)
# `inferd models reload` when the reload ran but reported failures: not 1 (nothing was reloaded) nor 2.
RELOAD_FAILED_STATUS = 3
models_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.command()(worker)
app.command()(migrate)


@app.command()
def serve(
    models: Annotated[Path | None, typer.Option("--models", help="Model repository directory.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    config: ConfigOption = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Development mode: loopback only, accepts key 'dev'.")
    ] = False,
    store: Annotated[
        str | None, typer.Option("--store", help="Job store URL (sqlite:///... or postgresql://...).")
    ] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run the in-process job worker.")
    ] = False,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers", help="Server processes on the same host and port (default 1; 'auto': one per core)."
        ),
    ] = None,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="V2 gRPC port (default 8001).")] = None,
    no_grpc: Annotated[bool, typer.Option("--no-grpc", help="Do not serve V2 gRPC.")] = False,
    log_level: LogLevelOption = None,
) -> None:
    """Serve the models of a repository over HTTP and V2 gRPC."""
    from inferd.bootstrap import build_keyring, require_keys
    from inferd.grpc.server import check_port_free
    from inferd.jobs.urls import prepare_store
    from inferd.serving import Supervisor, run_server

    flags: dict[str, Any] = {
        "models": models,
        "host": host,
        "port": port,
        "store": store,
        "workers": workers,
        "grpc_port": grpc_port,
        "log_level": log_level,
    }
    if no_grpc:
        flags["grpc"] = False
    if dev:
        flags["dev"] = True
    if no_worker:
        flags["worker"] = False
    settings = settings_from(flags, config)
    configure_process(settings.log_level, tracing=settings.tracing)
    if settings.dev:
        logger.warning(
            "development mode: anyone on this machine can call the server with the key 'dev' (all scopes). "
            "Never use --dev in production: configure INFERD_API_KEYS instead."
        )
    try:
        # Reach and migrate the job store before serving: an unreachable store is one clear line here,
        # not a traceback from inside the server's start-up (or from each of N processes).
        require_keys(settings, stored_keys=asyncio.run(prepare_store(settings.store)).stored_keys)
        if settings.grpc:
            check_port_free(settings.host, settings.grpc_port)
        if settings.workers > 1:
            build_keyring(settings)  # the key configuration, checked once before any process starts
            status = Supervisor(settings).run()
        else:
            status = run_server(settings)
    except InferdError as exc:
        fail(exc.message)
        return
    except OSError as exc:  # the address is taken, or not ours to bind
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        return
    if status:
        raise typer.Exit(status)


@models_app.command("list")
def models_list(
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    models: Annotated[
        Path | None, typer.Option("--models", help="List a local repository instead of asking a server.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List models and versions (from a running server, or a local repository with --models)."""
    if models is not None:
        from inferd.core.registry import ModelRegistry
        from inferd.runtimes.factory import PipelineFactory

        # Scanning reads every model.yaml and routing.yaml without loading any model.
        devices = settings_from({}, None).device_threads
        registry = ModelRegistry(loader=PipelineFactory(), devices=devices)
        try:
            registry.scan(models)
        except ConfigError as exc:
            fail(exc.message)
        data = {"models": [entry.describe() for entry in registry.models.values()]}
        for problem in registry.problems:
            err_console.print(f"[red]problem:[/] {problem.message}", highlight=False)
    else:
        data = {"models": call_api(url, key, lambda client: client.models())}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("model", "version", "state", "runtime", "device", "max batch", "default")
    for entry in data["models"]:
        for version in entry["versions"]:
            is_default = "*" if version["version"] == entry["default_version"] else ""
            table.add_row(
                entry["name"],
                version["version"],
                version["state"],
                version["runtime"],
                version["device"],
                str(version["max_batch_size"]),
                is_default,
            )
    print_table(table)


@models_app.command("reload")
def models_reload(url: UrlOption = DEFAULT_URL, key: KeyOption = None) -> None:
    """Make a running server rescan its model repository (needs an admin key).

    Exit status 0: every version loaded and the repository has no problems; 3: the reload ran but a
    version failed to load or a file of the repository is broken (each is printed; the versions that
    loaded serve); 1: the server refused the reload or could not be reached.
    """
    summary = call_api(url, key, lambda client: client.reload_models())
    for field in ("added", "reloaded", "removed", "failed"):
        if summary[field]:
            out_console.print(f"{field}: {', '.join(summary[field])}", highlight=False)
    out_console.print(f"unchanged: {len(summary['unchanged'])} version(s)", highlight=False)
    failed, problems = summary["failed"], summary["problems"]
    for problem in problems:
        err_console.print(f"[red]problem:[/] {problem}", highlight=False)
    if failed or problems:
        fail(
            f"the reload reported {len(failed)} failed version(s) and {len(problems)} problem(s), "
            "listed above; fix the files and reload again",
            RELOAD_FAILED_STATUS,
        )


@app.command()
def predict(
    name: Annotated[str, typer.Argument(help="Model name.")],
    input_json: Annotated[str, typer.Option("--input", help="The input item as JSON ('-' reads stdin).")],
    version: Annotated[str | None, typer.Option("--version", help="Pin a version.")] = None,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Run one prediction on a running server and print the output as JSON."""
    text = sys.stdin.read() if input_json == "-" else input_json
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--input is not valid JSON: {exc}")
    result = call_api(url, key, lambda client: client.predict(name, item, version=version))
    print(json.dumps(result.output))
    err_console.print(f"model {result.model} version {result.version}", style="dim", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
