"""The ddpm-guard command line, one module per command group, each with `register(subparsers)` beside its
handlers; `common` declares the shared argument groups and printers once. A handler parses, calls one library or
`api.usecases` function and prints.

User mistakes raise GuardError: we print its message on stderr and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_guard.api.cli import apps, detect, generate, keys, scan, serve, watermark, weights
from ddpm_guard.generator.errors import GuardError

# the order of `ddpm-guard --help`
GROUPS = (generate, keys, scan, serve, watermark, apps, detect, weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddpm-guard", description="DDPM generation, watermarking and synthetic-image detection.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except GuardError as e:
        print(f"ddpm-guard: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm-guard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ddpm-guard scan --json ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
