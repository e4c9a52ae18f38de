"""The 64-bit perceptual hash (pHash, via ``imagehash``) stored in the index for near-dup search."""

from __future__ import annotations

from typing import Any

# pHash looks at a 32x32 grey thumbnail. Shrinking by an integer box factor first (to >= 64
# px) costs ~0.8 ms for a 640x480 photo against ~3.9 ms for imagehash's Lanczos from full
# size, and leaves the hash of resized copies unchanged (docs/build.md, measured).
_THUMB = 64
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}  # fmt: skip


def perceptual_hash(im: Any, orientation: int = 1) -> int:
    """pHash of a decoded PIL image as an unsigned 64-bit int (the bits of ``imagehash.phash``,
    first bit highest), taken upright: ``orientation`` is the EXIF tag still to apply."""
    import imagehash
    from PIL import Image

    factor = max(1, min(im.size) // _THUMB)
    small = im.reduce(factor) if factor > 1 else im
    if orientation in _UPRIGHT:
        small = small.transpose(getattr(Image.Transpose, _UPRIGHT[orientation]))
    bits = imagehash.phash(small).hash.ravel()
    return int("".join("1" if b else "0" for b in bits), 2)
