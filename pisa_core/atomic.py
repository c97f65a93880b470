"""Files that appear whole or not at all: every file the project writes (images, weights,
captions, training states, the prompt cache) goes through `atomic_output`."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import PiSAError


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` (same filesystem, so the final rename is atomic); input listings
    skip hidden files, so a leftover from a killed process is never taken as an input."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = True):
    """A binary file object whose bytes become `path` only when the block completes: written to a
    temporary file in the same folder, flushed to disk and renamed over `path`. On any error or
    interrupt (Ctrl-C, a full disk) the temporary file is removed and `path` is left as it was.
    overwrite=False: an existing `path` is an error, checked again just before the rename.
    OSError becomes a one-line PiSAError naming the file."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise PiSAError(f"Not writing {str(path)!r}: the file exists (overwriting was not asked for).")
        os.replace(temporary, path)
    except OSError as exc:
        _discard(temporary)
        raise PiSAError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: Path) -> None:
    """Remove a temporary file if there is one; on a read-only or vanished folder there is not."""
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)
