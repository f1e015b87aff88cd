"""Text-to-image: the two prompt mappers on held-out paraphrases and off-topic prompts.

No caption below appears in the training captions (generator.text.train_captions), and none was used
to set a threshold. For each mapper: the class accuracy of the mapping, the refusal rate of the
off-topic prompts, the false-refusal rate of the digit prompts, and the judge accuracy: images drawn
from the mapped class (DDIM-50, guidance 1.5, `--per-prompt` images each) classified by the
project's digit classifier; a refused or wrongly mapped digit prompt counts as a miss.

    python bench/apps/prompts.py --per-prompt 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.classifier import load_classifier, predict
from ddpm_guard.generator.pipeline import generate
from ddpm_guard.generator.text import fit_prompt_model, load_prompt_model, train_captions

# (prompt, digit): wordings, contexts and numeral forms absent from the training templates
HELDOUT_DIGITS = [
    ("draw me a seven", 7), ("can you make a handwritten 3?", 3), ("the digit that comes after four", 5),
    ("a nought", 0), ("zero scribbled with a pen", 0), ("number one, quickly sketched", 1), ("a single 1", 1),
    ("two, in a child's handwriting", 2), ("a pencil-written 2", 2), ("three on lined paper", 3),
    ("the figure 4", 4), ("a four from a postal code", 4), ("five written in ink", 5), ("a hand-drawn five", 5),
    ("six as written on a cheque", 6), ("the number 6 please", 6), ("7 written quickly", 7),
    ("a sloppy eight", 8), ("an 8 like the ones on envelopes", 8), ("nine in blue ink", 9),
    ("the digit 9 by hand", 9), ("generate a handwritten zero", 0), ("sketch of a 3", 3), ("I want a six", 6),
    ("mnist style 2", 2), ("a curly handwritten nine", 9), ("seven with a crossbar", 7), ("the numeral eight", 8),
    ("render a 5", 5), ("one handwritten number four", 4),
]
HELDOUT_OFF_TOPIC = [
    "a photo of a cat", "a watercolor of a lighthouse", "a sunset over the ocean", "a close-up of a tiger",
    "a bicycle leaning on a wall", "the letter Q", "a handwritten letter to a friend", "a corporate logo",
    "a snowy forest", "a dragon breathing fire", "a bowl of ramen", "an old man with a beard",
    "the word stop", "a screenshot of a website", "a spaceship", "a violin on a table",
    "a field of sunflowers", "a dog playing fetch", "a traffic light", "an x-ray of a hand",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--refit", action="store_true", help="fit the mappers afresh instead of loading the bundled one")
    a = ap.parse_args()
    train = set(train_captions()[0])
    assert not train & ({p for p, _ in HELDOUT_DIGITS} | set(HELDOUT_OFF_TOPIC)), "held-out prompt in training"
    pm = fit_prompt_model() if a.refit else load_prompt_model()
    model, schedule, _ = load_model(None)
    judge = load_classifier()
    report = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "n_digit_prompts": len(HELDOUT_DIGITS),
              "n_off_topic": len(HELDOUT_OFF_TOPIC), "per_prompt": a.per_prompt, "thresholds": pm.thresholds}
    for mapper in ("nearest", "head"):
        t = time.perf_counter()
        dm = pm.match([p for p, _ in HELDOUT_DIGITS], mapper)
        om = pm.match(HELDOUT_OFF_TOPIC, mapper)
        ms_per_prompt = 1000 * (time.perf_counter() - t) / (len(dm) + len(om))
        mapped = [(m.label, d) for m, (_, d) in zip(dm, HELDOUT_DIGITS)]
        ok_labels = [lab for lab, _ in mapped if lab is not None]
        hits = 0
        if ok_labels and a.per_prompt:
            labels = torch.tensor(ok_labels).repeat_interleave(a.per_prompt)
            imgs, _ = generate(model, schedule, len(labels), labels=labels, seed=0)
            pred = predict(judge, imgs)[1].argmax(1)
            wanted = torch.tensor([d for lab, d in mapped if lab is not None]).repeat_interleave(a.per_prompt)
            hits = int((pred == wanted).sum())
        report[mapper] = {
            "mapping_accuracy": sum(lab == d for lab, d in mapped) / len(mapped),
            "false_refusals": sum(lab is None for lab, _ in mapped) / len(mapped),
            "off_topic_refused": sum(m.label is None for m in om) / len(om),
            "judge_accuracy": hits / (len(mapped) * a.per_prompt) if a.per_prompt else None,
            "ms_per_prompt": round(ms_per_prompt, 2),
            "errors": [(p, m.label, d) for m, (p, d) in zip(dm, HELDOUT_DIGITS) if m.label != d],
            "accepted_off_topic": [(m.prompt, m.label) for m in om if m.label is not None],
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
