"""Hand-crafted image and question features for edge/cloud VLM routing.

One implementation shared by training and the on-device router runtime, so it
imports only numpy, Pillow and the standard library (no torch, no scipy).

Column order is fixed by ``FEATURE_NAMES = IMAGE_FEATURES + TEXT_FEATURES +
WORD_FEATURES + PIXEL_FEATURES``; every function returns a 1-D ``float32`` vector in
that order.  Grey levels are
Pillow's ITU-R 601 luma (``Image.convert("L")``, 0..255).  3x3 filters are
applied in "valid" mode (no padding), so images smaller than 3x3 get 0 for the
filter-based features.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata

import numpy as np
from PIL import Image

from . import images

IMAGE_FEATURES: tuple[str, ...] = (
    "log_laplacian_var",  # log1p(var of 4-neighbour Laplacian), grey 0..255
    "gray_entropy_bits",  # Shannon entropy of 256-bin grey histogram, 0..8 bits
    "edge_density",       # fraction of pixels with Sobel magnitude > EDGE_THRESHOLD
    "jpeg_bpp",           # JPEG (quality 75) size in bits per pixel
    "brightness",         # mean grey / 255, 0..1
    "rms_contrast",       # std grey / 255, 0..0.5
    "colorfulness",       # Hasler & Suesstrunk M, RGB 0..255 units
    "noise_sigma",        # Immerkaer noise std, grey levels
    "mean_saturation",    # mean HSV saturation (max - min) / max over R, G, B, 0..1
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

# per cue: (its single words, its word sequences padded with spaces), matched by _text_of
_CUE_TERMS = {name: (frozenset(t for t in terms if " " not in t), tuple(f" {t} " for t in terms if " " in t))
              for name, terms in _CUES.items()}

TEXT_FEATURES: tuple[str, ...] = (
    ("word_count", "char_count")
    + tuple("qtype_" + t.replace("/", "_") for t in QUESTION_TYPES)
    + tuple("cue_" + c for c in _CUES)
)
WORD_BUCKETS = 128  # hashed bag of words: easy-VQA's 26 question words get 26 distinct bucket pairs
WORD_FEATURES: tuple[str, ...] = tuple(f"word_{i:03d}" for i in range(WORD_BUCKETS))
THUMBNAIL_SIDE = 32  # the router's CNN sees a 32 x 32 RGB thumbnail (shapes stay recognisable; 16 px lost ~0.02 APGR)
PIXEL_FEATURES: tuple[str, ...] = tuple(f"pixel_{c}_{y:02d}_{x:02d}" for c in "rgb" for y in range(THUMBNAIL_SIDE)
                                        for x in range(THUMBNAIL_SIDE))  # channel-first, as the CNN reads it
FEATURE_NAMES: tuple[str, ...] = IMAGE_FEATURES + TEXT_FEATURES + WORD_FEATURES + PIXEL_FEATURES

# Bumped whenever a feature's definition changes (same names, other values): cached feature tables and
# exported routers of another version are then recomputed / refused instead of silently mismatched.
FEATURE_VERSION = 7
EDGE_THRESHOLD = 100.0  # Sobel magnitude on grey 0..255; = a 25-grey-level step edge
JPEG_QUALITY = 75
ANALYSIS_MAX_SIDE = 64  # global pixel statistics on at most 64 px (easy-VQA's 64 px images are analysed whole)
SUBSAMPLE_SIDE = 4 * THUMBNAIL_SIDE  # the CNN thumbnail box-filters every other pixel from this side up (thumbnail)
SHARPNESS_CROP = 64  # blur and noise on the central 64 x 64 px of the working image (images.load)

_AUX = frozenset(
    "is are was were am do does did can could will would should shall has have had "
    "may might must isn't aren't wasn't weren't don't doesn't didn't can't couldn't "
    "won't wouldn't shouldn't hasn't haven't hadn't".split())
_WH = {"what": "what", "which": "which", "who": "who", "whom": "who", "whose": "who",
       "where": "where", "when": "when", "why": "why", "how": "how"}
_COLOR_WORDS = frozenset(("color", "colour", "colors", "colours"))
# Tokens: runs of anything but whitespace, punctuation and the apostrophe (inner apostrophes kept:
# "isn't"), in any script; kana and CJK ideographs, written without spaces, are one token each.
# On ASCII text this is what [a-z0-9]+('[a-z]+)? gave before (easy-VQA's tokens are unchanged).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SEP = ("\\s!-&(-/:-@\\[-`{-~\u00a1-\u00bf\u00d7\u00f7\u055d-\u055f\u0589\u060c\u061b\u061f\u0964\u0965"
        "\u1362\u2000-\u206f\u3000-\u303f'")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^{_SEP}{_CJK}]+(?:'[^{_SEP}{_CJK}]+)*")
MAX_QUESTION_CHARS = 2000  # after normalisation; VQA questions are under 200, BlindTest's under 120
# C0 and C1 control characters other than the whitespace ones (tab, newline, vertical tab, form feed,
# carriage return), DEL, and lone UTF-16 surrogates (not encodable as UTF-8)
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class QuestionError(ValueError):
    """A question the router refuses (``check_question``)."""


_INV = (1.0 / np.maximum(np.arange(256), 1)).astype(np.float32)  # 1 / max(R, G, B) for the saturation
_OPPONENT = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], dtype=np.float32)  # R, G, B -> rg, yb (colorfulness)


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """(mean, population variance) of a float32 array; a dot product instead of ``np.var``'s generic
    path, which costs twice as much on the small arrays of a per-query call."""
    m = float(x.sum()) / x.size  # ndarray.mean's wrapper costs ~3 us more per call
    d = (x - m).ravel()
    return m, float(np.dot(d, d)) / d.size


def _sobel_sq(a: np.ndarray) -> np.ndarray:
    """Squared Sobel gradient magnitude gx^2 + gy^2 of a (H, W) array, 'valid' mode -> (H-2, W-2)."""
    v = a[:-2] + a[2:] + 2.0 * a[1:-1]
    gx = v[:, 2:] - v[:, :-2]
    d = a[2:] - a[:-2]
    gy = d[:, :-2] + d[:, 2:] + 2.0 * d[:, 1:-1]
    return gx * gx + gy * gy


def analysis_views(rgb: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(thumbnail, crop) of an RGB working image (``images.load``): the thumbnail has its longer side at
    most ANALYSIS_MAX_SIDE px (aspect ratio kept), sampled by nearest neighbour; the crop is the central
    SHARPNESS_CROP x SHARPNESS_CROP px (or less) of the working image.  Both are the image itself when it
    fits in ANALYSIS_MAX_SIDE (easy-VQA's 64 px images).

    Nearest-neighbour sampling reads only the thumbnail's pixels, so the cost does not grow with the
    working image's size (a box filter reads every pixel: ~0.2 ms for 512 x 512 on a 2-core x86 CPU).
    It does not average: fine texture reaches the thumbnail as it is (aliased), and the entropy, edge
    density and JPEG size computed on it reflect it."""
    w, h = rgb.size
    if max(w, h) <= ANALYSIS_MAX_SIDE:
        return rgb, rgb
    f = ANALYSIS_MAX_SIDE / max(w, h)
    thumb = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.NEAREST)
    cw, ch = min(w, SHARPNESS_CROP), min(h, SHARPNESS_CROP)
    left, top = (w - cw) // 2, (h - ch) // 2
    return thumb, rgb.crop((left, top, left + cw, top + ch))


