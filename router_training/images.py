"""Image preparation shared by features, local backends and network backends (pillow only).

Every image is oriented once (EXIF) and, when a consumer has a minimum side, enlarged keeping its
aspect ratio, so a 200x100 JPEG with EXIF orientation 6 is 100x200 everywhere and a 26x28 crop never
reaches a processor whose patches are 28 px.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageOps


def prepare(image: Image.Image, min_side: int = 0) -> Image.Image:
    """RGB copy of ``image`` with EXIF orientation applied and, if its shorter side is below
    ``min_side`` px, enlarged (bicubic) so the shorter side equals ``min_side``, aspect ratio kept.
    Raises ValueError for an image with no pixels."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has no pixels (size {image.size}); drop the sample or fix its file")
    image = ImageOps.exif_transpose(image).convert("RGB")
    short = min(image.size)
    if min_side and short < min_side:
        f = min_side / short
        image = image.resize((max(min_side, math.ceil(image.width * f)), max(min_side, math.ceil(image.height * f))),
                             Image.Resampling.BICUBIC)
    return image


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (what a network backend sends)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
