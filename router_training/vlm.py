"""Backend over a Hugging Face transformers vision-language model (edge or cloud candidate).

Any checkpoint that loads with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and whose processor
has a chat template works: SmolVLM / Idefics3, Qwen2-VL, Qwen2.5-VL, LLaVA and others. ``model`` is a hub
id or a local folder; with ``HF_HUB_OFFLINE=1`` only local files / the local cache are used.
No remote code is executed (``trust_remote_code`` is never passed).
"""

from __future__ import annotations

import logging
import math
import time

from PIL import Image

from .core import images as imagelib
from .backends import Answer, payload_bytes, register

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "Answer the question with a single word or short phrase."


def min_side_of(processor) -> int:
    """Smallest image side (px) the processor accepts, derived from its image processor:
    ``patch_size * merge_size`` (Qwen2-VL / Qwen2.5-VL: 14 * 2 = 28) when it has a patch size,
    else 1 (processors that resize every image to a fixed size, e.g. Idefics3, CLIP/LLaVA)."""
    ip = getattr(processor, "image_processor", None)
    patch = getattr(ip, "patch_size", None)
    if isinstance(patch, dict):
        patch = max(v for v in patch.values() if isinstance(v, int))
    if not isinstance(patch, int) or patch <= 0:
        return 1
    merge = getattr(ip, "merge_size", None) or getattr(ip, "spatial_merge_size", None) or 1
    return int(patch) * int(merge)


def max_aspect_of(processor) -> float | None:
    """Largest aspect ratio (long side / short side) the processor accepts: 200 for processors that
    patchify the image at its own size (``min_side_of`` > 1: Qwen2-VL's ``smart_resize`` refuses a
    larger ratio), else None (no limit: they resize every image to a fixed size)."""
    return 200.0 if min_side_of(processor) > 1 else None


