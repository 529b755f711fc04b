"""Tiny random-weight vision-language models built offline, for tests of ``router_training.vlm``.

Each builder writes a model (safetensors + config), a processor (image processor, tokenizer,
chat template) and a generation config into ``path`` with ``save_pretrained``, so the folder loads
through ``AutoProcessor`` / ``AutoModelForImageTextToText`` exactly like a hub checkpoint.
No hub access: the tokenizer is a byte-level BPE with no merges (256 byte tokens plus the
model's special tokens), built with the ``tokenizers`` library. Models have ~150k parameters;
their answers are random but deterministic (seeded initialisation).
"""

from __future__ import annotations

from pathlib import Path

import torch

# SmolVLM-style and Qwen2-VL-style chat templates, reduced to what the backend sends:
# a list of {"type": "image"} / {"type": "text", "text": ...} items per message.
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(special: list[str], bos: str, eos: str, pad: str, unk: str | None = None):
    """PreTrainedTokenizerFast over a byte-level BPE with no merges: ids 0..255 are the bytes,
    then ``special`` in order (added as special tokens, never split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk)


def _save(model, processor, eos_id: int, pad_id: int, path: Path) -> Path:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_idefics3(path: str | Path, seed: int = 0) -> Path:
    """Tiny Idefics3 (SmolVLM architecture): SigLIP-style vision tower on 56x56 images (14 px
    patches, 16 patches -> 4 image tokens after pixel shuffle with scale 2), 2-layer Llama text
    model, hidden size 32. Saves model + processor into ``path``; returns ``path``."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    path = Path(path)
    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
               "<global-img>", *rows]
    tok = byte_tokenizer(special, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>",
                                                          "<global-img>", "<end_of_utterance>"]})
    ids = tok.convert_tokens_to_ids
    image_size, patch, scale = 56, 14, 2
    config = Idefics3Config(
        image_token_id=ids("<image>"),
        scale_factor=scale,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, bos_token_id=ids("<|im_start|>"),
                         eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|endoftext|>")),
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                             max_image_size={"longest_edge": image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                  image_seq_len=(image_size // patch) ** 2 // scale ** 2,
                                  chat_template=IDEFICS3_TEMPLATE)
    return _save(model, processor, ids("<end_of_utterance>"), ids("<|endoftext|>"), path)


def build_qwen2_vl(path: str | Path, seed: int = 0) -> Path:
    """Tiny Qwen2-VL: 2-block vision tower (14 px patches, 2x2 merge, so images need sides >= 28 px and
    are capped at 112x112 px here), 2-layer text model, hidden size 32, head_dim 16 with mrope sections
    [2, 3, 3]. Saves model + processor into ``path``; returns ``path``."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tok = byte_tokenizer(special, bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    pixels = {"shortest_edge": 28 * 28, "longest_edge": 112 * 112}  # min / max pixel counts
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=pixels),
                                 video_processor=Qwen2VLVideoProcessor(size=pixels),
                                 tokenizer=tok, chat_template=QWEN2_VL_TEMPLATE)
    return _save(model, processor, ids("<|im_end|>"), ids("<|endoftext|>"), path)


BUILDERS = {"idefics3": build_idefics3, "qwen2_vl": build_qwen2_vl}


def n_params(path: str | Path) -> int:
    """Parameter count of a saved tiny model (loads it)."""
    from transformers import AutoModelForImageTextToText

    return sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(path).parameters())
