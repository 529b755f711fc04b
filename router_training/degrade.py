"""Seeded image degradations that mimic edge-camera conditions (blur, low light, low resolution, noise,
compression, colour casts). Used to build the router splits and to augment the cloud reference model.

Severity is a float in [0, 1]; each kind maps it to a physical parameter documented in ``apply``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from .core import images

KINDS = ("clean", "blur", "low_light", "downscale", "noise", "jpeg", "color_cast")


def apply(image: Image.Image, kind: str, severity: float, rng: np.random.Generator) -> Image.Image:
    """Degrade an image, first made RGB as every consumer sees it (``images.rgb``: any mode, transparency
    on white, 16-bit and float scaled, EXIF orientation applied).

    Args: ``kind`` one of KINDS; ``severity`` in [0, 1]; ``rng`` for the noise draw.
    Returns a new RGB image; ``downscale`` returns a smaller image (side scaled by 0.45 - 0.3 * severity),
    every other kind keeps the size. Parameters at severity s: blur, Gaussian radius 0.8 + 2.2 s px
    (at 64 px); low_light, intensities times 0.55 - 0.35 s; noise, Gaussian sigma 15 + 50 s (8-bit
    levels); jpeg, quality 30 - 25 s; color_cast, red x (1 + 0.35 s), blue x (1 - 0.35 s).
    Raises ValueError for an unknown kind or a severity outside [0, 1].
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {KINDS}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    image = images.rgb(image)
    scale = image.width / 64.0
    if kind == "clean":
        return image.copy()
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur((0.8 + 2.2 * severity) * scale))
    if kind == "downscale":
        f = 0.45 - 0.3 * severity
        size = (max(4, round(image.width * f)), max(4, round(image.height * f)))
        return image.resize(size, Image.Resampling.BILINEAR)
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=max(1, round(30 - 25 * severity)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    x = np.asarray(image, dtype=np.float32)
    if kind == "low_light":
        x = x * (0.55 - 0.35 * severity)
    elif kind == "noise":
        x = x + rng.normal(0.0, 15.0 + 50.0 * severity, size=x.shape)
    else:  # color_cast
        x = x * np.array([1 + 0.35 * severity, 1.0, 1 - 0.35 * severity], dtype=np.float32)
    return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))


def draw(rng: np.random.Generator, weights: dict[str, float], severity_range=(0.2, 1.0)) -> tuple[str, float]:
    """Draw (kind, severity) with probabilities proportional to ``weights`` (kind -> weight >= 0);
    severity is uniform in ``severity_range`` (0.0 for clean). Raises ValueError on unknown kinds."""
    unknown = set(weights) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown degradations {sorted(unknown)}; expected some of {KINDS}")
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
    sev = 0.0 if kind == "clean" else float(rng.uniform(*severity_range))
    return kind, round(sev, 3)
