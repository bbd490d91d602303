"""Write the iris example model for the torch runtime, in both formats it loads.

    pip install 'inferd[torch]'   # or the dev extras
    python examples/train_iris_torch.py

writes ``examples/models/iris_torch/1/model.pt`` (TorchScript, ``torch.jit.save``) and
``examples/models/iris_torch/2/model.pt2`` (a ``torch.export`` program with a dynamic batch dimension,
``torch.export.save``). Both hold the StandardScaler + LogisticRegression pipeline that
``examples/train_iris.py`` trains, as a torch module: scale, one linear layer, argmax. They take float32
rows of 4 features and return the class index (int64), the same labels as iris versions 1 and 2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.pipeline import Pipeline
from train_iris import train  # the sibling script: the same deterministic training

MODELS_DIR = Path(__file__).resolve().parent / "models" / "iris_torch"
TORCHSCRIPT_PATH = MODELS_DIR / "1" / "model.pt"
EXPORTED_PATH = MODELS_DIR / "2" / "model.pt2"


class IrisNet(torch.nn.Module):
    """(x - mean) / scale → linear → argmax: what the fitted pipeline's predict() computes."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        scaler = pipeline.named_steps["scale"]
        classifier = pipeline.named_steps["classify"]
        self.register_buffer("mean", torch.tensor(scaler.mean_, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scaler.scale_, dtype=torch.float32))
        self.linear = torch.nn.Linear(classifier.coef_.shape[1], classifier.coef_.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(classifier.coef_, dtype=torch.float32))
            self.linear.bias.copy_(torch.tensor(classifier.intercept_, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.scale).argmax(dim=1)


def main() -> None:
    pipeline = train()
    module = IrisNet(pipeline).eval()
    example = torch.zeros(2, 4)

    TORCHSCRIPT_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(TORCHSCRIPT_PATH))

    EXPORTED_PATH.parent.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(EXPORTED_PATH))

    for path in (TORCHSCRIPT_PATH, EXPORTED_PATH):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
