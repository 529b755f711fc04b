"""Router decision overhead per query, as a fraction of what one query costs on a SmolVLM-256M-sized
edge VLM, and against the MiniLM-classifier router baseline (``baselines.minilm_clf``), all measured
side by side in one run on one CPU.

One query = one 512x512 RGB image (synthetic, photo-like; already decoded, since the router and the VLM
both need the decoded image) and a short question. Three things are timed on it:

1. ours: ``runtime.Router.route(image, question)`` on a real exported artifact (``router.onnx`` +
   ``manifest.json``): ``features.extract`` (EXIF orientation, image features on a 64 px thumbnail and
   a native 64 px central crop of the 512 px image, question features and hashed words), the ONNX
   Runtime session run (1 intra-op thread, as ``Router.load`` sets) and ``Router.decide``. With ``--artifact DIR`` that artifact is used; by
   default a small one is built: ``fit.fit`` for 1 epoch on 2,000 synthetic rows with the real feature
   width and 3 models, exported with ``export.export``. The artifact's weights do not change the cost
   (same MLP shape), only its presence does. A per-stage breakdown, and the same ``route`` on a 64 px
   image (easy-VQA's size) for contrast, are printed too; the headline is the 512 px number. A third
   variant stubs the twelve image statistics (``features._image_of`` returns this image's values) and
   keeps every other stage: the floor that the thumbnail, question, ONNX, ood and rule stages set, so
   how far any speed-up of the statistics alone could take the ratio.
2. VLM: Idefics3 (the SmolVLM architecture) built from SmolVLM-256M-Instruct's published
   ``config.json`` (values below) with random weights, float32, on the CPU: the chat template, the
   Idefics3 processor and ``generate(max_new_tokens=8)`` (greedy; ``min_new_tokens`` = 8 too, so random
   weights cannot stop early) per query. Random weights cost the same FLOPs as trained ones.
   Image tokens: by default the image is one 512 px tile (``--splitting off``: 64 image tokens, the
   least SmolVLM-256M can spend on this image, so the VLM time is a lower bound and the overhead
   fraction an upper bound). ``--splitting on`` uses the published processor setting instead
   (``size.longest_edge`` 2048, ``max_image_size`` 512: the 512 px image is upscaled and split into
   4x4 tiles + 1 global tile, 17 x 64 image tokens, ~17x the vision compute).
   The tokenizer is a word-level stand-in (SmolLM2's BPE cannot be downloaded here): about one token
   per word or punctuation mark, close to what a BPE gives for plain English.
   ``--quick`` shrinks the VLM to 2 vision and 4 text layers (widths unchanged): its time is then NOT
   a 256M model's, and the script says so in its output.
3. MiniLM router: what ``minilm_clf`` does per query: embed the question with the bundled
   all-MiniLM-L6-v2 (``reference.QuestionEncoder``, its per-question cache cleared before every call,
   since a new query is a cache miss) and apply a linear head 384 -> 3 models (``baselines._mlp`` with
   hidden () and ``baselines._logits``), then the edge-score threshold. The head's weights are
   untrained (the cost does not depend on them).

How to read it: ``overhead / VLM`` is the share of a VLM query's compute that the routing decision adds
when the query then runs on that VLM; ``MiniLM-router / ours`` how many times longer the MiniLM
baseline takes to decide than our router. Both are ratios of times measured in the same process on the
same machine, which carry over better than the absolute milliseconds; our router and the MiniLM router
are timed in 10 alternating blocks so that a slow spell of a shared machine hits both. Caveats: our router runs on 1
thread (numpy, Pillow, ONNX Runtime with 1 intra-op thread) while the VLM and MiniLM use torch's
threads (``--threads``; printed); on a busy machine the medians are noisy, see the ranges. The VLM is
timed on this CPU, not on an edge accelerator: on a device where the VLM runs on an NPU/GPU and the
router on the CPU, the fraction would be larger.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/decision_overhead.py [--artifact export/<run>]
        [--splitting off|on] [--vlm-reps 3] [--router-reps 200] [--threads N]
    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/decision_overhead.py --quick   # smoke run, small VLM
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import _bench_common as common

# SmolVLM-256M-Instruct (HuggingFaceTB/SmolVLM-256M-Instruct, model card and config.json on the Hugging Face
# hub; Marafioti et al., "SmolVLM: Redefining small and efficient multimodal models", arXiv:2504.05299):
# Idefics3ForConditionalGeneration, a SigLIP base patch-16/512 vision encoder (93M parameters) and a
# SmolLM2-135M-style Llama decoder, pixel shuffle with scale_factor 4 -> (512/16)^2 / 4^2 = 64 tokens
# per 512 px tile. vocab_size 49280 = SmolLM2's 49152 + 128 added tokens (image/row/col markers).
SMOLVLM_256M = {
    "scale_factor": 4,
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 512, "patch_size": 16, "layer_norm_eps": 1e-6},
    "text_config": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49280,
                    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},
}
# Published processor (preprocessor_config.json): split into 512 px tiles after resizing the longest edge to
# 4 x 512 = 2048 px; image_seq_len 64.
PUBLISHED_LONGEST_EDGE, TILE = 2048, 512
QUICK_LAYERS = {"vision": 2, "text": 4}
PROMPT = "Answer the question with a single word or short phrase."  # router_training.vlm.DEFAULT_PROMPT


def build_artifact(out: Path) -> Path:
    """Train the router for 1 epoch on 2,000 synthetic rows and export it to ``out``."""
    from router_training.config import RouterConfig
    from router_training.export import export
    from router_training.core.decision import CostSpec
    from router_training.fit import fit

    spec = common.synthetic_spec()
    train, val = common.synthetic_split(2000, seed=0), common.synthetic_split(500, seed=1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            module, dm = fit(train, val, CostSpec.from_dict(spec), RouterConfig(epochs=1), out / "fit", loggers=False,
                             progress=False)
            decision = {"thresholds": [0.5, 0.5, 0.0], "lambda_latency": 0.2, "lambda_energy": 0.1}
            # with the training range (dm.stats), so route() computes the out-of-distribution score too
            return export(module, dm.mean, dm.std, {**spec, "features": dm.stats}, decision, out / "artifact")
    except Exception:
        sys.stderr.write(buf.getvalue())
        raise


def word_tokenizer(text: str):
    """A WordLevel tokenizer over the words / punctuation of ``text`` plus Idefics3's special tokens, as a
    PreTrainedTokenizerFast (about one token per word, like a BPE on plain English)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
               "<global-img>", *rows]
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text)))
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>", "<global-img>",
                                                           "<end_of_utterance>"]})
    return fast


