"""Helpers for the runtime and pipeline tests: a runtime without a model folder, the iris artifacts
and rows, and a registry over a test repository."""

from __future__ import annotations

from pathlib import Path

from inferd.core.registry import ModelRegistry
from inferd.core.runtime import Runtime
from inferd.runtimes.factory import PipelineFactory

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"
IRIS_ONNX = EXAMPLES / "iris" / "1" / "model.onnx"
IRIS_JOBLIB = EXAMPLES / "iris" / "2" / "model.joblib"
IRIS_TORCHSCRIPT = EXAMPLES / "iris_torch" / "1" / "model.pt"
IRIS_EXPORTED = EXAMPLES / "iris_torch" / "2" / "model.pt2"

# First rows of each iris class (and a few more) with their species.
IRIS_ROWS = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([4.9, 3.0, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.4, 3.2, 4.5, 1.5], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
    ([5.8, 2.7, 5.1, 1.9], 2),
]
ROWS = [row for row, _ in IRIS_ROWS]
LABELS = [label for _, label in IRIS_ROWS]
# 200 rows spread over the feature ranges, to compare runtimes beyond the known rows.
GRID = [
    [4.0 + (i % 40) * 0.1, 2.0 + (i % 23) * 0.1, 1.0 + (i % 59) * 0.1, 0.1 + (i % 25) * 0.1]
    for i in range(200)
]


def scanned(root: Path, *, load: bool = True, factory: PipelineFactory | None = None) -> ModelRegistry:
    """A registry over ``root`` (cpu only), its versions loaded unless ``load`` is false."""
    registry = ModelRegistry(loader=factory or PipelineFactory(), devices=["cpu"])
    registry.scan(root)
    if load:
        registry.load_at_start()
    return registry


class FakeRuntime(Runtime):
    """Subclasses implement predict(batch, parameters) and keep their own state; nothing to load."""

    def __init__(self) -> None:  # no RuntimeContext: these never come from a model repository
        pass

    def load(self) -> None:
        pass