def image_features(image, max_pixels: int | None = None) -> np.ndarray:
    """Image features, float32 shape (len(IMAGE_FEATURES),), order IMAGE_FEATURES, of any image
    ``images.load`` reads (a PIL image in any mode, a path, bytes, a file object or a ``datasets`` cell).

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
    - mean_saturation: mean HSV saturation (max - min) / max of R, G, B (0 for black), 0..1.
    - width_px, height_px, log2_pixels: size in pixels and log2(W*H).

    Where each is measured, so the cost is bounded (a few tenths of a ms after decoding) whatever the
    resolution: on the working image of ``images.load`` (the image itself below 2 x images.WORK_SIDE px,
    else box-reduced by a power of two to a longer side below that), blur and noise (log_laplacian_var,
    noise_sigma) on its central crop, because at 1/k scale a blur of radius r shrinks to r/k and the
    Laplacian and Immerkaer operators then see the image's content, not its sharpness or noise; the other
    pixel statistics on a thumbnail of at most ANALYSIS_MAX_SIDE px (``analysis_views``); the size
    features on the full (EXIF-oriented) image.  Raises ValueError for a 0-pixel image and as
    ``images.load`` (ImageTooLarge above ``max_pixels``).
    """
    size, _, thumb, crop = _views(image, max_pixels)
    return _image_of(size, thumb, crop)


