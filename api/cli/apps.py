"""refine, inpaint, colorize: the DDPM applications, marked and signed like `sample`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddpm_guard.api.cli.common import add_json, add_marking, add_out, add_precision, marking_args, nonnegative_int, positive_int
from ddpm_guard.generator.errors import GuardError


def _run(a: argparse.Namespace, app: str, extra: dict, default_checkpoint=None, **kw) -> int:
    """What every application command does: its inputs checked before any sampling (the model, the input image
    through the safe decoder, the marking and the signer), one `api.usecases.apply`, then one PNG at --out
    (atomic), signed as an AI edit with --sign, and one line (or JSON) out."""
    from ddpm_guard.api import usecases
    from ddpm_guard.api.apps import MASKS, Marking, is_gray
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.fsutil import atomic_write_bytes
    from ddpm_guard.generator.image_io import encode_png, load_image

    key, payload, signer = marking_args(a)
    if Path(a.out).is_dir():
        raise GuardError(f"--out {a.out} is a folder; give the output file's name, e.g. {Path(a.out) / 'out.png'}")
    img = load_image(a.image)
    model, schedule, _ = load_model(a.checkpoint or default_checkpoint)
    marking = Marking(key, payload or 0, a.seed)
    if app == "inpaint":
        kw["known"] = usecases.inpaint_mask(a.mask if a.mask in MASKS else load_image(a.mask), img, a.seed)
        extra = {**extra, "filled_pixels": int((kw["known"] == 0).sum())}
    if app == "colorize" and not is_gray(img):
        print("ddpm-guard: note: the input has colour; it is colorized from its luma (grey) only", file=sys.stderr)
    out = usecases.apply(app, model, schedule, img, marking=marking, steps=a.steps, eta=a.eta, jump=a.jump,
                         repeats=a.repeats, precision=a.precision, **kw)
    png = encode_png(out)
    fingerprint = None if key is None else key.fingerprint
    if signer is not None:
        png = usecases.sign(png, signer, title=Path(a.out).name, edit=True,
                            assertion={"application": app, "payload": None if key is None else f"{marking.payload:08x}",
                                       "key_fingerprint": fingerprint})
    try:
        atomic_write_bytes(Path(a.out), png)  # creates the parent folder
    except OSError as e:
        raise GuardError(f"{a.out}: cannot write the output ({e.strerror})") from None
    rec = {"path": str(a.out), "application": app, "size": [int(out.shape[-1]), int(out.shape[-2])],
           "watermarked": key is not None, "signed": signer is not None, "seed": a.seed, **extra}
    if key is not None:
        rec.update(payload=f"{marking.payload:08x}", key_fingerprint=fingerprint)
    print(json.dumps(rec) if a.json else f"wrote {a.out} ({app}, {rec['size'][0]}x{rec['size'][1]}"
          + (", watermarked" if key is not None else "") + (", signed" if signer is not None else "") + ")")
    return 0


def cmd_refine(a: argparse.Namespace) -> int:
    return _run(a, "refine", {"scale": a.scale, "deblur": a.deblur}, scale=a.scale, deblur=a.deblur)


def cmd_inpaint(a: argparse.Namespace) -> int:
    return _run(a, "inpaint", {"mask": a.mask})


def cmd_colorize(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.checkpoint import BUNDLED_COLOR

    return _run(a, "colorize", {}, BUNDLED_COLOR, samples=a.samples)


def _app_parser(sub, name: str, help_: str, checkpoint_help: str) -> argparse.ArgumentParser:
    from ddpm_guard.api.apps import DEFAULT_ETA, DEFAULT_STEPS

    ap = sub.add_parser(name, help=help_)
    ap.add_argument("--image", required=True, help="input image (PNG, JPEG, WebP ...)")
    add_out(ap, "output PNG file")
    ap.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"DDNM steps (default {DEFAULT_STEPS})")
    ap.add_argument("--eta", type=float, default=DEFAULT_ETA,
                    help=f"DDIM eta of the run (default {DEFAULT_ETA}; a watermark key forces 0)")
    ap.add_argument("--jump", type=nonnegative_int, default=None,
                    help="time travel: go back this many steps (RePaint); default 10 for inpaint without a key, else 0")
    ap.add_argument("--repeats", type=positive_int, default=None,
                    help="time travel: pass each stretch this many times; default 5 for inpaint without a key, else 1")
    ap.add_argument("--seed", type=int, default=0)
    add_precision(ap, "auto (default): bf16 only where the hardware runs it natively")
    ap.add_argument("--checkpoint", default=None, help=checkpoint_help)
    add_marking(ap, "key file: embed the watermark (deterministic run)",
                "hex payload of the watermark, up to 32 bits (default 0)",
                "sign the output with C2PA + IPTC XMP as an AI edit (keys new-signer makes one)")
    add_json(ap, "print one JSON line")
    return ap


def register(sub) -> None:
    rf = _app_parser(sub, "refine", "super-resolve (--scale 2|4) or deblur (--deblur SIGMA) an image with DDNM",
                     "model (default: the bundled digit model, 28x28 grey)")
    how = rf.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=int, default=None, help="upscale factor, 2 or 4: the input is model size / scale")
    how.add_argument("--deblur", type=float, default=None, metavar="SIGMA", help="undo a Gaussian blur of this std (pixels)")
    rf.set_defaults(func=cmd_refine)
    ip = _app_parser(sub, "inpaint", "fill the masked pixels of an image with DDNM; known pixels are kept exactly",
                     "model (default: the bundled digit model, 28x28 grey)")
    ip.add_argument("--mask", required=True,
                    help="mask image (white = fill, black = keep, same size) or a built-in: box, half, strokes")
    ip.set_defaults(func=cmd_inpaint)
    co = _app_parser(sub, "colorize", "add colour to a grey photo of any size (bundled 32x32 colour model; luma kept exactly)",
                     "colour model (default: the bundled photos32 model)")
    co.add_argument("--samples", type=positive_int, default=None,
                    help="average the colours of this many runs (default 4 without a key, 1 with one)")
    co.set_defaults(func=cmd_colorize)
