"""docs/cli.md, generated from the command line's own parsers (pisa_core.cli.main.build_parser, which
registers the training commands of pisa_core.cli.train and their config module) and from the
options module (pisa_core.options.OPTIONS), so that no flag can be added, renamed or given a new
default without the page changing (tests/test_docs.py compares).

    python tools/cli_reference.py           # rewrite docs/cli.md
    python tools/cli_reference.py --check   # exit 1 when docs/cli.md differs

A development tool: not part of the packed node (.comfyignore).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGE = ROOT / "docs" / "cli.md"
COMMAND = "python tools/cli_reference.py"
ENV_PREFIX = "PISA_SR_"  # options whose default comes from the environment: shown without it
DEFAULT_NOTE = re.compile(r"\s*\(default: [^()]*(\([^()]*\)[^()]*)*\)")

INTRO = """# Command-line reference

Every command and option of `pisa-sr`, generated from its parsers by `{command}` (do not edit
by hand; a test fails when this page and the parsers differ). `pisa-sr COMMAND --help` prints the
same. `python -m pisa_core` is the same program; `python -m pisa_core.train` (and
`accelerate launch -m pisa_core.train` on several GPUs) takes the options of `pisa-sr train`.
The training commands (`train`, `degrade`, `caption`) need the training extra
(`pip install -e ".[train]"`).
"""


@contextlib.contextmanager
def _without_env(prefix: str):
    """The environment without variables starting with `prefix`, restored afterwards: a default
    read from the environment (--base from PISA_SR_BASE) must not reach the page."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(prefix)}
    try:
        yield
    finally:
        os.environ.update(saved)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    value = action.default
    if action.required or value in (None, argparse.SUPPRESS, [], "") or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if value else "off"
    return f"`{value}`"


def _argument(action: argparse.Action) -> str:
    if action.choices:
        return " \\| ".join(f"`{c}`" for c in action.choices)
    if action.nargs == 0 or not action.option_strings:
        return ""
    metavar = action.metavar or action.dest.upper()
    return f"{metavar} …" if action.nargs in ("+", "*") else str(metavar)


def _flags(action: argparse.Action) -> str:
    many = "…" if action.nargs in ("+", "*") else ""
    flags = action.option_strings or [(action.metavar or action.dest.upper()) + many]
    return ", ".join(f"`{f}`" for f in flags) + (" (required)" if action.required and action.option_strings else "")


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _command_section(name: str, parser: argparse.ArgumentParser, summary: str) -> str:
    actions = _actions(parser)
    positional = " ".join(f"{a.metavar or a.dest.upper()}{'…' if a.nargs in ('+', '*') else ''}"
                          for a in actions if not a.option_strings)
    lines = [f"## pisa-sr {name}", "", f"```\npisa-sr {name} {positional} [options]\n```".replace("  ", " "), ""]
    lines += [_cell(parser.description or summary), ""]
    lines += ["| argument | value | default | meaning |", "| --- | --- | --- | --- |"]
    for a in actions:
        default = _default(a)
        meaning = DEFAULT_NOTE.sub("", a.help or "") if default else a.help or ""  # the note moves to its column
        lines.append(f"| {_flags(a)} | {_argument(a)} | {default} | {_cell(meaning)} |")
    return "\n".join(lines)


def _options_section() -> str:
    """pisa_core.options: the settings the CLI, the Python API and the ComfyUI nodes share."""
    from pisa_core.options import CALL_OPTIONS, OPTIONS

    lines = ["## Shared settings", "",
             "One definition each (`pisa_core/options.py`), shared by the CLI, the Python API and the ComfyUI nodes. "
             "The Python keyword is an argument of `PiSAPipeline.__call__`; `dtype` is one of `PiSAPipeline(...)` "
             "and `PiSAPipeline.from_files(...)`, and the masked λ become λ maps there "
             "(`pisa_core.inference.guidance.masked_lambda`).", "",
             "| Python keyword | CLI flag | node input | default | range or choices |", "| --- | --- | --- | --- | --- |"]
    for o in OPTIONS.values():
        span = (" \\| ".join(f"`{c}`" for c in o.choices) if o.choices
                else f"{o.min:g} to {o.max:d}" if isinstance(o.max, int)
                else f"{o.min:g} to {o.max:g}" if o.min is not None and o.max is not None else "")
        keyword = f"`{o.name}`" if o.name in CALL_OPTIONS or o.name == "dtype" else "–"
        lines.append(f"| {keyword} | `{o.flag}` | `{o.node_name or o.name}` | `{o.default}` | {span} |")
    return "\n".join(lines)


def render() -> str:
    """The whole page, from the parsers as they are now."""
    from pisa_core.cli.main import build_parser

    with _without_env(ENV_PREFIX):
        parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = [INTRO.format(command=COMMAND).rstrip()]
    top = _actions(parser)
    if top:
        parts.append("## pisa-sr\n\n| argument | meaning |\n| --- | --- |\n" + "\n".join(
            f"| {_flags(a)} | {_cell(a.help or '')} |" for a in top))
    parts.append("Commands: " + ", ".join(f"[`{name}`](#pisa-sr-{name})" for name in sub.choices) + ".")
    parts += [_command_section(name, p, summaries.get(name, "")) for name, p in sub.choices.items()]
    parts.append(_options_section())
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when docs/cli.md differs")
    args = parser.parse_args(argv)
    page = render()
    if PAGE.exists() and PAGE.read_text() == page:
        return 0
    if args.check:
        print(f"{PAGE.relative_to(ROOT)} differs from the parsers; run `{COMMAND}`", file=sys.stderr)
        return 1
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
