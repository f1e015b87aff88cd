"""The trained detector as one object: network + calibration (+ the optional zero-shot fusion).

`Detector.score` works on tensors; `detect_files` is what the CLI and the service call: it reads
each file through the safe decoder and reports unreadable files per file instead of stopping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm_guard.generator.checkpoint import default_device, load_tensors, read_config, save_json, save_tensors
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import decode_image, expand_paths, fit_to, read_bytes, to_tensor
from ddpm_guard.generator.microbatch import in_fixed_batches
from ddpm_guard.detector.calibrate import EditRouter, Fusion, Platt
from ddpm_guard.detector.domain import DomainRules, DomainScore, verdict
from ddpm_guard.detector.experts import EditExpert, expert_features
from ddpm_guard.detector.model import DetectorConfig, DetectorNet
from ddpm_guard.detector.stats import N_STATS

DETECTOR_FORMAT = "ddpm-guard/detector-v1"
BUNDLED_DETECTOR = Path(__file__).parent / "weights" / "default"
# images per network call: fixed, so a score never depends on its batch; 64 was the fastest measured on the
# 2-core CPU (6,980 images/s, against 6,330 at 32 and 4,100 at 256; AVX-512)
MICRO_BATCH = 64


class Detector:
    """Immutable after loading: scoring mutates no shared state, so one instance serves many requests."""

    def __init__(self, net: DetectorNet, platt: Platt, threshold: float, fusion: Fusion | None = None,
                 fusion_threshold: float | None = None, meta: dict | None = None,
                 domain_score: DomainScore | None = None, router: EditRouter | None = None,
                 expert: EditExpert | None = None):
        # threshold: the edit-blind one (the highest of the per-edit 1 %-FPR thresholds); with a router, each
        # image is judged at the threshold of the benign edit it is guessed to have gone through
        self.net, self.platt, self.threshold, self.router = net.eval(), platt, threshold, router
        self.domain_score = domain_score
        self.expert = expert  # the judge of the files routed to an edit (detector.experts); needs a router
        self.fusion, self.fusion_threshold = fusion, fusion_threshold
        self.meta = meta or {}
        self.domain = DomainRules(**self.meta.get("domain", {}))  # built once, not per image
        self._generator = None  # loaded on first zero-shot use

    @property
    def config(self) -> DetectorConfig:
        return self.net.config

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = MICRO_BATCH) -> np.ndarray:
        """Logits for (B, C, H, W) images (see `forward`)."""
        return self.forward(images, batch_size)[0]

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, batch_size: int = MICRO_BATCH,
                with_stats: bool = False) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray | None]:
        """(logits, pooled features, the fitted input, the stroke statistics or None) for (B, C, H, W) images; the
        statistics (of the floored image, detector.stats) come with_stats or when the router or the domain score
        needs them. Run in fixed micro-batches of `batch_size` (the last one padded): the sums inside a convolution are ordered by
        the batch's size, so a fixed size makes every image's score independent of how images were grouped (a
        scan, an audit batch, a Ray actor agree exactly)."""
        cfg = self.config
        dev = next(self.net.parameters()).device
        x = fit_to(images, (cfg.in_chans, cfg.image_size, cfg.image_size))
        with_stats = with_stats or self.router is not None or (self.domain_score is not None
                                                                and self.domain_score.needs_stats)
        def run(b: torch.Tensor):
            lo, fe, *st = self.net.forward_with_features(b.to(dev), with_stats)
            return lo.float().cpu(), fe.float().cpu(), (st[0].float().cpu() if st else None)

        out = in_fixed_batches(run, x, batch_size)
        if out is None:
            return np.zeros(0), torch.zeros(0, self.net.net.num_features), x, None
        logits, feats, stats = out
        return (logits.numpy().astype(np.float64), feats, x, stats.numpy() if with_stats else None)

    def in_domain(self, img, score: float | None = None) -> tuple[bool, str | None]:
        """(in_domain, reason) for a decoded PIL image and its domain score (from `score`): the structural
        rules, then the measured score (see detector.domain)."""
        ok, reason = self.domain.check(img, self.config.image_size)
        return verdict(ok, reason, score)

    def generator(self):
        if self._generator is None:
            from ddpm_guard.generator.checkpoint import load_model

            model, schedule, _ = load_model(self.meta.get("generator"), device=next(self.net.parameters()).device)
            self._generator = (model, schedule)
        return self._generator

    def decide(self, logit: np.ndarray, stats: np.ndarray | None,
               fitted: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p_synthetic, the threshold it is judged at, the benign edit it seems to have gone through) per image, from
        the network's logits and the stroke statistics (and the fitted images, which the edit expert also reads):
        with a router, each image goes to the route of its guessed edit, where the edit expert gives the probability
        if it covers that edit, and the route's threshold decides; otherwise the network's calibrated probability,
        the single threshold and no edit (None)."""
        p = self.platt(logit)
        if self.router is None or not len(p):
            return p, np.full(len(p), self.threshold), np.full(len(p), None, dtype=object)
        route = self.router.route(stats)
        edit = np.asarray(self.router.edits, dtype=object)[route]
        if self.expert is not None:  # features and trees only for the images routed to an edit the expert covers
            sel = np.isin(edit, self.expert.edits)
            if sel.any():
                p = p.copy()
                p[sel] = self.expert.prob(expert_features(stats[sel], fitted[torch.from_numpy(sel)]))
        return p, np.asarray(self.router.thresholds)[route], edit

    def score(self, images: torch.Tensor, zero_shot: bool = False) -> dict[str, np.ndarray]:
        """{"p_synthetic", "synthetic", "threshold", "edit", "classifier", "classifier_logit"[, "domain_score"][, "dire",
        "fused"]} for (B, C, H, W); "threshold" is the one each image was judged at (the router's, or the single one),
        "edit" the router's guess (None without one), and p_synthetic the probability of its judge (`decide`);
        "classifier" is the network's alone."""
        logit, feats, fitted, stats = self.forward(images)
        p, thr, edit = self.decide(logit, stats, fitted)
        out = {"classifier_logit": logit, "classifier": self.platt(logit), "p_synthetic": p, "synthetic": p > thr,
               "threshold": thr, "edit": edit}
        if self.domain_score is not None:
            out["domain_score"] = self.domain_score(fitted, feats, stats) if len(fitted) else np.zeros(0)
        if zero_shot:
            if self.fusion is None:
                raise GuardError("this detector has no zero-shot fusion; retrain it with the zero-shot score")
            from ddpm_guard.detector.zeroshot import dire_scores

            model, schedule = self.generator()
            dire = dire_scores(model, schedule, images)
            fused = self.fusion({"classifier_logit": logit, "dire": dire})
            out.update(dire=dire, fused=fused, p_synthetic=fused, synthetic=fused > self.fusion_threshold,
                       threshold=np.full(len(fused), self.fusion_threshold), edit=np.full(len(fused), None, dtype=object))
        return out

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        save_tensors(self.net.state_dict(), folder / "model.safetensors")
        cfg = {"format": DETECTOR_FORMAT, "model": self.config.to_dict(),
               "calibration": {"platt": {"a": self.platt.a, "b": self.platt.b}, "threshold": self.threshold,
                               "router": None if self.router is None else self.router.to_dict(),
                               "expert": None if self.expert is None else self.expert.to_config()},
               "fusion": None if self.fusion is None else {**self.fusion.to_dict(), "threshold": self.fusion_threshold},
               **self.meta, **(extra or {})}
        if self.domain_score is not None:
            self.domain_score.save(folder)
        if self.expert is not None:
            self.expert.save(folder)
        save_json(cfg, folder / "config.json")  # last: a config always points at complete files


