"""Device and precision choices: GPUs from the cluster, where images decode, autocast dtype."""

from __future__ import annotations

import contextlib
from typing import Any


def cluster_has_gpu() -> bool:
    """Whether the Ray cluster has GPUs (not the driver: a CPU head may drive GPU workers)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def actor_gpus(device: str) -> float:
    """GPUs per encoder actor: one when the cluster has them and the config allows it."""
    return 1.0 if (device != "cpu" and cluster_has_gpu()) else 0.0


def decode_on_gpu(image_decode: str, has_image: bool, gpus: float) -> bool:
    """Decode JPEGs in the encoder actor (nvJPEG, no host round trip) rather than on CPUs."""
    return has_image and (image_decode == "gpu" or (image_decode == "auto" and gpus > 0))


def local_device(device: str) -> str:
    """``cuda`` when asked for (or ``auto``) and this process sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if (device != "cpu" and torch.cuda.is_available()) else "cpu"


def amp_dtype(amp: str, device: Any) -> Any:
    """The autocast dtype: bf16 by default on CUDA (no loss scaling needed), none on CPU."""
    import torch

    if amp == "off" or str(device).split(":")[0] != "cuda":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(amp: str, device: Any) -> Any:
    """A context that runs the forward pass in ``amp_dtype``, or a no-op."""
    import torch

    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def onnx_providers(device: str, amp: str = "auto") -> list[Any]:
    """onnxruntime's execution providers for ``device``, best first: TensorRT (fp16 unless
    ``amp`` is off) and CUDA when that build of onnxruntime has them, then the CPU."""
    import onnxruntime as ort

    found = set(ort.get_available_providers())
    chosen: list[Any] = []
    if device == "cuda":
        if "TensorrtExecutionProvider" in found:
            chosen.append(("TensorrtExecutionProvider", {"trt_fp16_enable": amp != "off"}))
        if "CUDAExecutionProvider" in found:
            chosen.append("CUDAExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]
