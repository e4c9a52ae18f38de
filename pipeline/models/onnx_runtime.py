"""An onnxruntime session that stands where a torch module does: tensors in, tensors out."""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError

_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}


class OnnxModel:
    """A serialised ONNX graph run by onnxruntime. ``__call__(*tensors)`` feeds the graph's
    inputs in order and returns a tensor, or a tuple when the graph has several outputs;
    ``outputs`` names them."""

    def __init__(
        self, blob: bytes, device: str = "cpu", *, threads: int | None = None, name: str = ""
    ) -> None:
        import onnxruntime as ort

        from pipeline.device import onnx_providers

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:  # the CPUs the actor was given, as for torch (no oversubscription)
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(blob, opts, providers=onnx_providers(device))
        except Exception as e:  # onnxruntime raises its own exception types for bad graphs
            raise UserError(f"onnxruntime cannot load {name or 'the graph'}: {e}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        # onnxruntime refuses a dtype other than the graph's (int32 ids for int64, say).
        self.dtypes = [_NUMPY.get(i.type) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def __call__(self, *xs: Any) -> Any:
        import numpy as np
        import torch

        feeds = {}
        for n, dtype, x in zip(self.inputs, self.dtypes, xs):
            a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            feeds[n] = np.ascontiguousarray(a, dtype=dtype)
        got = [torch.from_numpy(np.asarray(a)) for a in self.session.run(None, feeds)]
        return got[0] if len(got) == 1 else tuple(got)

    def named(self, *xs: Any) -> dict[str, Any]:
        """The outputs by name."""
        out = self(*xs)
        return dict(zip(self.outputs, out if isinstance(out, tuple) else (out,)))

    def eval(self) -> OnnxModel:
        return self

    def to(self, *_: Any, **__: Any) -> OnnxModel:
        return self  # the session's providers already chose where it runs