def _views(image, max_pixels: int | None = None) -> tuple[tuple[int, int], Image.Image, Image.Image, Image.Image]:
    """(full size, working image, thumbnail, crop) of any image: ``images.load`` then ``analysis_views``."""
    work, size = images.load(image, max_pixels)
    return (size, work, *analysis_views(work))


def _grey(im: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """(the "L" image, its values as float32 (H, W)) of an RGB image."""
    grey = im.convert("L")
    return grey, np.frombuffer(grey.tobytes(), np.uint8).reshape(grey.height, grey.width).astype(np.float32)


def _image_of(size: tuple[int, int], thumb: Image.Image, crop: Image.Image) -> np.ndarray:
    """``image_features`` from the image's ``_views``. Per-query code: every numpy call costs a few us on
    a small array, so the passes are shared (the second differences of blur and noise; the colour
    planes) and nothing is converted twice."""
    full_w, full_h = size
    lap_var = noise = 0.0
    grey, g = _grey(thumb)
    c = g if crop is thumb else _grey(crop)[1]
    if min(c.shape) >= 3:
        dy = c[:-2] + c[2:] - 2.0 * c[1:-1]  # vertical [1, -2, 1]; integer-valued, so exact in float32
        lap = dy[:, 1:-1] + (c[1:-1, :-2] + c[1:-1, 2:] - 2.0 * c[1:-1, 1:-1])
        lap_var = _mean_var(lap)[1]
        r = dy[:, :-2] + dy[:, 2:] - 2.0 * dy[:, 1:-1]  # = _second_diff(c, -2): Immerkaer's N
        noise = math.sqrt(math.pi / 2) * float(np.abs(r).sum()) / r.size / 6.0
    n = thumb.width * thumb.height
    entropy = grey.entropy() + 0.0  # Pillow's, over the 256-bin histogram, in bits; + 0.0 turns -0.0 into 0.0
    edge = 0.0
    if min(g.shape) >= 3:
        sq = _sobel_sq(g)
        edge = np.count_nonzero(sq > EDGE_THRESHOLD ** 2) / sq.size
    bpp = len(thumb.tobytes("jpeg", "RGB", JPEG_QUALITY)) * 8.0 / n  # = Image.save(format="JPEG", quality=75)

    # (3, n) contiguous planes R, G, B: numpy is slow over a 3-long axis (a reduction over it: ~40x)
    r8, g8, b8 = planes = np.ascontiguousarray(np.frombuffer(thumb.tobytes(), np.uint8).reshape(n, 3).T)
    rg_yb = _OPPONENT @ planes.astype(np.float32)  # (2, n): R - G and (R + G) / 2 - B, exact in float32
    (m_rg, v_rg), (m_yb, v_yb) = _mean_var(rg_yb[0]), _mean_var(rg_yb[1])
    colorful = math.hypot(math.sqrt(v_rg), math.sqrt(v_yb)) + 0.3 * math.hypot(m_rg, m_yb)
    mx, mn = np.maximum(np.maximum(r8, g8), b8), np.minimum(np.minimum(r8, g8), b8)
    sat = float(np.dot((mx - mn).astype(np.float32), _INV[mx])) / n

    g_mean, g_var = _mean_var(g)
    return np.array([
        math.log1p(lap_var), entropy, edge, bpp,
        g_mean / 255.0, math.sqrt(g_var) / 255.0,
        colorful, noise, sat, full_w, full_h, math.log2(full_w * full_h),
    ], dtype=np.float32)


def thumbnail(image, max_pixels: int | None = None) -> np.ndarray:
    """The image as the router's CNN sees it, float32 shape (len(PIXEL_FEATURES),), order PIXEL_FEATURES
    (channel-first: the R plane row by row, then G, then B): the working image of ``images.load``
    box-filtered to THUMBNAIL_SIDE x THUMBNAIL_SIDE (the aspect ratio is not kept), with values divided by
    its brightest channel value, so 0..1 whatever the exposure (brightness itself is an IMAGE_FEATURES
    column).  ``image`` as for ``image_features``.

    When both sides are at least SUBSAMPLE_SIDE px, every other row and column is taken first (a 2x
    nearest-neighbour subsample), so each thumbnail pixel still averages at least 2 x 2 samples.

    A box filter averages its pixels, so a line a few pixels wide in a 1024 px drawing still reaches the
    thumbnail as a faint stroke; nearest-neighbour sampling at thumbnail scale (the statistics'
    ``analysis_views``) drops most of it, and on BlindTest's line drawings that cost the router ~0.04 edge
    share at 97% of cloud accuracy. The 2x subsample keeps any stroke 2 px or wider (a 1-px line survives
    in one sampled row or column of two) and halves the memory read, the per-query cost at 512 px and
    above: ``Router.route`` on benchmarks/decision_overhead.py's 512 px image took 12% less (in-process
    A/B of 40 alternating blocks on a 2-core x86 CPU).
    Pillow's ``reducing_gap=2`` (an integer ``reduce`` first) keeps the rest near one read of the sampled
    pixels. Raises ValueError for a 0-pixel image."""
    return _thumbnail_of(_views(image, max_pixels)[1])


def _thumbnail_of(work: Image.Image) -> np.ndarray:
    """``thumbnail`` from the working image."""
    side = THUMBNAIL_SIDE
    w, h = work.size
    if min(w, h) >= SUBSAMPLE_SIDE:
        work = work.resize((w // 2, h // 2), Image.Resampling.NEAREST)  # pixel (2i + 1, 2j + 1) for even sides
    small = work.resize((side, side), Image.Resampling.BOX, reducing_gap=2.0)
    a = np.asarray(small).transpose(2, 0, 1).ravel()
    return a.astype(np.float32) / np.float32(max(int(a.max()), 1))


def image_parts(image, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``image_features``, ``thumbnail``) of one image, its views computed once; ``image`` as for
    ``image_features``."""
    size, work, thumb, crop = _views(image, max_pixels)
    return _image_of(size, thumb, crop), _thumbnail_of(work)


def _nfkc(question: str) -> str:
    """NFKC form (full-width letters and digits as ASCII, ligatures split). Raises TypeError for a
    non-string."""
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    return question if question.isascii() else unicodedata.normalize("NFKC", question)  # ASCII: unchanged


def _normalise(question: str) -> str:
    """``_nfkc`` with every run of whitespace (any Unicode space, tab or line break) one space and the
    ends stripped."""
    return " ".join(_nfkc(question).split())


def check_question(question: str) -> tuple[str, str | None]:
    """The one question rule of the data stage and the device: (the text the router reads, a warning or
    None). The text is ``_normalise``d; any script is accepted (``_tokens``).

    An empty text (empty or whitespace only) is allowed with the warning "empty question": the image may
    carry the question (the router then sees no words). Raises TypeError for a non-string and
    QuestionError for a control character other than whitespace (C0 / C1 controls, DEL: binary garbage
    or a terminal escape, not a question), a lone surrogate (not UTF-8 encodable) or a text longer than
    MAX_QUESTION_CHARS characters."""
    raw = _nfkc(question)
    bad = _CONTROL_RE.search(raw)
    if bad is not None:
        raise QuestionError(f"question has control character U+{ord(bad.group()):04X} at position {bad.start()}; "
                            "remove it (only printable text and whitespace are read)")
    text = " ".join(raw.split())
    if len(text) > MAX_QUESTION_CHARS:
        raise QuestionError(f"question has {len(text)} characters, more than MAX_QUESTION_CHARS = "
                            f"{MAX_QUESTION_CHARS}; shorten it")
    return text, (None if text else "empty question: the router sees only the image")


def _tokens(text: str) -> list[str]:
    """Lowercase word tokens of a ``_normalise``d text (see ``_TOKEN_RE``); curly apostrophes as straight
    ones."""
    return _TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


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
    image, how many ..."), else "other".  ``question`` is ``_normalise``d first.
    """
    return _type_of(_tokens(_normalise(question)))


def _type_of(t: list[str]) -> str:
    """``question_type`` from the question's tokens."""
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

    word_count (tokens), char_count (characters of the ``_normalise``d text: runs of whitespace count
    as one), one-hot question_type over QUESTION_TYPES, then 0/1 cue flags from _CUES (whole-word or
    word-sequence matches; negation also fires on any "...n't" token).
    """
    text = _normalise(question)
    return _text_of(text, _tokens(text))


def _text_of(text: str, t: list[str]) -> np.ndarray:
    """``text_features`` from the normalised text and its tokens (tokenised once per query)."""
    words = set(t)
    joined = " " + " ".join(t) + " "
    qtype = _type_of(t)
    cues = []
    for name, (single, phrases) in _CUE_TERMS.items():
        hit = not words.isdisjoint(single) or any(p in joined for p in phrases)
        if name == "negation":
            hit = hit or any(w.endswith("n't") for w in t)
        cues.append(float(hit))
    onehot = [float(qtype == q) for q in QUESTION_TYPES]
    return np.array([len(t), len(text)] + onehot + cues, dtype=np.float32)


@functools.lru_cache(maxsize=1 << 16)  # a device sees the same words again and again
def word_buckets(token: str) -> tuple[int, int]:
    """The two WORD_FEATURES buckets of a token: the two little-endian 32-bit halves of its 8-byte BLAKE2b
    digest, each mod WORD_BUCKETS (stable across processes and platforms, unlike Python's salted
    ``hash``)."""
    d = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return int.from_bytes(d[:4], "little") % WORD_BUCKETS, int.from_bytes(d[4:], "little") % WORD_BUCKETS


def word_features(question: str) -> np.ndarray:
    """Hashed bag of words, float32 shape (WORD_BUCKETS,), order WORD_FEATURES: every question token
    (``_tokens``) adds 1 to each of its two ``word_buckets`` (feature hashing: Weinberger et al., "Feature
    Hashing for Large Scale Multitask Learning", ICML 2009; two hashes per token so that two words rarely
    share both buckets: Svenstrup et al., "Hash Embeddings for Efficient Word Representations", NeurIPS
    2017).  The router's first linear layer maps these counts to a sum of per-bucket vectors, i.e. it
    learns word embeddings end to end (an embedding bag, as fastText: Joulin et al., "Bag of Tricks for
    Efficient Text Classification", EACL 2017) for the price of hashing a few words on the device."""
    return _words_of(_tokens(_normalise(question)))


def _words_of(tokens: list[str]) -> np.ndarray:
    """``word_features`` from the question's tokens."""
    out = np.zeros(WORD_BUCKETS, dtype=np.float32)
    for t in tokens:
        for b in word_buckets(t):
            out[b] += 1.0
    return out


def question_features(question: str) -> np.ndarray:
    """Every question feature, float32 shape (len(TEXT_FEATURES) + WORD_BUCKETS,): text_features ++
    word_features of the text ``check_question`` gives (so raises QuestionError as it does)."""
    return _question_of(check_question(question)[0])


def _question_of(text: str) -> np.ndarray:
    """``question_features`` of a text ``check_question`` gave."""
    t = _tokens(text)
    return np.concatenate([_text_of(text, t), _words_of(t)])


def assemble(image_feats: np.ndarray, question_feats: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The FEATURE_NAMES vector, float32 (len(FEATURE_NAMES),), from ``image_features``,
    ``question_features`` and ``thumbnail``: the one place that fixes their order."""
    return np.concatenate([image_feats, question_feats, pixels])


def query(image, question: str, max_pixels: int | None = None) -> tuple[np.ndarray, str | None]:
    """(``extract``'s vector, float32 (len(FEATURE_NAMES),), ``check_question``'s warning or None) of one
    query: what the device computes per query. The question is checked before the image is decoded.
    Raises as ``check_question`` (TypeError, QuestionError) and ``image_features`` (ValueError,
    ImageTooLarge above ``max_pixels``, OSError)."""
    text, warning = check_question(question)
    img, pixels = image_parts(image, max_pixels)
    return assemble(img, _question_of(text), pixels), warning


def extract(image, question: str, max_pixels: int | None = None) -> np.ndarray:
    """All features, float32 shape (len(FEATURE_NAMES),): image_features ++ question_features ++
    thumbnail; ``image`` as for ``image_features``."""
    return query(image, question, max_pixels)[0]
