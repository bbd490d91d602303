"""Which version serves a request that names no version: highest, pinned, or weighted (canary)."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from inferd.core.errors import ConfigError


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numbers sort numerically and before names ("2" < "10" < "beta")."""
    # isascii: str.isdigit() accepts characters such as "²" that int() rejects.
    return (0, int(version), "") if version.isascii() and version.isdigit() else (1, 0, version)


def highest_version(versions: Iterable[str]) -> str:
    return max(versions, key=version_sort_key)


class RoutingPolicy:
    """``default`` pins a version; ``weights`` split traffic in exact proportions (smooth weighted
    round-robin, the deterministic scheme nginx uses); ``sticky: tenant`` keeps a tenant on one version
    by a stable hash, so every replica makes the same choice."""

    def __init__(
        self, *, default: str | None = None, weights: dict[str, int] | None = None, sticky: str | None = None
    ) -> None:
        self.default = default
        self.weights = {version: weight for version, weight in (weights or {}).items() if weight > 0}
        self.sticky = sticky
        self._current = dict.fromkeys(self.weights, 0)
        self._total = sum(self.weights.values())
        self._lock = threading.Lock()
        self._sticky_table = [
            version for version, weight in sorted(self.weights.items()) for _ in range(weight)
        ]

    def describe(self, fallback_version: str) -> dict[str, Any]:
        if self.weights:
            return {"policy": "weighted", "weights": dict(self.weights), "sticky": self.sticky}
        if self.default is not None:
            return {"policy": "pinned", "version": self.default}
        return {"policy": "highest", "version": fallback_version}

    def choose(self, *, tenant: str, fallback_version: str) -> str:
        if not self.weights:
            return self.default if self.default is not None else fallback_version
        if self.sticky == "tenant":
            bucket = zlib.crc32(tenant.encode()) % self._total
            return self._sticky_table[bucket]
        with self._lock:
            best = ""
            best_value = None
            for version, weight in self.weights.items():
                value = self._current[version] + weight
                self._current[version] = value
                if best_value is None or value > best_value:
                    best, best_value = version, value
            self._current[best] -= self._total
            return best


def read_routing(path: Path, versions: Iterable[str]) -> RoutingPolicy:
    known = set(versions)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read routing: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping with 'default:' or 'weights:'")
    unknown_keys = set(data) - {"default", "weights", "sticky"}
    if unknown_keys:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown_keys)}; allowed: default, weights, sticky")
    default = data.get("default")
    if default is not None:
        default = str(default)
        if default not in known:
            raise ConfigError(f"{path}: default version {default!r} does not exist (have {sorted(known)})")
    weights_raw = data.get("weights")
    weights: dict[str, int] | None = None
    if weights_raw is not None:
        if not isinstance(weights_raw, dict) or not weights_raw:
            raise ConfigError(f"{path}: weights must map versions to integers, e.g. {{'1': 90, '2': 10}}")
        weights = {}
        for version, weight in weights_raw.items():
            version = str(version)
            if version not in known:
                raise ConfigError(f"{path}: weights name version {version!r}, which does not exist")
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"{path}: weight of version {version!r} must be a non-negative integer")
            weights[version] = weight
        if sum(weights.values()) == 0:
            raise ConfigError(f"{path}: at least one weight must be positive")
        if default is not None:
            raise ConfigError(f"{path}: use either 'default' (pinned) or 'weights' (split), not both")
    sticky = data.get("sticky")
    if sticky not in (None, "tenant"):
        raise ConfigError(f"{path}: sticky must be 'tenant' (or left out)")
    return RoutingPolicy(default=default, weights=weights, sticky=sticky)
