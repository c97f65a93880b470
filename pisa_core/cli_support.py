"""What the command-line front ends share (`pisa-sr` in pisa_core.cli, the training commands in
pisa_core.train.cli): logging setup, the error contract, output path checks and the tally of a
run, so neither front end imports the other."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PiSAError

log = logging.getLogger("pisa_core.cli")  # the command line's lines, whichever of its modules writes them

# The loggers whose INFO lines the CLI shows: the core's modules and the nodes' logger.
PROJECT_LOGGERS = ("pisa_core", "PiSA-SR")


# ----------------------------------------------------------------------------- logging


class _StderrHandler(logging.Handler):
    """Writes each record to the current sys.stderr (looked up per record, so a handler installed
    once keeps working when the stream is replaced, as test runners do)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def show_project_logs(level: int = logging.INFO) -> None:
    """INFO lines of the project's loggers on stderr, as plain messages (they carry their own
    'pisa-sr:' / 'PiSA-SR:' prefix); third-party loggers are left as they are."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
            logger.addHandler(_StderrHandler())
        logger.setLevel(level)


def quiet_libraries() -> None:
    """No progress bars or INFO/WARNING chatter from transformers, diffusers and the Hugging Face
    hub while models load: the CLI reports progress itself, one line per image."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    disable_progress_bars()


# ----------------------------------------------------------------------------- errors


def report_errors(run: Callable[[], int], prog: str = "pisa-sr") -> int:
    """run() with the CLI's error contract: a PiSAError or an OS error is one line on stderr and
    exit code 2; Ctrl-C is exit code 130."""
    try:
        return run()
    except (PiSAError, OSError) as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- output paths


def file_identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode when it exists (hard and symbolic
    links included), else the absolute path with symbolic links resolved."""
    try:
        stat = os.stat(path)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("inode", stat.st_dev, stat.st_ino)


def check_targets(pairs: list[tuple[Path, Path]], output_flag: str = "-o") -> None:
    """Refuse, before any work, an output that is one of the inputs (never written over, even with
    --overwrite) and two inputs that would be written to the same file."""
    inputs = {file_identity(source) for source, _ in pairs}
    claimed: dict[tuple, Path] = {}
    for source, target in pairs:
        key = file_identity(target)
        if key in inputs:
            raise PiSAError(f"The output {str(target)!r} is an input file; inputs are never written over "
                            f"(choose another {output_flag}).")
        if key in claimed:
            raise PiSAError(f"{str(claimed[key])!r} and {str(source)!r} would both be written to {str(target)!r}; "
                            "rename one of them or run them separately.")
        claimed[key] = source
        if target.exists() and not target.is_file():
            raise PiSAError(f"The output {str(target)!r} exists and is not a file.")


def split_existing(pairs: list[tuple[Path, Path]], overwrite: bool, *, single: bool) -> tuple[list, list]:
    """(pairs to write, pairs skipped because their output exists); with overwrite nothing is skipped.
    For a run of a single input an existing output is an error instead of a silent no-op."""
    if overwrite:
        return list(pairs), []
    todo = [pair for pair in pairs if not pair[1].exists()]
    skipped = [pair for pair in pairs if pair[1].exists()]
    if single and skipped:
        raise PiSAError(f"The output {str(skipped[0][1])!r} exists; pass --overwrite to replace it.")
    for _, target in skipped:
        log.info("pisa-sr: skipping %s: it exists (--overwrite replaces it)", target)
    return todo, skipped


# ----------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """What a run did, for the summary line."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0                     # processing time of the written images, model loading excluded
    load_seconds: float | None = None
    model: str | None = None                 # "<dtype> on <device>"

    def fail(self, source: Path, error: BaseException) -> None:
        message = " ".join(str(error).split())
        self.failed.append((source, message))
        log.error("pisa-sr: error: %s", message)
