"""Write docs/cli.md from the parser itself: every command's and subcommand's --help, in one page.

    python docs/cli_reference.py            # rewrite docs/cli.md
    python docs/cli_reference.py --check    # exit 1 when docs/cli.md is stale (tests/test_docs.py runs this)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUT = Path(__file__).with_name("cli.md")
WIDTH = "100"  # argparse wraps at $COLUMNS: fixed, so the page does not depend on the terminal


def _commands(parser: argparse.ArgumentParser, prefix: str):
    """(full command name, parser) for the parser and every subcommand below it, depth first, in declared order."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def render() -> str:
    os.environ["COLUMNS"] = WIDTH
    from ddpm_guard.api.cli import build_parser

    parts = ["# ddpm-guard command reference", "",
             "Generated from the parser by `python docs/cli_reference.py`; `make test` fails when this page is stale.", ""]
    for name, parser in _commands(build_parser(), "ddpm-guard"):
        parts += [f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = render()
    if check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `python docs/cli_reference.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
