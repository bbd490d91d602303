"""Echo model: the output for each item is the item itself."""

from __future__ import annotations

from typing import Any


class Echo:
    """Returns its inputs unchanged, in order."""

    def load(self, path: str) -> None:
        """Nothing to load; present so the example shows the full model interface."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)
