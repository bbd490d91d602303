"""What the CLI commands share: options, settings loading, process setup, calling the API."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from inferd.client import DEFAULT_URL as DEFAULT_URL  # the CLI's --url default is the client's
from inferd.client import Client, ClientError
from inferd.core.errors import ConfigError
from inferd.core.settings import Settings, load_settings

T = TypeVar("T")
# Message lines: one line each however narrow the terminal (rich broke them mid-sentence). Tables are
# printed by print_table.
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="INFERD_URL", help="Server base URL.")]
KeyOption = Annotated[str | None, typer.Option("--key", envvar="INFERD_API_KEY", help="API key.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config file.", exists=True)]
LogLevelOption = Annotated[
    str | None,
    typer.Option(
        "--log-level", help="debug, info (default), warning, error or critical; logs are JSON lines."
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def require_key(key: str | None) -> str:
    """The API key every server command needs, or an error in the CLI's terms."""
    if not key:
        fail("no API key: pass --key KEY or set INFERD_API_KEY (with --dev servers the key is 'dev')")
    return key


def settings_from(flags: dict[str, Any], config: Path | None) -> Settings:
    try:
        return load_settings(flags=flags, config_file=config, environ=os.environ)
    except ConfigError as exc:
        fail(exc.message)


def configure_process(level: str, *, tracing: bool = False) -> None:
    """Process-wide setup, done only by the entry points: JSON logging, and no ``*_created`` series (the
    seed's metrics are exactly the counters, gauges and histogram buckets it names)."""
    from prometheus_client import disable_created_metrics

    from inferd.logs import configure_logging

    disable_created_metrics()
    context = []
    if tracing:
        with contextlib.suppress(ImportError):  # a missing extra is reported when the tracer is built
            from inferd.tracing import log_context

            context.append(log_context)
    configure_logging(level, context=context)


def call_api(url: str, key: str | None, action: Callable[[Client], T]) -> T:
    """Run ``action`` with a client of the server at ``url``; API and connection errors become one
    line on stderr (code, message, request id) and exit status 1."""
    with Client(url, api_key=require_key(key)) as client, api_errors():
        return action(client)
    raise AssertionError("unreachable: api_errors() exits on every error")


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        fail(str(exc), 1)


def print_table(table: Table) -> None:
    """A table on stdout with every cell whole: as wide as the terminal, or as wide as its cells need
    where that is wider (the terminal wraps the lines). Fitted to the width, rich cut cells to '…'
    (ids, times), and when stdout is not a terminal that width is 80 columns."""
    console = Console()
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    Console(width=max(console.width, natural)).print(table)


_UNBOUNDED = 100_000