def load_detector(folder: str | Path | None = None, device: str | torch.device | None = None) -> Detector:
    folder = Path(folder) if folder is not None else BUNDLED_DETECTOR
    cfg = read_config(folder, DETECTOR_FORMAT)
    try:
        net = DetectorNet(DetectorConfig.from_dict(cfg["model"]))
        cal = cfg["calibration"]
        platt, threshold = Platt(float(cal["platt"]["a"]), float(cal["platt"]["b"])), float(cal["threshold"])
        n_stats = 2 * net.config.in_chans * N_STATS
        router = EditRouter.from_dict(cal["router"], n_stats) if cal.get("router") else None
        expert = EditExpert.load(folder, cal["expert"], n_stats) if cal.get("expert") and router else None
        if expert is not None and set(expert.edits) - set(router.edits):
            raise ValueError("the edit expert names an edit the router has no route for")
        fusion = fusion_threshold = None
        if cfg.get("fusion"):
            f = dict(cfg["fusion"])
            fusion_threshold = float(f.pop("threshold"))
            fusion = Fusion.from_dict(f)
    except (KeyError, TypeError, ValueError) as e:
        why = f"missing field {e}" if isinstance(e, KeyError) else str(e)  # a KeyError's str is only the key
        raise GuardError(f"{folder}/config.json: not a valid detector config ({why})") from None
    tensors, _ = load_tensors(folder / "model.safetensors")
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise GuardError(f"{folder}: detector weights do not match its config ({str(e).splitlines()[0]})") from None
    meta = {k: v for k, v in cfg.items() if k not in ("format", "model", "calibration", "fusion")}
    return Detector(net.to(device or default_device()), platt, threshold, fusion, fusion_threshold, meta,
                    DomainScore.load(folder), router, expert)


