"""The loaded state the CLI and the service share: settings, database, key ring, signer, models.

`prepare_home` creates what a first start needs (0700 home, a 0600 service key, a local C2PA CA and
signer); `open_runtime` loads it all once. The service calls both in its lifespan, never at import.
"""

from __future__ import annotations

import io
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from generator.errors import GuardError
from api.scan import Scanner
from api.settings import Settings
from api.store import Account, Store

SERVICE_KEY_LABEL = "service"
PRECISION = "auto"  # bf16 where the hardware runs it natively: 2.4x, watermark unchanged (BENCHMARKS.md)


def prepare_home(settings: Settings) -> None:
    """First start: the home folder (0700), the service's watermark key (0600) and a C2PA signer."""
    from watermark.keys import new_key_file
    from provenance.c2pa import new_signer

    try:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.keys_dir.mkdir(exist_ok=True, mode=0o700)
    except OSError as e:
        raise GuardError(f"{settings.home}: cannot create the service home ({e.strerror})") from None
    if not (settings.keys_dir / f"{SERVICE_KEY_LABEL}.key").exists():
        new_key_file(settings.keys_dir / f"{SERVICE_KEY_LABEL}.key")
    if not (settings.signer_dir / "signer.pem").exists():
        new_signer(settings.signer_dir, settings.organization)


def key_files(folder: Path | None) -> list[Path]:
    """The key ring's files: every *.key in `folder` (the home's keys/), sorted; none if it is absent."""
    return sorted(folder.glob("*.key")) if folder is not None and folder.is_dir() else []


def load_key_ring(folder: Path | None, extra: list[str] | tuple = ()) -> dict:
    """{label: key} for every *.key in `folder` plus extra key files; label = file stem (primed if taken)."""
    from watermark.keys import load_key

    ring = {}
    for f in key_files(folder) + [Path(p) for p in extra]:
        label = f.stem
        while label in ring:
            label += "'"
        ring[label] = load_key(f)
    return ring


@dataclass
class Runtime:
    settings: Settings
    store: Store | None
    scanner: Scanner
    model: torch.nn.Module
    schedule: object
    signer: object | None  # provenance.c2pa.ManifestSigner
    service_key: object | None  # watermark.keys.WatermarkKey
    color: tuple | None = None  # (model, schedule) of the colour model, when one is installed
    fast: object | None = None  # generator.checkpoint.Fast: the `fast` configuration, loaded on first use

    def fast_config(self):
        if self.fast is None:
            from generator.checkpoint import load_fast

            self.fast = load_fast(next(self.model.parameters()).device)
        return self.fast


def open_runtime(settings: Settings, *, extra_keys: list[str] | None = None, watermark: bool = True,
                 color: bool = False) -> Runtime:
    """Load the models and the home's state. `watermark=False` skips the watermark check in scans;
    `color=True` also loads the colour model (the service's /v1/colorize; a CLI scan has no use for it)."""
    from detector.predict import load_detector
    from generator.checkpoint import load_model
    from provenance.c2pa import load_signer, load_trust_anchors

    store = Store(settings.db_url) if settings.has_store else None
    model, schedule, _ = load_model(settings.checkpoint)
    ring = load_key_ring(settings.keys_dir, extra_keys or ()) if watermark else {}
    anchors = load_trust_anchors(settings.anchor_files())
    if ring:
        check_decoder(settings.watermark_decoder)
    scanner = Scanner(detector=load_detector(settings.detector), model=model if ring else None, schedule=schedule,
                      keys=ring, trust_anchors=anchors, alpha=settings.alpha, account_name=store.account_name if store else None,
                      decoder=settings.watermark_decoder)
    signer = load_signer(settings.signer_dir) if (settings.signer_dir / "signer.pem").exists() else None
    return Runtime(settings, store, scanner, model, schedule, signer, ring.get(SERVICE_KEY_LABEL),
                   _load_color(settings.color_checkpoint) if color else None)


def check_decoder(folder: str | None) -> None:
    """A watermark decoder folder that is no calibrated decoder: one message (GuardError) before any work."""
    if folder is not None:
        from watermark.guided import decoder_and_center

        decoder_and_center(folder)


def _load_color(folder: str | None) -> tuple | None:
    from generator.checkpoint import BUNDLED_COLOR, load_model

    if folder is None and not (BUNDLED_COLOR / "config.json").exists():
        return None
    model, schedule, _ = load_model(folder or BUNDLED_COLOR)
    return model, schedule


