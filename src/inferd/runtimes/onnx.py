"""The onnx runtime: onnxruntime session; CUDA provider only where present."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferd.core.errors import ConfigError, MissingExtraError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxModel:
    def __init__(self, session: Any) -> None:
        import numpy as np

        self._np = np
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self.providers: list[str] = list(session.get_providers())

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        array = self._np.asarray(batch, dtype=self._np.float32)
        first_output = self._session.run(None, {self._input_name: array})[0]
        return list(first_output.tolist())


def load_onnx_model(*, artifact: Path, device: str, cpu_fallback: bool) -> OnnxModel:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("onnx", "onnx", "onnxruntime") from exc
    if not artifact.is_file():
        raise ConfigError(f"artifact {artifact} does not exist")
    available = onnxruntime.get_available_providers()
    if device == "cpu":
        providers = [CPU]
    elif CUDA in available:
        providers = [CUDA, CPU]
    elif cpu_fallback:
        providers = [CPU]
    else:
        raise ConfigError(
            f"device {device!r}: onnxruntime offers no {CUDA} here (available: {', '.join(available)}); "
            "install onnxruntime-gpu on a machine with a GPU, or set 'cpu_fallback: true' in model.yaml "
            "to run this model on the CPU provider"
        )
    options = onnxruntime.SessionOptions()
    # The executor already runs several calls in parallel; one intra-op thread each avoids oversubscription.
    options.intra_op_num_threads = 1
    return OnnxModel(onnxruntime.InferenceSession(str(artifact), sess_options=options, providers=providers))
