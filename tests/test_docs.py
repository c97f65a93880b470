"""The docs hold what is true now: docs/cli.md is generated from the parsers and the options module
(regenerated here and compared), every `pisa-sr` command shown in README.md and docs/*.md parses
with today's parser (flags and choices exist; an upscale names its model files), local links
point at files that exist, and the README stays a manual of at most 300 lines."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import cli_reference  # noqa: E402

from pisa_core.cli.main import build_parser  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`(pisa-sr [^`]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
PLACEHOLDERS = ("...", "…", "[options]", "*")  # synopses, not commands
# Pages that other work in progress adds (images, tiling, training); a link to them is checked once they exist.
PAGES_ADDED_ELSEWHERE = {"docs/images.md", "docs/tiling.md", "docs/training.md"}


def test_cli_reference_is_generated_from_the_parsers():
    assert cli_reference.PAGE.read_text() == cli_reference.render(), \
        f"docs/cli.md differs from the parsers and pisa_core/options.py; run `{cli_reference.COMMAND}`"


def test_every_flag_of_every_command_is_on_the_reference_page():
    page = cli_reference.PAGE.read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## pisa-sr {name}\n" in page
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}`" in page, f"{flag} of pisa-sr {name} is not in docs/cli.md"


def test_a_new_flag_or_default_changes_the_page():
    parser = argparse.ArgumentParser(description="d")
    parser.add_argument("--tile", type=int, default=96, help="tile (default: 96)")
    before = cli_reference._command_section("x", parser, "")
    parser.add_argument("--tile-new", type=int, default=7, help="a new flag")
    after = cli_reference._command_section("x", parser, "")
    assert "| `--tile` | TILE | `96` | tile |" in before
    assert "`--tile-new`" in after and "`--tile-new`" not in before


def _commands(text: str) -> list[str]:
    """`pisa-sr ...` (and `python -m pisa_core ...`) commands of the fenced blocks and inline code."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            match = re.search(r"(?:^|\s)(?:pisa-sr|-m pisa_core(?:\.train)?)\s(.*)", line)
            if line.startswith(("pisa-sr ", "accelerate ", "python -m pisa_core")) and match:
                train = "-m pisa_core.train" in line
                found.append(("train " if train else "") + match[1].split(" # ")[0].split("  #")[0])
    found += [m.removeprefix("pisa-sr ") for m in INLINE.findall(text)]
    return [c for c in found if not any(p in c for p in PLACEHOLDERS)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(doc, monkeypatch):
    monkeypatch.delenv("PISA_SR_BASE", raising=False)
    monkeypatch.delenv("PISA_SR_WEIGHTS", raising=False)
    for command in _commands(doc.read_text()):
        argv = shlex.split(command.split(" | ")[0])  # a pipe's reader is not ours
        if len(argv) < 2 and argv != ["--version"] or argv[0].isupper():
            continue  # a command named in the prose (`pisa-sr info`), or the synopsis `pisa-sr COMMAND --help`
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as error:
            if error.code == 0 and {"--help", "-h", "--version"} & set(argv):
                continue  # printed its help or version and exited
            raise AssertionError(f"{doc.name}: `pisa-sr {command}` does not parse") from error
        if args.command == "upscale":
            assert args.base and args.weights, f"{doc.name}: `pisa-sr {command}` lacks --base or --weights"


def test_every_flag_the_readme_names_exists():
    """A flag named anywhere in the README's prose or tables is one of today's parsers."""
    flags = set()
    parser = build_parser()
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for command in sub.choices.values():
            flags.update(f for action in command._actions for f in action.option_strings)
    named = set(re.findall(r"(--[a-z][a-z0-9-]*)(?![\w])", (ROOT / "README.md").read_text()))
    assert named and named <= flags, f"README names flags no parser has: {sorted(named - flags)}"


def test_the_docs_show_commands_at_all():
    """The extraction above finds the README's commands (a broken pattern would pass vacuously)."""
    commands = _commands((ROOT / "README.md").read_text())
    assert sum(c.startswith("upscale ") for c in commands) >= 3
    assert any(c.startswith("train ") for c in commands) and any(c.startswith("info ") for c in commands)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_local_links_point_at_files(doc):
    for target, _ in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (doc.parent / target).resolve()
        if str(path.relative_to(ROOT)) in PAGES_ADDED_ELSEWHERE:
            continue
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"


def test_the_readme_is_a_manual_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
