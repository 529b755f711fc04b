"""Hand-crafted image and question features for edge/cloud VLM routing.

One implementation shared by training and the on-device router runtime, so it
imports only numpy, Pillow and the standard library (no torch, no scipy).

Column order is fixed by ``FEATURE_NAMES = IMAGE_FEATURES + TEXT_FEATURES``;
every function returns a 1-D ``float32`` vector in that order.  Grey levels are
Pillow's ITU-R 601 luma (``Image.convert("L")``, 0..255).  3x3 filters are
applied in "valid" mode (no padding), so images smaller than 3x3 get 0 for the
filter-based features.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, ImageOps

IMAGE_FEATURES: tuple[str, ...] = (
    "log_laplacian_var",  # log1p(var of 4-neighbour Laplacian), grey 0..255
    "gray_entropy_bits",  # Shannon entropy of 256-bin grey histogram, 0..8 bits
    "edge_density",       # fraction of pixels with Sobel magnitude > EDGE_THRESHOLD
    "jpeg_bpp",           # JPEG (quality 75) size in bits per pixel
    "brightness",         # mean grey / 255, 0..1
    "rms_contrast",       # std grey / 255, 0..0.5
    "colorfulness",       # Hasler & Suesstrunk M, RGB 0..255 units
    "noise_sigma",        # Immerkaer noise std, grey levels
    "mean_saturation",    # mean HSV saturation / 255, 0..1
    "width_px",
    "height_px",
    "log2_pixels",        # log2(width * height)
)

QUESTION_TYPES: tuple[str, ...] = (
    "yes/no", "count", "color", "what", "which", "who",
    "where", "when", "why", "how", "other",
)

_CUES: dict[str, tuple[str, ...]] = {
    # Single words match whole tokens; entries with a space match word sequences.
    "negation": ("not", "no", "never", "none", "nothing", "nobody", "nor", "without"),
    "counting": ("how many", "number of", "count", "counts", "counting", "total", "amount"),
    "reading": ("text", "texts", "written", "write", "writing", "say", "says", "said",
                "read", "reading", "word", "words", "letter", "letters", "number on",
                "numbers on", "sign", "label", "logo", "spell", "spelled", "digits"),
    "spatial": ("left", "right", "above", "below", "behind", "next to", "top", "bottom",
                "under", "beneath", "underneath", "beside", "between", "in front of",
                "near", "middle", "center", "centre", "corner", "inside", "outside"),
    "comparison": ("more", "less", "fewer", "same", "bigger", "smaller", "larger",
                   "than", "taller", "shorter", "higher", "lower", "most", "least",
                   "different", "equal", "compared"),
    "color": ("color", "colour", "colors", "colours", "colored", "coloured", "red",
              "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
              "white", "gray", "grey", "silver", "gold", "golden", "beige", "tan",
              "cyan", "magenta", "violet", "maroon", "navy", "teal", "turquoise"),
    "reasoning": ("why", "because", "how come", "explain", "explains", "reason",
                  "reasons", "purpose", "cause", "what makes"),
}

TEXT_FEATURES: tuple[str, ...] = (
    ("word_count", "char_count")
    + tuple("qtype_" + t.replace("/", "_") for t in QUESTION_TYPES)
    + tuple("cue_" + c for c in _CUES)
)
FEATURE_NAMES: tuple[str, ...] = IMAGE_FEATURES + TEXT_FEATURES

EDGE_THRESHOLD = 100.0  # Sobel magnitude on grey 0..255; = a 25-grey-level step edge
JPEG_QUALITY = 75
ANALYSIS_MAX_SIDE = 128  # pixel statistics on at most 128 px (easy-VQA's 64 px images are analysed whole)

_AUX = frozenset(
    "is are was were am do does did can could will would should shall has have had "
    "may might must isn't aren't wasn't weren't don't doesn't didn't can't couldn't "
    "won't wouldn't shouldn't hasn't haven't hadn't".split())
_WH = {"what": "what", "which": "which", "who": "who", "whom": "who", "whose": "who",
       "where": "where", "when": "when", "why": "why", "how": "how"}
_COLOR_WORDS = frozenset(("color", "colour", "colors", "colours"))
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, EXIF orientation applied (as ``images.prepare`` does for the models, so
    features see the image the models see; a no-op on an already oriented image).  16-bit modes
    ("I;16*") are scaled by 1/257 to 0..255 (Pillow's own conversion would clip them); "I"/"F" are
    clipped by Pillow."""
    if image.width * image.height == 0:
        raise ValueError(f"image has no pixels (size {image.size})")
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        a = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.round(a).astype(np.uint8))  # 2-D uint8 -> "L"
    return image if image.mode == "RGB" else image.convert("RGB")