@register("transformers")
class TransformersBackend:
    """Greedy short-answer VQA with a transformers image-text-to-text model.

    Parameters: ``name`` (label for outcome rows), ``model`` (hub id or local path),
    ``max_new_tokens`` (generation cap), ``dtype`` ("float32", "bfloat16", "float16" or "auto"),
    ``device`` ("cpu", "cuda", "cuda:1", ...), ``batch_size`` (pairs per ``generate`` call),
    ``prompt`` (instruction appended after the question on a new line), ``min_side`` (px; images whose
    shorter side is smaller are enlarged, aspect kept; default ``min_side_of(processor)``); images whose
    aspect ratio is above ``max_aspect_of(processor)`` are first padded with white (``images.prepare``).

    Raises OSError (from transformers) when the model or processor cannot be found / loaded, and
    ValueError when the processor has no chat template.
    """

    def __init__(self, name: str, model: str, max_new_tokens: int = 8, dtype: str = "float32",
                 device: str = "cpu", batch_size: int = 8, prompt: str = DEFAULT_PROMPT,
                 min_side: int | None = None):
        import torch  # here, not at module level: config.load checks options without loading torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name, self.model_id = name, str(model)
        self.max_new_tokens, self.batch_size, self.prompt = int(max_new_tokens), max(1, int(batch_size)), prompt
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(self.model_id)
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"{name}: processor of {self.model_id!r} has no chat template")
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{name}: processor of {self.model_id!r} has no tokenizer")
        # Decoder-only batched generation needs the prompt ends aligned: pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.min_side = int(min_side) if min_side is not None else min_side_of(self.processor)
        self.max_aspect = max_aspect_of(self.processor)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        if self.pad_id is None and self.eos_ids:
            self.pad_id = min(self.eos_ids)

    def _messages(self, question: str) -> list[dict]:
        text = f"{question}\n{self.prompt}" if self.prompt else question
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def _sync(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _generate(self, images: list[Image.Image], questions: list[str]) -> list[Answer]:
        """One ``generate`` call over already prepared images. Returns one Answer per pair; the batch's
        synchronised wall time (preprocessing + generation + decoding, s) is split evenly."""
        import torch

        with torch.inference_mode():
            self._sync()
            t0 = time.perf_counter()
            texts = [self.processor.apply_chat_template(self._messages(q), add_generation_prompt=True, tokenize=False)
                     for q in questions]
            inputs = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
            inputs = inputs.to(self.device)
            if self.model.dtype.is_floating_point and "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      output_scores=True, output_logits=True, return_dict_in_generate=True,
                                      pad_token_id=self.pad_id)
            n_in = inputs["input_ids"].shape[1]
            new = out.sequences[:, n_in:]                                     # (B, T) generated ids
            # Raw logits give the model's own probabilities (scores are post-processing); fall back to scores.
            steps = out.logits if getattr(out, "logits", None) else out.scores
            logp = torch.stack(steps, 1).float().log_softmax(-1)             # (B, T, V)
            tok_logp = logp.gather(-1, new[:, : logp.shape[1], None]).squeeze(-1)  # (B, T)
            rows = []
            for b in range(new.shape[0]):
                ids = new[b].tolist()
                n = next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), len(ids))  # up to and incl. EOS
                lp = tok_logp[b, :n]
                conf = math.exp(float(lp.mean())) if n else 0.0
                text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                rows.append((text, min(1.0, max(0.0, conf)), int(inputs["attention_mask"][b].sum()), n))
            self._sync()
            per = (time.perf_counter() - t0) / len(questions)
            return [Answer(text, conf, per, payload_bytes(im, q), input_tokens=n_in_b, output_tokens=n_out)
                    for (text, conf, n_in_b, n_out), im, q in zip(rows, images, questions)]

    def answer(self, images: list[Image.Image], questions: list[str]) -> list[Answer]:
        """Answer equal-length lists of images and questions, ``batch_size`` pairs per ``generate`` call.

        Each Answer: ``text`` the decoded new tokens, stripped (may be empty or garbage: still a string);
        ``confidence`` exp(mean log-probability of the generated tokens up to and including the first EOS),
        in [0, 1]; ``compute_s`` the chunk's synchronised wall time / its size (s); ``payload_bytes`` of the
        prepared image + question; ``input_tokens`` prompt tokens incl. image tokens (padding excluded);
        ``output_tokens`` generated tokens up to and including EOS (``max_new_tokens`` if none).
        A chunk that raises is retried pair by pair; a pair that still fails gets ``error`` set (text "",
        confidence 0). Raises ValueError when the list lengths differ.
        """
        if len(images) != len(questions):
            raise ValueError(f"{self.name}: {len(images)} images but {len(questions)} questions")
        answers: list[Answer] = []
        for s in range(0, len(questions), self.batch_size):
            ims, qs = images[s: s + self.batch_size], questions[s: s + self.batch_size]
            try:
                answers.extend(self._generate([imagelib.prepare(im, self.min_side, self.max_aspect) for im in ims], qs))
            except Exception as exc:  # noqa: BLE001  isolate the failing pair(s), keep the rest
                if len(qs) == 1:
                    log.warning("%s: pair %d failed: %r", self.name, s, exc)
                    answers.append(self._failed(ims[0], qs[0], exc))
                    continue
                log.warning("%s: batch at %d failed (%r); retrying pair by pair", self.name, s, exc)
                for i, (im, q) in enumerate(zip(ims, qs)):
                    try:
                        answers.extend(self._generate([imagelib.prepare(im, self.min_side, self.max_aspect)], [q]))
                    except Exception as exc1:  # noqa: BLE001
                        log.warning("%s: pair %d failed: %r", self.name, s + i, exc1)
                        answers.append(self._failed(im, q, exc1))
        return answers

    def _failed(self, image: Image.Image, question: str, exc: Exception) -> Answer:
        try:
            size = payload_bytes(image, question)
        except Exception:  # noqa: BLE001  e.g. an image with no pixels
            size = len(question.encode("utf-8"))
        return Answer("", 0.0, 0.0, size, error=f"{type(exc).__name__}: {exc}")
