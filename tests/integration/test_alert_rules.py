"""Validate the Prometheus alert rules shipped in deploy/prometheus/.

The promtool tests need the `promtool` binary (Debian package `prometheus`). Without it they are
skipped, unless INFERD_REQUIRE_SERVICES=1, in which case a missing promtool is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = Path("deploy") / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROM_DIR / "prometheus.yml"
COMPOSE_PROMETHEUS_CONFIG = PROM_DIR / "prometheus-compose.yml"

# alert name -> regex that the alert's expression must match (threshold comparison at the end).
EXPECTED_ALERTS: dict[str, str] = {
    "InferdHighErrorRate": r">\s*0\.05\s*$",
    "InferdHighP99Latency": r"histogram_quantile\(\s*0\.99\b.*>\s*2\s*$",
    "InferdTimeoutSpike": r"sum by \(device\) \(rate\(executor_timeouts_total\[5m\]\)\)\s*>\s*0\s*$",
    # One series per model version however many processes export the store's count.
    "InferdQueueDepthGrowing": r"max by \(model, version\) \(job_queue_depth\)\s*>\s*100\s*$",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("INFERD_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool not installed (Debian package prometheus) and INFERD_REQUIRE_SERVICES=1")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((REPO_ROOT / ALERTS).read_text(encoding="utf-8"))
    groups = doc["groups"]
    assert [g["name"] for g in groups] == ["inferd"]
    rules: list[dict[str, Any]] = groups[0]["rules"]
    return rules


def _rules_by_name() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _load_rules() if "alert" in r}


def test_promtool_check_rules() -> None:
    proc = _run_promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests() -> None:
    proc = _run_promtool("test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_example_config() -> None:
    proc = _run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_compose_config() -> None:
    # Its scrape targets are compose's service names, resolved only inside compose: syntax and rules.
    proc = _run_promtool("check", "config", str(COMPOSE_PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_have_expected_thresholds() -> None:
    by_name = _rules_by_name()
    assert set(by_name) == set(EXPECTED_ALERTS)
    for name, pattern in EXPECTED_ALERTS.items():
        rule = by_name[name]
        expr = " ".join(str(rule["expr"]).split())  # normalise multi-line expressions
        assert re.search(pattern, expr), f"{name}: expression {expr!r} does not match {pattern!r}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_error_rate_aggregates_away_error_type() -> None:
    # A bare errors/requests division never matches (error_type differs); both sides must be summed
    # over the same labels.
    by_name = _rules_by_name()
    expr = " ".join(str(by_name["InferdHighErrorRate"]["expr"]).split())
    assert expr.count("sum by (model, version, tenant)") == 2, expr
    latency = " ".join(str(by_name["InferdHighP99Latency"]["expr"]).split())
    assert "sum by (le, model, version)" in latency, latency
