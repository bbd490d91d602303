"""The model runtime abstraction: load artifacts from a version folder, predict on a list of items."""

from __future__ import annotations

from typing import Any, Protocol


class ModelRuntime(Protocol):
    def predict(self, batch: list[Any]) -> list[Any]:
        """Same length and order as ``batch``."""
