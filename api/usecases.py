"""The jobs the CLI and the service share. A command handler and a route that do the same job call the
same function here, so a fix is made once:

- prompt -> label                      `prompt_label`
- the sampling configuration           `sampling` (`--fast` and the default guidance)
- generate + mark                      `generate_images`, then `sign` / `sign_files` (C2PA + IPTC XMP)
- the applications                     `apply` (refine, inpaint, colorize; the same marking as generate)
- an account's signed outputs          `generate_for_account`, `apply_for_account` (the service's payload = account id)
- the audit's scan specification       `audit_spec`

Functions take plain arguments and the loaded `api.runtime.Runtime`, never an argparse Namespace or a request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm_guard.api import apps
from ddpm_guard.api.runtime import SERVICE_KEY_LABEL
from ddpm_guard.generator.errors import GuardError

PRECISION = "auto"  # the service's: bf16 where the hardware runs it natively: 2.4x, watermark unchanged (BENCHMARKS.md)


def prompt_label(prompt: str | None, label: int | None, *, prefix: str = "--") -> int | None:
    """The class a text prompt names (the bundled prompt mapper; an off-topic prompt is refused), or `label`."""
    if prompt is None:
        return label
    if label is not None:
        raise GuardError(f"give {prefix}prompt or {prefix}label, not both")
    from ddpm_guard.generator.text import load_prompt_model

    return load_prompt_model().label_for(prompt)


@dataclass
class Sampling:
    """What a generation runs with: the network, its schedule, the sampler, its steps and the guidance scale."""
    model: torch.nn.Module
    schedule: object
    sampler: str
    steps: int | None
    guidance: float


def sampling(*, fast: bool = False, checkpoint: str | None = None, sampler: str | None = None, steps: int | None = None,
             guidance: float | None = None, loaded: tuple | None = None, fast_config=None, prefix: str = "--") -> Sampling:
    """The sampling configuration. `fast`: the bundled distilled student with its measured sampler, steps and
    guidance (a checkpoint, sampler or steps given with it are refused); otherwise `loaded` (model, schedule) or the
    checkpoint, DDIM, and the default guidance scale. `fast_config`: a loader of the Fast record (the service keeps
    one loaded); `prefix` names the options in messages ("--" on the command line, "" for the service's fields)."""
    from ddpm_guard.generator.checkpoint import load_fast, load_model
    from ddpm_guard.generator.pipeline import DEFAULT_GUIDANCE

    if fast:
        given = [n for n, v in (("checkpoint", checkpoint), ("sampler", sampler), ("steps", steps)) if v is not None]
        if given:
            raise GuardError(f"{prefix}fast picks its own steps, sampler and model; drop "
                             + ", ".join(prefix + n for n in given))
        f = (fast_config or load_fast)()
        return Sampling(f.model, f.schedule, f.sampler, f.steps, f.guidance if guidance is None else guidance)
    model, schedule = loaded if loaded is not None else load_model(checkpoint)[:2]
    return Sampling(model, schedule, sampler or "ddim", steps, DEFAULT_GUIDANCE if guidance is None else guidance)


def generate_images(s: Sampling, n: int, *, key=None, payload: int = 0, guided_mark: bool = False,
                    decoder: str | None = None, **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images (and their labels) from `s`; with a watermark key, marked (the x_T mark, and the guided mark toward
    `decoder` when asked: a model the decoder cannot read is refused before sampling). `kw`: label, seed, eta,
    variance, precision, progress."""
    kw = dict(guidance=s.guidance, sampler=s.sampler, steps=s.steps, **kw)
    if key is None:
        if guided_mark:
            raise GuardError("the guided mark needs a watermark key")
        from ddpm_guard.generator.pipeline import generate

        return generate(s.model, s.schedule, n, **kw)
    from ddpm_guard.watermark.marking import MarkSpec, generate_marked

    return generate_marked(s.model, s.schedule, key, payload, n, MarkSpec.of(guided_mark, decoder), **kw)


def sign(png: bytes, signer, *, title: str, assertion: dict, edit: bool = False) -> bytes:
    """The PNG with the IPTC XMP source type and a signed C2PA manifest: made from nothing, or with `edit` an AI
    edit of an input ("composite with trained algorithmic media")."""
    from ddpm_guard.provenance.c2pa import COMPOSITE_TRAINED, TRAINED_ALGORITHMIC_MEDIA, sign_png

    return sign_png(png, signer, title=title, assertion=assertion,
                    source_type=COMPOSITE_TRAINED if edit else TRAINED_ALGORITHMIC_MEDIA)


def sign_files(paths: list[Path], signer, assertion: dict) -> None:
    """Rewrite PNG files in place, signed (atomic writes)."""
    from ddpm_guard.generator.fsutil import atomic_write_bytes

    for p in paths:
        atomic_write_bytes(p, sign(Path(p).read_bytes(), signer, title=Path(p).name, assertion=assertion))


def apply(app: str, model: torch.nn.Module, schedule, img: torch.Tensor, *, marking: apps.Marking,
          known: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """One application's output for a (C, H, W) image: refine (kw scale or deblur), inpaint (`known`: the mask,
    1 = keep) or colorize (kw samples); kw also steps, eta, jump, repeats, precision."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if app == "refine":
        return apps.refine(model, schedule, img, marking=marking, **kw)
    if app == "inpaint":
        if known is None:
            raise GuardError("inpaint needs a mask")
        return apps.inpaint_image(model, schedule, img, known, marking=marking, **kw)
    if app == "colorize":
        return apps.colorize(model, schedule, img, marking=marking, **kw)
    raise GuardError(f"unknown application {app!r}; use refine, inpaint or colorize")


def inpaint_mask(mask: str | torch.Tensor, img: torch.Tensor, seed: int) -> torch.Tensor:
    """The known mask (1, 1, H, W) from a built-in name (box, half, strokes) or a decoded mask image."""
    if isinstance(mask, str):
        return apps.built_in_mask(mask, img.shape[-2], img.shape[-1], seed)
    return apps.mask_from_image(mask, tuple(img.shape[-2:]))


def _service_marking(rt) -> None:
    if rt.service_key is None or rt.signer is None:
        raise GuardError("the service has no watermark key or signer; restart it to create them")


def generate_for_account(rt, account, n: int, *, label: int | None = None, steps: int | None = None,
                         seed: int | None = None, guidance: float | None = None, fast: bool = False,
                         guided_mark: bool = False) -> list[dict]:
    """n watermarked, signed PNGs for an account: the watermark's payload is the account id, and the C2PA manifest
    names the account. `guided_mark` adds the guided mark toward the service's decoder. [{filename, png, label,
    payload, seed}]."""
    from ddpm_guard.generator.image_io import encode_png

    _service_marking(rt)
    if not 1 <= n <= rt.settings.max_generate:
        raise GuardError(f"n must be between 1 and {rt.settings.max_generate}, got {n}")
    s = sampling(fast=fast, steps=steps, guidance=guidance, loaded=(rt.model, rt.schedule), fast_config=rt.fast_config,
                 prefix="")
    seed = secrets.randbits(31) if seed is None else seed
    images, labels = generate_images(s, n, key=rt.service_key, payload=account.id, guided_mark=guided_mark,
                                     decoder=rt.settings.watermark_decoder, label=label, seed=seed, precision=PRECISION)
    payload = f"{account.id:08x}"
    out = []
    for i, img in enumerate(images):
        lab = None if labels is None else int(labels[i])
        name = f"ddpm-guard_{seed}_{i:03d}" + (f"_label{lab}" if lab is not None else "") + ".png"
        png = sign(encode_png(img), rt.signer, title=name,
                   assertion={"account": account.name, "payload": payload, "key_label": SERVICE_KEY_LABEL,
                              "guided_mark": guided_mark})
        out.append({"filename": name, "png": png, "label": lab, "payload": payload, "seed": seed})
    return out


def apply_for_account(rt, account, app: str, img: torch.Tensor, *, seed: int | None = None,
                      steps: int | None = None, **kw) -> dict:
    """One application output for an account, marked like `generate_for_account` and signed as an AI edit of the
    upload. {filename, png, payload, seed, width, height}."""
    from ddpm_guard.generator.image_io import encode_png

    _service_marking(rt)
    steps = apps.DEFAULT_STEPS if steps is None else steps
    if not 1 <= steps <= rt.settings.max_app_steps:
        raise GuardError(f"steps must be between 1 and {rt.settings.max_app_steps}, got {steps}")
    seed = secrets.randbits(31) if seed is None else seed
    if app == "colorize":
        if rt.color is None:
            raise GuardError("this service has no colour model installed")
        model, schedule = rt.color
    else:
        model, schedule = rt.model, rt.schedule
    out = apply(app, model, schedule, img, marking=apps.Marking(rt.service_key, account.id, seed), steps=steps,
                precision=PRECISION, **kw)
    name = f"ddpm-guard_{app}_{seed}.png"
    payload = f"{account.id:08x}"
    png = sign(encode_png(out), rt.signer, title=name, edit=True,
               assertion={"account": account.name, "payload": payload, "key_label": SERVICE_KEY_LABEL,
                          "application": app})
    return {"filename": name, "png": png, "payload": payload, "seed": seed, "width": int(out.shape[-1]),
            "height": int(out.shape[-2])}


def audit_key_files(settings, extra: list[str] | tuple = (), *, ring: bool = False) -> list[str]:
    """The key files of an audit's deep watermark check: the home's key ring when `ring`, plus `extra`."""
    from ddpm_guard.api.runtime import key_files

    keys = [str(p) for p in key_files(settings.keys_dir)] if ring else []
    keys += list(extra)
    if ring and not keys:
        raise GuardError(f"--watermark needs keys: pass --key FILE or use a service home with keys ({settings.keys_dir})")
    return keys


def audit_spec(settings, *, key_files: list[str] | tuple = (), training: str | None = None,
               trust_anchors: str | None = None):
    """The audit's ScanSpec from the settings (detector, generator, alpha, decoder, the account database when there
    is one, the trust anchors unless given), the key files of the deep check and the memorization set. A wrong or
    open key, a decoder folder that is no calibrated decoder and an unknown data set fail here, not in a worker."""
    from ddpm_guard.api.audit.engine import ScanSpec
    from ddpm_guard.api.runtime import check_decoder
    from ddpm_guard.watermark.keys import load_key

    for k in key_files:
        load_key(k)
    if key_files:
        check_decoder(settings.watermark_decoder)
    if training:
        from ddpm_guard.generator.data import load_dataset

        load_dataset(training, "train")
    if trust_anchors is None:
        from ddpm_guard.provenance.c2pa import load_trust_anchors

        trust_anchors = load_trust_anchors(settings.anchor_files())
    return ScanSpec(detector=settings.detector, checkpoint=settings.checkpoint, key_files=tuple(map(str, key_files)),
                    trust_anchors=trust_anchors, alpha=settings.alpha,
                    db_url=settings.db_url if settings.has_store else None, training=training,
                    decoder=settings.watermark_decoder)


__all__ = ["prompt_label", "Sampling", "sampling", "generate_images", "sign", "sign_files", "apply", "inpaint_mask",
           "generate_for_account", "apply_for_account", "audit_key_files", "audit_spec", "SERVICE_KEY_LABEL", "PRECISION"]