def build_vlm(question: str, splitting: bool, quick: bool, seed: int = 0):
    """(model, processor, messages) for the SmolVLM-256M architecture with random weights."""
    import copy

    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    sys.path.insert(0, str(common.REPO / "tests"))
    from tiny_vlms import IDEFICS3_TEMPLATE

    text = f"{question}\n{PROMPT}"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    tok = word_tokenizer(f"User Assistant : {text}")
    ids = tok.convert_tokens_to_ids
    cfg = copy.deepcopy(SMOLVLM_256M)
    if quick:
        cfg["vision_config"]["num_hidden_layers"] = QUICK_LAYERS["vision"]
        cfg["text_config"]["num_hidden_layers"] = QUICK_LAYERS["text"]
    cfg["text_config"].update(bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<end_of_utterance>"),
                              pad_token_id=ids("<|endoftext|>"))
    config = Idefics3Config(image_token_id=ids("<image>"), **cfg)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    size = PUBLISHED_LONGEST_EDGE if splitting else TILE
    ip = Idefics3ImageProcessor(do_image_splitting=splitting, size={"longest_edge": size},
                                max_image_size={"longest_edge": TILE})
    vc = cfg["vision_config"]
    seq = (vc["image_size"] // vc["patch_size"]) ** 2 // cfg["scale_factor"] ** 2
    processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq, chat_template=IDEFICS3_TEMPLATE)
    return model, processor, messages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="exported router folder (default: build a small one)")
    p.add_argument("--image-size", type=int, default=512, help="query image side, px (default 512)")
    p.add_argument("--splitting", choices=["off", "on"], default="off",
                   help="off: one 512 px tile (lower bound of VLM time); on: the published processor's tiling")
    p.add_argument("--vlm-reps", type=int, default=3, help="timed VLM queries (after 1 warm-up)")
    p.add_argument("--router-reps", type=int, default=200, help="timed router decisions (after warm-up)")
    p.add_argument("--minilm-reps", type=int, default=50, help="timed MiniLM-router decisions")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the VLM and MiniLM (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: VLM with {QUICK_LAYERS['vision']} vision / {QUICK_LAYERS['text']} text layers "
                        "(not a 256M model), 1 VLM rep, 20 router and 5 MiniLM reps")
    args = p.parse_args()
    if args.quick:
        args.vlm_reps, args.router_reps, args.minilm_reps = 1, 20, 5

    import numpy as np
    import torch

    from router_training import baselines
    from router_training.core import features
    from router_training.runtime import Router

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    question = common.QUESTIONS[0]
    image = common.synthetic_image(args.image_size, seed=0)
    small = common.synthetic_image(64, seed=0)

    with tempfile.TemporaryDirectory(prefix="decision-overhead-") as tmp:
        # ---- ours
        t0 = time.perf_counter()
        artifact = args.artifact or build_artifact(Path(tmp))
        build_s = time.perf_counter() - t0
        router = Router.load(artifact)
        warm = max(3, args.router_reps // 20)
        feats = features.extract(image, question)[None]
        probs = router.predict(feats)
        stages = {
            f"image_parts ({args.image_size} px)": lambda: features.image_parts(image),
            "question_features": lambda: features.question_features(question),
            "ONNX session run (predict)": lambda: router.predict(feats),
            "decide": lambda: router.decide(probs),
        }
        stage_t = {k: common.time_calls(f, args.router_reps, warm) for k, f in stages.items()}
        decision = router.route(image, question)

        # ---- MiniLM-classifier router
        from router_training.reference import QuestionEncoder

        t0 = time.perf_counter()
        enc = QuestionEncoder()
        minilm_load_s = time.perf_counter() - t0
        head = baselines._seeded(lambda: baselines._mlp(QuestionEncoder.dim, (), len(router.models)), 0)
        edge = np.array([k for k, t in enumerate(router.tiers) if t == "edge"])
        cloud = router.tiers.index("cloud")

        def minilm_route():
            enc.cache.clear()  # a new query is a cache miss
            p_ = 1.0 / (1.0 + np.exp(-baselines._logits(head, enc([question]))))
            j = p_[:, edge].argmax(1)
            gap = p_[np.arange(len(p_)), edge[j]] - p_[:, cloud]
            return np.where(gap >= 0.0, edge[j], cloud)

        # ours (both sizes) and the MiniLM router in alternating blocks: a shared machine's slow spells
        # then hit all three alike, so the ratio holds even when the absolute times drift
        # the floor the other stages set: route() with the image statistics (features._image_of) replaced
        # by their value for this image, everything else (thumbnail, question, ONNX, ood score, rule) as is
        stats = features.image_features(image)

        def route_without_stats():
            real, features._image_of = features._image_of, lambda *_: stats
            try:
                return router.route(image, question)
            finally:
                features._image_of = real

        rounds = 10
        router_block = max(1, args.router_reps // rounds)
        timed = common.interleaved(
            {"ours": lambda: router.route(image, question), "ours_small": lambda: router.route(small, question),
             "ours_no_stats": route_without_stats, "minilm": minilm_route},
            {"ours": router_block, "ours_small": router_block, "ours_no_stats": router_block,
             "minilm": max(1, args.minilm_reps // rounds)}, rounds)
        ours, ours_small, minilm = timed["ours"], timed["ours_small"], timed["minilm"]

        # ---- VLM
        t0 = time.perf_counter()
        model, processor, messages = build_vlm(question, args.splitting == "on", args.quick)
        vlm_build_s = time.perf_counter() - t0
        n_params = sum(p_.numel() for p_ in model.parameters())
        pad = processor.tokenizer.pad_token_id
        shapes = {}

        @torch.inference_mode()
        def vlm_query():
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=[[image]], return_tensors="pt")
            out = model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens,
                                 min_new_tokens=args.max_new_tokens, pad_token_id=pad)
            shapes.update(input_tokens=int(inputs["input_ids"].shape[1]),
                          image_tokens=int((inputs["input_ids"] == model.config.image_token_id).sum()),
                          tiles=int(inputs["pixel_values"].shape[1]),
                          new_tokens=int(out.shape[1] - inputs["input_ids"].shape[1]))

        vlm = common.time_calls(vlm_query, args.vlm_reps, 1)

    o, v, m = common.med(ours), common.med(vlm), common.med(minilm)
    vc, tc = model.config.vision_config, model.config.text_config
    label = (f"SmolVLM-256M architecture, QUICK: {vc.num_hidden_layers} vision / {tc.num_hidden_layers} text "
             f"layers instead of 12 / 30 (NOT a 256M model)" if args.quick else
             f"SmolVLM-256M architecture ({vc.num_hidden_layers} vision / {tc.num_hidden_layers} text layers)")
    print(f"decision overhead per query{' (--quick: smoke run, numbers not representative)' if args.quick else ''}; "
          f"{common.machine_line()}")
    print(f"query: {args.image_size}x{args.image_size} px RGB image + {question!r}")
    print(f"router artifact: {artifact if args.artifact else 'built here (1 epoch, synthetic data)'} "
          f"({'given' if args.artifact else f'{build_s:.1f} s to build'}); models {router.models}; "
          f"decision for the query: {decision.model}")
    print(f"VLM: {label}, random weights, float32, {n_params / 1e6:.1f}M parameters (built in {vlm_build_s:.1f} s); "
          f"splitting {args.splitting}: {shapes['tiles']} tile(s), {shapes['image_tokens']} image tokens, "
          f"{shapes['input_tokens']} input tokens, {shapes['new_tokens']} new tokens")
    print(f"MiniLM router: all-MiniLM-L6-v2 (loaded in {minilm_load_s:.1f} s) + linear head 384 -> "
          f"{len(router.models)}")
    print()
    print("stage breakdown of our decision (median ms, each timed alone):")
    for k, ts in stage_t.items():
        print(f"  {k:<30} {1e3 * common.med(ts):>9.3f}  (range {common.spread(ts)})")
    print()
    rows = [
        (f"our router: route() at {args.image_size} px (headline)", ours, len(ours)),
        ("our router: route() at 64 px (for contrast)", ours_small, len(ours_small)),
        (f"  at {args.image_size} px, image statistics stubbed", timed["ours_no_stats"], len(timed["ours_no_stats"])),
        ("VLM: template + processor + generate", vlm, args.vlm_reps),
        ("MiniLM router: encode + linear head", minilm, len(minilm)),
    ]
    for name, ts, n in rows:
        print(f"{name:<48} {1e3 * common.med(ts):>11.3f} ms  (median of {n}; range {common.spread(ts)} ms)")
    print()
    print(f"overhead ms (ours, {args.image_size} px)   {1e3 * o:.3f}")
    print(f"VLM ms                         {1e3 * v:.1f}{'  [QUICK: reduced-depth VLM]' if args.quick else ''}")
    print(f"overhead / VLM                 {100 * o / v:.3f} %")
    print(f"MiniLM-router ms               {1e3 * m:.3f}")
    faster = "ours decides faster" if m > o else "the MiniLM router decides faster"
    print(f"MiniLM-router / ours           {m / o:.2f} x  ({faster})")
    floor = common.med(timed["ours_no_stats"])
    print(f"(image statistics stubbed: {1e3 * floor:.3f} ms, MiniLM-router / that {m / floor:.2f} x: the bound the "
          "thumbnail, question, ONNX, ood and rule stages set)")
    print(f"(at 64 px: overhead {1e3 * common.med(ours_small):.3f} ms, {100 * common.med(ours_small) / v:.3f} % "
          f"of the VLM, MiniLM-router / ours {m / common.med(ours_small):.2f} x)")


if __name__ == "__main__":
    main()
