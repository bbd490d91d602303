"""The model runtime abstraction: load artifacts from a version folder, predict on a list of items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ModelRuntime(Protocol):
    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """Same length and order as ``batch``: a list of items, or (V2 tensor requests to a model
        without preprocessor and validator) one numpy array whose rows are the items."""
