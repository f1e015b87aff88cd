"""What every command group shares: argument types, the argument groups declared once, and the printers.

A handler parses, calls one library or use-case function (`api.usecases`) and prints. Machine output is
JSON lines (`--json`), human output a table; progress goes to stderr and never under `--json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ddpm_guard.generator.errors import GuardError


def int_at_least(lo: int):
    """An argparse type: a whole number >= lo, refused with one clear message otherwise."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


def nonnegative_float(s: str) -> float:
    """An argparse type: a finite number >= 0 (a time budget), refused with one clear message otherwise."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def folder(s: str) -> Path:
    """An argparse type: a folder path, not empty (an unset shell variable would otherwise mean the working folder)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder")
    return Path(s)


# ---- argument groups, declared once -------------------------------------------------------------------------------

def add_out(p: argparse.ArgumentParser, help: str, *, required: bool = True, default: str | None = None) -> None:
    p.add_argument("--out", required=required, default=default, help=help)


def add_json(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--json", action="store_true", help=help)


PRECISIONS = ("fp32", "bf16", "auto")


def add_precision(p: argparse.ArgumentParser, help: str, default: str = "auto",
                  choices: tuple[str, ...] = PRECISIONS) -> None:
    """The arithmetic of a network pass. Training defaults to bf16 (as the bundled model was trained), every
    inference command to auto (bf16 only where the hardware runs it natively)."""
    p.add_argument("--precision", choices=list(choices), default=default, help=help)


def add_marking(p: argparse.ArgumentParser, key_help: str, payload_help: str, sign_help: str) -> None:
    """--watermark-key, --payload, --sign: how an output is marked and signed (read by `marking_args`)."""
    p.add_argument("--watermark-key", default=None, help=key_help)
    p.add_argument("--payload", default=None, help=payload_help)
    p.add_argument("--sign", default=None, metavar="SIGNER_DIR", help=sign_help)


DECODER_HELP = "read the guided mark with this (private) decoder folder (default: the bundled decoder)"


def add_scan_options(p: argparse.ArgumentParser, *, key_help: str, anchor_help: str, home_help: str,
                     alpha_help: str | None = None, detector_help: str | None = None) -> None:
    """The options a scan and an audit share: extra keys, trust anchors, the service home, alpha, the detector and
    the guided mark's decoder (read back by `scan_settings`)."""
    p.add_argument("--key", action="append", default=[], help=key_help)
    p.add_argument("--trust-anchor", action="append", default=[], help=anchor_help)
    p.add_argument("--home", default=None, help=home_help)
    p.add_argument("--alpha", type=float, default=None, help=alpha_help)
    p.add_argument("--detector", default=None, help=detector_help)
    p.add_argument("--watermark-decoder", default=None, metavar="DECODER_DIR", help=DECODER_HELP)


def add_fake_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fake-cache", type=folder, default=None, metavar="DIR",
                   help="where generated fakes are kept between runs (default runs/detector/fakes under the working "
                        "folder: run from elsewhere, the fakes are made again)")


# ---- reading the shared groups -------------------------------------------------------------------------------------

def marking_args(a: argparse.Namespace):
    """(key, payload, signer) from --watermark-key/--payload/--sign, all None when not given. Read before any
    sampling, so a missing key or signer is refused before minutes of work, not after."""
    key = payload = signer = None
    if a.watermark_key:
        from ddpm_guard.watermark.marking import parse_payload
        from ddpm_guard.watermark.keys import load_key

        key, payload = load_key(a.watermark_key), parse_payload(a.payload)
    elif a.payload is not None:
        raise GuardError("--payload needs --watermark-key")
    if a.sign:
        from ddpm_guard.provenance.c2pa import load_signer

        signer = load_signer(a.sign)
    return key, payload, signer


def scan_settings(a: argparse.Namespace):
    """The settings of a scan or an audit: the service home's, overridden by the command's options."""
    from ddpm_guard.api.settings import load_settings

    return load_settings(a.home, alpha=a.alpha, detector=a.detector, trust_anchors=a.trust_anchor or None,
                         watermark_decoder=a.watermark_decoder)


def out_folder(path: str | Path) -> Path:
    """An output folder, made now: a path that cannot be a folder fails before minutes of training, not after."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{p}: cannot create the output folder ({e.strerror or e})") from None
    return p


def out_file(path: str | Path) -> Path:
    """An output file's folder, made and tried with a scratch file now, so an unwritable place fails before the work."""
    import tempfile

    p = Path(path)
    try:
        out_folder(p.parent)
        with tempfile.NamedTemporaryFile(dir=p.parent):
            pass
    except OSError as e:
        raise GuardError(f"{p}: cannot write there ({e.strerror or e})") from None
    return p


def fake_cache(a: argparse.Namespace) -> Path:
    """The fakes' cache folder, made now, so that a bad path fails before minutes of sampling, not after."""
    from ddpm_guard.detector.train import FAKE_CACHE

    path = a.fake_cache or FAKE_CACHE
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"--fake-cache {path}: cannot use it as a folder ({e.strerror or e})") from None
    return path


# ---- printing ------------------------------------------------------------------------------------------------------

def progress_log(a: argparse.Namespace):
    """Progress lines go to stderr, and not at all under --json (stdout stays machine-readable)."""
    return None if a.json else (lambda m: print(m, file=sys.stderr))


def stderr_log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def emit_report(report: dict, a: argparse.Namespace, name: str) -> int:
    """An eval command's report: saved as --out/NAME when --out is given, printed as JSON."""
    if a.out:
        from ddpm_guard.generator.checkpoint import save_json

        save_json(report, Path(a.out) / name)
    print(json.dumps(report) if a.json else json.dumps(report, indent=2))
    return 0


def exit_status(rows: list[dict]) -> int:
    """2 when none of the inputs could be read (a missing file, an empty folder, only corrupt files: a user
    mistake, said per row after the rows are printed), else 0."""
    if rows and all(r.get("error") for r in rows):
        print(f"ddpm-guard: error: none of the {len(rows)} input(s) could be read (see the error column)", file=sys.stderr)
        return 2
    return 0


def print_rows(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
