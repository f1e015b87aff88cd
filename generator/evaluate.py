"""Offline evaluation of a generator on the project's digit-classifier features (ddpm-guard eval-gen)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.classifier import load_classifier, predict
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.image_io import make_grid, quantize, save_image
from ddpm_guard.generator.metrics import MEMORIZATION_RATIO, fid, kid, memorization, precision_recall
from ddpm_guard.generator.pipeline import DEFAULT_GUIDANCE, generate


def feature_metrics(fake_feats: np.ndarray, real_feats: np.ndarray) -> dict[str, float]:
    k, ks = kid(fake_feats, real_feats)
    p, r = precision_recall(real_feats, fake_feats, k=3)
    return {"fid": fid(fake_feats, real_feats), "kid": k, "kid_std": ks, "precision": p, "recall": r}


@functools.lru_cache(maxsize=1)
def heldout_reference() -> tuple[torch.nn.Module, np.ndarray]:
    """(the digit classifier, its features of the 1,000 held-out digits): loaded once per process, for
    callers that score samples many times (distillation's checkpoints, the benches)."""
    net = load_classifier()
    return net, predict(net, load_dataset("mnist5k", "heldout").images)[0].numpy()


def evaluate_generator(model, schedule, *, n: int = 1000, sampler: str = "ddim", steps: int = 50,
                       guidance: float = DEFAULT_GUIDANCE, guidance_sweep: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0),
                       step_sweep: tuple[int, ...] = (), sweep_samplers: tuple[str, ...] = ("ddim",), seed: int = 0,
                       out_dir: str | Path | None = None,
                       classifier_dir: str | Path | None = None, log=None) -> dict:
    log = log or (lambda s: None)
    net = load_classifier(classifier_dir)
    held, train = load_dataset("mnist5k", "heldout"), load_dataset("mnist5k", "train")
    real_f, real_logits = predict(net, held.images)
    train_f, _ = predict(net, train.images)
    report: dict = {"n": n, "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed,
                    "classifier_heldout_accuracy": float((real_logits.argmax(1) == held.labels).float().mean())}
    report["floor_train_vs_heldout"] = feature_metrics(train_f.numpy(), real_f.numpy())

    def run(g: float, st: int, smp: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        t0 = time.time()
        x, y = generate(model, schedule, n, guidance=g, sampler=smp, steps=st, seed=seed)
        x = quantize(x)
        f, logits = predict(net, x)
        m = feature_metrics(f.numpy(), real_f.numpy())
        m["class_accuracy"] = float((logits.argmax(1) == y).float().mean()) if y is not None else None
        m["seconds"] = time.time() - t0
        log(f"{smp}-{st} guidance {g}: {m}")
        return x, y, m

    x_main, y_main, report["main"] = run(guidance, steps, sampler)
    report["guidance_sweep"] = {str(g): (report["main"] if g == guidance else run(g, steps, sampler)[2])
                                for g in guidance_sweep}
    mem = memorization(x_main, train.images)
    report["memorization"] = {"threshold_ratio": MEMORIZATION_RATIO, "fraction": mem["fraction"],
                              "min_ratio": float(mem["ratio"].min()), "median_ratio": float(np.median(mem["ratio"]))}
    held_mem = memorization(held.images, train.images)
    report["memorization"]["heldout_real_fraction"] = held_mem["fraction"]  # what real, unseen digits score
    if step_sweep:
        report["step_sweep"] = {}
        for st in step_sweep:  # at the full chain T the sweep runs DDPM ancestral; else each ODE sampler
            for smp in (("ddpm",) if st == schedule.num_timesteps else sweep_samplers):
                report["step_sweep"][f"{smp}-{st}"] = run(guidance, st, smp)[2]
    if out_dir is not None:
        out = Path(out_dir)
        save_image(make_grid(x_main[:100], nrow=10), out / "samples_grid.png")
        worst = np.argsort(mem["ratio"])[:8]
        pairs = torch.cat([torch.stack([x_main[i], train.images[mem["nearest"][i]]]) for i in worst])
        save_image(make_grid(pairs, nrow=2), out / "memorization_worst.png")  # sample | nearest training digit
        if step_sweep:
            _plot_steps(report["step_sweep"], out / "fid_vs_steps.png")
        report["files"] = sorted(str(p) for p in out.glob("*.png"))
    return report


def _plot_steps(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sampler, marker in (("ddim", "o-"), ("dpmpp2m", "^-"), ("unipc", "v-"), ("ddpm", "s")):  # one series per sampler, in step order
        names = sorted((k for k in sweep if k.split("-")[0] == sampler), key=lambda k: int(k.split("-")[1]))
        if not names:
            continue
        steps = [int(k.split("-")[1]) for k in names]
        fids = [sweep[k]["fid"] for k in names]
        ax.plot(steps, fids, marker, label={"dpmpp2m": "DPM-Solver++(2M)", "unipc": "UniPC-2"}.get(sampler, sampler.upper()))
        for s_, f_, k in zip(steps, fids, names):
            ax.annotate(k, (s_, f_), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (digit-classifier features)")
    ax.set_title("FID vs steps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