def detect_files(paths: list[str], detector: Detector, *, zero_shot: bool = False, batch_size: int = 256,
                 progress: bool = False) -> list[dict]:
    """One row per image: {path, p_synthetic, synthetic, threshold, edit, in_domain, reason, scores} or {path, error} for a file
    that cannot be read. `in_domain` false means the detector does not know this kind of image (see
    detector.domain): `synthetic` is then None, not a verdict.
    Files are decoded one by one (each through the safe decoder) and scored in batches."""
    cfg = detector.config
    mode = "L" if cfg.in_chans == 1 else "RGB"
    items = expand_paths(paths)
    rows: list[dict] = [{"path": str(p)} for p, _ in items]
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([img for _, img, _ in pending])
        s = detector.score(x, zero_shot=zero_shot)
        score_keys = [k for k in ("classifier", "classifier_logit", "domain_score", "dire", "fused") if k in s]
        for j, (i, _, rules) in enumerate(pending):
            ok, reason = verdict(*rules, float(s["domain_score"][j]) if "domain_score" in s else None)
            # out of domain: the score is reported, but no verdict is given on an image the detector does not know
            rows[i].update(p_synthetic=float(s["p_synthetic"][j]), synthetic=bool(s["synthetic"][j]) if ok else None,
                           threshold=float(s["threshold"][j]), edit=s["edit"][j], in_domain=ok, reason=reason,
                           scores={k: float(s[k][j]) for k in score_keys})
        pending.clear()

    for i, (p, problem) in enumerate(tqdm(items, disable=not progress, desc="detect", leave=False)):
        if problem is not None:
            rows[i]["error"] = problem
            continue
        try:
            pil = decode_image(read_bytes(p), name=str(p))
        except GuardError as e:
            rows[i]["error"] = str(e)
            continue
        img = to_tensor(pil.convert(mode) if pil.mode != mode else pil)
        rules = detector.domain.check(pil, cfg.image_size)  # on the decoded file, before any resizing
        pending.append((i, fit_to(img[None], (cfg.in_chans, cfg.image_size, cfg.image_size))[0], rules))
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows
