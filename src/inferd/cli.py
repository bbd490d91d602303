"""``inferd`` command line: serve, models, predict (and jobs, worker, migrate)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from inferd.core.errors import ConfigError, InferdError
from inferd.core.settings import Settings, load_settings

app = typer.Typer(help="inferd: a self-hosted, multi-tenant ML inference server.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

err_console = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8000"

UrlOption = Annotated[str, typer.Option("--url", envvar="INFERD_URL", help="Server base URL.")]
KeyOption = Annotated[str | None, typer.Option("--key", envvar="INFERD_API_KEY", help="API key.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config file.", exists=True)]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings_from(flags: dict[str, Any], config: Path | None) -> Settings:
    try:
        return load_settings(flags=flags, config_file=config, environ=os.environ)
    except ConfigError as exc:
        fail(exc.message)
        raise  # unreachable; fail() exits


def configure_process(level: str) -> None:
    """Process-wide setup, done only by the entry points: logging, and no ``*_created`` series (the seed's
    metrics are exactly the counters, gauges and histogram buckets it names)."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


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
) -> None:
    """Serve the models of a repository over HTTP."""
    import uvicorn

    from inferd.bootstrap import build_app

    flags: dict[str, Any] = {"models": models, "host": host, "port": port, "store": store}
    if dev:
        flags["dev"] = True
    if no_worker:
        flags["worker"] = False
    settings = settings_from(flags, config)
    configure_process(settings.log_level)
    if settings.dev:
        err_console.print(
            "[bold yellow]WARNING: development mode.[/] Anyone on this machine can call the server with the key "
            "'dev' (all scopes). Never use --dev in production: configure INFERD_API_KEYS instead.",
            highlight=False,
        )
    try:
        asgi = build_app(settings)
    except InferdError as exc:
        fail(exc.message)
        return
    uvicorn.run(
        asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


def _client(url: str, key: str | None, timeout: float = 60.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def _check(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            fail(f"{response.status_code} {body['error'].get('code')}: {body['error'].get('message')}", 1)
        fail(f"{response.status_code}: {response.text[:500]}", 1)
    return body


def _request(method: str, url: str, key: str | None, path: str, **kwargs: Any) -> Any:
    try:
        with _client(url, key) as client:
            return _check(client.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", 1)


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
        from inferd.core.settings import parse_devices

        registry = ModelRegistry(loader=lambda *a: None, devices=parse_devices(Settings().devices))  # type: ignore[arg-type]
        try:
            registry.scan(models)
        except ConfigError as exc:
            fail(exc.message)
        data = {"models": [entry.describe() for entry in registry.models.values()]}
        for problem in registry.problems:
            err_console.print(f"[red]problem:[/] {problem.message}", highlight=False)
    else:
        data = _request("GET", url, key, "/v1/models")
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
    Console().print(table)


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
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/predict"
    body = _request("POST", url, key, path, json={"input": item})
    print(json.dumps(body["output"]))
    err_console.print(f"model {body['model']} version {body['version']}", style="dim", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
