"""Image preparation shared by the router's features (training and the device), the model backends and
the degradations: Pillow and numpy only (no torch), one path for every consumer.

Any image Pillow opens becomes 8-bit RGB the same way (``rgb``, ``load``):

- Modes, each mapped deliberately: ``RGB`` as it is; ``L`` replicated; ``1`` black / white; ``P``
  through its palette; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` by Pillow's conversion. Transparency
  (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, a ``P`` palette with transparency, an ``RGB`` or ``L``
  image with a tRNS colour key) is composited on white, as an image viewer shows it (dropping the alpha
  would show the colour hidden under it). ``I;16*`` (16-bit) is divided by 257; ``I`` (32-bit integers)
  by 257 when its maximum is above 255 (16-bit data, e.g. a 16-bit PGM), else taken as 0..255; ``F``
  (32-bit float) times 255 when its finite values all lie in [0, 1] (the convention of float TIFFs), else
  taken as 0..255, with NaN as 0. Values are rounded half up and clipped to 0..255.
- EXIF orientation is applied, so a 200x100 JPEG with orientation 6 is 100x200 everywhere.

Cost is bounded by the decoded image: nothing makes a full-resolution float or RGBA copy. Conversions
that need one run over horizontal bands of at most ``BAND_PIXELS`` pixels; the router's working image
(``load``) is reduced by a power of two k (box average, ``Image.reduce``) to a longer side in
[``WORK_SIDE``, 2 ``WORK_SIDE``) before any conversion, and a JPEG that we open ourselves is decoded at
1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (``Image.draft``), so a 144-Mpx JPEG never exists at full
size. ``max_pixels`` refuses an image above a pixel budget before it is decoded (``ImageTooLarge``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

WORK_SIDE = 1024  # the router's working image: longer side in [WORK_SIDE, 2 WORK_SIDE), or the image itself
BAND_PIXELS = 1 << 19  # conversions that copy run over bands of at most ~0.5 Mpx (2 MB as float32 grey)
DEFAULT_MAX_PIXELS = 64_000_000  # the device's pixel budget by default (a 64-Mpx RGBA PNG decodes to 256 MB)
WHITE = (255, 255, 255)
ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")
_PILLOW = ("1", "P", "CMYK", "YCbCr", "LAB", "HSV")  # Pillow's own conversion to RGB is the right one


class ImageTooLarge(ValueError):
    """An image above the pixel budget (``max_pixels``), refused before it is decoded."""


def _open(source) -> tuple[Image.Image, bool]:
    """(image, opened here): a PIL image as it is; a path (str or Path), bytes, a binary file object or a
    ``datasets`` image cell ({"bytes", "path"}) opened lazily (nothing decoded yet). Raises
    FileNotFoundError, PIL.UnidentifiedImageError (an OSError) and Pillow's DecompressionBombError."""
    if isinstance(source, Image.Image):
        return source, False
    if isinstance(source, dict):
        source = source["bytes"] if source.get("bytes") is not None else source.get("path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        source = str(source)
    elif not hasattr(source, "read"):
        raise TypeError(f"expected a PIL image, a path, bytes or a file object, got {type(source).__name__}")
    return Image.open(source), True


def check_budget(size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise ValueError for an image with no pixels and ImageTooLarge when width x height exceeds
    ``max_pixels`` (None: no budget)."""
    w, h = size
    if w == 0 or h == 0:
        raise ValueError(f"image has no pixels (size {size}); drop the sample or fix its file")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"image of {w}x{h} px = {w * h / 1e6:.1f} Mpx is above the pixel budget of "
                            f"{max_pixels / 1e6:.1f} Mpx (max_pixels); send a smaller image or raise the budget")


FULL_SIZE = 1 << 62  # a work_side no image reaches: ``load`` then keeps the full resolution


def reduction(size: tuple[int, int], work_side: int = WORK_SIDE) -> int:
    """The largest power of two k such that the longer side / k is still >= ``work_side`` (1 for an image
    whose longer side is below 2 ``work_side``)."""
    k = 1
    while max(size) // (2 * k) >= work_side:
        k *= 2
    return k


_LUT16 = ((np.arange(65536) + 128) // 257).astype(np.uint8)  # 16-bit level -> round(level / 257), half up


def _scaled_grey(im: Image.Image):
    """A band converter for "I;16*", "I" and "F" images (see the module docstring): band -> "L" (grey:
    reduced before it is made RGB)."""
    if im.mode.startswith("I;16"):  # a lookup table: one pass, no float copy
        return lambda band: Image.fromarray(_LUT16[np.asarray(band)], "L")
    if im.mode == "I":
        scale = 1.0 / 257.0 if im.getextrema()[1] > 255 else 1.0
    else:  # "F": finite min / max over bands (getextrema counts inf and is unreliable with NaN)
        lo, hi = math.inf, -math.inf
        for band in _bands(im, 1):
            a = np.asarray(band)
            a = a[np.isfinite(a)]
            if a.size:
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        scale = 255.0 if lo >= 0.0 and hi <= 1.0 else 1.0

    def convert(band: Image.Image) -> Image.Image:
        a = np.array(band, dtype=np.float32)  # the band's only float copy (writable): the rest is in place
        np.nan_to_num(a, copy=False, nan=0.0, posinf=255.0 / scale, neginf=0.0)
        a *= scale
        a += 0.5
        np.clip(a, 0.0, 255.0, out=a)
        return Image.fromarray(a.astype(np.uint8), "L")

    return convert


def _on_white(band: Image.Image) -> Image.Image:
    """A band with an alpha channel or a transparency key, composited on white -> "RGB"."""
    if band.mode == "La":
        band = band.convert("LA")
    rgba = band.convert("RGBA")  # applies a palette's or a colour key's transparency
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _converter(im: Image.Image):
    """The function mapping a band of ``im`` (same mode and info) to "RGB" or "L"; raises ValueError for a
    mode with no deliberate mapping."""
    if im.mode in _ALPHA or (im.mode in ("P", "RGB", "L") and "transparency" in im.info):
        return _on_white
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return _scaled_grey(im)
    if im.mode in _PILLOW or im.mode in ("RGB", "L"):
        return lambda band: band.convert("RGB")
    raise ValueError(f"image mode {im.mode!r} is not supported; convert the image to RGB first")


def _bands(im: Image.Image, k: int):
    """Crops of ``im``: horizontal bands of at most ~BAND_PIXELS pixels, each a multiple of k rows high
    (so that reducing band by band equals reducing the whole image)."""
    w, h = im.size
    rows = max(k, (BAND_PIXELS // max(w, 1)) // k * k)
    if rows >= h:
        yield im
        return
    for top in range(0, h, rows):
        yield im.crop((0, top, w, min(h, top + rows)))


def _rgb_reduced(im: Image.Image, k: int) -> Image.Image:
    """``im`` (loaded, any mode) as 8-bit RGB, box-reduced by the factor k; ``im`` itself when it is RGB
    with no transparency key and k is 1 (no copy)."""
    if im.mode in ("RGB", "L") and "transparency" not in im.info:  # per-pixel mapping: reduce first, in C
        out = im.reduce(k) if k > 1 else im
        return out if out.mode == "RGB" else out.convert("RGB")
    convert = _converter(im)

    def part(band: Image.Image) -> Image.Image:
        if k > 1 and im.mode.startswith("I;16"):  # average the 16-bit levels in C (as "I"), then scale
            return Image.fromarray(_LUT16[np.asarray(band.convert("I").reduce(k))], "L").convert("RGB")
        if convert is _on_white and k > 1:  # reduce first: Pillow averages RGBA premultiplied by alpha, and
            if band.mode not in ("RGBA", "LA"):  # compositing on white is linear in (premultiplied colour,
                band = band.convert("LA" if band.mode == "La" else "RGBA")  # alpha): the same result, 1/k^2 the work
            return _on_white(band.reduce(k))
        out = convert(band)
        out = out.reduce(k) if k > 1 else out
        return out if out.mode == "RGB" else out.convert("RGB")

    w, h = im.size
    if w * h <= BAND_PIXELS:
        return part(im)
    out = Image.new("RGB", (-(-w // k), -(-h // k)))
    top = 0
    for band in _bands(im, k):
        out.paste(part(band), (0, top // k))
        top += band.height
    return out


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` turned as EXIF ``orientation`` says, with the orientation metadata dropped from the result
    (as ``ImageOps.exif_transpose`` does) so that no later step turns it again."""
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return im
    out = im.transpose(method)
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif"):
        out.info.pop(key, None)
    return out


def load(source, max_pixels: int | None = None, work_side: int = WORK_SIDE) -> tuple[Image.Image, tuple[int, int]]:
    """(working image, full size) of an image: the working image is 8-bit RGB (mapped as the module
    docstring says), EXIF-oriented, box-reduced by ``reduction(size, work_side)``; the full size (width,
    height) in px is the oriented size of the original.

    ``source``: a PIL image (used as it is, never modified: no draft decoding) or a path, bytes, file
    object or ``datasets`` image cell (opened here; a JPEG is then decoded at reduced scale, ``draft``).
    The working image is ``source`` itself for an RGB image with no orientation tag, no transparency key
    and a longer side below 2 ``work_side``: no copy (this runs per query on the device).

    Peak memory: the decoded image (at draft scale for a JPEG) plus O(BAND_PIXELS); time: the decode
    plus one pass. Raises ValueError for an image with no pixels or an unsupported mode, ImageTooLarge
    above ``max_pixels`` (None: no budget; checked before decoding), and Pillow's errors for a file it
    cannot read (OSError, DecompressionBombError)."""
    im, opened = _open(source)
    try:
        w, h = im.size
        check_budget(im.size, max_pixels)
        k = reduction(im.size, work_side)
        if opened and k > 1 and im.format in ("JPEG", "MPO"):
            im.draft(None, (max(1, w // k), max(1, h // k)))  # libjpeg picks 1/8, 1/4, 1/2 or 1
            k //= next(s for s in (8, 4, 2, 1) if im.size == (-(-w // s), -(-h // s)))
        im.load()
        orientation = im.getexif().get(ORIENTATION, 1)
        out = _orient(_rgb_reduced(im, k), orientation)
    except BaseException:
        if opened:
            im.close()
        raise
    if opened and out is not im:
        im.close()
    return out, ((h, w) if orientation in (5, 6, 7, 8) else (w, h))


def rgb(source, max_pixels: int | None = None) -> Image.Image:
    """``source`` (as for ``load``) at full resolution as 8-bit RGB, EXIF-oriented, modes mapped as the
    module docstring says; ``source`` itself when nothing needs changing. Raises as ``load``."""
    return load(source, max_pixels, work_side=FULL_SIZE)[0]


def prepare(image, min_side: int = 0, max_aspect: float | None = None) -> Image.Image:
    """``image`` as a model receives it: ``rgb`` (8-bit RGB, EXIF orientation applied, transparency on
    white), then, for processors that need it, padded (centred on white, never stretched) so that its
    longer side is at most ``max_aspect`` times its shorter side, and enlarged (bicubic, aspect ratio
    kept) so that its shorter side is at least ``min_side`` px. The aspect ratio of the result is at
    most ``max_aspect`` (Qwen2-VL's processor refuses one above 200), so a 1x4000 strip becomes
    28x5600 for min_side 28 and max_aspect 200, not 28x112000.
    Raises ValueError for an image with no pixels."""
    image = rgb(image)
    w, h = image.size
    if max_aspect and max(w, h) > max_aspect * min(w, h):
        image = _pad(image, math.ceil(max(w, h) / max_aspect))
        w, h = image.size
    short = min(w, h)
    if min_side and short < min_side:
        f = min_side / short
        image = image.resize((max(min_side, math.ceil(w * f)), max(min_side, math.ceil(h * f))),
                             Image.Resampling.BICUBIC)
        w, h = image.size
        if max_aspect and max(w, h) > max_aspect * min(w, h):  # rounding: a pixel or two more of padding
            image = _pad(image, math.ceil(max(w, h) / max_aspect))
    return image


def _pad(image: Image.Image, short: int) -> Image.Image:
    """``image`` centred on white with its shorter side padded to ``short`` px (longer side unchanged)."""
    w, h = image.size
    size = (short, h) if w <= h else (w, short)
    out = Image.new("RGB", size, WHITE)
    out.paste(image, ((size[0] - w) // 2, (size[1] - h) // 2))
    return out


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an image (what a network backend sends), converted with ``rgb``."""
    buf = io.BytesIO()
    rgb(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
