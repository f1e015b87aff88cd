"""THE audit scoring function: a batch of (path, bytes | None, error | None) -> flat rows.

Both engines (local, Ray) call `score_batch`, so their rows are equal. A row is the scan's verdict
(api.scan.scan_items: watermark, metadata, classifier) flattened for CSV, plus the file's size, its
perceptual hash (near duplicates) and, with a training set, the memorization ratio of
`generator.metrics.memorization` against it. Floats are rounded to 6 decimals so a resumed run,
whose batches differ, writes the same rows as an uninterrupted one.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ddpm_guard.api.scan import Scanner, scan_items

COLUMNS = ("path", "verdict", "p_synthetic", "threshold", "edit", "in_domain", "watermark_detected", "watermark_p", "c2pa_status",
           "digital_source_type", "account", "sha256", "bytes", "format", "width", "height", "phash",
           "memorization_ratio", "explanation", "error")
ROUND = 6


def phash(img) -> str:
    """64-bit DCT perceptual hash (63 bits used): grey 32x32, the 8x8 lowest DCT frequencies without DC,
    one bit per coefficient above their median. Re-saved, resized or slightly noisy copies of an image
    keep the same hash or land within 2 bits (bench/audit/phash_threshold.py; see report.DUPLICATE_BITS).
    dHash was measured first and rejected: on black backgrounds its ties flip with any noise (0.4 % of
    JPEG q75 copies within 2 bits, against 98 % for this hash)."""
    from PIL import Image
    from scipy.fft import dctn

    a = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    d = dctn(a, norm="ortho")[:8, :8].reshape(-1)[1:]
    bits = d > np.median(d)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _r(x):
    return None if x is None else round(float(x), ROUND)


def flatten(row: dict, nbytes: int | None) -> dict:
    wm, meta = row.get("watermark") or {}, row.get("metadata") or {}
    c2pa = meta.get("c2pa") or {}
    img = row.get("image") or {}
    return {"path": row["path"], "verdict": row["verdict"], "p_synthetic": _r(row.get("p_synthetic")),
            "threshold": _r(row.get("threshold")), "edit": row.get("edit"), "in_domain": row.get("in_domain"), "watermark_detected": wm.get("detected") if wm.get("checked") else None,
            "watermark_p": _r(wm.get("p_value")), "c2pa_status": c2pa.get("status"),
            "digital_source_type": c2pa.get("digital_source_type") or meta.get("iptc_digital_source_type"),
            "account": row.get("account"), "sha256": row.get("sha256"), "bytes": nbytes, "format": img.get("format"),
            "width": img.get("width"), "height": img.get("height"), "phash": None, "memorization_ratio": None,
            "explanation": row.get("explanation"), "error": row.get("error")}


def score_batch(items: list[tuple[str, bytes | None, str | None]], scanner: Scanner | None,
                training: torch.Tensor | None = None) -> list[dict]:
    """Flat rows for a batch. `scanner` may be None only when every item already carries an error."""
    from ddpm_guard.generator.image_io import stack_fitted, to_tensor

    images: dict = {}
    rows = [flatten(r, None if data is None else len(data))
            for r, (_, data, _) in zip(scan_items(items, scanner, images), items)]
    decoded = []
    for i, img in sorted(images.items()):
        rows[i]["phash"] = phash(img)
        decoded.append((rows[i], img))
    if training is not None and decoded:
        from ddpm_guard.generator.metrics import memorization

        shape = tuple(training.shape[1:])
        x = stack_fitted([to_tensor(img) for _, img in decoded], shape)
        ratios = memorization(x, training)["ratio"]
        for (row, _), r in zip(decoded, ratios):
            row["memorization_ratio"] = _r(r)
    return rows


def thumbnail_png(data: bytes, size: int = 96) -> bytes:
    from PIL import Image

    from ddpm_guard.generator.image_io import decode_image

    img = decode_image(data)
    img = img.resize((size, size * img.height // max(1, img.width)), Image.Resampling.NEAREST if img.width < size else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ScanSpec:
    """Plain arguments from which any process (a Ray actor too) builds the same Scanner. Keys travel
    as file paths, never as key material: WatermarkKey refuses to be pickled."""

    def __init__(self, *, detector: str | None = None, checkpoint: str | None = None, key_files: tuple = (),
                 trust_anchors: str | None = None, alpha: float = 1e-3, db_url: str | None = None,
                 training: str | None = None, device: str | None = None, threads: int | None = None,
                 decoder: str | None = None):
        self.detector, self.checkpoint, self.key_files = detector, checkpoint, tuple(map(str, key_files))
        self.decoder = decoder  # the guided mark's decoder folder (None: the bundled one)
        self.trust_anchors, self.alpha, self.db_url, self.training, self.device = trust_anchors, alpha, db_url, training, device
        self.threads = threads  # torch threads in the process that builds it (None: leave as is)

    def build(self) -> tuple[Scanner, torch.Tensor | None]:
        from ddpm_guard.api.runtime import load_key_ring
        from ddpm_guard.detector.predict import load_detector

        if self.threads:
            torch.set_num_threads(self.threads)
        keys = load_key_ring(None, self.key_files)
        model = schedule = None
        if keys:
            from ddpm_guard.generator.checkpoint import load_model

            model, schedule, _ = load_model(self.checkpoint, device=self.device)
        account_name = None
        if self.db_url:
            from ddpm_guard.api.store import Store

            account_name = Store(self.db_url).account_name
        scanner = Scanner(load_detector(self.detector, device=self.device), model, schedule, keys, self.trust_anchors,
                          self.alpha, account_name, self.decoder)
        training = None
        if self.training:
            from ddpm_guard.generator.data import load_dataset

            training = load_dataset(self.training, "train").images
        return scanner, training