def _conv_valid(a: np.ndarray, row: tuple, col: tuple) -> np.ndarray:
    """Separable 3x3 correlation row^T (x) col over a (H, W) array, 'valid' mode -> (H-2, W-2)."""
    v = row[0] * a[:-2] + row[1] * a[1:-1] + row[2] * a[2:]
    return col[0] * v[:, :-2] + col[1] * v[:, 1:-1] + col[2] * v[:, 2:]


def image_features(image: Image.Image) -> np.ndarray:
    """Image features, float32 shape (len(IMAGE_FEATURES),), order IMAGE_FEATURES.

    - log_laplacian_var: log1p(var(L)), L = grey * [[0,1,0],[1,-4,1],[0,1,0]]
      (variance of Laplacian focus measure; Pech-Pacheco et al., ICPR 2000).
    - gray_entropy_bits: -sum p log2 p over the 256-bin grey histogram (Shannon 1948).
    - edge_density: fraction of valid pixels with Sobel |grad| > EDGE_THRESHOLD
      (Sobel & Feldman 1968 operator).
    - jpeg_bpp: len(JPEG q=75 bytes) * 8 / (W*H), in memory; includes ~600 B of
      header, so it is inflated for tiny images (compression complexity, Yu &
      Winkler, QoMEX 2013).
    - brightness, rms_contrast: mean and std of grey / 255 (RMS contrast, Peli 1990).
    - colorfulness: sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2), rg = R-G,
      yb = (R+G)/2 - B on 0..255 (Hasler & Suesstrunk, SPIE 2003).
    - noise_sigma: sqrt(pi/2) / (6 (W-2)(H-2)) * sum |grey * N|,
      N = [[1,-2,1],[-2,4,-2],[1,-2,1]] (Immerkaer, CVIU 1996); grey levels.
    - mean_saturation: mean S of Pillow HSV / 255.
    - width_px, height_px, log2_pixels: size in pixels and log2(W*H).

    Size features describe the full image; every pixel statistic is computed on a copy whose longer
    side is at most ANALYSIS_MAX_SIDE px (box filter), so the cost is bounded (about 1 ms) whatever the
    camera resolution. Raises ValueError for a 0-pixel image.
    """
    rgb = _to_rgb(image)
    full_w, full_h = rgb.size
    if max(full_w, full_h) > ANALYSIS_MAX_SIDE:
        f = ANALYSIS_MAX_SIDE / max(full_w, full_h)
        rgb = rgb.resize((max(1, round(full_w * f)), max(1, round(full_h * f))), Image.Resampling.BOX)
    w, h = rgb.size
    n = w * h
    grey_u8 = np.asarray(rgb.convert("L"))
    g = grey_u8.astype(np.float32)

    hist = np.bincount(grey_u8.ravel(), minlength=256)
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0

    lap_var = edge = noise = 0.0
    if h >= 3 and w >= 3:
        lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
               - 4.0 * g[1:-1, 1:-1])
        lap_var = float(lap.var(dtype=np.float64))
        gx = _conv_valid(g, (1, 2, 1), (-1, 0, 1))
        gy = _conv_valid(g, (-1, 0, 1), (1, 2, 1))
        edge = float(np.mean(gx * gx + gy * gy > EDGE_THRESHOLD ** 2))
        r = _conv_valid(g, (1, -2, 1), (1, -2, 1))
        noise = math.sqrt(math.pi / 2) * float(np.abs(r).sum(dtype=np.float64)) / (6.0 * (w - 2) * (h - 2))

    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    bpp = buf.tell() * 8.0 / n

    c = np.asarray(rgb, dtype=np.float32)
    rg = c[..., 0] - c[..., 1]
    yb = 0.5 * (c[..., 0] + c[..., 1]) - c[..., 2]
    colorful = (math.hypot(float(rg.std(dtype=np.float64)), float(yb.std(dtype=np.float64)))
                + 0.3 * math.hypot(float(rg.mean(dtype=np.float64)), float(yb.mean(dtype=np.float64))))
    sat = float(np.asarray(rgb.convert("HSV"))[..., 1].mean(dtype=np.float64)) / 255.0

    return np.array([
        math.log1p(lap_var), entropy, edge, bpp,
        float(g.mean(dtype=np.float64)) / 255.0, float(g.std(dtype=np.float64)) / 255.0,
        colorful, noise, sat, full_w, full_h, math.log2(full_w * full_h),
    ], dtype=np.float32)


def _tokens(question: str) -> list[str]:
    """Lowercase word tokens; curly apostrophes normalised, punctuation dropped."""
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    return _TOKEN_RE.findall(question.lower().replace("\u2019", "'"))


def _type_at(t: list[str], i: int) -> str | None:
    """Count/color/wh type of a question whose first word is t[i], else None."""
    a, b = t[i], (t[i + 1] if i + 1 < len(t) else "")
    if (a, b) in {("how", "many"), ("what", "number")} or a == "count":
        return "count"
    if (a in ("what", "which") and b in _COLOR_WORDS) or (
            t[i:i + 3] == ["what", "is", "the"] and i + 3 < len(t) and t[i + 3] in _COLOR_WORDS):
        return "color"
    return _WH.get(a)


def question_type(question: str) -> str:
    """Question category (one of QUESTION_TYPES) from its leading words.

    "how many"/"what number"/"count" -> count; "what|which colo(u)r" or "what is the
    color" -> color; leading auxiliary verb (is/are/do/can/has/...) -> yes/no;
    wh-words -> their own type (whom/whose -> who).  If the first word matches
    none of these, the first count/color/wh pattern later on is used (e.g. "In the
    image, how many ..."), else "other".
    """
    t = _tokens(question)
    if not t:
        return "other"
    first = _type_at(t, 0)
    if first is not None:
        return first
    if t[0] in _AUX:
        return "yes/no"
    for i in range(1, len(t)):
        found = _type_at(t, i)
        if found is not None:
            return found
    return "other"


def text_features(question: str) -> np.ndarray:
    """Question features, float32 shape (len(TEXT_FEATURES),), order TEXT_FEATURES.

    word_count (tokens), char_count (len of stripped string), one-hot
    question_type over QUESTION_TYPES, then 0/1 cue flags from _CUES (whole-word or
    word-sequence matches; negation also fires on any "...n't" token).
    """
    t = _tokens(question)
    words = set(t)
    joined = " " + " ".join(t) + " "
    qtype = question_type(question)
    cues = []
    for name, terms in _CUES.items():
        hit = any((" " + term + " " in joined) if " " in term else (term in words) for term in terms)
        if name == "negation":
            hit = hit or any(w.endswith("n't") for w in t)
        cues.append(float(hit))
    onehot = [float(qtype == q) for q in QUESTION_TYPES]
    return np.array([len(t), len(question.strip())] + onehot + cues, dtype=np.float32)


def extract(image: Image.Image, question: str) -> np.ndarray:
    """All features, float32 shape (len(FEATURE_NAMES),): image_features ++ text_features."""
    return np.concatenate([image_features(image), text_features(question)])
