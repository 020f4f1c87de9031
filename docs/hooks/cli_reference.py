"""MkDocs hook: the command-line reference, generated from vaelab's own argparse parsers at build time.

`reference/cli.md` holds the marker `<!-- cli-reference -->`; it is replaced by one section per command with the
`vaelab COMMAND --help` text, so the page cannot drift from the parsers."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:   # argparse exposes subcommands only through its private action list
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Markdown: `vaelab --help`, then each command's help, in the order `vaelab --help` lists them."""
    from vaelab.cli.main import parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"             # argparse wraps at the terminal width: fix it for the page
    try:
        top = parser()
        parts = ["## vaelab", "", "```text", top.format_help().rstrip(), "```", ""]
        for name in _commands(top):
            sub = _commands(parser(name))[name]    # sweep, compare and stack are declared in full only by name
            parts += [f"## vaelab {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
