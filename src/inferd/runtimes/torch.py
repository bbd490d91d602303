"""The torch runtime: a TorchScript archive (``.pt``, ``torch.jit.load``) or a ``torch.export``
program (``.pt2``, ``torch.export.load``), called once per batch under ``torch.inference_mode()``;
CUDA on a non-CPU device where torch sees one."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from inferd.core.errors import ConfigError, MissingExtraError
from inferd.core.runtime import ArtifactOptions, Batch, Runtime
from inferd.core.tensors import TensorDeclarations, TensorSpec, datatype_of

logger = logging.getLogger("inferd.runtimes.torch")


class TorchDtype(StrEnum):
    """The dtype a batch becomes before it reaches the module (numpy and torch share these names)."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"
    FLOAT16 = "float16"
    INT64 = "int64"
    INT32 = "int32"
    UINT8 = "uint8"
    BOOL = "bool"


class TorchOptions(ArtifactOptions):
    dtype: TorchDtype = TorchDtype.FLOAT32


class ArtifactKind(StrEnum):
    TORCHSCRIPT = ".pt"
    EXPORTED = ".pt2"


def choose_device(torch: Any, device: str, *, cpu_fallback: bool) -> str:
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if cpu_fallback:
        logger.warning("device %r: torch sees no CUDA device; running on the CPU (cpu_fallback)", device)
        return "cpu"
    built = torch.version.cuda
    raise ConfigError(
        f"device {device!r}: torch {torch.__version__} sees no CUDA device "
        f"({'built for CUDA ' + built if built else 'a CPU-only build'}); install a CUDA build of torch "
        "on a machine with a GPU, or set 'cpu_fallback: true' in model.yaml to run this model on the CPU"
    )


class TorchRuntime(Runtime):
    Options = TorchOptions

    def load(self) -> None:
        try:
            import numpy
            import torch
        except ImportError as exc:
            raise MissingExtraError("torch", "torch", "torch") from exc
        options = self.context.options
        assert isinstance(options, TorchOptions)
        artifact = self.context.file(options.artifact)
        try:
            kind = ArtifactKind(artifact.suffix)
        except ValueError:
            raise ConfigError(
                f"artifact: {artifact.name} must end in .pt (a TorchScript archive, torch.jit.save) "
                "or .pt2 (a torch.export program, torch.export.save)"
            ) from None
        spec = self.context.spec
        device = choose_device(torch, spec.device, cpu_fallback=spec.cpu_fallback)
        module: Any
        self._declarations: TensorDeclarations | None = None
        if kind is ArtifactKind.TORCHSCRIPT:
            module = torch.jit.load(str(artifact), map_location=device)
            module.eval()
        else:
            program = torch.export.load(str(artifact))
            if device != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            module = program.module()  # exported in eval mode; the graph keeps it
            self._declarations = exported_declarations(numpy, program)
        self._torch = torch
        self._np_dtype = numpy.dtype(options.dtype.value)
        self._np = numpy
        self.device = device
        self.module = module

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        torch = self._torch
        array = self._np.asarray(batch, dtype=self._np_dtype)
        if not array.flags.writeable:  # e.g. a view of a request buffer; torch warns on those
            array = array.copy()
        with torch.inference_mode():
            output = self.module(torch.from_numpy(array).to(self.device))
        return rows_of(torch, output)

    def tensor_declarations(self) -> TensorDeclarations | None:
        return self._declarations  # a TorchScript archive does not record its tensors

    def unload(self) -> None:
        del self.module
        if self.device != "cpu":
            self._torch.cuda.empty_cache()


def rows_of(torch: Any, output: Any) -> list[Any]:
    """One JSON value per batch row: a tensor's rows; for a tuple of tensors a list per row; for a
    mapping of tensors a mapping per row."""
    if isinstance(output, torch.Tensor):
        return list(output.tolist())
    if isinstance(output, Mapping):
        columns = {key: rows_of(torch, value) for key, value in output.items()}
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    if isinstance(output, tuple | list):
        return [list(row) for row in zip(*(rows_of(torch, value) for value in output), strict=True)]
    raise TypeError(
        f"the module returned {type(output).__name__}; expected a tensor, a tuple or a dict of tensors"
    )


def exported_declarations(numpy: Any, program: Any) -> TensorDeclarations | None:
    """A torch.export program's user inputs and outputs, symbolic sizes as -1; None where the program
    has values that are not tensors of a V2 datatype."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    [output_node] = [node for node in program.graph.nodes if node.op == "output"]
    returned = {getattr(node, "name", None): node for node in output_node.args[0]}

    def spec(name: str, node: Any) -> TensorSpec:
        value = node.meta["val"]
        dtype = str(value.dtype).removeprefix("torch.")
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
        return TensorSpec(name=name, datatype=datatype_of(numpy.empty(0, dtype=dtype)), shape=shape)

    signature = program.graph_signature
    try:
        return TensorDeclarations(
            inputs=tuple(spec(name, placeholders[name]) for name in signature.user_inputs),
            outputs=tuple(
                spec("output" if len(signature.user_outputs) == 1 else name, returned[name])
                for name in signature.user_outputs
            ),
        )
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
