"""What the command-line front ends share (`pisa-sr` in pisa_core.cli.main, the training commands in
pisa_core.cli.train): logging setup, the error contract, output path checks and the tally of a
run, so neither front end imports the other."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PiSAError

log = logging.getLogger("pisa_core.cli")  # the command line's lines, whichever of its modules writes them

# The loggers whose INFO lines the CLI shows: the core's modules and the nodes' logger.
PROJECT_LOGGERS = ("pisa_core", "PiSA-SR")
OUTPUT_EXISTS = "output exists; --overwrite replaces it"  # the reason an existing output is skipped
LISTED_FAILURES = 5  # files named in a line (failed inputs, removed temporaries)
TERMINATING_SIGNALS = ("SIGTERM", "SIGHUP")  # handled like Ctrl-C (SIGHUP does not exist on Windows)
PIPE_CLOSED_EXIT = 128 + 13  # 141: what shells report for a process ended by SIGPIPE


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
    'pisa-sr:' prefix); third-party loggers are left as they are."""
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


def one_line(error: BaseException | str) -> str:
    """An error message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split())


DEBUG_HINT = "rerun with --debug for its traceback, and please report it"


def input_failure(source, error: Exception, debug: bool = False) -> PiSAError:
    """What went wrong with one input, as that input's failure line: a PiSAError's message, an OS
    error's (naming the file), and anything else as an internal error (a bug) that says where its
    traceback is: logged here with `debug`, else the hint to rerun with --debug."""
    if isinstance(error, PiSAError):
        return error
    if isinstance(error, OSError):
        return PiSAError(f"{source}: {one_line(error)}")
    if debug:
        log.error("pisa-sr: internal error on %s:\n%s", source, "".join(traceback.format_exception(error)).rstrip())
    hint = "its traceback is above" if debug else DEBUG_HINT
    return PiSAError(f"{source}: internal error ({type(error).__name__}: {one_line(error)}); {hint}.")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a `timeout`, `docker stop`, a closed terminal), raised in the main thread
    like Ctrl-C's KeyboardInterrupt, so the same clean-up runs: finished images are kept, the file
    being written is removed (atomic_output)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interruption(error: KeyboardInterrupt) -> tuple[str, int]:
    """(what interrupted the run, exit code 128 + signal number): Ctrl-C 130, SIGHUP 129, SIGTERM 143."""
    if isinstance(error, Interrupted):
        return signal.Signals(error.signum).name, 128 + error.signum
    return "Ctrl-C", 128 + signal.SIGINT


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP raise Interrupted while the block runs (the previous handlers come back
    after it). Only the main thread can set handlers; elsewhere the block runs as it is."""
    wanted = [getattr(signal, name) for name in TERMINATING_SIGNALS if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stdout_to_devnull() -> None:
    """After the reader of stdout went away (`pisa-sr info FILE | head -1`): what is still buffered
    goes nowhere, so Python's flush at exit cannot fail again (the recipe of Python's signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def report_errors(run: Callable[[], int], prog: str = "pisa-sr") -> int:
    """run() with the CLI's error contract: a PiSAError or an OS error is one line on stderr and
    exit code 2; Ctrl-C, SIGTERM and SIGHUP end it with `interrupted (...)` and 128 + the signal
    number (130, 143, 129); a closed stdout (the reader of a pipe quit) ends it quietly with 141,
    the code of a process killed by SIGPIPE, as shells report it."""
    try:
        with signals_interrupt():
            try:
                return run()
            finally:  # --help and --version end in SystemExit: their output too may meet a closed pipe
                sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return PIPE_CLOSED_EXIT
    except (PiSAError, OSError) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        what, code = interruption(error)
        print(f"{prog}: interrupted ({what})", file=sys.stderr)
        return code


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                run: Callable[[argparse.Namespace], int]) -> int:
    """Parse argv, show the project's log lines and run(args) under report_errors (the parser's
    own output, --help and --version, included: they may go to a closed pipe as well)."""

    def parse_and_run() -> int:
        args = parser.parse_args(argv)
        show_project_logs()
        return run(args)

    return report_errors(parse_and_run, parser.prog)


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


def listed(paths) -> str:
    """The first LISTED_FAILURES paths, comma-separated, then ', ...' if there are more."""
    paths = [str(path) for path in paths]
    return ", ".join(paths[:LISTED_FAILURES]) + (", ..." if len(paths) > LISTED_FAILURES else "")


def remove_stale_temporaries(folders) -> list[Path]:
    """Remove, from the output folders of a run, the temporary files that killed runs left behind
    (atomic.remove_stale_temporaries: only that naming pattern, only of processes that are gone),
    and say so."""
    from ..files.atomic import remove_stale_temporaries as remove_in

    removed = [path for folder in folders for path in remove_in(folder)]
    if removed:
        log.info("pisa-sr: removed %d temporary file%s left by a run that was killed: %s", len(removed),
                 "" if len(removed) == 1 else "s", listed(removed))
    return removed


# ----------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """What a run did, for the summary line: what was written, skipped (with the reason) and failed
    (with the error), and what stopped the run early, if anything did."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    not_images: list[tuple[Path, str]] = field(default_factory=list)  # folder entries left out, with the reason
    failed: list[tuple[Path, str]] = field(default_factory=list)   # (input, error message)
    seconds: float = 0.0                     # processing time of the written images, model loading excluded
    load_seconds: float | None = None
    model: str | None = None                 # "<dtype> on <device>"
    stopped: str | None = None               # "failed: could not load the model: ...", "interrupted (SIGTERM)"

    def skip(self, path: Path, reason: str = OUTPUT_EXISTS) -> None:
        self.skipped.append((path, reason))

    def fail(self, source: Path, error: BaseException) -> None:
        message = one_line(error)
        self.failed.append((source, message))
        log.error("pisa-sr: error: %s", message)

    def outcome(self) -> str:
        """What the summary line adds after the written count: `; N skipped (why)` per reason,
        `; N failed: names (first error: ...)`, `; failed: ...` for an error that stopped the run."""
        text = ""
        reasons: dict[str, int] = {}
        for _, reason in self.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            text += f"; {count} skipped ({reason})"
        if self.not_images:
            names = listed(f"{source.name} ({reason})" for source, reason in self.not_images)
            text += f"; {len(self.not_images)} skipped as not images: {names}"
        if self.failed:
            names = listed(source for source, _ in self.failed)
            text += f"; {len(self.failed)} failed: {names} (first error: {self.failed[0][1]})"
        if self.stopped:
            text += f"; {self.stopped}"
        return text
