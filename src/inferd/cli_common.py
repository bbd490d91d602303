"""What the CLI commands share: options, settings loading, process setup, the HTTP client."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from inferd.core.errors import ConfigError
from inferd.core.settings import Settings, load_settings

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


def request(method: str, url: str, key: str | None, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=90) as client:
            return _check(client.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", 1)