def generate_signed(rt: Runtime, account: Account, n: int, *, label: int | None = None, steps: int | None = None,
                    seed: int | None = None, guidance: float | None = None, fast: bool = False,
                    guided_mark: bool = False) -> list[dict]:
    """n watermarked, signed PNGs for an account: the watermark's payload is the account id, and the
    C2PA manifest names the account. `guided_mark` adds the guided mark, toward the service's decoder
    (settings.watermark_decoder, else the bundled one), which the scan reads. [{filename, png, label, payload, seed}]."""
    from generator.image_io import encode_png
    from generator.pipeline import DEFAULT_GUIDANCE
    from watermark.embed import generate_watermarked
    from provenance.c2pa import sign_png

    if rt.service_key is None or rt.signer is None:
        raise GuardError("the service has no watermark key or signer; restart it to create them")
    if not 1 <= n <= rt.settings.max_generate:
        raise GuardError(f"n must be between 1 and {rt.settings.max_generate}, got {n}")
    model, schedule, sampler = rt.model, rt.schedule, "ddim"
    if fast:
        if steps is not None:
            raise GuardError("fast picks its own steps; drop steps")
        f = rt.fast_config()
        model, schedule, sampler, steps = f.model, f.schedule, f.sampler, f.steps
        guidance = f.guidance if guidance is None else guidance
    seed = secrets.randbits(31) if seed is None else seed
    images, labels = generate_watermarked(model, schedule, rt.service_key, account.id, n, label=label,
                                          steps=steps, seed=seed, sampler=sampler, precision=PRECISION,
                                          guidance=DEFAULT_GUIDANCE if guidance is None else guidance,
                                          guided=guided_mark, decoder=rt.settings.watermark_decoder)
    payload = f"{account.id:08x}"
    out = []
    for i, img in enumerate(images):
        lab = None if labels is None else int(labels[i])
        name = f"ddpm-guard_{seed}_{i:03d}" + (f"_label{lab}" if lab is not None else "") + ".png"
        png = sign_png(encode_png(img), rt.signer, title=name,
                       assertion={"account": account.name, "payload": payload, "key_label": SERVICE_KEY_LABEL,
                                  "guided_mark": guided_mark})
        out.append({"filename": name, "png": png, "label": lab, "payload": payload, "seed": seed})
    return out


def apply_signed(rt: Runtime, account: Account, app: str, img: torch.Tensor, *, seed: int | None = None,
                 steps: int | None = None, **kw) -> dict:
    """One application output for an account, marked like /v1/generate: the service key's watermark with
    the account id as payload, and a C2PA manifest that calls it an AI edit of the upload.
    `app` is refine, inpaint or colorize; `kw` goes to that function. {filename, png, payload, seed, width, height}."""
    from api import apps
    from generator.image_io import encode_png
    from provenance.c2pa import COMPOSITE_TRAINED, sign_png

    if rt.service_key is None or rt.signer is None:
        raise GuardError("the service has no watermark key or signer; restart it to create them")
    steps = apps.DEFAULT_STEPS if steps is None else steps
    if not 1 <= steps <= rt.settings.max_app_steps:
        raise GuardError(f"steps must be between 1 and {rt.settings.max_app_steps}, got {steps}")
    seed = secrets.randbits(31) if seed is None else seed
    marking = apps.Marking(rt.service_key, account.id, seed)
    if app == "colorize":
        if rt.color is None:
            raise GuardError("this service has no colour model installed")
        out = apps.colorize(*rt.color, img, steps=steps, marking=marking, precision=PRECISION)
    elif app == "refine":
        out = apps.refine(rt.model, rt.schedule, img, steps=steps, marking=marking, precision=PRECISION, **kw)
    elif app == "inpaint":
        out = apps.inpaint_image(rt.model, rt.schedule, img, kw.pop("known"), steps=steps, marking=marking,
                                 precision=PRECISION, **kw)
    else:
        raise ValueError(f"unknown application {app!r}")
    name = f"ddpm-guard_{app}_{seed}.png"
    payload = f"{account.id:08x}"
    png = sign_png(encode_png(out), rt.signer, title=name, source_type=COMPOSITE_TRAINED,
                   assertion={"account": account.name, "payload": payload, "key_label": SERVICE_KEY_LABEL,
                              "application": app})
    return {"filename": name, "png": png, "payload": payload, "seed": seed, "width": int(out.shape[-1]),
            "height": int(out.shape[-2])}


def zip_files(files: list[dict]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are already compressed
        for f in files:
            z.writestr(f["filename"], f["png"])
    return buf.getvalue()


__all__ = ["Runtime", "open_runtime", "prepare_home", "key_files", "load_key_ring", "check_decoder", "generate_signed", "apply_signed",
           "zip_files"]
