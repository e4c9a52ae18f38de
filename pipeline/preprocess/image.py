"""ImagePreprocess: EXIF-aware decode (Pillow on CPU, nvJPEG on GPU), torchvision v2 transforms."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import SampleError, decode_failure, rejecting
from pipeline.faults import maybe_fail
from pipeline.stage import Batch, Resources, Stage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreset:
    """What an encoder expects: crop size, the resize before the crop, and normalisation."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGE_PRESETS: dict[str, ImagePreset] = {
    "imagenet": ImagePreset(224, 256, IMAGENET_MEAN, IMAGENET_STD),
    # EfficientNet-Lite was trained on (x - 127) / 128.
    "efficientnet_lite": ImagePreset(224, 256, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "clip": ImagePreset(224, 224, (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)),
}


def build_transform(preset: ImagePreset, augment: bool, normalize: bool = True) -> Any:
    """The torchvision v2 pipeline: PIL or uint8 tensor in, normalised float32 CHW out, or
    uint8 CHW (resized and cropped only) with ``normalize=False``."""
    import torch
    import torchvision.transforms.v2 as T

    if augment:
        geometry = [
            T.RandomResizedCrop(preset.size, scale=(0.5, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.05),
        ]
    else:
        geometry = [T.Resize(preset.resize, antialias=True), T.CenterCrop(preset.size)]
    tail = [T.ToDtype(torch.float32, scale=True), T.Normalize(preset.mean, preset.std)]
    return T.Compose([T.ToImage(), *geometry, *(tail if normalize else [])])


def normalize_uint8(x: Any, preset: ImagePreset | str) -> Any:
    """uint8 [N,3,S,S] tensor -> normalised float32, on x's device; equal to what the float
    path of ``ImagePreprocess`` computes (resizing happens on uint8 in both)."""
    import torch

    p = IMAGE_PRESETS[preset] if isinstance(preset, str) else preset
    mean = torch.tensor(p.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def decode_pil(data: bytes, min_side: int) -> Any:
    """Decode with Pillow, EXIF-aware, to RGB. For JPEG, ``draft`` lets libjpeg decode at a
    1/2^k scale whose smaller side still covers ``min_side``: exact enough for a resize that
    shrinks anyway, and several times faster on large photos."""
    from PIL import Image, ImageOps

    try:
        im: Any = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            w, h = im.size
            scale = min_side / min(w, h)
            if scale < 0.5:
                im.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
        im.load()  # decode here, so that a truncated file fails here and not in a transform
        im = ImageOps.exif_transpose(im)
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:  # Pillow's many error types for bytes it cannot read
        raise decode_failure("image", e) from None


class ImagePreprocess(Stage):
    """``image`` (encoded bytes or None) -> ``pixel_values`` [N,3,S,S] float32, ``image_mask``.

    ``dtype='uint8'`` stops before normalising: a quarter of the bytes to move between Ray
    workers and onto a GPU, where ``normalize_uint8`` finishes the job next to the model.

    A missing image is a zero tensor with mask False. An image that fails to decode is the
    same, plus ``image_error`` (a reject reason for the run's rejects table); the batch goes on.
    ``device='cuda'`` decodes JPEGs with nvJPEG on the GPU and transforms there; other
    formats, and machines without a GPU, take the Pillow path.
    """

    name = "image_preprocess"
    reads: ClassVar[tuple[str, ...]] = ("image",)
    adds: ClassVar[tuple[str, ...]] = ("pixel_values", "image_mask", "image_error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self,
        preset: str = "imagenet",
        *,
        augment: bool = False,
        device: str = "cpu",
        num_cpus: float = 1.0,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if preset not in IMAGE_PRESETS:
            raise ValueError(f"unknown image preset {preset!r}; known: {sorted(IMAGE_PRESETS)}")
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"dtype must be 'float32' or 'uint8', not {dtype!r}")
        self.preset = IMAGE_PRESETS[preset]
        self.dtype = dtype
        self.augment = augment
        self.device = device
        self.num_cpus = num_cpus

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.num_cpus, num_gpus=1.0 if self.device == "cuda" else 0.0)

    def setup(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            self.device = "cpu"  # fall back cleanly: same outputs, computed on the CPU
        self.transform = build_transform(self.preset, self.augment, self.dtype == "float32")

    def __call__(self, batch: Batch) -> Batch:
        x, mask, errors = self.tensors(list(batch["image"]))
        batch["pixel_values"], batch["image_mask"], batch["image_error"] = (
            x.cpu().numpy(),
            mask,
            errors,
        )
        return batch

    def tensors(self, images: list[Any]) -> tuple[Any, np.ndarray, list[str | None]]:
        """Decode and transform into one [N,3,S,S] tensor on ``self.device``: an encoder in
        the same process takes it from there without a round trip through host memory."""
        import torch

        self.ensure_setup()
        n, s = len(images), self.preset.size
        dtype = torch.float32 if self.dtype == "float32" else torch.uint8
        out = torch.zeros((n, 3, s, s), dtype=dtype, device=self.device)
        mask = np.zeros(n, dtype=bool)
        errors: list[str | None] = [None] * n
        gpu_done = self._decode_gpu(images, out, mask) if self.device == "cuda" else set()
        for i, data in enumerate(images):
            if i in gpu_done or data is None or len(data) == 0:
                continue
            try:
                im = decode_pil(bytes(data), self.preset.resize)
            except SampleError as e:  # this sample's reject; our transform's errors are bugs
                errors[i] = rejecting(e).message
                continue
            maybe_fail("image_transform")  # the error-contract tests: a bug in our transform
            out[i] = self.transform(im).to(self.device)
            mask[i] = True
        return out, mask, errors

    def _decode_gpu(self, images: list[Any], out: Any, mask: np.ndarray) -> set[int]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        idx = [i for i, d in enumerate(images) if d is not None and bytes(d[:3]) == b"\xff\xd8\xff"]
        if not idx:
            return set()
        raw = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in idx]
        try:
            decoded = decode_jpeg(
                raw, mode=ImageReadMode.RGB, device="cuda", apply_exif_orientation=True
            )
        except RuntimeError:
            return set()  # a corrupt JPEG in the batch: let Pillow sort them out one by one
        for i, img in zip(idx, decoded):
            out[i] = self.transform(img)  # resize and crop on the GPU, per image (sizes differ)
            mask[i] = True
        return set(idx)
