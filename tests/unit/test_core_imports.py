"""``inferd.core`` is the transport-free core: it must not depend on FastAPI or Starlette, nor on the
runtimes that implement its protocols."""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import inferd.core

CORE_DIR = Path(inferd.core.__file__).resolve().parent
WEB_FRAMEWORKS = ("fastapi", "starlette")
IMPORT_LINE = re.compile(r"^\s*(?:import|from)\s+(fastapi|starlette|inferd\.runtimes)\b", re.MULTILINE)


def core_modules() -> list[str]:
    names = ["inferd.core"]
    for info in pkgutil.walk_packages([str(CORE_DIR)], prefix="inferd.core."):
        names.append(info.name)
    return sorted(names)


def test_core_has_modules() -> None:
    modules = core_modules()
    # The core's known modules are found (guards against the walk finding nothing).
    for expected in ("inferd.core.errors", "inferd.core.prediction", "inferd.core.settings"):
        assert expected in modules, modules


def test_importing_every_core_module_loads_no_web_framework() -> None:
    modules = core_modules()
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        f"    if m.split('.')[0] in {WEB_FRAMEWORKS!r} or m.startswith('inferd.runtimes'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing inferd.core loads {loaded}"


def test_no_core_file_imports_a_web_framework() -> None:
    files = sorted(CORE_DIR.rglob("*.py"))
    assert files
    offenders = [
        f"{path.relative_to(CORE_DIR)}: {match.group(0).strip()}"
        for path in files
        for match in IMPORT_LINE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_static_check_would_catch_an_import() -> None:
    assert IMPORT_LINE.search("from fastapi import FastAPI\n")
    assert IMPORT_LINE.search("    import starlette.requests\n")
    assert IMPORT_LINE.search("from inferd.runtimes.base import ModelRuntime\n")
    assert not IMPORT_LINE.search("# fastapi is not used here\nimport fastapi_like\n")


ADAPTER_IMPORT = re.compile(
    r"^\s*(?:import|from)\s+(prometheus_client|inferd\.(?:metrics|http|jobs|grpc|bootstrap|cli))\b",
    re.MULTILINE,
)


def test_no_core_file_imports_an_adapter_or_prometheus() -> None:
    # Core owns protocols (e.g. the metrics PredictionService records); adapters implement them.
    offenders = [
        f"{path.relative_to(CORE_DIR)}: {match.group(0).strip()}"
        for path in sorted(CORE_DIR.rglob("*.py"))
        for match in ADAPTER_IMPORT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert ADAPTER_IMPORT.search("from inferd.metrics import InferdMetrics\n")
    assert not ADAPTER_IMPORT.search("from inferd.core.metrics_protocol import X\n")
