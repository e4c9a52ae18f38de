"""Image validation and optional normalisation: bomb guard, EXIF orientation, RGB, resize, re-encode."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from pipeline.errors import Reason, SampleError
from pipeline.validate.phash import perceptual_hash

_PASSTHROUGH = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_SAVE = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_SWAPS = {5, 6, 7, 8}  # EXIF orientations that transpose width and height
_OBJ_REPR = re.compile(r"\s*<[^>]* at 0x[0-9a-f]+>")


@dataclass
class ImageResult:
    data: bytes
    ext: str
    width: int
    height: int
    phash: int | None = None  # 64-bit perceptual hash of the upright image (validate.phash)


# ImageOptions field -> the BuildConfig field it is read from.
_BUILD_FIELDS = {
    "resize": "resize",
    "resize_mode": "resize_mode",
    "upscale": "upscale",
    "image_format": "image_format",
    "quality": "image_quality",
    "resize_filter": "resize_filter",
    "min_size": "min_image_size",
    "max_size": "max_image_size",
    "max_pixels": "max_image_pixels",
}


@dataclass(frozen=True)
class ImageOptions:
    resize: int | None = None
    resize_mode: str = "keep_ratio"
    upscale: bool = False
    image_format: str = "keep"
    quality: int = 95
    resize_filter: str = "area"
    min_size: int = 8
    max_size: int = 16384
    max_pixels: int = 89_478_485

    @classmethod
    def from_config(cls, cfg: Any) -> ImageOptions:
        return cls(**{field: getattr(cfg, name) for field, name in _BUILD_FIELDS.items()})

    @property
    def reencode(self) -> bool:
        return self.image_format != "keep" or (self.resize is not None and self.resize_mode != "no")


def _clean(e: BaseException) -> str:
    """Exception text without object addresses, so reject messages are reproducible."""
    return _OBJ_REPR.sub("", str(e)) or type(e).__name__


def target_size(w: int, h: int, opts: ImageOptions) -> tuple[int, int]:
    """The size the image is resized to before any crop or border (img2dataset's semantics)."""
    size = opts.resize
    if size is None or opts.resize_mode == "no":
        return w, h
    # keep_ratio and center_crop fit the smallest side; keep_ratio_largest and border the largest.
    smallest = opts.resize_mode in ("keep_ratio", "center_crop")
    scale = size / (min(w, h) if smallest else max(w, h))
    if scale >= 1 and not opts.upscale:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_rgb(im: Any) -> Any:
    """Normalise any mode (CMYK, palette, 16-bit, alpha) to 8-bit RGB; alpha goes over white."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(im)
        if im.mode.startswith("I;16"):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr8 = ((arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def resample_filter(name: str, upscale: bool) -> Any:
    """Pillow filter for a name. "area" is a box average when shrinking (OpenCV's INTER_AREA,
    img2dataset's choice: alias-free and ~3x cheaper than Lanczos); enlarging uses Lanczos."""
    from PIL import Image

    if name == "area":
        return Image.Resampling.LANCZOS if upscale else Image.Resampling.BOX
    return {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


def _resize(im: Any, opts: ImageOptions) -> Any:
    from PIL import Image

    tw, th = target_size(im.width, im.height, opts)
    if (tw, th) != im.size:
        im = im.resize((tw, th), resample_filter(opts.resize_filter, tw > im.width))
    size = opts.resize or 0
    if opts.resize_mode == "center_crop" and size and (im.width > size or im.height > size):
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + min(size, im.width), top + min(size, im.height)))
    elif opts.resize_mode == "border" and size and (im.width, im.height) != (size, size):
        canvas = Image.new("RGB", (max(size, im.width), max(size, im.height)), (0, 0, 0))
        canvas.paste(im, ((canvas.width - im.width) // 2, (canvas.height - im.height) // 2))
        im = canvas
    return im


def encode(im: Any, ext: str, quality: int) -> bytes:
    buf = io.BytesIO()
    fmt = _SAVE[ext]
    if fmt == "JPEG":
        im.save(buf, fmt, quality=quality)
    elif fmt == "WEBP":
        im.save(buf, fmt, quality=quality, method=4)
    else:
        im.save(buf, fmt, compress_level=6)
    return buf.getvalue()


def validate_image(data: bytes, opts: ImageOptions) -> ImageResult:
    """Decode fully (catching truncation), check sizes, and normalise if asked.

    Without re-encoding options the original bytes pass through untouched (JPEG, PNG, WebP);
    other formats (GIF, BMP, TIFF) are stored as lossless PNG so every sample is .jpg/.png/.webp.

    Raises:
        SampleError: ``decode_error``, ``too_large`` (sides or bomb guard) or ``too_small``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Any = Image.open(io.BytesIO(data))
        w, h = im.size
        fmt = im.format or ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SampleError(Reason.TOO_LARGE, f"decompression bomb guard: {e}", "image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise SampleError(
            Reason.DECODE_ERROR, f"not a readable image: {_clean(e)}", "image"
        ) from None
    # The guard runs on the header's size, before a single pixel is decoded.
    if w * h > opts.max_pixels:
        msg = (
            f"{w}x{h} = {w * h} px > max_image_pixels {opts.max_pixels} (decompression bomb guard)"
        )
        raise SampleError(Reason.TOO_LARGE, msg, "image")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    dw, dh = (h, w) if orientation in _SWAPS else (w, h)
    if max(dw, dh) > opts.max_size:
        raise SampleError(
            Reason.TOO_LARGE, f"{dw}x{dh} has a side > max_image_size {opts.max_size}", "image"
        )
    if min(dw, dh) < opts.min_size:
        raise SampleError(
            Reason.TOO_SMALL, f"{dw}x{dh} has a side < min_image_size {opts.min_size}", "image"
        )
    passthrough = not opts.reencode and fmt in _PASSTHROUGH
    try:
        if not passthrough and fmt == "JPEG":
            tw, th = target_size(dw, dh, opts)
            # DCT-domain downscaling: decode at the smallest 1/2^k scale still >= the target.
            im.draft("RGB", (th, tw) if orientation in _SWAPS else (tw, th))
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise SampleError(
            Reason.DECODE_ERROR, f"image data is corrupt or truncated: {_clean(e)}", "image"
        ) from None
    if passthrough:
        upright = perceptual_hash(im if im.mode in ("RGB", "L") else to_rgb(im), orientation)
        return ImageResult(data, _PASSTHROUGH[fmt], dw, dh, upright)
    try:
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
        im = _resize(im, opts)
    except (OSError, ValueError) as e:
        raise SampleError(
            Reason.DECODE_ERROR, f"image cannot be normalised: {e}", "image"
        ) from None
    ext = "png" if opts.image_format == "keep" and fmt not in _PASSTHROUGH else opts.image_format
    if ext == "keep":
        ext = _PASSTHROUGH[fmt]
    return ImageResult(encode(im, ext, opts.quality), ext, im.width, im.height, perceptual_hash(im))
